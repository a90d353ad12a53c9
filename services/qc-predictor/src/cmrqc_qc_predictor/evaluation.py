"""Evaluating a model artifact on the test split: Table 1, coverage, verdicts, figures.

Predictions go through ``predictor.predict_cases`` on the stored arrays — the exact code the
service runs (validation, preparation, network, intervals, verdict rules) — not through the
training caches.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from cmrqc_qc_predictor.artifact import QcModel
from cmrqc_qc_predictor.classes import OUTPUT_CLASSES
from cmrqc_qc_predictor.conformal import ConformalCalibration, empirical_coverage
from cmrqc_qc_predictor.data import QcDatasets, balanced_split, targets_of
from cmrqc_qc_predictor.plots import error_distribution_png, scatter_png
from cmrqc_qc_predictor.predictor import Case, predict_cases
from cmrqc_qc_predictor.scoring import WH, mae_per_class, table1, verdict_statistics
from cmrqc_qc_predictor.verdicts import DEFAULT_THRESHOLDS
from cmrqc_shared.qcdata.dataset import QcSample, bin_counts

logger = logging.getLogger(__name__)


def test_samples(
    dataset: QcDatasets, *, seed: int, holdout_family: str | None, max_cases: int | None
) -> list[QcSample]:
    """The balanced test split: family ``holdout_family`` alone when given, else all families.

    ``max_cases`` keeps a seeded random subset (for the slow paper model on a CPU).
    """
    samples = balanced_split(dataset, "test", seed=seed, only_family=holdout_family)
    if max_cases is not None and max_cases < len(samples):
        keep = np.random.default_rng(seed + 7).permutation(len(samples))[:max_cases]
        samples = [samples[i] for i in sorted(keep)]
    return samples


def _predict_samples(
    model: QcModel,
    dataset: QcDatasets,
    samples: Sequence[QcSample],
    device: torch.device,
    views: int,
    calibration: ConformalCalibration,
    coverage: float,
    threshold: float,
    progress: bool,
    description: str,
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32], list[str], int]:
    """(predicted, lower, upper, WH verdicts, scans) for ``samples`` through the service's
    ``predict_cases``, one scan's segmentations at a time."""
    from tqdm import tqdm

    by_scan: dict[str, list[int]] = defaultdict(list)
    for index, sample in enumerate(samples):
        by_scan[sample.scan_id].append(index)
    predicted = np.zeros((len(samples), len(OUTPUT_CLASSES)), np.float32)
    lower, upper = np.zeros_like(predicted), np.zeros_like(predicted)
    verdicts: list[str] = [""] * len(samples)
    with tqdm(total=len(samples), desc=description, disable=not progress, unit="case") as bar:
        for scan_id, indices in by_scan.items():
            scan = dataset.scan(scan_id)
            cases = [
                Case(
                    scan.image,
                    dataset.segmentation(samples[i]),
                    scan.pixel_spacing_mm,
                    scan.slice_spacing_mm,
                )
                for i in indices
            ]
            results = predict_cases(
                model,
                cases,
                device=device,
                thresholds={"WH": threshold},
                coverage=coverage,
                views=views,
                calibration=calibration,
            )
            for i, result in zip(indices, results, strict=True):
                predicted[i] = [result.dsc[c] for c in OUTPUT_CLASSES]
                if result.lower is not None and result.upper is not None:
                    lower[i] = [result.lower[c] for c in OUTPUT_CLASSES]
                    upper[i] = [result.upper[c] for c in OUTPUT_CLASSES]
                verdicts[i] = result.decision.verdict.value
            bar.update(len(indices))
    return predicted, lower, upper, verdicts, len(by_scan)


def fit_view_calibration(
    model: QcModel,
    dataset: QcDatasets,
    views: int,
    *,
    seed: int = 0,
    holdout_family: str | None = None,
    progress: bool = True,
) -> ConformalCalibration:
    """Split-conformal calibration of the prediction averaged over ``views`` in-plane views,
    on the balanced validation split (without ``holdout_family``): the split the model was
    selected and calibrated on for one view."""
    excluded = [holdout_family] if holdout_family else []
    samples = balanced_split(dataset, "val", seed=seed, exclude_families=excluded)
    device = next(model.network.parameters()).device
    predicted, *_ = _predict_samples(
        model,
        dataset,
        samples,
        device,
        views,
        model.calibration,  # only the intervals depend on it, and they are not used here
        0.9,
        DEFAULT_THRESHOLDS["WH"],
        progress,
        f"calibrate {views} views",
    )
    return ConformalCalibration.fit(predicted, targets_of(samples))


def evaluate(
    model: QcModel,
    dataset_roots: Sequence[Path],
    out_dir: Path,
    *,
    seed: int = 0,
    holdout_family: str | None = None,
    max_cases: int | None = None,
    coverage: float = 0.9,
    threshold: float = DEFAULT_THRESHOLDS["WH"],
    progress: bool = True,
    label: str = "",
    views: int = 1,
) -> dict[str, Any]:
    """Score ``model`` on the test split; writes the figures to ``out_dir``; returns the report.

    ``views`` > 1 averages the fast model over in-plane views (``predictor.run_network``), with
    the artifact's conformal calibration for that many views when it has one (what a service
    serving that many views uses), else one fitted here on the validation split
    (``fit_view_calibration``).

    Raises:
        FileNotFoundError: no dataset at one of ``dataset_roots``.
        ValueError: an empty test selection.
    """
    dataset = QcDatasets(dataset_roots)
    samples = test_samples(dataset, seed=seed, holdout_family=holdout_family, max_cases=max_cases)
    device = next(model.network.parameters()).device
    predict = partial(
        _predict_samples,
        model,
        dataset,
        device=device,
        views=views,
        coverage=coverage,
        threshold=threshold,
        progress=progress,
    )
    if views == 1 or views in model.view_calibrations:
        calibration = model.calibration_for(views)
        calibration_source = f"the artifact's (validation split, {views} view(s))"
    else:
        calibration = fit_view_calibration(
            model, dataset, views, seed=seed, holdout_family=holdout_family, progress=progress
        )
        calibration_source = f"refitted on the validation split with {views} views"
    predicted, lower, upper, verdicts, scans = predict(
        samples, calibration=calibration, description="evaluate"
    )
    true = targets_of(samples)
    covered = empirical_coverage(lower, upper, true)
    families = sorted({s.family for s in samples})
    per_family = {
        family: {
            "n": int(sum(s.family == family for s in samples)),
            "mae": mae_per_class(
                predicted[[s.family == family for s in samples]],
                true[[s.family == family for s in samples]],
            ),
        }
        for family in families
    }
    title = label or f"{model.architecture} {model.version}"
    scope = f"held-out family {holdout_family}" if holdout_family else "test split"
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = f"-holdout-{holdout_family}" if holdout_family else ""
    figures = {
        "mae_distribution": str(
            error_distribution_png(
                predicted,
                true,
                out_dir / f"mae-distribution{suffix}.png",
                f"{title}: absolute error per class ({scope}, n = {len(samples)})",
            )
        ),
        "scatter": str(
            scatter_png(
                predicted,
                true,
                out_dir / f"scatter{suffix}.png",
                f"{title}: predicted vs true DSC ({scope}, n = {len(samples)}; "
                f"{int(coverage * 100)}% intervals)",
                lower,
                upper,
                threshold,
            )
        ),
    }
    np.savez(
        out_dir / f"predictions{suffix}.npz",
        predicted=predicted,
        true=true,
        lower=lower,
        upper=upper,
        sample_ids=np.array([s.sample_id for s in samples]),
    )
    return {
        "model": {
            "architecture": model.architecture,
            "name": model.name,
            "version": model.version,
            "sha256": model.sha256,
            "device": str(device),
            "threads": torch.get_num_threads(),
        },
        "dataset": [str(root) for root in dataset_roots],
        "scope": scope,
        "holdout_family": holdout_family,
        "families": families,
        "test_scans": scans,
        "views": views,
        "test_wh_bins": bin_counts(samples),
        "max_cases": max_cases,
        "table1": table1(predicted, true, threshold),
        "coverage": {
            "nominal": coverage,
            "empirical": dict(zip(OUTPUT_CLASSES, map(float, covered), strict=True)),
            "half_width": dict(
                zip(OUTPUT_CLASSES, map(float, calibration.half_widths(coverage)), strict=True)
            ),
            "calibration_cases": calibration.size,
            "calibration": calibration_source,
        },
        "verdicts_wh": verdict_statistics(verdicts, true[:, WH], threshold),
        "per_family": per_family,
        "figures": figures,
    }
