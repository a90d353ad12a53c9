"""From assembled volumes to events: blobs first, then VolumeReady / DeadLetter.

The event id of a VolumeReady is derived from the SeriesInstanceUID, the phase and a hash of
the sorted frame keys (SOPInstanceUID, ``#frame`` for multi-frame instances) that made the
volume, so assembling the same instances again — after a crash, a retry or a re-send —
yields the same id (and, the blob store being content-addressed, the same blob reference).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from cmrqc_ingest import __version__
from cmrqc_shared.blobs import BlobRef, BlobStore
from cmrqc_shared.events import (
    CardiacPhase,
    DeadLetter,
    Event,
    IngestSource,
    PipelineTimestamps,
    ProducerInfo,
    VolumeReady,
)

SERVICE_NAME = "ingest"


class Publisher(Protocol):
    """Publishes an event and returns once the broker acknowledged it.

    ``cmrqc_shared.bus.publisher.EventPublisher`` is one; raises on failure.
    """

    def publish(self, event: Event) -> None: ...


def default_producer(instance: str | None = None) -> ProducerInfo:
    """ProducerInfo of this service."""
    return ProducerInfo(service=SERVICE_NAME, version=__version__, instance=instance)


def volume_event_inputs(series_uid: str, phase: str, frame_keys: Sequence[str]) -> tuple[str, ...]:
    """What a VolumeReady's id is derived from (see the module docstring)."""
    digest = hashlib.sha256("\n".join(sorted(frame_keys)).encode("utf-8")).hexdigest()
    return (series_uid, phase, digest)


def make_volume_ready(
    *,
    producer: ProducerInfo,
    study_uid: str,
    series_uid: str,
    cardiac_phase: CardiacPhase,
    frame_keys: Sequence[str],
    volume: BlobRef,
    shape: tuple[int, int, int],
    affine: NDArray[np.float64],
    pixel_spacing_mm: tuple[float, float],
    slice_spacing_mm: float,
    slice_thickness_mm: float | None,
    trigger_time_ms: float | None,
    instance_count: int,
    source: IngestSource,
    timestamps: PipelineTimestamps,
    ground_truth: BlobRef | None = None,
    phase_index: int | None = None,
) -> VolumeReady:
    """Build the VolumeReady of one phase (the blobs must already be stored)."""
    phase_name = cardiac_phase.value
    if cardiac_phase == CardiacPhase.OTHER and phase_index is not None:
        phase_name = f"{phase_name}-{phase_index}"
    return VolumeReady.create(
        derived_from=volume_event_inputs(series_uid, phase_name, frame_keys),
        producer=producer,
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        volume=volume,
        shape=shape,
        affine=[[float(v) for v in row] for row in affine],
        pixel_spacing_mm=(float(pixel_spacing_mm[0]), float(pixel_spacing_mm[1])),
        slice_spacing_mm=float(slice_spacing_mm),
        slice_thickness_mm=slice_thickness_mm if slice_thickness_mm else None,
        cardiac_phase=cardiac_phase,
        trigger_time_ms=(
            trigger_time_ms if trigger_time_ms is not None and trigger_time_ms >= 0 else None
        ),
        instance_count=instance_count,
        source=source,
        timestamps=timestamps,
        ground_truth=ground_truth,
    )


def make_dead_letter(
    *,
    producer: ProducerInfo,
    study_uid: str | None,
    series_uid: str,
    reason: str,
    error_type: str,
    message: str,
    digest: str,
    details: dict[str, str],
    first_failed_at: datetime | None = None,
) -> DeadLetter:
    """A DeadLetter for a series-level failure (the id is stable per instance set)."""
    return DeadLetter.create(
        derived_from=(series_uid, reason, digest),
        producer=producer,
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        failed_service=SERVICE_NAME,
        reason=reason,
        error_type=error_type,
        error_message=message,
        attempts=1,
        original_key=series_uid,
        first_failed_at=first_failed_at,
        details=details,
    )


def store_volume(blobs: BlobStore, volume: NDArray) -> BlobRef:
    """Put a volume into the blob store as .npy (idempotent, content-addressed)."""
    return blobs.put_array(np.ascontiguousarray(volume))


def scrub(text: str, identifiers: set[str]) -> str:
    """Remove patient identifiers (and their name components) from a message."""
    for value in sorted(identifiers, key=len, reverse=True):
        parts = {value, *value.replace("^", " ").split()}
        for part in sorted(parts, key=len, reverse=True):
            if len(part) >= 3:
                text = text.replace(part, "[redacted]")
    return text
