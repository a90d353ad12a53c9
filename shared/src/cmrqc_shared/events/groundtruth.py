"""cmrqc.groundtruth.v1: a manual labelmap submitted by an annotator."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from cmrqc_shared.blobs.ref import BlobRef
from cmrqc_shared.events.common import Affine4x4, ClassScores
from cmrqc_shared.events.envelope import Event


class GroundTruthSubmitted(Event):
    """A verified labelmap for a segmentation; its true DSC outranks any RCA estimate."""

    SCHEMA_NAME: ClassVar[str] = "cmrqc.GroundTruthSubmitted"
    SCHEMA_VERSION: ClassVar[int] = 1
    TOPIC: ClassVar[str] = "cmrqc.groundtruth.v1"

    segmentation_event_id: str
    volume: BlobRef
    labelmap: BlobRef = Field(description="The segmentation being judged.")
    reference_labelmap: BlobRef = Field(description="The annotator's verified labelmap.")
    affine: Affine4x4 | None = Field(
        default=None, description="The volume's voxel-to-patient affine (for the retrainer)."
    )
    annotator: str = Field(description="Pseudonymous annotator id (never a person's name).")
    true_dsc: ClassScores | None = Field(
        default=None, description="DSC of labelmap against reference_labelmap, if computed."
    )
