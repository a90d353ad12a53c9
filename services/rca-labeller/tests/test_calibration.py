"""The monotone correction of the RCA estimate: fitted on validation cases, one reference set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cmrqc_rca_labeller.calibration import (
    BUILTIN_CALIBRATION,
    CLASSES,
    RcaCalibration,
    calibration_for,
    isotonic_knots,
)
from cmrqc_rca_labeller.commands import register
from cmrqc_shared.events import ClassScores


def _biased(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """True Dice and an RCA-like estimate: over-estimates poor cases, under-estimates good."""
    rng = np.random.default_rng(seed)
    true = rng.uniform(0.0, 1.0, n)
    raw = np.clip(0.15 + 0.75 * true + rng.normal(0, 0.03, n), 0, 1)
    return true, raw


def test_isotonic_knots_are_non_decreasing_and_never_rest_on_a_single_case() -> None:
    true, raw = _biased(0)
    xs, ys = isotonic_knots(raw, true, min_block=5)
    assert np.all(np.diff(xs) > 0) and np.all(np.diff(ys) >= 0)
    assert len(xs) <= len(raw) // 5


def test_a_correction_fitted_on_one_sample_lowers_the_error_on_another() -> None:
    true_fit, raw_fit = _biased(1)
    true_new, raw_new = _biased(2)
    arrays = {name: raw_fit for name in CLASSES}, {name: true_fit for name in CLASSES}
    calibration = RcaCalibration.fit(*arrays, reference_set="abc", fitted_on="test data")
    corrected = calibration.apply_values("WH", raw_new)
    assert np.abs(corrected - true_new).mean() < 0.5 * np.abs(raw_new - true_new).mean()
    # monotone: the order of cases (the priority queue's) is kept
    order = np.argsort(raw_new)
    assert np.all(np.diff(corrected[order]) >= -1e-12)


def test_a_calibration_applies_only_to_its_own_reference_set(tmp_path: Path) -> None:
    true, raw = _biased(3)
    calibration = RcaCalibration.fit(
        {n: raw for n in CLASSES}, {n: true for n in CLASSES}, reference_set="set-a", fitted_on="x"
    )
    path = tmp_path / "cal.json"
    calibration.save(path)
    assert calibration_for("set-a", path) is not None
    assert calibration_for("set-b", path) is None
    scores = calibration_for("set-a", path).apply(  # type: ignore[union-attr]
        ClassScores(BG=0.99, LV=0.2, LVM=0.5, RVC=0.9, WH=0.6)
    )
    assert 0.0 <= scores.LV < 0.2 and scores.RVC > 0.9


def test_a_malformed_calibration_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({"reference_set": "a", "fitted_on": "x", "cases": 1, "knots": {}}))
    with pytest.raises(ValueError, match="no valid knots"):
        RcaCalibration.load(path)


def test_the_committed_calibration_was_fitted_on_validation_cases() -> None:
    calibration = RcaCalibration.load(BUILTIN_CALIBRATION)
    assert calibration.fitted_on.startswith("QC_VAL") and calibration.cases >= 100
    for name in CLASSES:
        xs, ys = calibration.knots[name]
        assert np.all(np.diff(xs) > 0) and np.all(np.diff(ys) >= 0)


def test_fitting_a_calibration_on_the_test_split_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", "rca", "--fit-calibration", "x.json"])
    assert args.handler(args) == 2
    assert "never fit on the test split" in capsys.readouterr().err
