"""cmrqc.volumes.v1: an assembled short-axis volume is ready."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from cmrqc_shared.blobs.ref import BlobRef
from cmrqc_shared.events.common import Affine4x4, CardiacPhase, IngestSource, PipelineTimestamps
from cmrqc_shared.events.envelope import Event


class VolumeReady(Event):
    """One cardiac phase of one short-axis series, assembled into a 3D volume.

    The volume blob is a numpy array shaped (slices, rows, columns); ``affine`` maps the voxel
    index (column i, row j, slice k, 1) to patient coordinates in mm (DICOM LPS).
    """

    SCHEMA_NAME: ClassVar[str] = "cmrqc.VolumeReady"
    SCHEMA_VERSION: ClassVar[int] = 1
    TOPIC: ClassVar[str] = "cmrqc.volumes.v1"

    volume: BlobRef
    shape: tuple[int, int, int] = Field(description="(slices, rows, columns).")
    affine: Affine4x4 = Field(description="Voxel (i=column, j=row, k=slice) to patient LPS, mm.")
    pixel_spacing_mm: tuple[float, float] = Field(description="(row spacing, column spacing), mm.")
    slice_spacing_mm: float = Field(gt=0, description="Distance between slice centres, mm.")
    slice_thickness_mm: float | None = Field(default=None, gt=0)
    cardiac_phase: CardiacPhase
    trigger_time_ms: float | None = Field(default=None, ge=0)
    instance_count: int = Field(ge=1, description="DICOM instances that made up this volume.")
    source: IngestSource
    timestamps: PipelineTimestamps
    ground_truth: BlobRef | None = Field(
        default=None,
        description="Reference labelmap (synthetic or imported data only), for evaluation.",
    )
