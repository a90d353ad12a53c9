"""Hot-swap: follow cmrqc.models.v1 and swap newly published models in between batches.

* ``ModelSlot`` holds the serving model. The watcher *stages* a loaded model; the handler
  calls ``for_batch()`` once at the start of every batch, which swaps the staged model in and
  returns the model that serves the whole batch. A batch is never split between two models,
  and no lock is held while the network runs.
* ``ModelWatcher`` is a background thread with its own consumer of the compacted models topic,
  without a consumer group (every replica must see every model, and a restarted replica
  re-reads the topic from the beginning to find the current model). For each
  ``ModelPublished`` of the followed model name it downloads the artifact blob (the blob store
  verifies size and sha256), checks that the announced architecture is one this service runs
  and that the artifact's own metadata agrees, and loads it safely (safetensors; never
  pickle). An artifact without an interval calibration for the number of views this
  service serves is incompatible too. A corrupt, missing or incompatible artifact is refused:
  logged, counted in ``cmrqc_qc_models_refused_total{reason}``, and the serving model stays.

Exactly-once is the runner's business: a swap changes which model answers later records;
records already handled are committed (or, if their transaction aborts, handled again by
whichever model is current), and the output event id includes the model version.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import torch
from kafka import KafkaConsumer
from kafka.structs import TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import ValidationError

from cmrqc_qc_predictor.artifact import ArtifactError, QcModel, load_artifact, read_metadata
from cmrqc_qc_predictor.models import FAST_ARCHITECTURE, PAPER_ARCHITECTURE
from cmrqc_shared.blobs import BlobError, BlobStore
from cmrqc_shared.events import ModelPublished
from cmrqc_shared.settings import KafkaSettings

logger = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = frozenset({FAST_ARCHITECTURE, PAPER_ARCHITECTURE})


class SwapMetrics:
    """Hot-swap metrics, registered in the runner's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.swaps = Counter(
            "cmrqc_qc_model_swaps", "Models swapped in for serving.", registry=registry
        )
        self.refused = Counter(
            "cmrqc_qc_models_refused",
            "Published models refused, by reason.",
            ["reason"],
            registry=registry,
        )
        self.serving = Gauge(
            "cmrqc_qc_model_serving",
            "1 for the model version now serving.",
            ["name", "version", "architecture"],
            registry=registry,
        )


class ModelSlot:
    """The serving model, and at most one staged successor (see the module docstring)."""

    def __init__(self, model: QcModel, metrics: SwapMetrics | None = None) -> None:
        self._current = model
        self._staged: QcModel | None = None
        self._lock = threading.Lock()
        self._metrics = metrics
        self._mark_serving(None, model)

    @property
    def current(self) -> QcModel:
        """The model serving now (the staged one is not yet)."""
        return self._current

    def stage(self, model: QcModel) -> None:
        """Make ``model`` the next batch's model (replaces a staged one not yet swapped in)."""
        with self._lock:
            self._staged = model

    def for_batch(self) -> QcModel:
        """Swap in the staged model, if any; return the model that serves this batch."""
        with self._lock:
            staged, self._staged = self._staged, None
            if staged is not None:
                previous, self._current = self._current, staged
                self._mark_serving(previous, staged)
                logger.info(
                    "model swapped in",
                    extra={
                        "model_name": staged.name,
                        "model_version": staged.version,
                        "previous_version": previous.version,
                        "architecture": staged.architecture,
                    },
                )
            return self._current

    def _mark_serving(self, previous: QcModel | None, model: QcModel) -> None:
        if self._metrics is None:
            return
        if previous is not None:
            self._metrics.swaps.inc()
            self._metrics.serving.labels(
                previous.name, previous.version, previous.architecture
            ).set(0)
        self._metrics.serving.labels(model.name, model.version, model.architecture).set(1)


def load_published_model(event: ModelPublished, blobs: BlobStore, device: torch.device) -> QcModel:
    """Download, verify and load the artifact that ``event`` announces.

    Raises:
        ArtifactError: ``blob-unavailable`` (missing or corrupted blob: the store verifies the
            sha256), ``incompatible`` (architecture not run here, or disagreeing with the
            artifact's metadata, or weights/contract that do not fit) or ``corrupt``.
    """
    if event.architecture not in SUPPORTED_ARCHITECTURES:
        raise ArtifactError(
            "incompatible",
            f"architecture {event.architecture!r} is not served here "
            f"(supported: {sorted(SUPPORTED_ARCHITECTURES)})",
        )
    try:
        data = blobs.get(event.artifact)
    except BlobError as error:
        raise ArtifactError("blob-unavailable", str(error)) from error
    announced = read_metadata(data).get("architecture")
    if announced != event.architecture:
        raise ArtifactError(
            "incompatible",
            f"event announces {event.architecture!r}, the artifact is {announced!r}",
        )
    model = load_artifact(data, sha256=event.artifact.sha256)
    model.version = event.version  # the registry's version is the one consumers report
    model.name = event.model_name
    model.network.to(device)
    return model


class ModelWatcher:
    """Background consumer of cmrqc.models.v1 that stages new models into a ``ModelSlot``."""

    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        model_name: str,
        slot: ModelSlot,
        blobs: BlobStore,
        device: torch.device,
        metrics: SwapMetrics,
        loader: Callable[[ModelPublished, BlobStore, torch.device], QcModel] = (
            load_published_model
        ),
        poll_timeout_ms: int = 500,
        views: int = 1,
    ) -> None:
        self.kafka = kafka
        self.model_name = model_name
        self.slot = slot
        self.blobs = blobs
        self.device = device
        self.metrics = metrics
        self.loader = loader
        self.poll_timeout_ms = poll_timeout_ms
        self.views = views
        self.topic = kafka.topic(ModelPublished.TOPIC)
        self._stop = threading.Event()
        self._caught_up = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: KafkaConsumer | None = None
        self.applied_versions: list[str] = []
        self.refused: list[tuple[str, str]] = []

    def start(self, catch_up_timeout_s: float = 30.0) -> bool:
        """Start the thread; wait until the topic's existing records were read.

        Returns whether the catch-up finished in time (the service serves the model it has
        either way; a later model is swapped in when it is read).
        """
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()
        return self._caught_up.wait(catch_up_timeout_s)

    def stop(self) -> None:
        """Stop the thread and close its consumer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            consumer = KafkaConsumer(
                enable_auto_commit=False,
                group_id=None,
                isolation_level="read_committed",
                **self.kafka.client_config(),
            )
        except Exception:
            logger.exception("model watcher could not connect; hot-swap disabled")
            self._caught_up.set()
            return
        self._consumer = consumer
        try:
            partitions = self._partitions(consumer)
            consumer.assign(partitions)
            consumer.seek_to_beginning(*partitions)
            end = consumer.end_offsets(partitions)
            latest: ModelPublished | None = None
            # Catch up: of the existing records only the last one for our name matters.
            while not self._stop.is_set() and any(
                consumer.position(tp) < offset for tp, offset in end.items()
            ):
                for event in self._poll(consumer):
                    latest = event
            if latest is not None:
                self._apply(latest)
            self._caught_up.set()
            while not self._stop.is_set():
                for event in self._poll(consumer):
                    self._apply(event)
        except Exception:
            logger.exception("model watcher failed; the serving model stays")
        finally:
            self._caught_up.set()
            consumer.close()

    def _partitions(self, consumer: KafkaConsumer) -> list[TopicPartition]:
        deadline = time.monotonic() + 30
        while True:
            found = consumer.partitions_for_topic(self.topic)
            if found:
                return [TopicPartition(self.topic, p) for p in sorted(found)]
            if time.monotonic() > deadline or self._stop.is_set():
                raise RuntimeError(f"topic {self.topic} not found")
            time.sleep(0.2)

    def _poll(self, consumer: KafkaConsumer) -> list[ModelPublished]:
        events = []
        for records in consumer.poll(timeout_ms=self.poll_timeout_ms).values():
            for record in records:
                try:
                    event = ModelPublished.from_bytes(record.value)
                except (ValidationError, ValueError, TypeError) as error:
                    self._refuse("invalid-record", f"offset {record.offset}: {error}")
                    continue
                if event.model_name == self.model_name:
                    events.append(event)
        return events

    def _apply(self, event: ModelPublished) -> None:
        current = self.slot.current
        if event.version == current.version and event.artifact.sha256 == current.sha256:
            return
        try:
            model = self.loader(event, self.blobs, self.device)
        except ArtifactError as error:
            self._refuse(error.reason, f"{event.model_name} {event.version}: {error}")
            return
        except Exception as error:  # never let a bad artifact take the service down
            self._refuse("load-failed", f"{event.model_name} {event.version}: {error!r}")
            return
        try:
            model.calibration_for(self.views)
        except ValueError as error:
            self._refuse("incompatible", f"{event.model_name} {event.version}: {error}")
            return
        self.slot.stage(model)
        self.applied_versions.append(event.version)
        logger.info(
            "model staged for hot-swap",
            extra={"model_name": event.model_name, "model_version": event.version},
        )

    def _refuse(self, reason: str, message: str) -> None:
        self.metrics.refused.labels(reason).inc()
        self.refused.append((reason, message))
        logger.error(
            "published model refused; the serving model stays",
            extra={
                "reason": reason,
                "error": message,
            },
        )
