"""The README's main job: `cmrqc demo` runs every service as its own process, pushes a study by
C-STORE and gets its QC results back through Kafka."""

from __future__ import annotations

import pytest

from cmrqc_cli.demo import run_demo

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]


def test_the_demo_pushes_a_study_and_prints_its_qc_results(infra: dict[str, str]) -> None:
    summary = run_demo(studies=1, rate_per_s=1.0, with_rca=False, timeout_s=240, as_json=True)
    assert summary["studies_failed_to_send"] == 0
    assert summary["qc_results"] == summary["expected_results"] == 2
    assert summary["service_exit_codes"] == {"ingest": 0, "segmenter": 0, "qc-predictor": 0}
    for row in summary["results"]:
        assert row["verdict"] == "pass", row
        assert row["true_wh"] is not None and abs(row["predicted_wh"] - row["true_wh"]) < 0.1
        assert row["last_image_to_verdict_ms"] is not None
