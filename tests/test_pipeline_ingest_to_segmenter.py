"""End to end through Kafka: a study pushed by C-STORE is assembled by the real ingest service,
segmented by the real segmenter (the labelmap matches the synthetic truth) and scored by the
real QC predictor (its predicted Dice is close to the true Dice, with the latency breakdown)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from cmrqc_ingest.senders import send_cstore
from cmrqc_ingest.service import IngestService
from cmrqc_ingest.settings import IngestSettings
from cmrqc_qc_predictor.main import build_service as build_qc_service
from cmrqc_qc_predictor.settings import QcPredictorSettings
from cmrqc_segmenter.main import build_runner
from cmrqc_segmenter.settings import SegmenterSettings
from cmrqc_shared.blobs import open_blob_store
from cmrqc_shared.bus.publisher import read_events
from cmrqc_shared.events import QcResult, SegmentationReady, Verdict, VolumeReady
from cmrqc_shared.metrics import dice_per_class
from cmrqc_shared.settings import BlobSettings, KafkaSettings, RunnerSettings
from cmrqc_shared.synth import render_study, write_dicom_series

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]


def test_a_study_pushed_by_c_store_is_segmented_end_to_end_through_kafka(
    kafka: KafkaSettings, redis_url: str, tmp_path: Path
) -> None:
    study = render_study(100_900)
    paths = write_dicom_series(study, tmp_path / "dicom")
    blobs = BlobSettings(url=redis_url)
    ingest = IngestService(
        IngestSettings(
            dicom_host="127.0.0.1",
            dicom_port=0,
            stow_host="127.0.0.1",
            stow_port=0,
            spool_dir=tmp_path / "spool",
            spool_fsync=False,
            quiet_time_s=0.5,
            spool_min_free_bytes=0,
            kafka=kafka,
            blobs=blobs,
            runner=RunnerSettings(health_host="127.0.0.1", health_port=0, instance_id="e2e"),
        )
    )
    segmenter = build_runner(
        SegmenterSettings(
            kafka=kafka,
            blobs=blobs,
            model="builtin",
            device="cpu",
            runner=RunnerSettings(
                group_id=f"segmenter-{kafka.topic_namespace}", instance_id="e2e", health_port=0
            ),
        )
    )
    qc = build_qc_service(
        QcPredictorSettings(
            kafka=kafka,
            blobs=blobs,
            device="cpu",
            hot_swap=False,
            runner=RunnerSettings(
                group_id=f"qc-{kafka.topic_namespace}", instance_id="e2e", health_port=0
            ),
        )
    )
    ingest.start()
    workers = [
        threading.Thread(target=segmenter.run, kwargs={"max_records": 2, "timeout_s": 240}),
        threading.Thread(target=qc.run, kwargs={"max_records": 2, "timeout_s": 240}),
    ]
    for worker in workers:
        worker.start()
    try:
        assert send_cstore("127.0.0.1", ingest.dicom_port, paths) == [0] * len(paths)
        for worker in workers:
            worker.join(timeout=300)
    finally:
        qc.runner.stop()
        segmenter.stop()
        ingest.stop(grace_s=2)
    assert not any(worker.is_alive() for worker in workers)

    volumes = {v.event_id: v for v in read_events(kafka, VolumeReady, expected=2)}
    segmentations = read_events(kafka, SegmentationReady, expected=2)
    assert sorted(s.cardiac_phase.value for s in segmentations) == ["ED", "ES"]
    store = open_blob_store(redis_url)
    true_wh: dict[str, float] = {}
    for segmentation in segmentations:
        assert segmentation.volume_event_id in volumes
        np.testing.assert_allclose(segmentation.affine, study.affine, atol=1e-3)
        truth = study.phase(segmentation.cardiac_phase.value).labels
        labels = store.get_array(segmentation.labelmap)
        scores = dice_per_class(labels, truth)
        assert min(scores.LV, scores.LVM, scores.RVC) > 0.85, scores
        true_wh[segmentation.event_id] = scores.WH
        stamps = segmentation.timestamps
        assert stamps.last_instance_received_at is not None
        assert stamps.segmentation_finished_at is not None

    results = read_events(kafka, QcResult, expected=2)
    assert sorted(result.causation_id for result in results) == sorted(true_wh)
    for result in results:
        assert result.verdict is Verdict.PASS, result.reasons
        assert abs(result.predicted_dsc.WH - true_wh[result.causation_id]) < 0.1
        assert result.interval is not None
        assert result.interval.lower.WH <= result.predicted_dsc.WH <= result.interval.upper.WH
        assert {"first_instance_to_verdict", "inference", "qc_total"} <= set(result.latency_ms)
