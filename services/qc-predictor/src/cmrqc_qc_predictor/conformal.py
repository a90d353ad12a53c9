"""Split-conformal prediction intervals for the predicted Dice, per class.

Fitted on a calibration split the model never trained on (the validation split): the
absolute residuals |true − predicted| of each class are kept, sorted. For a nominal coverage
``1 − α`` the half-width of every interval of that class is the ⌈(n + 1)(1 − α)⌉-th smallest
calibration residual; under exchangeability of calibration and test cases the interval
[predicted − q, predicted + q] holds the true Dice with probability ≥ 1 − α (and below
1 − α + 1/(n + 1)). Intervals are clipped to [0, 1], which never loses coverage since Dice
lies there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class ConformalCalibration:
    """Sorted absolute calibration residuals, shape ``(n, classes)``.

    Raises:
        ValueError: not a 2-D array, fewer than one residual, or negative/non-finite values.
    """

    residuals: NDArray[np.float32]

    def __post_init__(self) -> None:
        if self.residuals.ndim != 2 or self.residuals.shape[0] < 1:
            raise ValueError(f"residuals must be (n >= 1, classes), got {self.residuals.shape}")
        if not np.all(np.isfinite(self.residuals)) or np.any(self.residuals < 0):
            raise ValueError("residuals must be finite and non-negative")

    @classmethod
    def fit(
        cls, predicted: NDArray[np.floating], true: NDArray[np.floating]
    ) -> ConformalCalibration:
        """Calibrate on (n, classes) predictions and true values of the calibration split.

        Raises:
            ValueError: shapes differ.
        """
        if predicted.shape != true.shape:
            raise ValueError(f"shapes differ: {predicted.shape} vs {true.shape}")
        residuals = np.sort(np.abs(np.asarray(true) - np.asarray(predicted)), axis=0)
        return cls(residuals.astype(np.float32))

    @property
    def size(self) -> int:
        """Calibration cases."""
        return int(self.residuals.shape[0])

    def half_widths(self, coverage: float) -> NDArray[np.float32]:
        """Per-class interval half-width for nominal ``coverage`` in (0, 1).

        When the calibration set is too small for that coverage (⌈(n+1)c⌉ > n) the half-width
        is 1, i.e. the whole [0, 1] range: honest rather than over-confident.

        Raises:
            ValueError: coverage outside (0, 1).
        """
        if not 0.0 < coverage < 1.0:
            raise ValueError(f"coverage must be in (0, 1), got {coverage}")
        rank = math.ceil((self.size + 1) * coverage)
        if rank > self.size:
            return np.ones(self.residuals.shape[1], np.float32)
        return self.residuals[rank - 1].astype(np.float32)

    def intervals(
        self, predicted: NDArray[np.floating], coverage: float
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """(lower, upper) arrays shaped like ``predicted`` (n, classes), clipped to [0, 1]."""
        half = self.half_widths(coverage)
        lower = np.clip(predicted - half, 0.0, 1.0).astype(np.float32)
        upper = np.clip(predicted + half, 0.0, 1.0).astype(np.float32)
        return lower, upper


def empirical_coverage(
    lower: NDArray[np.floating], upper: NDArray[np.floating], true: NDArray[np.floating]
) -> NDArray[np.float64]:
    """Fraction of cases whose true value lies in [lower, upper], per class (column)."""
    inside = (true >= lower - 1e-9) & (true <= upper + 1e-9)
    return inside.mean(axis=0).astype(np.float64)
