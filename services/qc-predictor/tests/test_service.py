"""End to end through Kafka and Redis: SegmentationReady in, QcResult and QcAlert out."""

from __future__ import annotations

import numpy as np
import pytest

from cmrqc_qc_predictor.main import build_service
from cmrqc_qc_predictor.verdicts import EMPTY_SEGMENTATION
from cmrqc_shared.blobs import BlobRef, open_blob_store
from cmrqc_shared.bus.publisher import EventPublisher, read_events
from cmrqc_shared.datasets.splits import QC_TEST
from cmrqc_shared.events import DeadLetter, QcAlert, QcResult, Verdict
from cmrqc_shared.qcdata.corruptions import drop_slices, shift
from cmrqc_shared.settings import KafkaSettings
from cmrqc_shared.synth import render_study

from .helpers import segmentation_event, service_settings

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


@pytest.fixture(scope="module")
def study_phase():  # type: ignore[no-untyped-def]
    return render_study(QC_TEST.start + 3, phases=("ED",)).phase("ED")


def _spacing(phase) -> tuple[float, float, float]:  # type: ignore[no-untyped-def]
    return (*phase.pixel_spacing_mm, phase.slice_spacing_mm)


def test_a_good_segmentation_passes_and_a_bad_one_fails_with_an_alert(
    kafka: KafkaSettings, redis_url: str, env_clean: pytest.MonkeyPatch, study_phase
) -> None:  # type: ignore[no-untyped-def]
    store = open_blob_store(redis_url)
    rng = np.random.default_rng(0)
    bad, _ = shift(study_phase.labels, rng, 1.0)
    bad, _ = drop_slices(bad, rng, 1.0)
    events = [
        segmentation_event(store, study_phase.image, labels, i, spacing=_spacing(study_phase))
        for i, labels in enumerate([study_phase.labels, bad])
    ]
    service = build_service(service_settings(kafka, redis_url, hot_swap=False))
    with EventPublisher(kafka) as publisher:
        for event in events:
            publisher.publish(event)
    stats = service.run(max_records=2, timeout_s=120)
    results = {r.causation_id: r for r in read_events(kafka, QcResult, expected=2)}
    alerts = read_events(kafka, QcAlert, expected=1)
    assert stats.records_in == 2 and stats.dead_lettered == 0
    good, poor = results[events[0].event_id], results[events[1].event_id]
    assert good.verdict is Verdict.PASS and good.predicted_dsc.WH > 0.85
    assert poor.verdict is Verdict.FAIL and poor.predicted_dsc.WH < 0.6
    assert good.interval is not None and good.interval.coverage == pytest.approx(0.9)
    assert good.interval.lower.WH <= good.predicted_dsc.WH <= good.interval.upper.WH
    assert good.thresholds == {"WH": 0.7} and good.class_verdicts == {"WH": Verdict.PASS}
    assert good.model.name == "qc-predictor" and good.model.artifact_sha256
    assert good.segmentation_model is not None and good.segmentation_model.name == "segmenter-test"
    assert good.timestamps.qc_finished_at is not None
    assert good.latency_ms["first_instance_to_verdict"] >= 2000
    assert {"blob_fetch", "prepare", "inference", "qc_total"} <= set(good.latency_ms)
    (alert,) = alerts
    assert alert.causation_id == events[1].event_id and alert.verdict is Verdict.FAIL
    assert "WH fail" in alert.alert_reason


def test_an_empty_or_misaligned_segmentation_fails_with_the_reason_and_never_crashes(
    kafka: KafkaSettings, redis_url: str, env_clean: pytest.MonkeyPatch, study_phase
) -> None:  # type: ignore[no-untyped-def]
    store = open_blob_store(redis_url)
    spacing = _spacing(study_phase)
    empty = segmentation_event(
        store, study_phase.image, np.zeros_like(study_phase.labels), 0, spacing=spacing
    )
    misaligned = segmentation_event(
        store, study_phase.image, study_phase.labels[:, :-4, :], 1, spacing=spacing
    )
    service = build_service(service_settings(kafka, redis_url, hot_swap=False))
    with EventPublisher(kafka) as publisher:
        publisher.publish(empty)
        publisher.publish(misaligned)
    stats = service.run(max_records=2, timeout_s=120)
    results = {r.causation_id: r for r in read_events(kafka, QcResult, expected=2)}
    alerts = read_events(kafka, QcAlert, expected=2)
    assert stats.dead_lettered == 0 and len(alerts) == 2
    assert results[empty.event_id].verdict is Verdict.FAIL
    assert results[empty.event_id].reasons == [EMPTY_SEGMENTATION]
    assert results[misaligned.event_id].verdict is Verdict.FAIL
    assert results[misaligned.event_id].reasons[0].startswith("grid-mismatch")
    assert results[misaligned.event_id].interval is None


def test_a_labelmap_blob_that_is_gone_is_dead_lettered_with_the_reason(
    kafka: KafkaSettings, redis_url: str, env_clean: pytest.MonkeyPatch, study_phase
) -> None:  # type: ignore[no-untyped-def]
    store = open_blob_store(redis_url)
    event = segmentation_event(store, study_phase.image, study_phase.labels, 0, tag="gone")
    missing = BlobRef(
        uri=event.labelmap.uri.replace(event.labelmap.sha256, "0" * 64),
        sha256="0" * 64,
        size=event.labelmap.size,
        media_type=event.labelmap.media_type,
    )
    event = event.model_copy(update={"labelmap": missing})
    service = build_service(service_settings(kafka, redis_url, hot_swap=False))
    with EventPublisher(kafka) as publisher:
        publisher.publish(event)
    stats = service.run(max_records=1, timeout_s=120)
    (letter,) = read_events(kafka, DeadLetter, expected=1)
    assert stats.dead_lettered == 1 and letter.reason == "labelmap-blob-missing"
    assert letter.causation_id == event.event_id
