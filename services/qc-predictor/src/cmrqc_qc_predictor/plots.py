"""Figures people would rather see than read: training curves, error distributions, scatter."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cmrqc_qc_predictor.classes import OUTPUT_CLASSES

COLOURS = ("#777777", "#cc3311", "#009988", "#0077bb", "#ee7733")


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curve_png(history: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Train loss and per-class validation MAE per epoch; the selected epoch marked."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(epochs, [h["train_mse"] for h in history], "o-", label="train MSE")
    if all("val_mse" in h for h in history):
        left.plot(epochs, [h["val_mse"] for h in history], "s-", label="val MSE")
    left.set_xlabel("epoch")
    left.set_ylabel("MSE")
    left.set_yscale("log")
    left.legend()
    for colour, name in zip(COLOURS, OUTPUT_CLASSES, strict=True):
        right.plot(epochs, [h["val_mae"][name] for h in history], "o-", color=colour, label=name)
    best = min(history, key=lambda h: h["val_mae_mean"])
    right.axvline(best["epoch"], color="black", lw=0.8, ls="--", label="selected")
    right.set_xlabel("epoch")
    right.set_ylabel("validation MAE (DSC)")
    right.legend(ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def error_distribution_png(
    predicted: NDArray[np.floating], true: NDArray[np.floating], path: Path, title: str
) -> Path:
    """The paper's Fig. 3: the distribution of absolute errors per class (box + points)."""
    plt = _pyplot()
    errors = np.abs(np.asarray(predicted) - np.asarray(true))
    fig, axis = plt.subplots(figsize=(7, 4))
    parts = axis.violinplot([errors[:, i] for i in range(errors.shape[1])], showmedians=True)
    for body, colour in zip(parts["bodies"], COLOURS, strict=False):  # type: ignore[arg-type]
        body.set_facecolor(colour)
        body.set_alpha(0.5)
    axis.boxplot([errors[:, i] for i in range(errors.shape[1])], widths=0.15, showfliers=False)
    labels = [f"{name}\nMAE {errors[:, i].mean():.3f}" for i, name in enumerate(OUTPUT_CLASSES)]
    axis.set_xticks(range(1, len(OUTPUT_CLASSES) + 1), labels)
    axis.set_ylabel("absolute error |predicted − true DSC|")
    axis.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def scatter_png(
    predicted: NDArray[np.floating],
    true: NDArray[np.floating],
    path: Path,
    title: str,
    lower: NDArray[np.floating] | None = None,
    upper: NDArray[np.floating] | None = None,
    threshold: float = 0.7,
) -> Path:
    """Predicted vs true DSC per class (with intervals when given); WH threshold lines."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(OUTPUT_CLASSES), figsize=(4 * len(OUTPUT_CLASSES), 4))
    for i, (axis, name, colour) in enumerate(zip(axes, OUTPUT_CLASSES, COLOURS, strict=True)):
        if lower is not None and upper is not None:
            axis.vlines(true[:, i], lower[:, i], upper[:, i], color=colour, alpha=0.08, lw=1)
        axis.scatter(true[:, i], predicted[:, i], s=5, color=colour, alpha=0.6)
        axis.plot([0, 1], [0, 1], "k--", lw=0.8)
        if name == "WH":
            axis.axhline(threshold, color="red", lw=0.6)
            axis.axvline(threshold, color="red", lw=0.6)
        mae = float(np.abs(predicted[:, i] - true[:, i]).mean())
        axis.set_title(f"{name}: MAE {mae:.3f}")
        axis.set_xlabel("true DSC")
        axis.set_xlim(-0.02, 1.02)
        axis.set_ylim(-0.02, 1.02)
        axis.set_aspect("equal")
    axes[0].set_ylabel("predicted DSC")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
