"""cmrqc.qc.v1 and cmrqc.qc-alerts.v1: predicted segmentation quality and alerts."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from cmrqc_shared.events.common import (
    CardiacPhase,
    ClassIntervals,
    ClassScores,
    ModelInfo,
    PipelineTimestamps,
    Verdict,
)
from cmrqc_shared.events.envelope import Event


class QcResult(Event):
    """Predicted Dice per class for one segmentation, without ground truth."""

    SCHEMA_NAME: ClassVar[str] = "cmrqc.QcResult"
    SCHEMA_VERSION: ClassVar[int] = 1
    TOPIC: ClassVar[str] = "cmrqc.qc.v1"

    segmentation_event_id: str
    cardiac_phase: CardiacPhase
    predicted_dsc: ClassScores
    interval: ClassIntervals | None = None
    verdict: Verdict
    class_verdicts: dict[str, Verdict] = Field(default_factory=dict)
    thresholds: dict[str, float] = Field(description="Pass threshold per class (DSC).")
    model: ModelInfo
    segmentation_model: ModelInfo | None = None
    views: int = Field(
        default=1,
        ge=1,
        description="In-plane views of the input the prediction is averaged over (1: one pass).",
    )
    reasons: list[str] = Field(default_factory=list, description="Why a verdict was forced.")
    timestamps: PipelineTimestamps
    latency_ms: dict[str, float] = Field(
        default_factory=dict, description="Latency breakdown, e.g. last_instance_to_verdict."
    )


class QcAlert(QcResult):
    """A QC result that needs an operator: a fail or an uncertain verdict."""

    SCHEMA_NAME: ClassVar[str] = "cmrqc.QcAlert"
    SCHEMA_VERSION: ClassVar[int] = 1
    TOPIC: ClassVar[str] = "cmrqc.qc-alerts.v1"

    alert_reason: str
