"""The paper's Table 1 from predicted and true Dice, and the binary pass/fail statistics.

Table 1 (Robinson et al. 2018): mean absolute error (SD) per class over all cases, over the
poor (DSC < 0.5) and the good (DSC ≥ 0.5) cases. The paper reports one n per column for every
class, so the poor/good split is made on one Dice: the whole-heart true DSC, here too.

Binary classification at the whole-heart threshold (0.7): **positive = fail** (true WH DSC
< 0.7: the segmentation is not usable and the operator should act). TPR = failing
segmentations predicted to fail / all failing; FPR = usable segmentations predicted to fail /
all usable; accuracy = agreement. The prediction is the point estimate against the threshold
(as in the paper); the three-way verdict with intervals is scored separately
(``verdict_statistics``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from cmrqc_qc_predictor.classes import OUTPUT_CLASSES

WH = OUTPUT_CLASSES.index("WH")


def mae_per_class(predicted: NDArray[np.floating], true: NDArray[np.floating]) -> dict[str, float]:
    """Mean absolute error per class of (n, 5) arrays."""
    errors = np.abs(np.asarray(predicted) - np.asarray(true))
    return {name: float(errors[:, i].mean()) for i, name in enumerate(OUTPUT_CLASSES)}


def _summary(errors: NDArray[np.floating]) -> dict[str, float | int]:
    if errors.size == 0:
        return {"n": 0, "mae": float("nan"), "sd": float("nan")}
    return {"n": int(errors.size), "mae": float(errors.mean()), "sd": float(errors.std())}


def binary_statistics(
    predicted_wh: NDArray[np.floating], true_wh: NDArray[np.floating], threshold: float = 0.7
) -> dict[str, float | int]:
    """TPR, FPR, accuracy with positive = fail (DSC < threshold); counts included."""
    true_fail = np.asarray(true_wh) < threshold
    predicted_fail = np.asarray(predicted_wh) < threshold
    tp = int(np.sum(true_fail & predicted_fail))
    fn = int(np.sum(true_fail & ~predicted_fail))
    fp = int(np.sum(~true_fail & predicted_fail))
    tn = int(np.sum(~true_fail & ~predicted_fail))
    return {
        "positive": "fail (true WH DSC < threshold)",  # type: ignore[dict-item]
        "threshold": threshold,
        "tpr": tp / (tp + fn) if tp + fn else float("nan"),
        "fpr": fp / (fp + tn) if fp + tn else float("nan"),
        "accuracy": (tp + tn) / max(1, tp + tn + fp + fn),
        "tp": tp,
        "fn": fn,
        "fp": fp,
        "tn": tn,
    }


def table1(
    predicted: NDArray[np.floating], true: NDArray[np.floating], threshold: float = 0.7
) -> dict[str, Any]:
    """MAE (SD) per class over all, poor and good cases, plus the WH binary statistics."""
    predicted, true = np.asarray(predicted), np.asarray(true)
    errors = np.abs(predicted - true)
    poor = true[:, WH] < 0.5
    classes = {
        name: {
            "all": _summary(errors[:, i]),
            "dsc_lt_0.5": _summary(errors[poor, i]),
            "dsc_ge_0.5": _summary(errors[~poor, i]),
        }
        for i, name in enumerate(OUTPUT_CLASSES)
    }
    return {
        "n": len(true),
        "poor_good_split_on": "true WH DSC",
        "mae": classes,
        "binary_wh": binary_statistics(predicted[:, WH], true[:, WH], threshold),
    }


def verdict_statistics(
    verdicts: list[str], true_wh: NDArray[np.floating], threshold: float = 0.7
) -> dict[str, float | int]:
    """How the three-way WH verdicts (pass/fail/uncertain) fare against the truth."""
    true_pass = np.asarray(true_wh) >= threshold
    verdict = np.asarray(verdicts)
    confident = verdict != "uncertain"
    correct = ((verdict == "pass") & true_pass) | ((verdict == "fail") & ~true_pass)
    return {
        "n": len(verdict),
        "uncertain_fraction": float(np.mean(~confident)) if len(verdict) else float("nan"),
        "accuracy_when_confident": float(correct[confident].mean()) if confident.any() else 1.0,
        "false_pass": int(np.sum((verdict == "pass") & ~true_pass)),
        "false_fail": int(np.sum((verdict == "fail") & true_pass)),
    }
