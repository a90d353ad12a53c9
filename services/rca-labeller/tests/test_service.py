"""The service against the real broker and Redis: events in, RCA labels out, in priority order."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cmrqc_rca_labeller.main import main
from cmrqc_rca_labeller.references import ReferenceSet
from cmrqc_rca_labeller.service import RcaLabellerService
from cmrqc_rca_labeller.settings import RcaLabellerSettings
from cmrqc_shared.blobs import BlobRef, BlobStore, MediaType, open_blob_store
from cmrqc_shared.bus.publisher import EventPublisher, read_events
from cmrqc_shared.datasets.splits import QC_TEST
from cmrqc_shared.events import (
    ClassScores,
    DeadLetter,
    ModelInfo,
    PipelineTimestamps,
    ProducerInfo,
    QcResult,
    RcaLabel,
    SegmentationReady,
    Verdict,
)
from cmrqc_shared.settings import BlobSettings, KafkaSettings, RunnerSettings
from cmrqc_shared.synth import render_study

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

PRODUCER = ProducerInfo(service="test-segmenter", version="0")
QC_PRODUCER = ProducerInfo(service="test-qc", version="0")


@pytest.fixture(scope="module")
def scan() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    phase = render_study(QC_TEST.start + 20, phases=("ED",)).phase("ED")
    return phase.image, phase.labels, phase.affine


@pytest.fixture
def blobs(redis_url: str) -> Iterator[BlobStore]:
    store = open_blob_store(redis_url, ttl_seconds=3600)
    yield store
    store.close()


def _settings(kafka: KafkaSettings, redis_url: str, cache: Path, group: str) -> RcaLabellerSettings:
    return RcaLabellerSettings(
        kafka=kafka,
        blobs=BlobSettings(url=redis_url),
        runner=RunnerSettings(group_id=group, instance_id="t", health_port=0),
        reference_count=6,
        cache_dir=cache,
        max_references=2,
        coarse_iterations=8,
        fine_iterations=4,
        ffd_iterations=4,
        queue_url=redis_url,
        idle_poll_s=0.05,
        log_format="text",
    )


def _segmentation(
    blobs: BlobStore, scan: tuple[np.ndarray, np.ndarray, np.ndarray], name: str
) -> SegmentationReady:
    image, labels, affine = scan
    return SegmentationReady.create(
        derived_from=(name, uuid.uuid4().hex),
        producer=PRODUCER,
        study_instance_uid=f"2.25.{abs(hash(name)) % 10**12}",
        series_instance_uid=f"2.25.{abs(hash(name)) % 10**12}.1",
        volume_event_id=f"volume-{name}",
        volume=blobs.put_array(image),
        labelmap=blobs.put_array(labels),
        shape=image.shape,
        affine=affine.tolist(),
        cardiac_phase="ED",
        model=ModelInfo(name="unet", version="0"),
        inference_ms=1.0,
        timestamps=PipelineTimestamps(),
    )


def _qc(segmentation: SegmentationReady, verdict: Verdict, wh: float) -> QcResult:
    return QcResult.create(
        derived_from=(segmentation.event_id, "qc"),
        producer=QC_PRODUCER,
        study_instance_uid=segmentation.study_instance_uid,
        series_instance_uid=segmentation.series_instance_uid,
        segmentation_event_id=segmentation.event_id,
        cardiac_phase="ED",
        predicted_dsc=ClassScores(BG=0.99, LV=wh, LVM=wh, RVC=wh, WH=wh),
        verdict=verdict,
        thresholds={"WH": 0.7},
        model=ModelInfo(name="qc", version="0"),
        timestamps=PipelineTimestamps(),
    )


def test_a_segmentation_ready_event_becomes_an_rca_label_through_kafka(
    kafka: KafkaSettings,
    redis_url: str,
    blobs: BlobStore,
    scan: tuple[np.ndarray, np.ndarray, np.ndarray],
    small_reference_set: ReferenceSet,
    reference_cache: Path,
    env_clean: pytest.MonkeyPatch,
) -> None:
    settings = _settings(kafka, redis_url, reference_cache, f"rca-{uuid.uuid4().hex[:6]}")
    for name, value in {
        "KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "KAFKA__TOPIC_NAMESPACE": kafka.topic_namespace,
        "BLOBS__URL": redis_url,
        "QUEUE_URL": redis_url,
        "RUNNER__GROUP_ID": settings.runner.group_id or "",
        "RUNNER__INSTANCE_ID": "t",
        "RUNNER__HEALTH_PORT": "0",
        "REFERENCE_COUNT": "6",
        "CACHE_DIR": str(reference_cache),
        "MAX_REFERENCES": "2",
        "COARSE_ITERATIONS": "8",
        "FINE_ITERATIONS": "4",
        "FFD_ITERATIONS": "4",
        "IDLE_POLL_S": "0.05",
        "LOG_FORMAT": "text",
    }.items():
        env_clean.setenv(f"CMRQC_RCA_LABELLER_{name}", value)
    event = _segmentation(blobs, scan, "through-kafka")
    result: list[int] = []
    service = threading.Thread(
        target=lambda: result.append(main(["--max-cases", "1", "--timeout", "180"]))
    )
    service.start()
    with EventPublisher(kafka) as publisher:
        publisher.publish(event)

    (label,) = read_events(kafka, RcaLabel, expected=1, timeout_s=180)
    service.join(timeout=60)

    assert result == [0]
    assert label.segmentation_event_id == event.event_id == label.causation_id
    assert label.series_instance_uid == event.series_instance_uid
    assert label.reference_set == small_reference_set.content_hash
    assert label.references_used == 2 and label.volume == event.volume
    assert label.estimated_dsc.WH > 0.8  # the true labels were sent: RCA says good
    assert label.top_k_mean_dsc is not None and len(label.top_references) == 2


def test_doubtful_cases_are_labelled_first_and_none_is_dropped(
    kafka: KafkaSettings,
    redis_url: str,
    blobs: BlobStore,
    scan: tuple[np.ndarray, np.ndarray, np.ndarray],
    small_reference_set: ReferenceSet,
    reference_cache: Path,
    env_clean: pytest.MonkeyPatch,
) -> None:
    settings = _settings(kafka, redis_url, reference_cache, f"rca-{uuid.uuid4().hex[:6]}")
    service = RcaLabellerService(settings, serve_observability=False)
    # (name, QC verdict and predicted WH Dice, or None for "no QC result")
    plan: list[tuple[str, tuple[Verdict, float] | None]] = [
        ("far-fail", (Verdict.FAIL, 0.20)),  # cost 0.50
        ("far-pass", (Verdict.PASS, 0.95)),  # 0.25
        ("no-qc", None),  # 0.15 (unknown)
        ("near-fail", (Verdict.FAIL, 0.66)),  # 0.04
        ("near-pass", (Verdict.PASS, 0.72)),  # 0.02
        ("uncertain", (Verdict.UNCERTAIN, 0.90)),  # 0
    ]
    segmentations = {name: _segmentation(blobs, scan, name) for name, _ in plan}
    with EventPublisher(kafka) as publisher:
        for name, _ in plan:  # arrival order: least doubtful first
            publisher.publish(segmentations[name])
        for name, qc in plan:
            if qc is not None:
                publisher.publish(_qc(segmentations[name], *qc))
    try:
        service.intake.run(max_records=len(plan), timeout_s=60)
        service.qc_intake.run(max_records=len(plan) - 1, timeout_s=60)
        stats = service.worker.run(max_cases=len(plan), timeout_s=240)
    finally:
        service.close()

    labels = read_events(kafka, RcaLabel, expected=len(plan), timeout_s=60)
    by_event = {event.event_id: name for name, event in segmentations.items()}
    order = [by_event[label.segmentation_event_id] for label in sorted(labels, key=_produced)]
    assert order == ["uncertain", "near-pass", "near-fail", "no-qc", "far-pass", "far-fail"]
    assert stats.labelled == len(plan) and stats.dead_lettered == 0
    queue = service.queue.stats()
    assert queue.pending == 0 and queue.inflight == 0


def _produced(label: RcaLabel) -> object:
    return label.produced_at


def test_a_case_whose_blob_expired_is_dead_lettered_not_dropped(
    kafka: KafkaSettings,
    redis_url: str,
    blobs: BlobStore,
    scan: tuple[np.ndarray, np.ndarray, np.ndarray],
    small_reference_set: ReferenceSet,
    reference_cache: Path,
    env_clean: pytest.MonkeyPatch,
) -> None:
    settings = _settings(kafka, redis_url, reference_cache, f"rca-{uuid.uuid4().hex[:6]}")
    service = RcaLabellerService(settings, serve_observability=False)
    event = _segmentation(blobs, scan, "expired")
    missing = BlobRef(uri="redis://x/0#gone", sha256="ab" * 32, size=10, media_type=MediaType.NUMPY)
    event = event.model_copy(update={"labelmap": missing})
    with EventPublisher(kafka) as publisher:
        publisher.publish(event)
    try:
        service.intake.run(max_records=1, timeout_s=60)
        stats = service.worker.run(max_cases=1, timeout_s=60)
    finally:
        service.close()

    (letter,) = read_events(kafka, DeadLetter, expected=1, timeout_s=30)
    assert stats.dead_lettered == 1
    assert letter.reason == "blob-unavailable" and letter.causation_id == event.event_id
    assert letter.original_topic == SegmentationReady.TOPIC
    assert service.queue.stats().pending == 0
