"""`cmrqc bench bus` measures every mode side by side and reports ratios (no time asserted)."""

from __future__ import annotations

import json

import pytest

from cmrqc_cli.main import main

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_bench_bus_reports_every_mode_and_the_overhead_ratios(
    infra: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["bench", "bus", "--records", "300", "--rounds", "1", "--latency-records", "100", "--json"]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["modes"]) == {
        "runner-exactly-once",
        "bare-transactional",
        "bare-transactional-typed",
        "runner-at-least-once",
        "bare-at-least-once",
        "bare-at-least-once-typed",
    }
    for figures in report["modes"].values():
        assert figures["records_per_s"] > 0
        assert figures["hop_latency_ms"]["p50"] <= figures["hop_latency_ms"]["p99"]
        assert figures["rounds"][0]["hop_latency_ms"]["n"] == 100
    assert all(ratio > 0 for ratio in report["ratios"].values())
