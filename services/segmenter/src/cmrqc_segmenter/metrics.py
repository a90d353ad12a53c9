"""Overlap metrics of a labelmap against a reference labelmap."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from cmrqc_segmenter.contract import LABEL_NAMES

FOREGROUND_CLASSES: tuple[str, ...] = LABEL_NAMES[1:]
"""LV, LVM, RVC."""


def dice(prediction: NDArray[np.bool_], reference: NDArray[np.bool_]) -> float:
    """Dice similarity coefficient of two masks, in [0, 1]; 1.0 when both are empty."""
    prediction, reference = np.asarray(prediction, bool), np.asarray(reference, bool)
    total = int(prediction.sum()) + int(reference.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(prediction, reference).sum()) / total


def dice_per_class(
    prediction: NDArray[np.integer], reference: NDArray[np.integer]
) -> dict[str, float]:
    """3D Dice of each foreground class (LV, LVM, RVC) and the whole heart (WH), in [0, 1].

    Raises:
        ValueError: the labelmaps differ in shape.
    """
    if prediction.shape != reference.shape:
        raise ValueError(f"shapes differ: {prediction.shape} vs {reference.shape}")
    scores = {
        name: dice(prediction == value, reference == value)
        for value, name in enumerate(LABEL_NAMES)
        if value > 0
    }
    scores["WH"] = dice(prediction > 0, reference > 0)
    return scores
