"""The QC predictor on the bus: SegmentationReady in, QcResult (and QcAlert) out.

``QcProcessor.handle_batch`` is the runner's micro-batch handler: it takes the serving model
once for the whole batch (``ModelSlot.for_batch``: hot-swaps happen between batches), reads
each record's volume and labelmap blobs, predicts every case with ``predict_cases`` (network
batches of ``max_batch``) and returns, per record, a ``QcResult`` for cmrqc.qc.v1 and — for a
fail, or an uncertain verdict when ``alert_on_uncertain`` — a ``QcAlert`` for
cmrqc.qc-alerts.v1. Both go out in the record's transaction.

Inputs that can never be scored do not crash anything: a labelmap whose grid differs from the
image's (or from the event's shape), an empty segmentation, labels outside 0..3 or a broken
volume get a FAIL verdict with the reason (and an alert). A missing or corrupted blob raises
``PermanentError`` and the runner dead-letters the record with the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import torch

from cmrqc_qc_predictor.artifact import QcModel
from cmrqc_qc_predictor.hotswap import ModelSlot
from cmrqc_qc_predictor.predictor import Case, Prediction, invalid_prediction, predict_cases
from cmrqc_qc_predictor.prepare import spacing_from_affine
from cmrqc_qc_predictor.verdicts import GRID_MISMATCH
from cmrqc_shared.blobs import BlobCorruptedError, BlobNotFoundError, BlobStore
from cmrqc_shared.bus import Output, PermanentError, RecordContext
from cmrqc_shared.events import (
    ClassIntervals,
    ClassScores,
    ModelInfo,
    ProducerInfo,
    QcAlert,
    QcResult,
    SegmentationReady,
    Verdict,
    utc_now,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Loaded:
    event: SegmentationReady
    case: Case | None
    invalid: Prediction | None
    fetch_ms: float


def _ms_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds() * 1000.0


class QcProcessor:
    """Turns SegmentationReady events into QC results (see the module docstring)."""

    def __init__(
        self,
        *,
        slot: ModelSlot,
        blobs: BlobStore,
        producer: ProducerInfo,
        device: torch.device,
        thresholds: dict[str, float],
        coverage: float = 0.9,
        max_batch: int = 8,
        alert_on_uncertain: bool = True,
        views: int = 1,
    ) -> None:
        self.slot = slot
        self.blobs = blobs
        self.producer = producer
        self.device = device
        self.thresholds = dict(thresholds)
        self.coverage = coverage
        self.max_batch = max_batch
        self.alert_on_uncertain = alert_on_uncertain
        self.views = views

    def handle(self, event: SegmentationReady, ctx: RecordContext) -> list[Output]:
        """Per-record handler (the runner's fallback when a batch fails)."""
        return self.handle_batch([(event, ctx)])[0]

    def handle_batch(
        self, items: Sequence[tuple[SegmentationReady, RecordContext]]
    ) -> list[list[Output]]:
        """One output list per input record, in order.

        Raises:
            PermanentError: a volume or labelmap blob is missing, corrupted or unreadable.
        """
        model = self.slot.for_batch()
        started_at = utc_now()
        loaded = [self._load(event) for event, _ in items]
        valid = [item for item in loaded if item.case is not None]
        predictions = iter(
            predict_cases(
                model,
                [item.case for item in valid if item.case is not None],
                device=self.device,
                thresholds=self.thresholds,
                coverage=self.coverage,
                max_batch=self.max_batch,
                views=self.views,
            )
        )
        outputs = []
        for item in loaded:
            prediction = item.invalid if item.invalid is not None else next(predictions)
            outputs.append(list(self._outputs(item, prediction, model, started_at)))
        return outputs

    # -- steps -----------------------------------------------------------------------------

    def _load(self, event: SegmentationReady) -> _Loaded:
        started = time.perf_counter()
        arrays = []
        for name, ref in (("volume", event.volume), ("labelmap", event.labelmap)):
            try:
                arrays.append(self.blobs.get_array(ref))
            except BlobNotFoundError as error:
                raise PermanentError(f"{name}-blob-missing", str(error)) from error
            except BlobCorruptedError as error:
                raise PermanentError(f"{name}-blob-corrupted", str(error)) from error
            except ValueError as error:
                raise PermanentError(f"{name}-blob-unreadable", str(error)) from error
        volume, labels = arrays
        fetch_ms = (time.perf_counter() - started) * 1000
        expected = tuple(event.shape)
        if tuple(volume.shape) != expected:
            invalid = invalid_prediction(
                GRID_MISMATCH,
                f"volume grid {tuple(volume.shape)} differs from the event's {expected}",
                self.thresholds,
                self.coverage,
            )
            return _Loaded(event, None, invalid, fetch_ms)
        row_mm, col_mm, slice_mm = spacing_from_affine(event.affine)
        case = Case(volume, labels, (row_mm, col_mm), slice_mm if slice_mm > 0 else 1.0)
        return _Loaded(event, case, None, fetch_ms)

    def _outputs(
        self, item: _Loaded, prediction: Prediction, model: QcModel, started_at: datetime
    ) -> Iterable[Output]:
        event = item.event
        finished_at = utc_now()
        timestamps = event.timestamps.model_copy(
            update={"qc_started_at": started_at, "qc_finished_at": finished_at}
        )
        latency = {
            "blob_fetch": item.fetch_ms,
            **prediction.timings_ms,
            "qc_total": _ms_between(started_at, finished_at) or 0.0,
        }
        for name, start in (
            ("first_instance_to_verdict", timestamps.first_instance_received_at),
            ("last_instance_to_verdict", timestamps.last_instance_received_at),
            ("volume_assembled_to_verdict", timestamps.volume_assembled_at),
            ("segmentation_finished_to_verdict", timestamps.segmentation_finished_at),
        ):
            value = _ms_between(start, finished_at)
            if value is not None:
                latency[name] = value
        queued = _ms_between(timestamps.segmentation_finished_at, started_at)
        if queued is not None:
            latency["segmentation_to_qc_start"] = queued
        interval = None
        if prediction.lower is not None and prediction.upper is not None:
            interval = ClassIntervals(
                coverage=prediction.coverage,
                lower=ClassScores(**prediction.lower),
                upper=ClassScores(**prediction.upper),
            )
        decision = prediction.decision
        fields: dict[str, Any] = {
            "study_instance_uid": event.study_instance_uid,
            "series_instance_uid": event.series_instance_uid,
            "causation_id": event.event_id,
            "segmentation_event_id": event.event_id,
            "cardiac_phase": event.cardiac_phase,
            "predicted_dsc": ClassScores(**prediction.dsc),
            "interval": interval,
            "verdict": decision.verdict,
            "class_verdicts": dict(decision.class_verdicts),
            "thresholds": self.thresholds,
            "model": ModelInfo(
                name=model.name, version=model.version, artifact_sha256=model.sha256
            ),
            "segmentation_model": event.model,
            "views": self.views,
            "reasons": decision.reasons,
            "timestamps": timestamps,
            "latency_ms": latency,
        }
        identity: tuple[str, ...] = (event.event_id, model.name, model.version, model.sha256 or "")
        if self.views > 1:  # another prediction of the same record by the same model
            identity = (*identity, f"views-{self.views}")
        result = QcResult.create(derived_from=identity, producer=self.producer, **fields)
        logger.info(
            "qc verdict",
            extra={
                "verdict": decision.verdict.value,
                "predicted_wh": round(prediction.dsc["WH"], 4),
                "reasons": decision.reasons,
                "model_version": model.version,
                **{f"{k}_ms": round(v, 2) for k, v in latency.items()},
            },
        )
        yield result
        if decision.verdict is Verdict.FAIL or (
            decision.verdict is Verdict.UNCERTAIN and self.alert_on_uncertain
        ):
            yield QcAlert.create(
                derived_from=(*identity, "alert"),
                producer=self.producer,
                alert_reason=self._alert_reason(prediction),
                **fields,
            )

    def _alert_reason(self, prediction: Prediction) -> str:
        decision = prediction.decision
        if decision.reasons:
            return "; ".join(decision.reasons)
        parts = []
        for name, verdict in decision.class_verdicts.items():
            if verdict is Verdict.PASS:
                continue
            low = prediction.lower[name] if prediction.lower else float("nan")
            high = prediction.upper[name] if prediction.upper else float("nan")
            parts.append(
                f"{name} {verdict.value}: predicted DSC {prediction.dsc[name]:.2f} "
                f"[{low:.2f}, {high:.2f}] vs threshold {self.thresholds[name]:.2f}"
            )
        return "; ".join(parts) or decision.verdict.value
