"""Example events with fictitious content, for documentation, benchmarks and tests."""

from __future__ import annotations

import uuid

from cmrqc_shared.blobs.ref import BlobRef, MediaType
from cmrqc_shared.events.common import CardiacPhase, IngestSource, PipelineTimestamps
from cmrqc_shared.events.envelope import ProducerInfo, utc_now
from cmrqc_shared.events.volumes import VolumeReady

EXAMPLE_PRODUCER = ProducerInfo(service="example", version="1")
_AFFINE = [[1.5, 0.0, 0.0, 0.0], [0.0, 1.5, 0.0, 0.0], [0.0, 0.0, 8.0, 0.0], [0, 0, 0, 1.0]]


def example_volume_ready(index: int, run_id: str) -> VolumeReady:
    """A VolumeReady event with a fictitious blob reference, as ingest would publish.

    Deterministic in (index, run_id); for documentation, benchmarks and tests.
    """
    digest = uuid.uuid5(uuid.NAMESPACE_OID, f"{run_id}-{index}").hex * 2
    return VolumeReady.create(
        derived_from=(run_id, str(index)),
        producer=EXAMPLE_PRODUCER,
        study_instance_uid=f"2.25.{index + 1}",
        series_instance_uid=f"2.25.{index + 1}.1",
        volume=BlobRef(
            uri=f"redis://127.0.0.1:6379/0#cmrqc:blob:{digest}",
            sha256=digest,
            size=10 * 224 * 224 * 4,
            media_type=MediaType.NUMPY,
        ),
        shape=(10, 224, 224),
        affine=_AFFINE,
        pixel_spacing_mm=(1.5, 1.5),
        slice_spacing_mm=8.0,
        cardiac_phase=CardiacPhase.ED,
        instance_count=10,
        source=IngestSource.C_STORE,
        timestamps=PipelineTimestamps(volume_assembled_at=utc_now()),
    )
