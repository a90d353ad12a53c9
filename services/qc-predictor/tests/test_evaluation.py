"""`cmrqc evaluate qc` and `cmrqc calibrate qc` end to end on a small dataset written to disk,
one view and several."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from cmrqc_qc_predictor.artifact import QcModel, load_artifact, load_artifact_file
from cmrqc_qc_predictor.commands import register
from cmrqc_qc_predictor.data import QcDatasets, balanced_split
from cmrqc_qc_predictor.devdata import DevDatasetPlan, write_dev_dataset
from cmrqc_qc_predictor.evaluation import evaluate, fit_view_calibration

SMALL_PLAN = DevDatasetPlan(
    train_subjects=0,
    val_subjects=2,
    test_subjects=1,
    classical_per_scan=1,
    light_per_scan=2,
    heavy_per_scan=1,
    identity_probability=0.0,
)
"""The dev dataset's own writer, a few samples per scan of 2 validation and 1 test subject."""


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("qc") / "dataset"
    assert write_dev_dataset(root, SMALL_PLAN, progress=False) > 0
    return root


def test_evaluate_refits_the_intervals_on_validation_when_views_are_averaged(
    tmp_path: Path, small_model: QcModel, small_dataset: Path
) -> None:
    root = small_dataset
    one = evaluate(small_model, [root], tmp_path / "one", progress=False)
    assert one["views"] == 1
    assert one["coverage"]["calibration_cases"] == small_model.calibration.size
    assert one["coverage"]["half_width"]["WH"] == pytest.approx(0.05)  # the artifact's

    four = evaluate(small_model, [root], tmp_path / "four", progress=False, views=4)
    validation = balanced_split(QcDatasets([root]), "val", seed=0)
    assert four["views"] == 4 and "4 views" in four["coverage"]["calibration"]
    assert four["coverage"]["calibration_cases"] == len(validation) > 0
    assert four["coverage"]["half_width"]["WH"] != pytest.approx(0.05)
    assert four["table1"]["n"] == one["table1"]["n"] > 0
    assert four["table1"]["mae"]["WH"]["all"]["mae"] != pytest.approx(
        one["table1"]["mae"]["WH"]["all"]["mae"], abs=1e-7
    )
    assert Path(four["figures"]["scatter"]).is_file()


def test_calibrate_adds_view_intervals_that_evaluate_then_uses(
    tmp_path: Path, small_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from .conftest import small_fast_artifact

    source, calibrated = tmp_path / "plain.safetensors", tmp_path / "views.safetensors"
    source.write_bytes(small_fast_artifact(version="v-views"))
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    command = ["calibrate", "qc", "--artifact", str(source), "--dataset", str(small_dataset)]
    args = parser.parse_args([*command, "--views", "4", "--views", "2", "--out", str(calibrated)])
    args.json = True
    assert args.handler(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert sorted(printed["view_calibrations"]) == ["2", "4"]

    model = load_artifact_file(calibrated)
    plain = load_artifact_file(source)
    assert sorted(model.view_calibrations) == [2, 4] and model.version == "v-views"
    validation = balanced_split(QcDatasets([small_dataset]), "val", seed=0)
    assert model.view_calibrations[4].size == len(validation)
    # The same fit as evaluate's own: the validation split through the service's path.
    again = fit_view_calibration(plain, QcDatasets([small_dataset]), 4, progress=False)
    np.testing.assert_array_equal(again.residuals, model.view_calibrations[4].residuals)
    assert model.card["view_calibrations"]["4"]["cases"] == len(validation)
    assert model.card["view_calibrations"]["4"]["mae"]["WH"] == pytest.approx(
        float(again.residuals[:, -1].mean())
    )

    four = evaluate(model, [small_dataset], tmp_path / "four", progress=False, views=4)
    assert "artifact's" in four["coverage"]["calibration"]
    assert four["coverage"]["half_width"]["WH"] == pytest.approx(
        float(model.view_calibrations[4].half_widths(0.9)[-1])
    )
    bad = parser.parse_args([*command, "--views", "9", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match=r"2\.\.8"):
        bad.handler(bad)
    neither = parser.parse_args([*command, "--views", "2"])
    with pytest.raises(SystemExit, match="--out or --install"):
        neither.handler(neither)


def test_calibrate_install_rewrites_the_builtin_model_and_its_card(
    tmp_path: Path, small_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cmrqc_qc_predictor import artifact, commands

    from .conftest import small_fast_artifact

    small = load_artifact(small_fast_artifact())
    source = tmp_path / "plain.safetensors"
    source.write_bytes(
        artifact.artifact_bytes(
            small.network,
            architecture=small.architecture,
            calibration=small.calibration,
            name="qc-predictor",
            version="v-card",
            options=small.options,
            # a real card, so that the Markdown card can be written
            card=json.loads((artifact.BUILTIN_FAST.parent / "qc-fast.card.json").read_text()),
        )
    )
    builtin = tmp_path / "weights" / "qc-fast.safetensors"
    builtin.parent.mkdir()
    (tmp_path / "docs").mkdir()
    monkeypatch.setattr(artifact, "BUILTIN_FAST", builtin)
    monkeypatch.setattr(commands, "DOCS_DIR", tmp_path / "docs")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    command = ["calibrate", "qc", "--artifact", str(source), "--dataset", str(small_dataset)]
    args = parser.parse_args([*command, "--views", "2", "--install", "--json"])
    assert args.handler(args) == 0
    installed = load_artifact_file(builtin)
    assert sorted(installed.view_calibrations) == [2] and installed.version == "v-card"
    written = json.loads((builtin.parent / "qc-fast.card.json").read_text())
    assert written["view_calibrations"]["2"]["cases"] == installed.view_calibrations[2].size
    markdown = (tmp_path / "docs" / "model-card-fast.md").read_text()
    assert "Averaged over in-plane views" in markdown and "| 2 |" in markdown
