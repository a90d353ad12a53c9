"""The segmenter's ``cmrqc`` subcommands sit beside the core ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmrqc_cli.main import _setup_argparser
from cmrqc_cli.main import main as cmrqc


def test_segmenter_targets_join_the_shared_verbs() -> None:
    parser = _setup_argparser()
    assert parser.parse_args(["bench", "segmenter", "--json"]).target == "segmenter"
    assert parser.parse_args(["bench", "bus"]).target == "bus"
    assert parser.parse_args(["train", "segmenter", "--steps", "5"]).steps == 5
    assert parser.parse_args(["evaluate", "segmenter"]).subjects == 100


@pytest.mark.slow
def test_bench_prints_batch_1_and_batched_latency_side_by_side(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = cmrqc(["bench", "segmenter", "--rounds", "1", "--batch", "2", "--slices", "3", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["volume_shape"] == [3, 224, 224]
    for key in ("batch_1", "batch_2"):
        assert {"per_volume_ms_median", "preprocess_ms", "inference_ms", "postprocess_ms"} <= set(
            report[key]
        )
    assert report["ratio_batched_over_batch_1"] > 0


def test_export_writes_a_torchscript_archive_that_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cmrqc_segmenter import load_model

    assert cmrqc(["export", "segmenter", "--out", str(tmp_path / "m.pt")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["contract"]["size"] == 160
    assert load_model(tmp_path / "m.pt", device="cpu").identity.name == "cmrqc-unet2d"
