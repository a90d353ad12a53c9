"""cmrqc.segmentations.v1: a volume has been segmented."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from cmrqc_shared.blobs.ref import BlobRef
from cmrqc_shared.events.common import Affine4x4, CardiacPhase, ModelInfo, PipelineTimestamps
from cmrqc_shared.events.envelope import Event


class SegmentationReady(Event):
    """A labelmap (uint8, 0 BG / 1 LV / 2 LVM / 3 RVC) on the volume's own grid."""

    SCHEMA_NAME: ClassVar[str] = "cmrqc.SegmentationReady"
    SCHEMA_VERSION: ClassVar[int] = 1
    TOPIC: ClassVar[str] = "cmrqc.segmentations.v1"

    volume_event_id: str
    volume: BlobRef
    labelmap: BlobRef
    shape: tuple[int, int, int] = Field(description="(slices, rows, columns).")
    affine: Affine4x4
    cardiac_phase: CardiacPhase
    model: ModelInfo
    inference_ms: float = Field(ge=0)
    timestamps: PipelineTimestamps
    ground_truth: BlobRef | None = None
