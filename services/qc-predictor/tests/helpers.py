"""Shared pieces of the QC predictor's Kafka tests: settings, events with blobs, waiting."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

import numpy as np

from cmrqc_qc_predictor.settings import QcPredictorSettings
from cmrqc_shared.blobs import BlobStore
from cmrqc_shared.events import (
    CardiacPhase,
    ModelInfo,
    PipelineTimestamps,
    ProducerInfo,
    SegmentationReady,
    utc_now,
)
from cmrqc_shared.settings import BlobSettings, KafkaSettings, RunnerSettings

SEGMENTER = ProducerInfo(service="segmenter-test", version="0")


def service_settings(kafka: KafkaSettings, redis_url: str, **fields: object) -> QcPredictorSettings:
    """Settings for a test instance: the test's topic namespace, Redis blobs, any free port."""
    return QcPredictorSettings(
        kafka=kafka,
        blobs=BlobSettings(url=redis_url),
        runner=RunnerSettings(
            group_id="qc-predictor-test",
            instance_id="qc-test-0",
            health_port=0,
            retry_backoff_initial_ms=1,
            retry_backoff_max_ms=5,
        ),
        **fields,  # type: ignore[arg-type]
    )


def segmentation_event(
    store: BlobStore,
    image: np.ndarray,
    labels: np.ndarray,
    index: int,
    *,
    spacing: tuple[float, float, float] = (1.5, 1.5, 8.0),
    tag: str = "t",
) -> SegmentationReady:
    """A SegmentationReady whose volume and labelmap blobs are in ``store``."""
    row_mm, col_mm, slice_mm = spacing
    affine = [
        [col_mm, 0.0, 0.0, 0.0],
        [0.0, row_mm, 0.0, 0.0],
        [0.0, 0.0, slice_mm, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
    now = utc_now()
    return SegmentationReady.create(
        derived_from=(tag, str(index)),
        producer=SEGMENTER,
        study_instance_uid=f"2.25.9{index}",
        series_instance_uid=f"2.25.9{index}.1",
        volume_event_id=f"volume-{tag}-{index}",
        volume=store.put_array(image),
        labelmap=store.put_array(labels),
        shape=image.shape,
        affine=affine,
        cardiac_phase=CardiacPhase.ED,
        model=ModelInfo(name="segmenter-test", version="0"),
        inference_ms=12.0,
        timestamps=PipelineTimestamps(
            first_instance_received_at=now - timedelta(seconds=2),
            last_instance_received_at=now - timedelta(seconds=1),
            volume_assembled_at=now - timedelta(milliseconds=800),
            segmentation_started_at=now - timedelta(milliseconds=300),
            segmentation_finished_at=now,
        ),
    )


def wait_for(condition: Callable[[], bool], timeout_s: float = 60.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False
