"""Hot-swap through the real broker: good models are swapped in, bad ones refused, no record
lost or duplicated."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from cmrqc_qc_predictor.artifact import load_artifact
from cmrqc_qc_predictor.main import build_service
from cmrqc_qc_predictor.models import FAST_ARCHITECTURE, PAPER_ARCHITECTURE
from cmrqc_shared.blobs import BlobRef, MediaType, open_blob_store
from cmrqc_shared.bus.publisher import EventPublisher, read_events
from cmrqc_shared.events import ModelPublished, ProducerInfo, QcResult, utc_now
from cmrqc_shared.settings import KafkaSettings

from .conftest import small_fast_artifact
from .helpers import segmentation_event, service_settings, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

RETRAINER = ProducerInfo(service="retrainer-test", version="0")


def _announce(ref: BlobRef, version: str, architecture: str = FAST_ARCHITECTURE) -> ModelPublished:
    return ModelPublished.create(
        derived_from=("qc-predictor", version),
        producer=RETRAINER,
        model_name="qc-predictor",
        version=version,
        artifact=ref,
        architecture=architecture,
        promoted_at=utc_now(),
    )


def test_a_published_model_serves_later_records_and_bad_ones_are_refused(
    kafka: KafkaSettings, redis_url: str, env_clean: pytest.MonkeyPatch, synth_case
) -> None:  # type: ignore[no-untyped-def]
    store = open_blob_store(redis_url)
    image, labels = synth_case.image, synth_case.labels
    events = [segmentation_event(store, image, labels, i, tag="swap") for i in range(9)]
    initial = load_artifact(small_fast_artifact(version="v1", seed=1))
    service = build_service(service_settings(kafka, redis_url, hot_swap=True), model=initial)
    assert service.watcher is not None
    thread = threading.Thread(
        target=service.run, kwargs={"max_records": 9, "timeout_s": 240}, daemon=True
    )
    thread.start()
    publisher = EventPublisher(kafka)
    try:
        for event in events[:3]:
            publisher.publish(event)
        assert len(read_events(kafka, QcResult, expected=3, timeout_s=90)) == 3

        good = store.put(small_fast_artifact(version="ignored", seed=2), MediaType.SAFETENSORS)
        publisher.publish(_announce(good, "v2"))
        assert wait_for(lambda: service.watcher.applied_versions == ["v2"])  # type: ignore[union-attr]
        for event in events[3:6]:
            publisher.publish(event)
        assert len(read_events(kafka, QcResult, expected=6, timeout_s=90)) == 6

        garbage = store.put(b"\x00" * 64 + b"definitely not safetensors", MediaType.SAFETENSORS)
        publisher.publish(_announce(garbage, "v3-corrupt"))
        absent = BlobRef(uri="redis://x/0#gone", sha256="f" * 64, size=10, media_type="x")
        publisher.publish(_announce(absent, "v4-missing"))
        publisher.publish(_announce(good, "v5-wrong-architecture", PAPER_ARCHITECTURE))
        assert wait_for(lambda: len(service.watcher.refused) == 3)  # type: ignore[union-attr]
        for event in events[6:]:
            publisher.publish(event)
        thread.join(timeout=120)
    finally:
        publisher.close()
    assert not thread.is_alive()
    results = read_events(kafka, QcResult, expected=9, timeout_s=30, idle_s=2)
    by_cause = {r.causation_id: r for r in results}
    assert len(results) == 9 and set(by_cause) == {e.event_id for e in events}
    versions = [by_cause[e.event_id].model.version for e in events]
    assert versions == ["v1"] * 3 + ["v2"] * 6
    reasons = [reason for reason, _ in service.watcher.refused]
    assert reasons == ["corrupt", "blob-unavailable", "incompatible"]
    metrics = service.runner.metrics.registry
    assert metrics.get_sample_value("cmrqc_qc_models_refused_total", {"reason": "corrupt"}) == 1
    assert metrics.get_sample_value("cmrqc_qc_model_swaps_total") == 1
    assert np.isfinite([r.predicted_dsc.WH for r in results]).all()


def _with_views(version: str, seed: int, half_width: float) -> bytes:
    from cmrqc_qc_predictor.artifact import with_view_calibrations
    from cmrqc_qc_predictor.conformal import ConformalCalibration

    calibration = ConformalCalibration(np.full((20, 5), half_width, np.float32))
    return with_view_calibrations(small_fast_artifact(version, seed), {2: calibration}, {})


def test_a_service_serving_views_needs_and_uses_a_calibration_for_them(
    kafka: KafkaSettings, redis_url: str, env_clean: pytest.MonkeyPatch, synth_case
) -> None:  # type: ignore[no-untyped-def]
    settings = service_settings(kafka, redis_url, hot_swap=True, views=2)
    with pytest.raises(ValueError, match="no interval calibration for 2 views"):
        build_service(settings, model=load_artifact(small_fast_artifact("plain", seed=1)))

    store = open_blob_store(redis_url)
    event = segmentation_event(store, synth_case.image, synth_case.labels, 0, tag="views")
    service = build_service(settings, model=load_artifact(_with_views("v1", 1, 0.03)))
    assert service.watcher is not None
    thread = threading.Thread(
        target=service.run, kwargs={"max_records": 1, "timeout_s": 120}, daemon=True
    )
    thread.start()
    with EventPublisher(kafka) as publisher:
        plain = store.put(small_fast_artifact("ignored", seed=2), MediaType.SAFETENSORS)
        publisher.publish(_announce(plain, "v2-without-views"))
        assert wait_for(lambda: len(service.watcher.refused) == 1)  # type: ignore[union-attr]
        calibrated = store.put(_with_views("ignored", 3, 0.02), MediaType.SAFETENSORS)
        publisher.publish(_announce(calibrated, "v3"))
        assert wait_for(lambda: service.watcher.applied_versions == ["v3"])  # type: ignore[union-attr]
        publisher.publish(event)
    thread.join(timeout=120)
    assert not thread.is_alive()
    ((reason, message),) = service.watcher.refused
    assert reason == "incompatible" and "2 views" in message
    (result,) = read_events(kafka, QcResult, expected=1, timeout_s=30)
    assert result.views == 2 and result.model.version == "v3"
    assert result.interval is not None
    wh = result.predicted_dsc.WH
    assert pytest.approx(min(wh + 0.02, 1.0), abs=1e-6) == result.interval.upper.WH
    assert pytest.approx(max(wh - 0.02, 0.0), abs=1e-6) == result.interval.lower.WH
