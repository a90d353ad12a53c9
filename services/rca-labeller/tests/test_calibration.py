"""The monotone correction of the RCA estimate: fitted on validation cases, one reference set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cmrqc_rca_labeller.calibration import (
    BUILTIN_CALIBRATION,
    CLASSES,
    JOINT_FEATURES,
    KEPT_FEATURES,
    STATISTICS,
    RcaCalibration,
    calibration_for,
    isotonic_knots,
    kept_statistics,
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
    corrected = calibration.apply_arrays({name: raw_new for name in CLASSES})["WH"]
    assert np.abs(corrected - true_new).mean() < 0.5 * np.abs(raw_new - true_new).mean()
    # monotone: the order of cases (the priority queue's) is kept
    order = np.argsort(raw_new)
    assert np.all(np.diff(corrected[order]) >= -1e-12)


def _coupled(seed: int, n: int = 600) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Raw maxima and true Dice where a class's truth also depends on the other classes'
    maxima: the WH maximum over-estimates more when the RV maximum is poor (as with classical
    segmentations whose RV fails while the LV lands well on some reference)."""
    rng = np.random.default_rng(seed)
    true_lv, true_rvc = rng.uniform(0.2, 1.0, n), rng.uniform(0.2, 1.0, n)
    true_lvm = np.clip(true_lv - rng.uniform(0.0, 0.2, n), 0, 1)
    true_wh = (true_lv + true_lvm + true_rvc) / 3
    raw = {
        "BG": np.clip(0.98 + 0.02 * true_wh + rng.normal(0, 0.002, n), 0, 1),
        "LV": np.clip(0.1 + 0.8 * true_lv + rng.normal(0, 0.02, n), 0, 1),
        "LVM": np.clip(0.1 + 0.8 * true_lvm + rng.normal(0, 0.02, n), 0, 1),
        "RVC": np.clip(0.1 + 0.8 * true_rvc + rng.normal(0, 0.02, n), 0, 1),
    }
    raw["WH"] = np.clip(0.2 + 0.8 * true_wh + 0.15 * (1 - true_rvc) + rng.normal(0, 0.02, n), 0, 1)
    true = {"BG": np.clip(0.97 + 0.03 * true_wh, 0, 1), "LV": true_lv, "LVM": true_lvm}
    true |= {"RVC": true_rvc, "WH": true_wh}
    return raw, true


def test_a_joint_calibration_uses_the_other_classes_and_survives_a_round_trip(
    tmp_path: Path,
) -> None:
    raw_fit, true_fit = _coupled(4)
    raw_new, true_new = _coupled(5)
    one = RcaCalibration.fit(raw_fit, true_fit, reference_set="s", fitted_on="x")
    joint = RcaCalibration.fit(
        raw_fit, true_fit, reference_set="s", fitted_on="x", features=JOINT_FEATURES
    )
    one_error = np.abs(one.apply_arrays(raw_new)["WH"] - true_new["WH"]).mean()
    joint_error = np.abs(joint.apply_arrays(raw_new)["WH"] - true_new["WH"]).mean()
    assert joint_error < 0.7 * one_error
    # BG is not scored jointly: its map reads its own estimate, as in a one-feature fit
    assert joint.scores is not None and "BG" not in joint.scores
    np.testing.assert_allclose(joint.apply_arrays(raw_new)["BG"], one.apply_arrays(raw_new)["BG"])

    path = tmp_path / "joint.json"
    joint.save(path)
    loaded = RcaCalibration.load(path)
    assert loaded == joint
    case = ClassScores(BG=0.99, LV=0.8, LVM=0.6, RVC=0.4, WH=0.7)
    assert loaded.apply(case) == joint.apply(case)
    # the RV maximum moves the WH estimate even at the same WH maximum
    better_rv = case.model_copy(update={"RVC": 0.9})
    assert joint.apply(better_rv).WH > joint.apply(case).WH
    assert one.apply(better_rv).WH == one.apply(case).WH


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"features": ["LV", "XX*WH"]}, "names no class or statistic"),
        ({"scores": {"WH": {"weights": [1.0], "intercept": 0.0}}}, "does not match"),
    ],
)
def test_a_malformed_joint_calibration_is_refused(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    raw, true = _coupled(6)
    data = RcaCalibration.fit(
        raw, true, reference_set="s", fitted_on="x", features=JOINT_FEATURES
    ).to_json()
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(data | change))
    with pytest.raises(ValueError, match=message):
        RcaCalibration.load(path)


def test_kept_statistics_summarise_the_references_the_estimate_is_taken_over() -> None:
    dice = np.array(
        [[0.99, 0.9, 0.8, 0.7, 0.85], [0.98, 0.5, 0.6, 0.9, 0.65], [0.97, 0.7, 0.4, 0.8, 0.75]]
    )
    statistics = kept_statistics(dice, np.array([0.8, 0.9, 0.7]), top_k=2)
    assert set(statistics) == set(STATISTICS) - set(CLASSES)
    assert statistics["topk:LV"] == pytest.approx(0.8)  # (0.9 + 0.7) / 2, per class
    assert statistics["topk:RVC"] == pytest.approx(0.85)
    assert statistics["mean:WH"] == pytest.approx(0.75)
    assert statistics["sd:WH"] == pytest.approx(np.sqrt(2 / 3) * 0.1)  # population sd
    assert statistics["similarity:best"] == 0.9
    assert statistics["similarity:mean"] == pytest.approx(0.8)


def test_a_calibration_that_reads_statistics_refuses_to_guess_them() -> None:
    raw, true = _coupled(7)
    rng = np.random.default_rng(7)
    raw |= {name: rng.uniform(0, 1, len(raw["WH"])) for name in STATISTICS if name not in raw}
    calibration = RcaCalibration.fit(
        raw, true, reference_set="s", fitted_on="x", features=KEPT_FEATURES
    )
    case = ClassScores(BG=0.99, LV=0.8, LVM=0.6, RVC=0.4, WH=0.7)
    with pytest.raises(ValueError, match="needs"):
        calibration.apply(case)
    statistics = {name: 0.5 for name in STATISTICS if name not in CLASSES}
    assert 0.0 <= calibration.apply(case, statistics).WH <= 1.0
    with pytest.raises(ValueError, match="names no class or statistic"):
        RcaCalibration.fit(raw, true, reference_set="s", fitted_on="x", features=("WH*nope",))


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
    # the kept-references form, adopted under docs/preregistration.txt's rules (RCA_HOLDOUT)
    assert calibration.features == KEPT_FEATURES and calibration.scores is not None
    for name in CLASSES:
        xs, ys = calibration.knots[name]
        assert np.all(np.diff(xs) > 0) and np.all(np.diff(ys) >= 0)


def test_the_command_offers_every_calibration_form_and_evaluation_split() -> None:
    import argparse

    from cmrqc_rca_labeller.calibration import CALIBRATION_FORMS
    from cmrqc_rca_labeller.evaluation import EVALUATION_SPLITS

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    evaluate = parser._subparsers._group_actions[0].choices["evaluate"]  # type: ignore[union-attr]
    rca = evaluate._subparsers._group_actions[0].choices["rca"]
    offered = {action.dest: action.choices for action in rca._actions if action.choices}
    assert set(offered["calibration_form"]) == set(CALIBRATION_FORMS)
    assert set(offered["split"]) == set(EVALUATION_SPLITS)


def test_fitting_a_calibration_on_the_test_split_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", "rca", "--fit-calibration", "x.json"])
    assert args.handler(args) == 2
    assert "never fit on the test split" in capsys.readouterr().err
