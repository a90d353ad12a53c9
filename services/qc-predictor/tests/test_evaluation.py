"""`cmrqc evaluate qc` end to end on a small dataset written to disk, one view and several."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmrqc_qc_predictor.artifact import QcModel
from cmrqc_qc_predictor.data import QcDatasets, balanced_split
from cmrqc_qc_predictor.devdata import DevDatasetPlan, write_dev_dataset
from cmrqc_qc_predictor.evaluation import evaluate

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


def test_evaluate_refits_the_intervals_on_validation_when_views_are_averaged(
    tmp_path: Path, small_model: QcModel
) -> None:
    root = tmp_path / "dataset"
    assert write_dev_dataset(root, SMALL_PLAN, progress=False) > 0
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
