"""``cmrqc evaluate rca``: RCA estimates against the true Dice on a synthetic test split.

Test cases come from the QC test split (``cmrqc_shared.datasets.splits.QC_TEST``), never seen
by the reference set (``RCA_REFERENCES``): each scan (even seeds end-diastole, odd seeds
end-systole, rendered with the default artefact probabilities) gets segmentations of every
quality — ``corruptions_per_scan`` random corruptions of its true labels
(``cmrqc_shared.qcdata.corruptions.random_corruption``) and one classical segmentation
(``cmrqc_shared.qcdata.classical.segment_classical`` with a random threshold scale). The true
Dice is ``cmrqc_shared.metrics.dice_per_class`` against the generator's exact labels.

Reported: per-class mean absolute error of the RCA estimate (max over references) and of
the top-k mean, Pearson correlation, and whole-heart pass/fail accuracy at a threshold (a
case passes when its WH Dice is at least the threshold), plus a scatter plot per class.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from cmrqc_rca_labeller.calibration import RcaCalibration
from cmrqc_rca_labeller.engine import CLASS_NAMES
from cmrqc_rca_labeller.rca import RcaEstimator
from cmrqc_rca_labeller.volume import CardiacVolume
from cmrqc_shared.datasets.splits import QC_TEST, QC_VAL, RCA_HOLDOUT, SeedRange
from cmrqc_shared.metrics import dice_per_class


@dataclass(frozen=True)
class EvaluationCase:
    """One test segmentation with its image and true labels."""

    case_id: str
    seed: int
    phase: str
    family: str
    image: CardiacVolume
    segmentation: NDArray[np.uint8]
    truth: NDArray[np.uint8]
    pixel_spacing_mm: tuple[float, float]


EVALUATION_SPLITS: dict[str, SeedRange] = {"test": QC_TEST, "val": QC_VAL, "holdout": RCA_HOLDOUT}
"""What ``--split`` names: QC_TEST to report, QC_VAL to tune and fit calibrations, RCA_HOLDOUT
for preregistered confirmations once QC_TEST was used up."""


def evaluation_cases(
    scans: int,
    *,
    corruptions_per_scan: int = 2,
    split: SeedRange = QC_TEST,
    skip_scans: int = 0,
) -> Iterator[EvaluationCase]:
    """Deterministic cases from ``scans`` seeds of ``split`` after the first ``skip_scans``
    (QC_TEST to report; QC_VAL to tune settings without touching the test split). A case
    depends on its seed only, so ranges of scans can be evaluated apart and put together.

    Raises:
        ValueError: more scans than the split holds.
    """
    from cmrqc_shared.qcdata.classical import segment_classical
    from cmrqc_shared.qcdata.corruptions import random_corruption
    from cmrqc_shared.synth import render_study

    for seed in split.seeds(skip_scans + scans)[skip_scans:]:
        phase = "ED" if seed % 2 == 0 else "ES"
        volume = render_study(seed, phases=(phase,)).phase(phase)  # type: ignore[arg-type]
        image = CardiacVolume(volume.image, volume.affine)
        rng = np.random.default_rng([seed, 0x52CA])
        for n in range(corruptions_per_scan):
            corrupted, applied = random_corruption(volume.labels, rng)
            yield EvaluationCase(
                case_id=f"{seed}-{phase}-corruption{n}-" + "+".join(a.name for a in applied),
                seed=seed,
                phase=phase,
                family="corruption",
                image=image,
                segmentation=corrupted,
                truth=volume.labels,
                pixel_spacing_mm=volume.pixel_spacing_mm,
            )
        scale = float(rng.uniform(0.8, 1.2))
        yield EvaluationCase(
            case_id=f"{seed}-{phase}-classical-t{scale:.2f}",
            seed=seed,
            phase=phase,
            family="classical",
            image=image,
            segmentation=segment_classical(
                volume.image, volume.pixel_spacing_mm, threshold_scale=scale
            ),
            truth=volume.labels,
            pixel_spacing_mm=volume.pixel_spacing_mm,
        )


@dataclass(frozen=True)
class CaseResult:
    case_id: str
    family: str
    true_dsc: dict[str, float]
    rca_dsc: dict[str, float]
    top_k_mean_dsc: dict[str, float]
    seconds: float
    calibrated_dsc: dict[str, float] | None = None
    references: list[dict[str, object]] | None = None
    """Every registered reference: id, image similarity after registration, per-class Dice
    (to study estimators other than the maximum without re-running the registrations)."""
    kept_statistics: dict[str, float] | None = None
    """``RcaResult.kept_statistics``: what a calibration may read besides the maximum."""


def _mae(results: list[CaseResult], field: str) -> dict[str, float]:
    return {
        name: float(np.mean([abs(getattr(r, field)[name] - r.true_dsc[name]) for r in results]))
        for name in CLASS_NAMES
    }


def _pearson(results: list[CaseResult], field: str) -> dict[str, float]:
    out = {}
    for name in CLASS_NAMES:
        a = np.array([r.true_dsc[name] for r in results])
        b = np.array([getattr(r, field)[name] for r in results])
        out[name] = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else math.nan
    return out


def summarise(results: list[CaseResult], threshold: float = 0.7) -> dict[str, object]:
    """MAE, correlation and WH pass/fail accuracy of the estimate and the top-k mean."""
    truth_pass = np.array([r.true_dsc["WH"] >= threshold for r in results])
    rca_pass = np.array([r.rca_dsc["WH"] >= threshold for r in results])
    topk_pass = np.array([r.top_k_mean_dsc["WH"] >= threshold for r in results])
    return {
        "cases": len(results),
        "threshold": threshold,
        "mae": _mae(results, "rca_dsc"),
        "mae_top_k_mean": _mae(results, "top_k_mean_dsc"),
        "pearson": _pearson(results, "rca_dsc"),
        "wh_accuracy": float(np.mean(truth_pass == rca_pass)),
        "wh_accuracy_top_k_mean": float(np.mean(truth_pass == topk_pass)),
        "wh_false_pass": int(np.sum(rca_pass & ~truth_pass)),
        "wh_false_fail": int(np.sum(~rca_pass & truth_pass)),
        "true_pass_fraction": float(np.mean(truth_pass)),
        "seconds_per_case_mean": float(np.mean([r.seconds for r in results])),
        **_calibrated_summary(results, truth_pass, threshold),
    }


def _calibrated_summary(
    results: list[CaseResult], truth_pass: NDArray[np.bool_], threshold: float
) -> dict[str, object]:
    """MAE and WH accuracy of the calibrated estimate, when every case has one."""
    if not results or any(r.calibrated_dsc is None for r in results):
        return {}
    calibrated_pass = np.array(
        [r.calibrated_dsc["WH"] >= threshold for r in results if r.calibrated_dsc]
    )
    return {
        "mae_calibrated": _mae(results, "calibrated_dsc"),
        "wh_accuracy_calibrated": float(np.mean(truth_pass == calibrated_pass)),
    }


def fit_calibration(
    results: list[CaseResult],
    *,
    reference_set: str,
    fitted_on: str,
    features: tuple[str, ...] = (),
) -> RcaCalibration:
    """The correction of the raw estimate (max over references) on ``results`` (validation
    cases only: a calibration fitted on the test split would be reported on the data it was
    fitted to); ``features``: what each class's score reads (``calibration.CALIBRATION_FORMS``;
    the kept references' statistics come from each result's ``kept_statistics``)."""
    raw = {name: np.array([r.rca_dsc[name] for r in results]) for name in CLASS_NAMES}
    statistics = [r.kept_statistics or {} for r in results]
    if statistics and all(statistics):
        raw |= {name: np.array([s[name] for s in statistics]) for name in statistics[0]}
    true = {name: np.array([r.true_dsc[name] for r in results]) for name in CLASS_NAMES}
    return RcaCalibration.fit(
        raw, true, reference_set=reference_set, fitted_on=fitted_on, features=features
    )


def read_cases(path: Path) -> list[CaseResult]:
    """The ``cases.jsonl`` an evaluation wrote."""
    with open(path) as handle:
        return [CaseResult(**json.loads(line)) for line in handle if line.strip()]


def run_evaluation(
    estimator: RcaEstimator,
    scans: int,
    *,
    out_dir: Path | None = None,
    corruptions_per_scan: int = 2,
    threshold: float = 0.7,
    progress: bool = True,
    split: SeedRange = QC_TEST,
    skip_scans: int = 0,
) -> tuple[dict[str, object], list[CaseResult]]:
    """Estimate every case; write ``cases.jsonl`` and the scatter PNG under ``out_dir``."""
    results: list[CaseResult] = []
    cases = evaluation_cases(
        scans, corruptions_per_scan=corruptions_per_scan, split=split, skip_scans=skip_scans
    )
    total = scans * (corruptions_per_scan + 1)
    for case in tqdm(cases, total=total, desc="rca evaluate", unit="case", disable=not progress):
        truth = dice_per_class(case.segmentation, case.truth).model_dump()
        estimate = estimator.estimate(case.image, case.segmentation)
        results.append(
            CaseResult(
                case_id=case.case_id,
                family=case.family,
                true_dsc=truth,
                rca_dsc=estimate.estimated_dsc.model_dump(),
                top_k_mean_dsc=estimate.top_k_mean_dsc.model_dump(),
                seconds=estimate.seconds,
                calibrated_dsc=(
                    estimate.calibrated_dsc.model_dump() if estimate.calibrated_dsc else None
                ),
                references=[
                    {
                        "id": reference.reference_id,
                        "similarity": estimate.reference_similarity.get(reference.reference_id),
                        "dsc": reference.dsc.model_dump(),
                    }
                    for reference in estimate.per_reference
                ],
                kept_statistics=estimate.kept_statistics,
            )
        )
    summary = summarise(results, threshold)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "cases.jsonl", "w") as handle:
            for result in results:
                handle.write(json.dumps(asdict(result)) + "\n")
        summary["split"] = f"{split.purpose}/{split.split}"
        summary["scatter_png"] = str(
            write_scatter_png(results, out_dir / "rca_vs_true.png", summary, split)
        )
    return summary, results


def write_scatter_png(
    results: list[CaseResult],
    path: Path,
    summary: dict[str, object],
    split: SeedRange = QC_TEST,
    field: Literal["rca_dsc", "calibrated_dsc"] = "rca_dsc",
) -> Path:
    """RCA estimate vs true Dice, one panel per class, coloured by segmentation family.

    ``field``: ``rca_dsc`` (the maximum over references) or ``calibrated_dsc``; ``summary``'s
    ``mae`` and ``wh_accuracy`` are shown in the titles and should be of that field.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(20, 4.4))
    colours = {"corruption": "#4477aa", "classical": "#cc6677"}
    mae = summary["mae"]
    assert isinstance(mae, dict)
    threshold = float(summary["threshold"])  # type: ignore[arg-type]
    for axis, name in zip(axes, CLASS_NAMES, strict=True):
        for family, colour in colours.items():
            chosen = [r for r in results if r.family == family]
            axis.scatter(
                [r.true_dsc[name] for r in chosen],
                [getattr(r, field)[name] for r in chosen],
                s=12,
                c=colour,
                alpha=0.75,
                label=family,
            )
        low = 0.8 if name == "BG" else 0.0
        axis.plot([low, 1], [low, 1], color="black", lw=0.8)
        axis.set_xlim(low, 1.0)
        axis.set_ylim(low, 1.0)
        if name == "WH":
            axis.axvline(threshold, color="grey", lw=0.6, ls="--")
            axis.axhline(threshold, color="grey", lw=0.6, ls="--")
            title = f"WH  MAE {mae[name]:.3f}  acc {summary['wh_accuracy']:.3f}"
        else:
            title = f"{name}  MAE {mae[name]:.3f}"
        axis.set_title(title)
        axis.set_xlabel("true Dice")
        axis.set_ylabel(
            "calibrated RCA estimate"
            if field == "calibrated_dsc"
            else "RCA estimate (max over references)"
        )
    axes[0].legend(loc="upper left")
    name = "QC_TEST" if split == QC_TEST else f"{split.purpose}/{split.split}"
    what = "calibrated RCA" if field == "calibrated_dsc" else "RCA"
    fig.suptitle(f"{what} vs true Dice, {summary['cases']} synthetic segmentations ({name})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_example_png(
    estimator: RcaEstimator, case: EvaluationCase, path: Path, references: int = 3
) -> Path:
    """One case as a figure: the test slice with its segmentation, then the best references
    with their verified labels (filled) and the propagated segmentation (contours)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from cmrqc_rca_labeller.volume import to_canonical

    result = estimator.estimate(
        case.image, case.segmentation, top_references=references, keep_fields=True
    )
    truth = dice_per_class(case.segmentation, case.truth)
    canon = to_canonical(CardiacVolume(case.image.image, case.image.affine, case.segmentation))
    assert canon.labels is not None
    occupied = np.flatnonzero(case.truth.reshape(case.truth.shape[0], -1).any(1))
    k = int(occupied[len(occupied) // 2]) if len(occupied) else canon.image.shape[0] // 2
    colours = ListedColormap(
        [(0, 0, 0, 0), (0.9, 0.2, 0.2, 0.45), (0.2, 0.8, 0.2, 0.45), (0.2, 0.4, 1, 0.45)]
    )

    fig, axes = plt.subplots(1, 1 + len(result.fields), figsize=(4 * (1 + len(result.fields)), 4.3))
    axes[0].imshow(canon.image[k], cmap="gray")
    axes[0].imshow(canon.labels[k], cmap=colours, vmin=0, vmax=3, interpolation="nearest")
    axes[0].set_title(f"test + segmentation\ntrue WH Dice {truth.WH:.3f}")
    for axis, field, reference in zip(axes[1:], result.fields, result.top_references, strict=False):
        axis.imshow(field.image, cmap="gray")
        axis.imshow(field.labels, cmap=colours, vmin=0, vmax=3, interpolation="nearest")
        for label, colour in ((1, "red"), (2, "lime"), (3, "deepskyblue")):
            if np.any(field.propagated == label):
                axis.contour(field.propagated == label, levels=[0.5], colors=colour, linewidths=1.2)
        axis.set_title(f"{field.reference_id}\npropagated WH Dice {reference.dsc.WH:.3f}")
    for axis in axes:
        axis.axis("off")
    fig.suptitle(
        f"RCA estimate WH {result.estimated_dsc.WH:.3f} (max over {result.references_registered} "
        f"registered of {result.references_screened}); filled: verified labels, lines: "
        "propagated segmentation",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
