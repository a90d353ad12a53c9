"""`cmrqc retrainer-live-curve` end to end: every service as its own process, studies pushed
by C-STORE, RCA labels and the annotators' ground truth driving real retraining rounds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cmrqc_retrainer.live_curve import run_live_curve
from cmrqc_shared.settings import KafkaSettings

from .test_curve import _tiny_dataset

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]

STUDIES = 2


def test_the_live_curve_streams_studies_through_every_service_and_scores_each_promotion(
    tmp_path: Path, kafka: KafkaSettings, redis_url: str
) -> None:
    _tiny_dataset(tmp_path / "ds", tmp_path / "labels.jsonl")
    summary = run_live_curve(
        dataset_root=tmp_path / "ds",
        out=tmp_path / "live",
        kafka=kafka,
        redis_url=redis_url,
        studies=STUDIES,
        rate_per_s=2.0,
        segmenter_models=("builtin",),
        initial_cases=4,
        initial_epochs=2,
        min_new_labels=1,
        min_holdout=1,
        epochs=1,
        holdout_fraction=0.5,
        seed_start=700_001,  # two series, one on each side of the holdout split
        timeout_s=400,
        service_env={"CMRQC_RCA_LABELLER_REFERENCE_COUNT": "6"},
    )
    assert summary["studies_sent"] == STUDIES and summary["studies_failed_to_send"] == 0
    assert summary["segmentations"] == 2 * STUDIES  # ED and ES, one segmenter
    assert summary["rca_labels"] == summary["segmentations"]
    assert 0 < summary["ground_truth_submitted"] < summary["segmentations"]
    assert summary["final_holdout_cases"] == summary["ground_truth_submitted"]
    assert set(summary["service_exit_codes"].values()) == {0}
    served = sum(m["results"] for m in summary["live_qc_error_by_model"].values())
    assert served == summary["segmentations"]  # every QC result scored against the truth

    rounds, points = summary["rounds"], summary["points"]
    assert rounds, "the retrainer never ran a round"
    assert len(points) == 1 + sum(r["promoted"] for r in rounds)
    assert points[0]["promoted"] is False and points[0]["labels_seen"] == 0
    for point in points:
        assert math.isfinite(point["test_wh_mae"]) and math.isfinite(point["holdout_wh_mae"])
    for point, promoted in zip(points[1:], [r for r in rounds if r["promoted"]], strict=True):
        # scored again on the same holdout the retrainer judged it on (all of it, by then)
        assert point["retrainer_holdout_wh_mae"] == pytest.approx(
            promoted["challenger_holdout_mae"]["WH"]
        )
    written = json.loads((tmp_path / "live" / "curve.json").read_text())
    assert written["points"] == points
    assert (tmp_path / "live" / "curve.png").stat().st_size > 10_000
