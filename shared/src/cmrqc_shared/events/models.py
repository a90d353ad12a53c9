"""cmrqc.models.v1 (compacted): the current model per name, announced for hot-swap."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from pydantic import Field

from cmrqc_shared.blobs.ref import BlobRef
from cmrqc_shared.events.envelope import Event


class ModelPublished(Event):
    """A model version was promoted; every consumer of ``model_name`` should hot-swap to it.

    Keyed by model name on a compacted topic, so the latest record per name is the current
    model and a restarted service finds it by reading the topic from the beginning.
    """

    SCHEMA_NAME: ClassVar[str] = "cmrqc.ModelPublished"
    SCHEMA_VERSION: ClassVar[int] = 1
    TOPIC: ClassVar[str] = "cmrqc.models.v1"

    model_name: str = Field(min_length=1, description="e.g. qc-predictor.")
    version: str = Field(min_length=1)
    artifact: BlobRef
    architecture: str = Field(description="Model family the artifact needs, e.g. qc-fast-v1.")
    metrics: dict[str, float] = Field(default_factory=dict)
    provenance: dict[str, str] = Field(
        default_factory=dict, description="Training data, labels, parent version, seed."
    )
    promoted_at: datetime

    @property
    def key(self) -> str:
        """Keyed by model name: compaction keeps the latest version per model."""
        return self.model_name
