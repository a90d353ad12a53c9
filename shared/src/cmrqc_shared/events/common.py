"""Vocabulary shared by several event types: classes, phases, verdicts, per-class scores."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

UnitInterval = Annotated[float, Field(ge=0.0, le=1.0)]
Affine4x4 = Annotated[
    list[Annotated[list[float], Field(min_length=4, max_length=4)]],
    Field(min_length=4, max_length=4),
]


class SegmentationClass(StrEnum):
    """Label convention of every labelmap: 0 BG, 1 LV cavity, 2 LV myocardium, 3 RV cavity."""

    BG = "BG"
    LV = "LV"
    LVM = "LVM"
    RVC = "RVC"
    WH = "WH"
    """Whole heart: all foreground classes as one binary mask (not a label value)."""


LABEL_VALUES: dict[SegmentationClass, int] = {
    SegmentationClass.BG: 0,
    SegmentationClass.LV: 1,
    SegmentationClass.LVM: 2,
    SegmentationClass.RVC: 3,
}


class CardiacPhase(StrEnum):
    """Which cardiac phase a volume shows."""

    ED = "ED"
    """End-diastole."""
    ES = "ES"
    """End-systole."""
    OTHER = "OTHER"


class Verdict(StrEnum):
    """QC verdict. UNCERTAIN: the prediction interval straddles the threshold."""

    PASS = "pass"
    FAIL = "fail"
    UNCERTAIN = "uncertain"


class IngestSource(StrEnum):
    """How a study entered the system."""

    C_STORE = "c-store"
    STOW_RS = "stow-rs"
    BACKFILL = "backfill"
    NIFTI_IMPORT = "nifti-import"


class ClassScores(BaseModel):
    """One score in [0, 1] per class (Dice similarity coefficient unless stated)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    BG: UnitInterval
    LV: UnitInterval
    LVM: UnitInterval
    RVC: UnitInterval
    WH: UnitInterval

    def get(self, cls: SegmentationClass | str) -> float:
        """The score of one class."""
        return float(getattr(self, SegmentationClass(cls).value))


class ClassIntervals(BaseModel):
    """A prediction interval [lower, upper] per class, at a stated coverage level."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    coverage: UnitInterval = Field(description="Nominal coverage, e.g. 0.9.")
    lower: ClassScores
    upper: ClassScores


class ModelInfo(BaseModel):
    """Which model produced a result."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    version: str
    artifact_sha256: str | None = Field(default=None, description="Weights blob hash, if any.")


class PipelineTimestamps(BaseModel):
    """Wall-clock timestamps (UTC) along the pipeline, for the latency breakdown.

    Each stage copies what it received and fills its own; all but the first are optional.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    first_instance_received_at: datetime | None = None
    last_instance_received_at: datetime | None = None
    volume_assembled_at: datetime | None = None
    segmentation_started_at: datetime | None = None
    segmentation_finished_at: datetime | None = None
    qc_started_at: datetime | None = None
    qc_finished_at: datetime | None = None
