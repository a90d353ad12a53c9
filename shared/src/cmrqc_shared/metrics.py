"""Segmentation overlap metrics on labelmaps (0 BG, 1 LV, 2 LVM, 3 RVC)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from cmrqc_shared.events.common import LABEL_VALUES, ClassScores, SegmentationClass

EMPTY_PAIR_DICE = 1.0
"""Dice of two empty masks: they agree perfectly (the structure is absent in both)."""


def dice(a: NDArray[np.bool_], b: NDArray[np.bool_]) -> float:
    """Dice similarity coefficient of two boolean masks, in [0, 1] (1.0 when both are empty).

    Raises:
        ValueError: the masks' shapes differ.
    """
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return EMPTY_PAIR_DICE
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def dice_per_class(
    segmentation: NDArray[np.integer], reference: NDArray[np.integer]
) -> ClassScores:
    """Per-class Dice of ``segmentation`` against ``reference``: BG, LV, LVM, RVC and WH.

    WH (whole heart) treats every foreground label as one mask.

    Raises:
        ValueError: the labelmaps' shapes differ.
    """
    if segmentation.shape != reference.shape:
        raise ValueError(f"labelmap shapes differ: {segmentation.shape} vs {reference.shape}")
    scores = {
        cls.value: dice(segmentation == value, reference == value)
        for cls, value in LABEL_VALUES.items()
    }
    scores[SegmentationClass.WH.value] = dice(segmentation > 0, reference > 0)
    return ClassScores(**scores)
