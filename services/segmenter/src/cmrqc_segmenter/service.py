"""The bus side of the segmenter: VolumeReady in, SegmentationReady out.

:class:`SegmentationHandler` turns one event (or a micro-batch of events) into outputs; it
reads and writes blobs and maps every input that can never succeed to a ``PermanentError``
with a short reason, so the runner dead-letters it at once and the service keeps going.
The runner (``cmrqc_shared.bus.StreamRunner``) owns consuming, retrying, committing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from numpy.typing import NDArray

from cmrqc_segmenter.inference import Segmentation, Segmenter
from cmrqc_segmenter.preprocess import VolumeRejected, validate_volume
from cmrqc_shared.blobs import BlobCorruptedError, BlobNotFoundError, BlobStore
from cmrqc_shared.bus import Output, PermanentError, RecordContext
from cmrqc_shared.events import ModelInfo, ProducerInfo, SegmentationReady, VolumeReady, utc_now

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Loaded:
    event: VolumeReady
    volume: NDArray[np.float32]
    spacing: tuple[float, float]
    started_at: datetime


class SegmentationHandler:
    """Segments the volume of each VolumeReady and publishes a SegmentationReady.

    Args:
        segmenter: the model and its pre/post-processing.
        blobs: where volumes are read and labelmaps written.
        producer: this service's name and version, stamped on every output.
        micro_batch_volumes: most volumes in one batched call of the segmenter.
    """

    def __init__(
        self,
        segmenter: Segmenter,
        blobs: BlobStore,
        producer: ProducerInfo,
        *,
        micro_batch_volumes: int = 8,
    ) -> None:
        if micro_batch_volumes < 1:
            raise ValueError("micro_batch_volumes must be >= 1")
        self.micro_batch_volumes = micro_batch_volumes
        self.segmenter = segmenter
        self.blobs = blobs
        self.producer = producer
        identity = segmenter.identity
        self.model_info = ModelInfo(
            name=identity.name,
            version=identity.version,
            artifact_sha256=identity.artifact_sha256,
        )

    def handle(self, event: VolumeReady, _ctx: RecordContext) -> list[Output]:
        """Segment one volume.

        Raises:
            PermanentError: missing/corrupted/unreadable volume blob, a shape that disagrees
                with the event, or a volume that can never be segmented (reason as in
                ``VolumeRejected``).
        """
        loaded = self._load(event)
        (result,) = self.segmenter.segment_many([(loaded.volume, loaded.spacing)])
        return [self._publishable(loaded, result, 1)]

    def handle_batch(
        self, items: Sequence[tuple[VolumeReady, RecordContext]]
    ) -> list[list[Output]]:
        """Segment a micro-batch with batched forward passes (one output list per input).

        Any failure raises, and the runner then handles the records one by one, so a bad
        volume is dead-lettered alone.
        """
        outputs: list[list[Output]] = []
        for start in range(0, len(items), self.micro_batch_volumes):
            chunk = items[start : start + self.micro_batch_volumes]
            loaded = [self._load(event) for event, _ in chunk]
            results = self.segmenter.segment_many([(i.volume, i.spacing) for i in loaded])
            outputs.extend(
                [self._publishable(item, result, len(loaded))]
                for item, result in zip(loaded, results, strict=True)
            )
        return outputs

    # -- steps -----------------------------------------------------------------------------

    def _load(self, event: VolumeReady) -> _Loaded:
        started_at = utc_now()
        try:
            array = self.blobs.get_array(event.volume)
        except BlobNotFoundError as error:
            raise PermanentError("volume-blob-missing", str(error)) from error
        except BlobCorruptedError as error:
            raise PermanentError("volume-blob-corrupted", str(error)) from error
        except ValueError as error:
            raise PermanentError("volume-blob-unreadable", str(error)) from error
        if array.ndim == 3 and tuple(array.shape) != tuple(event.shape):
            raise PermanentError(
                "shape-mismatch",
                f"volume blob has shape {array.shape}, the event says {tuple(event.shape)}",
            )
        spacing = (float(event.pixel_spacing_mm[0]), float(event.pixel_spacing_mm[1]))
        try:
            volume = validate_volume(array, spacing)
        except VolumeRejected as error:
            raise PermanentError(error.reason, str(error)) from error
        return _Loaded(event, volume, spacing, started_at)

    def _publishable(self, item: _Loaded, result: Segmentation, batch: int) -> SegmentationReady:
        event = item.event
        labelmap = self.blobs.put_array(result.labels)
        finished_at = utc_now()
        processing_ms = float(sum(result.timings_ms.values()))
        logger.info(
            "segmented",
            extra={
                "shape": list(result.labels.shape),
                "batch": batch,
                "recentred": result.recentred,
                **{f"{stage}_ms": round(ms, 2) for stage, ms in result.timings_ms.items()},
            },
        )
        return SegmentationReady.create(
            derived_from=(
                event.event_id,
                self.model_info.name,
                self.model_info.version,
                self.model_info.artifact_sha256 or "",
            ),
            producer=self.producer,
            study_instance_uid=event.study_instance_uid,
            series_instance_uid=event.series_instance_uid,
            causation_id=event.event_id,
            volume_event_id=event.event_id,
            volume=event.volume,
            labelmap=labelmap,
            shape=result.labels.shape,
            affine=event.affine,
            cardiac_phase=event.cardiac_phase,
            model=self.model_info,
            inference_ms=processing_ms,
            timestamps=event.timestamps.model_copy(
                update={
                    "segmentation_started_at": item.started_at,
                    "segmentation_finished_at": finished_at,
                }
            ),
            ground_truth=event.ground_truth,
        )
