"""The retrainer process: two intakes (RCA labels, ground truth) and the trainer loop.

The intakes are ``StreamRunner``s whose handlers write the label into the label store and
return no output; the runner commits the input offset only after the handler returned, so a
label is in Redis before Kafka forgets it, and a redelivered one is a no-op (``LabelStore``).
They run in their own threads and never wait for training: a training round of minutes
cannot stall offset commits or trigger a consumer-group rebalance.

Bad input is dead-lettered with the reason, never dropped: an RCA label without the volume's
affine (``missing-geometry``), ground truth whose labelmaps cannot be read or disagree in
shape (``groundtruth-unreadable``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import redis

from cmrqc_qc_predictor.artifact import BUILTIN_FAST, QcModel, load_artifact_file
from cmrqc_qc_predictor.data import FastArrays
from cmrqc_retrainer import __version__
from cmrqc_retrainer.labels import LabelledCase, LabelSource, LabelStore
from cmrqc_retrainer.settings import RetrainerSettings
from cmrqc_retrainer.worker import Decision, Retrainer
from cmrqc_shared.blobs import BlobError, BlobStore, open_blob_store
from cmrqc_shared.bus import PermanentError, RecordContext, StreamRunner
from cmrqc_shared.bus.intakes import intake_settings, intakes_running
from cmrqc_shared.bus.publisher import EventPublisher
from cmrqc_shared.events import ClassScores, GroundTruthSubmitted, ProducerInfo, RcaLabel
from cmrqc_shared.metrics import dice_per_class
from cmrqc_shared.registry import ModelRegistry
from cmrqc_shared.topics import ensure_namespaced_topics

logger = logging.getLogger(__name__)

SERVICE_NAME = "retrainer"


def _labelled_case(
    event: RcaLabel | GroundTruthSubmitted,
    scores: ClassScores,
    source: LabelSource,
    provenance: dict[str, str],
) -> LabelledCase:
    """The label store's record of a label event (both topics carry the same references).

    Raises:
        PermanentError: ``missing-geometry`` when the event has no affine.
    """
    if event.affine is None:
        raise PermanentError(
            "missing-geometry",
            f"{type(event).__name__} carries no affine: the retrainer cannot prepare it",
        )
    return LabelledCase(
        segmentation_event_id=event.segmentation_event_id,
        series_instance_uid=event.series_instance_uid or event.segmentation_event_id,
        volume=event.volume,
        labelmap=event.labelmap,
        affine=[list(row) for row in event.affine],
        dsc=scores.model_dump(),
        source=source,
        label_event_id=event.event_id,
        provenance=provenance,
    )


def rca_handler(store: LabelStore, prefer_calibrated: bool):  # type: ignore[no-untyped-def]
    """Intake handler for ``cmrqc.rca.v1``."""

    def handle(event: RcaLabel, _ctx: RecordContext) -> Sequence[object]:
        scores = (
            event.calibrated_dsc
            if prefer_calibrated and event.calibrated_dsc is not None
            else event.estimated_dsc
        )
        provenance = {
            "reference_set": event.reference_set,
            "estimate": "calibrated" if scores is event.calibrated_dsc else "max",
        }
        outcome = store.record(_labelled_case(event, scores, "rca", provenance))
        logger.debug("rca label", extra={"outcome": outcome, "event_id": event.event_id})
        return []

    return handle


def groundtruth_handler(store: LabelStore, blobs: BlobStore):  # type: ignore[no-untyped-def]
    """Intake handler for ``cmrqc.groundtruth.v1``: the true Dice, computed if not given."""

    def handle(event: GroundTruthSubmitted, _ctx: RecordContext) -> Sequence[object]:
        if event.affine is None:  # refused before any blob is read
            raise PermanentError("missing-geometry", "GroundTruthSubmitted carries no affine")
        scores = event.true_dsc
        if scores is None:
            try:
                predicted = blobs.get_array(event.labelmap)
                verified = blobs.get_array(event.reference_labelmap)
            except BlobError as error:
                raise PermanentError("groundtruth-unreadable", str(error)) from error
            if predicted.shape != verified.shape:
                raise PermanentError(
                    "groundtruth-unreadable",
                    f"labelmap {predicted.shape} and verified labelmap {verified.shape} differ",
                )
            scores = dice_per_class(np.asarray(predicted), np.asarray(verified))
        store.record(_labelled_case(event, scores, "groundtruth", {"annotator": event.annotator}))
        return []

    return handle


def load_initial_model(source: str) -> QcModel:
    """The champion before any promotion: ``builtin`` or an artifact path."""
    return load_artifact_file(BUILTIN_FAST if source == "builtin" else Path(source))


def load_guard_set(settings: RetrainerSettings) -> FastArrays | None:
    """The guard set's inputs and true Dice (``settings.guard_set``), or None when unset.

    Raises:
        FileNotFoundError / ValueError: the folder is not a QC dataset or the split is empty
            (a misconfigured guard stops the service at start, not silently at promotion).
    """
    if not settings.guard_set:
        return None
    from cmrqc_qc_predictor.data import QcDatasets, balanced_split, fast_arrays

    dataset = QcDatasets([Path(settings.guard_set)])
    samples = balanced_split(dataset, settings.guard_split, seed=0)
    logger.info("guard set: %d ground-truth cases", len(samples))
    return fast_arrays(dataset, samples, progress=False)


class RetrainerService:
    """Label store, registry, intakes and the trainer, wired from settings."""

    def __init__(
        self,
        settings: RetrainerSettings,
        *,
        initial: QcModel | None = None,
        serve_observability: bool = True,
    ) -> None:
        import torch

        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self.settings = settings
        producer = ProducerInfo(
            service=SERVICE_NAME, version=__version__, instance=settings.runner.instance_id
        )
        self.blobs = open_blob_store(
            settings.blobs.resolved_url(), ttl_seconds=settings.blobs.ttl_seconds
        )
        client = redis.Redis.from_url(settings.resolved_store_url())
        namespace = settings.kafka.topic_namespace
        self.store = LabelStore(
            client, f"{settings.store_prefix}:{namespace}", settings.holdout_fraction
        )
        ensure_namespaced_topics(settings.kafka, client_id=f"{SERVICE_NAME}-admin")
        self.publisher = EventPublisher(settings.kafka, client_id=f"{SERVICE_NAME}-registry")
        self.registry = ModelRegistry(
            client, self.blobs, self.publisher, actor=producer, key_prefix=settings.registry_prefix
        )
        group = settings.runner.group_id or settings.kafka.consumer_group(SERVICE_NAME)
        self.rca_intake = StreamRunner(
            service=producer,
            input_type=RcaLabel,
            handler=rca_handler(self.store, settings.prefer_calibrated_rca),
            kafka=settings.kafka,
            settings=intake_settings(settings.runner, group),
            serve_observability=serve_observability,
        )
        self.groundtruth_intake = StreamRunner(
            service=producer,
            input_type=GroundTruthSubmitted,
            handler=groundtruth_handler(self.store, self.blobs),
            kafka=settings.kafka,
            settings=intake_settings(settings.runner, group, "groundtruth"),
            serve_observability=False,
        )
        self.trainer = Retrainer(
            settings,
            self.store,
            self.registry,
            self.blobs,
            initial or load_initial_model(settings.initial_model),
            guard=load_guard_set(settings),
        )
        self._stop = threading.Event()

    def stop(self) -> None:
        """Drain: the intakes commit what they stored; a running round finishes first."""
        self._stop.set()
        self.rca_intake.stop()
        self.groundtruth_intake.stop()

    def run(
        self, *, max_rounds: int | None = None, timeout_s: float | None = None
    ) -> list[Decision]:
        """Intakes in threads, rounds here, until stopped, ``max_rounds`` or ``timeout_s``."""
        decisions: list[Decision] = []
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        intakes: dict[str, StreamRunner[Any]] = {
            "rca-intake": self.rca_intake,
            "groundtruth-intake": self.groundtruth_intake,
        }
        with intakes_running(intakes):
            try:
                while not self._stop.is_set():
                    if max_rounds is not None and len(decisions) >= max_rounds:
                        break
                    if deadline is not None and time.monotonic() > deadline:
                        break
                    try:
                        decision = self.trainer.run_once()
                    except Exception:  # a failed round must not stop the intakes
                        logger.exception("training round failed; the serving model is unchanged")
                        decision = None
                    if decision is not None:
                        decisions.append(decision)
                        continue
                    self._stop.wait(self.settings.check_interval_s)
            finally:
                self._stop.set()
        return decisions

    def close(self) -> None:
        self.publisher.close()
        self.store.close()
        self.blobs.close()
