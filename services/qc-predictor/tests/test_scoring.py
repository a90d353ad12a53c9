"""Table 1 and the pass/fail statistics on hand-made numbers."""

from __future__ import annotations

import numpy as np
import pytest

from cmrqc_qc_predictor.scoring import binary_statistics, table1, verdict_statistics


def test_positive_means_fail_for_the_true_and_false_positive_rates() -> None:
    true = np.array([0.2, 0.5, 0.69, 0.8, 0.9, 0.95])
    predicted = np.array([0.3, 0.75, 0.6, 0.65, 0.9, 0.99])
    stats = binary_statistics(predicted, true, 0.7)
    # failing (true < 0.7): 3, two caught; usable: 3, one called a fail
    assert (stats["tp"], stats["fn"], stats["fp"], stats["tn"]) == (2, 1, 1, 2)
    assert stats["tpr"] == pytest.approx(2 / 3) and stats["fpr"] == pytest.approx(1 / 3)
    assert stats["accuracy"] == pytest.approx(4 / 6)


def test_table1_splits_poor_and_good_cases_on_the_true_whole_heart_dice() -> None:
    poor, good = [0.99, 0.3, 0.3, 0.3, 0.3], [0.99, 0.9, 0.9, 0.9, 0.9]
    true = np.array([poor, poor, good, good])
    predicted = true + np.array([[0.0, 0.1, 0.0, 0.0, 0.2]] * 2 + [[0.0, 0.0, 0.0, 0.0, 0.05]] * 2)
    table = table1(predicted, true)
    assert table["mae"]["WH"]["dsc_lt_0.5"] == {"n": 2, "mae": pytest.approx(0.2), "sd": 0.0}
    assert table["mae"]["WH"]["dsc_ge_0.5"]["mae"] == pytest.approx(0.05)
    assert table["mae"]["LV"]["all"]["mae"] == pytest.approx(0.05)
    assert table["mae"]["LV"]["all"]["sd"] == pytest.approx(0.05)


def test_uncertain_verdicts_are_excluded_from_the_confident_accuracy() -> None:
    stats = verdict_statistics(
        ["pass", "fail", "uncertain", "pass"], np.array([0.9, 0.3, 0.7, 0.5])
    )
    assert stats["uncertain_fraction"] == pytest.approx(0.25)
    assert stats["accuracy_when_confident"] == pytest.approx(2 / 3)
    assert stats["false_pass"] == 1 and stats["false_fail"] == 0
