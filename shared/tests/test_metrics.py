"""Dice per class, including the whole heart and the empty cases."""

from __future__ import annotations

import numpy as np
import pytest

from cmrqc_shared.metrics import dice, dice_per_class


def test_identical_labelmaps_score_one_for_every_class() -> None:
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[:, 2:4, 2:4], labels[:, 4:6, 2:4], labels[:, 2:4, 5:7] = 1, 2, 3
    scores = dice_per_class(labels, labels)
    assert scores.model_dump() == {"BG": 1.0, "LV": 1.0, "LVM": 1.0, "RVC": 1.0, "WH": 1.0}


def test_half_overlap_scores_one_half() -> None:
    a = np.zeros((1, 4, 4), bool)
    b = np.zeros((1, 4, 4), bool)
    a[0, :2], b[0, 1:3] = True, True
    assert dice(a, b) == pytest.approx(0.5)


def test_a_swapped_class_scores_zero_for_both_but_one_for_the_whole_heart() -> None:
    ref = np.zeros((1, 6, 6), np.uint8)
    ref[0, 1:3, 1:3], ref[0, 3:5, 3:5] = 1, 3
    seg = ref.copy()
    seg[ref == 1], seg[ref == 3] = 3, 1
    scores = dice_per_class(seg, ref)
    assert scores.LV == 0.0 and scores.RVC == 0.0 and scores.WH == 1.0


def test_a_class_missing_from_both_counts_as_agreement_and_from_one_as_failure() -> None:
    ref = np.zeros((1, 4, 4), np.uint8)
    ref[0, 0, 0] = 1
    assert dice_per_class(ref, ref).RVC == 1.0
    assert dice_per_class(np.zeros_like(ref), ref).LV == 0.0


def test_shapes_must_agree() -> None:
    with pytest.raises(ValueError, match="differ"):
        dice_per_class(np.zeros((1, 2, 2), np.uint8), np.zeros((1, 2, 3), np.uint8))
