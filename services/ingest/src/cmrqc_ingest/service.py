"""The ingest service process, in one class: SCP + STOW-RS + assembler + health/metrics.

Tests and benchmarks run it in-process on free ports::

    settings = IngestSettings(dicom_port=0, stow_port=0, spool_dir=tmp,
                              runner=RunnerSettings(health_port=0), kafka=..., blobs=...)
    service = IngestService(settings)
    service.start()
    ... C-STORE to ("127.0.0.1", service.dicom_port), POST to service.stow_port ...
    service.stop()

Lifecycle: ``start`` opens the spool (recovering what a previous run left), ensures the
topics, starts the assembler thread, the SCP, STOW-RS and /healthz /readyz /metrics.
``stop`` (also on SIGTERM via ``run``) stops accepting associations and requests, lets open
ones finish, assembles every series that is complete by then, leaves incomplete ones in the
spool for the next start, and flushes the publisher.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from kafka.admin import KafkaAdminClient

from cmrqc_ingest.assembly_worker import AssemblyWorker
from cmrqc_ingest.metrics import IngestMetrics
from cmrqc_ingest.native_scp import DicomNode, make_scp
from cmrqc_ingest.pipeline import IngestPipeline, SeriesOutcome
from cmrqc_ingest.publishing import Publisher, default_producer
from cmrqc_ingest.settings import IngestSettings
from cmrqc_ingest.stow import StowServer, build_stow_app
from cmrqc_shared.blobs import BlobStore, open_blob_store
from cmrqc_shared.bus.observability import Heartbeat, ObservabilityServer
from cmrqc_shared.bus.publisher import EventPublisher
from cmrqc_shared.bus.signals import stop_on_signals
from cmrqc_shared.topics import TOPICS, TopicSpec, ensure_topics

logger = logging.getLogger(__name__)

_ASSEMBLER_TICK_S = 0.1
_STALE_AFTER_S = 300.0
_OUTCOMES_KEPT = 10_000


def ensure_service_topics(settings: IngestSettings) -> None:
    """Create the system's topics (namespaced) if missing, as every service does at start."""
    admin = KafkaAdminClient(client_id="ingest-admin", **settings.kafka.client_config())
    try:
        specs = [
            TopicSpec(**{**spec.__dict__, "name": settings.kafka.topic(spec.name)})
            for spec in TOPICS
        ]
        ensure_topics(admin, specs)
    finally:
        admin.close()


class IngestService:
    """SCP, STOW-RS and the assembler loop around one :class:`IngestPipeline`."""

    def __init__(
        self,
        settings: IngestSettings,
        *,
        publisher: Publisher | None = None,
        blobs: BlobStore | None = None,
        metrics: IngestMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or IngestMetrics()
        self._owns_publisher = publisher is None
        self._owns_blobs = blobs is None
        self._publisher = publisher
        self._blobs = blobs
        self.pipeline: IngestPipeline | None = None
        self._scp: DicomNode | None = None
        self._stow: StowServer | None = None
        self._observability: ObservabilityServer | None = None
        self._assembler: threading.Thread | None = None
        self._assembly_worker: AssemblyWorker | None = None
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._stop_requested = threading.Event()
        self._heartbeat = Heartbeat(_STALE_AFTER_S)
        self._started = False
        self._lock = threading.Lock()
        self.outcomes: deque[SeriesOutcome] = deque(maxlen=_OUTCOMES_KEPT)
        """The latest series outcomes (for tests and benchmarks), newest last."""
        self.volumes_published = 0

    # -- ports ---------------------------------------------------------------------------

    @property
    def dicom_port(self) -> int:
        assert self._scp is not None, "not started"
        return self._scp.port

    @property
    def stow_port(self) -> int:
        assert self._stow is not None, "not started"
        return self._stow.port

    @property
    def health_port(self) -> int:
        assert self._observability is not None, "not started"
        return self._observability.port

    @property
    def active_associations(self) -> int:
        """DICOM associations open now."""
        return self._scp.active_associations() if self._scp is not None else 0

    # -- health --------------------------------------------------------------------------

    def is_live(self) -> bool:
        """The assembler loop beats (not stuck)."""
        return self._started and self._heartbeat.is_fresh()

    def is_ready(self) -> bool:
        """Accepting data: started, not stopping, spool below watermarks, downstream ok."""
        return (
            self._started
            and not self._stopping.is_set()
            and self.pipeline is not None
            and self.pipeline.ready()
        )

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, *, ensure_topics: bool = True) -> None:
        """Start everything; returns once the SCP and STOW-RS accept connections.

        Raises:
            SpoolLocked: another process uses the spool.
            kafka.errors.KafkaError: topics could not be ensured.
            OSError: a port could not be bound.
        """
        settings = self.settings
        if self._publisher is None:
            if ensure_topics:
                ensure_service_topics(settings)
            self._publisher = EventPublisher(settings.kafka, client_id="cmrqc-ingest")
        if self._blobs is None:
            self._blobs = open_blob_store(
                settings.blobs.resolved_url(), ttl_seconds=settings.blobs.ttl_seconds
            )
        if settings.assembly_process and self._assembly_worker is None:
            self._assembly_worker = AssemblyWorker(
                min_slices=settings.min_slices,
                publish_all_phases=settings.publish_all_phases,
                timeout_s=settings.assembly_timeout_s,
            )
            self._assembly_worker.start()
        self.pipeline = IngestPipeline(
            settings,
            blobs=self._blobs,
            assembly_worker=self._assembly_worker,
            publisher=self._publisher,
            metrics=self.metrics,
            producer=default_producer(settings.runner.instance_id),
        )
        self.pipeline.open()
        self._assembler = threading.Thread(target=self._assemble_loop, name="assembler")
        self._assembler.start()
        self._scp = make_scp(settings, self.pipeline, self.metrics)
        self._scp.start()
        self._stow = StowServer(
            build_stow_app(self.pipeline, max_request_bytes=settings.stow_max_request_bytes),
            settings.stow_host,
            settings.stow_port,
        )
        self._stow.start()
        self._observability = ObservabilityServer(
            self.metrics.registry,
            is_live=self.is_live,
            is_ready=self.is_ready,
            host=settings.runner.health_host,
            port=settings.runner.health_port,
        )
        self._observability.start()
        self._started = True
        logger.info(
            "ingest service started",
            extra={
                "dicom_port": self.dicom_port,
                "stow_port": self.stow_port,
                "health_port": self.health_port,
            },
        )

    def _assemble_loop(self) -> None:
        pipeline = self.pipeline
        assert pipeline is not None
        wakeup = pipeline.tracker.wakeup
        while not self._stopping.is_set():
            self._heartbeat.beat()
            wakeup.wait(_ASSEMBLER_TICK_S)
            wakeup.clear()
            self._record(pipeline.assemble_ready())

    def _record(self, outcomes: list[SeriesOutcome]) -> None:
        with self._lock:
            self.outcomes.extend(outcomes)
            self.volumes_published += sum(len(o.events) for o in outcomes if o.kind == "published")

    def stop(self, grace_s: float = 10.0) -> None:
        """Graceful stop (idempotent): see the module docstring."""
        if self._stopped.is_set():
            return
        logger.info("ingest service stopping")
        if self._scp is not None:
            self._scp.stop(grace_s)
        if self._stow is not None:
            self._stow.stop()
        self._stopping.set()
        if self._assembler is not None:
            self._assembler.join()
        if self.pipeline is not None:
            self._record(self.pipeline.assemble_ready())
            left = len(self.pipeline.tracker)
            if left:
                logger.info("incomplete series left in the spool", extra={"series": left})
        if self._publisher is not None and self._owns_publisher:
            assert isinstance(self._publisher, EventPublisher)
            self._publisher.flush(10)
            self._publisher.close()
        if self._blobs is not None and self._owns_blobs:
            self._blobs.close()
        if self._observability is not None:
            self._observability.stop()
        if self.pipeline is not None:
            self.pipeline.close()
        if self._assembly_worker is not None:
            self._assembly_worker.close()
            self._assembly_worker = None
        self._started = False
        self._stopped.set()
        logger.info("ingest service stopped")

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT make ``run`` return after a graceful stop (main thread only)."""
        stop_on_signals(self._stop_requested.set)

    def request_stop(self) -> None:
        """Ask ``run`` to stop (thread-safe)."""
        self._stop_requested.set()

    def run(
        self,
        *,
        timeout_s: float | None = None,
        max_volumes: int | None = None,
        idle_timeout_s: float | None = None,
    ) -> None:
        """Start, serve until a stop condition, then stop gracefully.

        Args:
            timeout_s: stop after this long, s.
            max_volumes: stop once this many VolumeReady events were published.
            idle_timeout_s: stop when nothing was received or pending for this long, s.
        """
        if not self._started:
            self.start()
        started = time.monotonic()
        last_activity = started
        last_received = self._received_total()
        try:
            while not self._stop_requested.wait(0.1):
                now = time.monotonic()
                if timeout_s is not None and now - started >= timeout_s:
                    break
                if max_volumes is not None and self.volumes_published >= max_volumes:
                    break
                received = self._received_total()
                pending = len(self.pipeline.tracker) if self.pipeline else 0
                if received != last_received or pending:
                    last_received, last_activity = received, now
                if idle_timeout_s is not None and now - last_activity >= idle_timeout_s:
                    break
        finally:
            self.stop()

    def _received_total(self) -> float:
        total = 0.0
        for metric in self.metrics.instances_received.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    total += sample.value
        return total
