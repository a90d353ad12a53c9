"""cmrqc.rca.v1: a Reverse Classification Accuracy quality estimate."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from cmrqc_shared.blobs.ref import BlobRef
from cmrqc_shared.events.common import Affine4x4, CardiacPhase, ClassScores
from cmrqc_shared.events.envelope import Event


class ReferenceScore(BaseModel):
    """The DSC of the propagated segmentation against one reference's verified labelmap."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    reference_id: str
    dsc: ClassScores


class RcaLabel(Event):
    """RCA estimate of a segmentation's per-class DSC (max over references, as in RCA)."""

    SCHEMA_NAME: ClassVar[str] = "cmrqc.RcaLabel"
    SCHEMA_VERSION: ClassVar[int] = 1
    TOPIC: ClassVar[str] = "cmrqc.rca.v1"

    segmentation_event_id: str
    volume: BlobRef
    labelmap: BlobRef
    cardiac_phase: CardiacPhase
    affine: Affine4x4 | None = Field(
        default=None, description="The volume's voxel-to-patient affine (for the retrainer)."
    )
    estimated_dsc: ClassScores = Field(description="Maximum over references.")
    top_k_mean_dsc: ClassScores | None = Field(default=None, description="Mean of the top k.")
    calibrated_dsc: ClassScores | None = Field(
        default=None,
        description=(
            "estimated_dsc corrected by a calibration fitted on a validation split for this "
            "reference set: per class a score from the class estimates, then a monotone map "
            "to Dice (absent when the reference set has none)."
        ),
    )
    top_references: list[ReferenceScore] = Field(default_factory=list)
    reference_set: str = Field(description="Identifier (hash) of the reference set used.")
    references_used: int = Field(ge=1)
    seconds: float = Field(ge=0, description="Wall-clock time the estimate took, s.")
