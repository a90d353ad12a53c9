"""Split-conformal intervals: ranks, coverage on synthetic numbers, clipping."""

from __future__ import annotations

import numpy as np
import pytest

from cmrqc_qc_predictor.conformal import ConformalCalibration, empirical_coverage


def test_the_half_width_is_the_ceil_n_plus_1_times_coverage_th_residual() -> None:
    residuals = np.arange(1, 20, dtype=np.float32)[:, None] / 100  # 0.01 … 0.19, n = 19
    calibration = ConformalCalibration.fit(np.zeros_like(residuals), residuals)
    # ceil(20 * 0.9) = 18 -> the 18th smallest residual
    assert calibration.half_widths(0.9)[0] == pytest.approx(0.18)
    assert calibration.half_widths(0.5)[0] == pytest.approx(0.10)


def test_too_few_calibration_cases_give_the_whole_range_not_overconfidence() -> None:
    calibration = ConformalCalibration(np.full((5, 2), 0.01, np.float32))
    assert calibration.half_widths(0.9).tolist() == [1.0, 1.0]


def test_ninety_percent_intervals_cover_about_ninety_percent_of_new_cases() -> None:
    rng = np.random.default_rng(0)
    scale = np.array([0.02, 0.05, 0.1, 0.03, 0.04])
    true_cal = rng.uniform(0, 1, (4000, 5))
    calibration = ConformalCalibration.fit(true_cal + rng.normal(0, scale, (4000, 5)), true_cal)
    true_test = rng.uniform(0, 1, (20000, 5))
    predicted = true_test + rng.normal(0, scale, (20000, 5))
    lower, upper = calibration.intervals(predicted, 0.9)
    coverage = empirical_coverage(lower, upper, true_test)
    assert np.all(np.abs(coverage - 0.9) < 0.015), coverage
    assert calibration.half_widths(0.9) == pytest.approx(1.645 * scale, rel=0.08)


def test_intervals_are_clipped_to_the_dice_range() -> None:
    calibration = ConformalCalibration(np.full((50, 1), 0.2, np.float32))
    lower, upper = calibration.intervals(np.array([[0.05], [0.95]]), 0.9)
    assert lower.ravel().tolist() == pytest.approx([0.0, 0.75])
    assert upper.ravel().tolist() == pytest.approx([0.25, 1.0])


def test_negative_or_non_finite_residuals_are_refused() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        ConformalCalibration(np.array([[-0.1]], np.float32))
    with pytest.raises(ValueError, match="finite"):
        ConformalCalibration(np.array([[np.nan]], np.float32))
