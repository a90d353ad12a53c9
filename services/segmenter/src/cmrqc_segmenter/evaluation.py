"""Accuracy on the held-out synthetic test split: Dice distributions and example overlays."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cmrqc_segmenter.data import LabelledVolume, cached_volumes
from cmrqc_segmenter.inference import Segmenter
from cmrqc_segmenter.metrics import FOREGROUND_CLASSES, dice_per_class
from cmrqc_shared.datasets.splits import SEGMENTER_TEST

TARGETS: dict[str, float] = {"LV": 0.94, "LVM": 0.88, "RVC": 0.90}
"""Mean Dice targets (Bai et al. 2018, UK Biobank: human-level agreement)."""
_COLOURS = {1: (0.90, 0.20, 0.20), 2: (0.20, 0.75, 0.25), 3: (0.25, 0.45, 0.95)}


def distribution(values: list[float]) -> dict[str, float]:
    """Mean, standard deviation, median, percentiles, min and max of ``values``."""
    array = np.asarray(values, dtype=np.float64)
    p5, p25, p75, p95 = np.percentile(array, [5, 25, 75, 95])
    return {
        "mean": float(array.mean()),
        "std": float(array.std()),
        "median": float(np.median(array)),
        "p5": float(p5),
        "p25": float(p25),
        "p75": float(p75),
        "p95": float(p95),
        "min": float(array.min()),
        "max": float(array.max()),
    }


def evaluate_test_split(
    segmenter: Segmenter,
    *,
    subjects: int = 100,
    out_dir: Path,
    cache_dir: Path | None = None,
    workers: int = 2,
    batch_volumes: int = 4,
    examples: int = 3,
    progress: bool = True,
) -> dict[str, Any]:
    """Segment the first ``subjects`` SEGMENTER_TEST subjects (ED and ES) and report Dice.

    Writes ``dice_distributions.png``, ``examples.png`` and ``per_volume.json`` into
    ``out_dir``; returns the report (also written as ``report.json``).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    volumes = cached_volumes(
        SEGMENTER_TEST.seeds(subjects),
        cache_dir,
        workers=workers,
        progress=progress,
        description="test subjects",
    )
    rows: list[dict[str, Any]] = []
    recentred = 0
    bar = tqdm(total=len(volumes), desc="segmenting test volumes", disable=not progress)
    for start in range(0, len(volumes), batch_volumes):
        chunk = volumes[start : start + batch_volumes]
        results = segmenter.segment_many([(v.image, v.pixel_spacing_mm) for v in chunk])
        for volume, result in zip(chunk, results, strict=True):
            recentred += int(result.recentred)
            rows.append(
                {
                    "seed": volume.seed,
                    "phase": volume.phase,
                    "shape": list(volume.image.shape),
                    **dice_per_class(result.labels, volume.labels),
                }
            )
        bar.update(len(chunk))
    bar.close()
    names = (*FOREGROUND_CLASSES, "WH")
    report: dict[str, Any] = {
        "model": {
            "name": segmenter.identity.name,
            "version": segmenter.identity.version,
            "artifact_sha256": segmenter.identity.artifact_sha256,
            "source": segmenter.identity.source,
            "precision": segmenter.precision,
            "device": str(segmenter.device),
        },
        "split": "SEGMENTER_TEST",
        "seeds": [SEGMENTER_TEST.start, SEGMENTER_TEST.start + subjects],
        "volumes": len(rows),
        "phases": sorted({r["phase"] for r in rows}),
        "recentred_volumes": recentred,
        "dice": {name: distribution([r[name] for r in rows]) for name in names},
        "dice_by_phase": {
            phase: {
                name: float(np.mean([r[name] for r in rows if r["phase"] == phase]))
                for name in names
            }
            for phase in sorted({r["phase"] for r in rows})
        },
        "targets": TARGETS,
    }
    report["meets_targets"] = {
        name: report["dice"][name]["mean"] >= target for name, target in TARGETS.items()
    }
    order = np.argsort([np.mean([r[n] for n in FOREGROUND_CLASSES]) for r in rows])
    worst = [int(i) for i in order[:examples]]
    best = [int(i) for i in order[::-1][:examples]]
    report["figures"] = {
        "distributions": str(plot_distributions(rows, out_dir / "dice_distributions.png")),
        "examples": str(
            plot_examples(
                segmenter,
                [(volumes[i], rows[i], "best") for i in best]
                + [(volumes[i], rows[i], "worst") for i in worst],
                out_dir / "examples.png",
            )
        ),
    }
    (out_dir / "per_volume.json").write_text(json.dumps(rows, indent=1))
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report


def plot_distributions(rows: list[dict[str, Any]], path: Path) -> Path:
    """Box plots with every volume's Dice per class and phase, and the target lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = (*FOREGROUND_CLASSES, "WH")
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    rng = np.random.default_rng(0)
    for index, name in enumerate(names):
        values = np.array([r[name] for r in rows])
        ax.boxplot(values, positions=[index], widths=0.5, showfliers=False)
        for phase, colour in (("ED", "tab:blue"), ("ES", "tab:orange")):
            mask = np.array([r["phase"] == phase for r in rows])
            x = index + rng.uniform(-0.18, 0.18, mask.sum())
            ax.scatter(
                x, values[mask], s=7, alpha=0.5, color=colour, label=phase if not index else None
            )
        if name in TARGETS:
            ax.hlines(TARGETS[name], index - 0.35, index + 0.35, colors="red", linestyles="--")
        ax.text(index, 1.005, f"mean {values.mean():.3f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("Dice (3D, native grid)")
    lowest = min(min(r[n] for r in rows) for n in names)
    ax.set_ylim(max(0.0, lowest - 0.02), 1.02)
    ax.set_title(f"Dice on the synthetic test split ({len(rows)} volumes); red: targets")
    ax.legend(loc="lower left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_examples(
    segmenter: Segmenter,
    cases: list[tuple[LabelledVolume, dict[str, Any], str]],
    path: Path,
) -> Path:
    """One row per case: image, reference labels, prediction, on the slice with most heart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(cases), 3, figsize=(9, 3 * len(cases)), dpi=100, squeeze=False)
    for row, (volume, scores, kind) in enumerate(cases):
        labels = segmenter.segment(volume.image, volume.pixel_spacing_mm).labels
        k = int(np.argmax((volume.labels > 0).sum(axis=(1, 2))))
        image = volume.image[k].astype(np.float32)
        lo, hi = np.percentile(image, [0.5, 99.5])
        for col, (title, overlay) in enumerate(
            (("image", None), ("reference", volume.labels[k]), ("prediction", labels[k]))
        ):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray", vmin=lo, vmax=hi)
            if overlay is not None:
                rgba = np.zeros((*overlay.shape, 4))
                for value, colour in _COLOURS.items():
                    rgba[overlay == value] = (*colour, 0.45)
                ax.imshow(rgba)
            ax.set_axis_off()
            if col == 0:
                ax.set_title(
                    f"{kind}: seed {volume.seed} {volume.phase} slice {k}", fontsize=9, loc="left"
                )
            elif col == 2:
                ax.set_title(
                    " ".join(f"{n} {scores[n]:.2f}" for n in FOREGROUND_CLASSES), fontsize=9
                )
            else:
                ax.set_title(title, fontsize=9)
    fig.suptitle("Best and worst test volumes (red LV, green LVM, blue RVC)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / len(cases)))
    fig.savefig(path)
    plt.close(fig)
    return path
