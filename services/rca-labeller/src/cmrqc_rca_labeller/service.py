"""The RCA labeller service: intake → durable priority queue → worker → ``cmrqc.rca.v1``.

Three loops in one process (threads), each with one job:

* **Segmentation intake** — a ``StreamRunner`` over ``cmrqc.segmentations.v1`` in its own
  consumer group. Its handler puts the case into the Redis queue (``CaseQueue.enqueue``)
  and produces nothing; the runner commits the input offset (in a Kafka transaction by
  default) only after the handler returned, i.e. once the case is durably queued.
* **QC intake** — a ``StreamRunner`` over ``cmrqc.qc.v1`` (group ``<group>-qc``) that turns
  each ``QcResult`` into a priority cost for its segmentation (``qc_priority_cost``).
* **Worker** — claims the lowest-cost case (a lease, so a crashed worker's case returns to
  the queue), loads its blobs, runs RCA, publishes ``RcaLabel`` (acks=all, idempotent
  producer) and only then marks the case done. A case that can never succeed (a missing or
  corrupt blob, a volume and labelmap that do not match) goes to the dead-letter topic with
  the original event, and so does one that keeps failing; nothing is dropped.

Guarantee: every SegmentationReady gets exactly one RcaLabel *event id* (derived from the
segmentation event id, the reference set hash and the algorithm version) — at least once on
the topic. A label is published twice only when the worker dies between Kafka's
acknowledgement and the Redis ``complete`` (or outlives its lease); the repeat carries the
same event id, so consumers de-duplicate by id. Exactly-once would need the queue and the
output topic in one transaction, which Redis and Kafka do not share.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError

from cmrqc_rca_labeller import __version__
from cmrqc_rca_labeller.calibration import calibration_for
from cmrqc_rca_labeller.engine import EngineConfig, ReferenceBank
from cmrqc_rca_labeller.priority import qc_priority_cost
from cmrqc_rca_labeller.queue import CaseQueue, ClaimedCase
from cmrqc_rca_labeller.rca import RcaEstimator
from cmrqc_rca_labeller.references import ReferenceSet, load_reference_set
from cmrqc_rca_labeller.settings import RcaLabellerSettings
from cmrqc_rca_labeller.volume import CardiacVolume
from cmrqc_shared.blobs import BlobError, BlobStore, open_blob_store
from cmrqc_shared.bus import PermanentError, RecordContext, StreamRunner
from cmrqc_shared.bus.intakes import intake_settings, intakes_running
from cmrqc_shared.bus.publisher import EventPublisher
from cmrqc_shared.events import (
    DeadLetter,
    ProducerInfo,
    QcResult,
    RcaLabel,
    SegmentationReady,
    utc_now,
)
from cmrqc_shared.logs import correlation
from cmrqc_shared.topics import ensure_namespaced_topics

logger = logging.getLogger(__name__)

SERVICE_NAME = "rca-labeller"
ALGORITHM_VERSION = "rca-torch-4"
"""Part of every label's event id: bump when the same inputs would give another label — an
engine or estimator change, or a new committed calibration (``calibrated_dsc``). 2: the
calibration refitted on 720 QC_VAL cases (2026-11-29). 3: the joint calibration (each class
scored from all four class maxima), fitted on 1,440 QC_VAL cases (2026-11-29). 4: the
calibration also reads the kept references' top-k mean, mean, spread and similarity."""


def engine_config(settings: RcaLabellerSettings) -> EngineConfig:
    """The engine configuration the settings ask for."""
    return EngineConfig(
        refine_keep=settings.max_references,
        coarse_iterations=settings.coarse_iterations,
        fine_iterations=settings.fine_iterations,
        ffd_iterations=settings.ffd_iterations,
        device=settings.device,
    )


class RcaLabeller:
    """SegmentationReady → RcaLabel: load the blobs, run RCA, build the event.

    Args:
        estimator: RCA against the loaded reference set.
        reference_set: the set's content hash goes into every label.
        blobs: where the volume and labelmap blobs are.
        producer: stamped on every label.
    """

    def __init__(
        self,
        estimator: RcaEstimator,
        reference_set: ReferenceSet,
        blobs: BlobStore,
        producer: ProducerInfo,
    ) -> None:
        self.estimator = estimator
        self.reference_set = reference_set
        self.blobs = blobs
        self.producer = producer

    def label(self, event: SegmentationReady, max_references: int | None = None) -> RcaLabel:
        """The RCA label of one segmentation.

        Raises:
            BlobError: a blob is missing or corrupt (permanent).
            PermanentError: the volume and labelmap cannot be used together.
        """
        volume = self.blobs.get_array(event.volume)
        labelmap = self.blobs.get_array(event.labelmap)
        if volume.ndim != 3 or labelmap.shape != volume.shape:
            raise PermanentError(
                "invalid-volume",
                f"volume {volume.shape} and labelmap {labelmap.shape} must be equal 3D shapes",
            )
        if labelmap.size and (labelmap.min() < 0 or labelmap.max() > 3):
            raise PermanentError("invalid-labelmap", "labels must be 0..3")
        try:
            image = CardiacVolume(volume, np.asarray(event.affine, dtype=np.float64))
        except ValueError as error:
            raise PermanentError("invalid-volume", str(error)) from error
        result = self.estimator.estimate(
            image, labelmap.astype(np.uint8), max_references=max_references
        )
        return RcaLabel.create(
            derived_from=(event.event_id, self.reference_set.content_hash, ALGORITHM_VERSION),
            producer=self.producer,
            study_instance_uid=event.study_instance_uid,
            series_instance_uid=event.series_instance_uid,
            causation_id=event.event_id,
            segmentation_event_id=event.event_id,
            volume=event.volume,
            labelmap=event.labelmap,
            cardiac_phase=event.cardiac_phase,
            affine=event.affine,
            estimated_dsc=result.estimated_dsc,
            top_k_mean_dsc=result.top_k_mean_dsc,
            calibrated_dsc=result.calibrated_dsc,
            top_references=result.top_references,
            reference_set=self.reference_set.content_hash,
            references_used=result.references_registered,
            seconds=result.seconds,
        )


class WorkerMetrics:
    """Prometheus metrics of the worker, registered on the intake runner's registry."""

    def __init__(self, registry) -> None:  # type: ignore[no-untyped-def]
        self.labels = Counter("cmrqc_rca_labels", "RCA labels published", registry=registry)
        self.dead_letters = Counter(
            "cmrqc_rca_dead_letters", "cases dead-lettered", ["reason"], registry=registry
        )
        self.seconds = Histogram(
            "cmrqc_rca_case_seconds",
            "wall-clock seconds per RCA case",
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
            registry=registry,
        )
        self.pending = Gauge("cmrqc_rca_queue_pending", "cases waiting", registry=registry)
        self.inflight = Gauge("cmrqc_rca_queue_inflight", "cases leased", registry=registry)
        self.references = Gauge(
            "cmrqc_rca_references_per_case", "references registered per case", registry=registry
        )


class ReferenceBudget:
    """How many references the next case may register, to stay near ``budget_seconds``.

    Multiplicative feedback: a case over budget scales the count down by the overshoot, a
    case well under (below 70 %) lets it grow by one, within [minimum, maximum].
    """

    def __init__(self, maximum: int, minimum: int, budget_seconds: float) -> None:
        self.maximum = maximum
        self.minimum = min(minimum, maximum)
        self.budget_seconds = budget_seconds
        self.current = maximum

    def update(self, seconds: float) -> int:
        if seconds > self.budget_seconds:
            self.current = max(self.minimum, int(self.current * self.budget_seconds / seconds))
        elif seconds < 0.7 * self.budget_seconds:
            self.current = min(self.maximum, self.current + 1)
        return self.current


@dataclass
class WorkerStats:
    labelled: int = 0
    dead_lettered: int = 0
    retried: int = 0


class RcaWorker:
    """Takes the best pending case, labels it, publishes, marks it done (see module doc)."""

    def __init__(
        self,
        labeller: RcaLabeller,
        queue: CaseQueue,
        publisher: EventPublisher,
        settings: RcaLabellerSettings,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.labeller = labeller
        self.queue = queue
        self.publisher = publisher
        self.settings = settings
        self.metrics = metrics
        self.budget = ReferenceBudget(
            settings.max_references, settings.min_references, settings.budget_seconds
        )
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(
        self,
        *,
        max_cases: int | None = None,
        timeout_s: float | None = None,
        idle_timeout_s: float | None = None,
    ) -> WorkerStats:
        """Work until stopped or a stop condition holds (cases done, time, idle time)."""
        stats = WorkerStats()
        started = last_work = time.monotonic()
        while not self._stop.is_set():
            if max_cases is not None and stats.labelled + stats.dead_lettered >= max_cases:
                break
            now = time.monotonic()
            if timeout_s is not None and now - started >= timeout_s:
                break
            if idle_timeout_s is not None and now - last_work >= idle_timeout_s:
                break
            self._update_gauges()
            claimed = self.queue.claim()
            if claimed is None:
                self._stop.wait(self.settings.idle_poll_s)
                continue
            self.process(claimed, stats)
            last_work = time.monotonic()
        return stats

    def process(self, claimed: ClaimedCase, stats: WorkerStats) -> None:
        """Label one claimed case; every outcome either completes or defers it."""
        try:
            event = SegmentationReady.model_validate_json(claimed.event_json)
        except ValidationError as error:
            self._dead_letter(claimed, None, error, "invalid-record")
            stats.dead_lettered += 1
            return
        with correlation(
            study_instance_uid=event.study_instance_uid,
            series_instance_uid=event.series_instance_uid,
            event_id=event.event_id,
        ):
            try:
                label = self.labeller.label(event, max_references=self.budget.current)
                self.publisher.publish(label)
            except (BlobError, PermanentError, ValidationError) as error:
                reason = getattr(error, "reason", None) or (
                    "blob-unavailable" if isinstance(error, BlobError) else "invalid-record"
                )
                logger.error("case cannot be labelled", extra={"reason": reason})
                self._dead_letter(claimed, event, error, reason)
                stats.dead_lettered += 1
                return
            except Exception as error:
                if claimed.attempts >= self.settings.max_attempts:
                    logger.exception("case failed %d times: dead-lettering", claimed.attempts)
                    self._dead_letter(claimed, event, error, "handler-failed")
                    stats.dead_lettered += 1
                else:
                    logger.warning(
                        "case failed, will retry",
                        extra={"attempt": claimed.attempts, "error": repr(error)},
                    )
                    self.queue.defer(claimed.case_id, self.settings.retry_delay_s)
                    stats.retried += 1
                return
            self.queue.complete(claimed.case_id)
            stats.labelled += 1
            self.budget.update(label.seconds)
            logger.info(
                "rca label published",
                extra={
                    "wh_estimate": round(label.estimated_dsc.WH, 4),
                    "seconds": round(label.seconds, 2),
                    "references": label.references_used,
                    "priority_cost": round(claimed.cost, 4),
                },
            )
            if self.metrics is not None:
                self.metrics.labels.inc()
                self.metrics.seconds.observe(label.seconds)
                self.metrics.references.set(label.references_used)

    def _dead_letter(
        self,
        claimed: ClaimedCase,
        event: SegmentationReady | None,
        error: BaseException,
        reason: str,
    ) -> None:
        import base64

        value = claimed.event_json.encode()
        letter = DeadLetter.create(
            derived_from=(SERVICE_NAME, claimed.case_id, "rca"),
            producer=self.labeller.producer,
            study_instance_uid=event.study_instance_uid if event else None,
            series_instance_uid=event.series_instance_uid if event else None,
            causation_id=event.event_id if event else None,
            failed_service=SERVICE_NAME,
            reason=reason,
            error_type=type(error).__name__,
            error_message=str(error)[:4000],
            attempts=claimed.attempts,
            original_topic=SegmentationReady.TOPIC,
            original_key=event.series_instance_uid if event else None,
            original_value_b64=base64.b64encode(value).decode(),
            first_failed_at=utc_now(),
        )
        self.publisher.publish(letter)
        self.queue.complete(claimed.case_id)
        if self.metrics is not None:
            self.metrics.dead_letters.labels(reason).inc()

    def _update_gauges(self) -> None:
        if self.metrics is None:
            return
        stats = self.queue.stats()
        self.metrics.pending.set(stats.pending)
        self.metrics.inflight.set(stats.inflight)


def intake_handler(queue: CaseQueue):  # type: ignore[no-untyped-def]
    """Handler of the segmentation intake: queue the case, produce nothing."""

    def handle(event: SegmentationReady, _ctx: RecordContext) -> Sequence[object]:
        queue.enqueue(event.event_id, event.model_dump_json())
        return []

    return handle


def qc_handler(queue: CaseQueue, default_threshold: float):  # type: ignore[no-untyped-def]
    """Handler of the QC intake: record the priority cost of the result's segmentation."""

    def handle(event: QcResult, _ctx: RecordContext) -> Sequence[object]:
        queue.record_qc(event.segmentation_event_id, qc_priority_cost(event, default_threshold))
        return []

    return handle


class RcaLabellerService:
    """The whole process: reference bank, queue, two intakes and the worker.

    Built from settings; ``run`` blocks until stopped (SIGTERM via ``main``) or a stop
    condition holds. Tests may run the parts one by one (``intake``, ``qc_intake``,
    ``worker``).
    """

    def __init__(self, settings: RcaLabellerSettings, *, serve_observability: bool = True) -> None:
        import torch

        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self.settings = settings
        producer = ProducerInfo(
            service=SERVICE_NAME, version=__version__, instance=settings.runner.instance_id
        )
        self.reference_set = load_reference_set(
            settings.reference_set_path, settings.reference_count, cache_dir=settings.cache_dir
        )
        config = engine_config(settings)
        self.bank = ReferenceBank.build(self.reference_set.references, config)
        estimator = RcaEstimator(
            self.bank, config, calibration_for(self.reference_set.content_hash)
        )
        self.blobs = open_blob_store(
            settings.blobs.resolved_url(), ttl_seconds=settings.blobs.ttl_seconds
        )
        self.queue = CaseQueue.from_url(
            settings.resolved_queue_url(),
            f"{settings.queue_prefix}:{settings.kafka.topic_namespace}"
            f"{settings.runner.group_id or SERVICE_NAME}",
            lease_s=settings.lease_s,
            aging_per_hour=settings.priority_aging_per_hour,
            unknown_cost=settings.priority_unknown_cost,
            done_ttl_s=int(timedelta(days=settings.done_ttl_days).total_seconds()),
        )
        group = settings.runner.group_id or settings.kafka.consumer_group(SERVICE_NAME)
        ensure_namespaced_topics(self.settings.kafka, client_id=f"{SERVICE_NAME}-admin")
        self.intake = StreamRunner(
            service=producer,
            input_type=SegmentationReady,
            handler=intake_handler(self.queue),
            kafka=settings.kafka,
            settings=intake_settings(settings.runner, group),
            serve_observability=serve_observability,
        )
        self.qc_intake = StreamRunner(
            service=producer,
            input_type=QcResult,
            handler=qc_handler(self.queue, settings.pass_threshold),
            kafka=settings.kafka,
            settings=intake_settings(settings.runner, group, "qc"),
            serve_observability=False,
        )
        self.publisher = EventPublisher(settings.kafka, client_id=f"{SERVICE_NAME}-worker")
        self.worker = RcaWorker(
            RcaLabeller(estimator, self.reference_set, self.blobs, producer),
            self.queue,
            self.publisher,
            settings,
            WorkerMetrics(self.intake.metrics.registry),
        )
        logger.info(
            "rca labeller ready",
            extra={
                "reference_set": self.reference_set.content_hash,
                "references": self.reference_set.size,
                "device": str(self.bank.device),
            },
        )

    def stop(self) -> None:
        """Drain: the intakes commit what they queued, the worker finishes its case."""
        self.intake.stop()
        self.qc_intake.stop()
        self.worker.stop()

    def run(
        self,
        *,
        max_cases: int | None = None,
        timeout_s: float | None = None,
        idle_timeout_s: float | None = None,
    ) -> WorkerStats:
        """Run the intakes in threads and the worker here, until a stop condition."""
        with intakes_running({"intake": self.intake, "qc-intake": self.qc_intake}):
            try:
                return self.worker.run(
                    max_cases=max_cases, timeout_s=timeout_s, idle_timeout_s=idle_timeout_s
                )
            finally:
                self.worker.stop()

    def close(self) -> None:
        self.publisher.close()
        self.queue.close()
        self.blobs.close()
