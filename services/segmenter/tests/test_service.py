"""The service through the real broker and Redis: segmentations out, bad volumes dead-lettered."""

from __future__ import annotations

import logging
import uuid

import numpy as np
import pytest

from cmrqc_segmenter import __version__
from cmrqc_segmenter.main import build_runner, main
from cmrqc_segmenter.metrics import dice_per_class
from cmrqc_segmenter.settings import SegmenterSettings
from cmrqc_shared.blobs import BlobRef, BlobStore, MediaType, open_blob_store
from cmrqc_shared.bus.publisher import EventPublisher, read_events
from cmrqc_shared.datasets.splits import SEGMENTER_TEST
from cmrqc_shared.events import (
    CardiacPhase,
    DeadLetter,
    IngestSource,
    PipelineTimestamps,
    ProducerInfo,
    SegmentationReady,
    VolumeReady,
    utc_now,
)
from cmrqc_shared.settings import BlobSettings, KafkaSettings, RunnerSettings
from cmrqc_shared.synth import render_study
from cmrqc_shared.topics import ensure_namespaced_topics

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

SOURCE = ProducerInfo(service="segmenter-test", version="0")


def _settings(kafka: KafkaSettings, redis_url: str) -> SegmenterSettings:
    return SegmenterSettings(
        kafka=kafka,
        blobs=BlobSettings(url=redis_url),
        runner=RunnerSettings(
            # A group of its own: the group coordinator is shared by every test namespace.
            group_id=f"segmenter-{kafka.topic_namespace}",
            instance_id="test",
            health_port=0,
            retry_backoff_initial_ms=1,
            retry_backoff_max_ms=5,
        ),
        device="cpu",
    )


def _volume_event(
    index: int,
    volume: BlobRef,
    shape: tuple[int, ...],
    *,
    spacing: tuple[float, float] = (1.5, 1.5),
    affine: list[list[float]] | None = None,
    ground_truth: BlobRef | None = None,
    phase: CardiacPhase = CardiacPhase.ED,
) -> VolumeReady:
    affine = affine or [
        [spacing[1], 0, 0, 0],
        [0, spacing[0], 0, 0],
        [0, 0, 8.0, 0],
        [0, 0, 0, 1],
    ]
    return VolumeReady.create(
        derived_from=("segmenter-test", uuid.uuid4().hex, str(index)),
        producer=SOURCE,
        study_instance_uid=f"2.25.9{index}",
        series_instance_uid=f"2.25.9{index}.1",
        volume=volume,
        shape=shape,
        affine=affine,
        pixel_spacing_mm=spacing,
        slice_spacing_mm=8.0,
        cardiac_phase=phase,
        instance_count=max(1, shape[0]),
        source=IngestSource.BACKFILL,
        timestamps=PipelineTimestamps(
            last_instance_received_at=utc_now(), volume_assembled_at=utc_now()
        ),
        ground_truth=ground_truth,
    )


def _synthetic_events(
    blobs: BlobStore, index: int, seed: int, phases: tuple[str, ...] = ("ES",)
) -> list[tuple[VolumeReady, np.ndarray]]:
    """VolumeReady events (volume and ground truth in the blob store) of one subject."""
    study = render_study(seed)
    pairs = []
    for offset, name in enumerate(phases):
        phase = study.phase(name)  # type: ignore[arg-type]
        event = _volume_event(
            index + offset,
            blobs.put_array(phase.image),
            phase.image.shape,
            spacing=phase.pixel_spacing_mm,
            affine=phase.affine.tolist(),
            ground_truth=blobs.put_array(phase.labels),
            phase=CardiacPhase(name),
        )
        pairs.append((event, phase.labels))
    return pairs


def _publish(kafka: KafkaSettings, events: list[VolumeReady]) -> None:
    with EventPublisher(kafka) as publisher:
        for event in events:
            publisher.publish(event)


def test_a_published_volume_comes_back_segmented_with_its_provenance(
    kafka: KafkaSettings, redis_url: str, env_clean: pytest.MonkeyPatch
) -> None:
    blobs = open_blob_store(redis_url)
    ((event, truth),) = _synthetic_events(blobs, 0, SEGMENTER_TEST.start + 20)
    ensure_namespaced_topics(kafka)
    _publish(kafka, [event])
    for name, value in {
        "KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "KAFKA__TOPIC_NAMESPACE": kafka.topic_namespace,
        "BLOBS__URL": redis_url,
        "RUNNER__GROUP_ID": f"segmenter-{kafka.topic_namespace}",
        "RUNNER__HEALTH_PORT": "0",
        "DEVICE": "cpu",
        "LOG_FORMAT": "text",
    }.items():
        env_clean.setenv(f"CMRQC_SEGMENTER_{name}", value)
    root_handlers = logging.getLogger().handlers[:]
    try:
        assert main(["--max-records", "1", "--timeout-s", "120"]) == 0
    finally:
        logging.getLogger().handlers[:] = root_handlers
    (out,) = read_events(kafka, SegmentationReady, expected=1)
    labels = blobs.get_array(out.labelmap)
    assert labels.dtype == np.uint8 and labels.shape == truth.shape == tuple(out.shape)
    assert dice_per_class(labels, truth)["WH"] > 0.85
    assert out.volume == event.volume and out.ground_truth == event.ground_truth
    assert out.volume_event_id == out.causation_id == event.event_id
    assert out.series_instance_uid == event.series_instance_uid
    assert out.cardiac_phase == CardiacPhase.ES and out.affine == event.affine
    assert out.model.name == "cmrqc-unet2d" and len(out.model.artifact_sha256 or "") == 64
    assert out.producer.service == "segmenter" and out.producer.version == __version__
    assert out.inference_ms > 0
    stamps = out.timestamps
    assert stamps.volume_assembled_at == event.timestamps.volume_assembled_at
    assert stamps.segmentation_started_at is not None
    assert stamps.segmentation_finished_at is not None
    assert stamps.volume_assembled_at <= stamps.segmentation_started_at  # type: ignore[operator]
    assert stamps.segmentation_started_at <= stamps.segmentation_finished_at


def test_impossible_volumes_are_dead_lettered_with_reasons_and_the_rest_flows(
    kafka: KafkaSettings, redis_url: str, env_clean: pytest.MonkeyPatch
) -> None:
    blobs = open_blob_store(redis_url)
    empty = np.zeros((0, 64, 64), np.uint16)
    nan = np.full((4, 64, 64), np.nan, np.float32)
    missing = BlobRef(
        uri=f"{redis_url}#nowhere",
        sha256=uuid.uuid4().hex * 2,
        size=100,
        media_type=MediaType.NUMPY,
    )
    ((good, truth),) = _synthetic_events(blobs, 3, SEGMENTER_TEST.start + 21)
    events = [
        _volume_event(0, blobs.put_array(empty), empty.shape),
        _volume_event(1, blobs.put_array(nan), nan.shape),
        _volume_event(2, missing, (4, 64, 64)),
        good,
    ]
    ensure_namespaced_topics(kafka)
    _publish(kafka, events)
    stats = build_runner(_settings(kafka, redis_url)).run(max_records=4, timeout_s=120)
    letters = read_events(kafka, DeadLetter, expected=3)
    (out,) = read_events(kafka, SegmentationReady, expected=1)
    assert stats.dead_lettered == 3 and stats.records_out == 1
    reasons = {letter.causation_id: letter.reason for letter in letters}
    assert reasons == {
        events[0].event_id: "empty-volume",
        events[1].event_id: "non-finite-volume",
        events[2].event_id: "volume-blob-missing",
    }
    assert all(letter.attempts == 1 for letter in letters)
    assert all(letter.failed_service == "segmenter" for letter in letters)
    assert out.causation_id == good.event_id
    assert dice_per_class(blobs.get_array(out.labelmap), truth)["WH"] > 0.85


def test_several_volumes_are_segmented_in_micro_batches(
    kafka: KafkaSettings, redis_url: str, env_clean: pytest.MonkeyPatch
) -> None:
    blobs = open_blob_store(redis_url)
    pairs = _synthetic_events(blobs, 0, SEGMENTER_TEST.start + 30, ("ED", "ES"))
    pairs += _synthetic_events(blobs, 2, SEGMENTER_TEST.start + 31)
    ensure_namespaced_topics(kafka)
    _publish(kafka, [event for event, _ in pairs])
    settings = _settings(kafka, redis_url).model_copy(update={"micro_batch_volumes": 2})
    runner = build_runner(settings)
    batch_sizes: list[int] = []
    batch_handler = runner.batch_handler
    assert batch_handler is not None

    def counting(items):  # type: ignore[no-untyped-def]
        batch_sizes.append(len(items))
        return batch_handler(items)

    runner.batch_handler = counting
    stats = runner.run(max_records=3, timeout_s=120)
    outputs = read_events(kafka, SegmentationReady, expected=3)
    assert stats.records_out == 3 and sum(batch_sizes) == 3
    truth = {event.event_id: labels for event, labels in pairs}
    for out in outputs:
        labels = blobs.get_array(out.labelmap)
        assert dice_per_class(labels, truth[out.causation_id])["WH"] > 0.85  # type: ignore[index]


def test_settings_are_read_from_the_segmenter_prefix(env_clean: pytest.MonkeyPatch) -> None:
    env_clean.setenv("CMRQC_SEGMENTER_MODEL", "/models/user.pt")
    env_clean.setenv("CMRQC_SEGMENTER_DEVICE", "cuda:1")
    env_clean.setenv("CMRQC_SEGMENTER_MICRO_BATCH_VOLUMES", "3")
    env_clean.setenv("CMRQC_SEGMENTER_KAFKA__BOOTSTRAP_SERVERS", "broker:9093")
    settings = SegmenterSettings()
    assert settings.model == "/models/user.pt" and settings.device == "cuda:1"
    assert settings.micro_batch_volumes == 3
    assert settings.kafka.bootstrap_servers == "broker:9093"
    assert SegmenterSettings.model_config.get("env_prefix") == "CMRQC_SEGMENTER_"
