"""``cmrqc make-qc-dataset``: segmentations of every quality, with their true Dice.

The QC predictor has to learn what bad segmentations look like. As Robinson et al. did with
a random forest at ten depths, each scan (one phase of one synthetic subject from the QC
seed ranges) is segmented by a family of methods, and the true per-class Dice of every
result against the exact labels is recorded:

* ``unet``: U-Net checkpoints from early to late training (``list_checkpoints``), or the
  committed model when no training directory is given;
* ``classical``: thresholding + connected components + morphology, at a random threshold
  scale (``cmrqc_shared.qcdata.classical``);
* ``corruption``: realistic corruptions of the true labels and of the final U-Net output
  (``cmrqc_shared.qcdata.corruptions``).

The dataset is written with ``QcDatasetWriter`` (resumable: finished scans are skipped), then
balanced per split by the paper's 10 whole-heart DSC bins; the histograms before and after
balancing are written as PNG (the paper's Fig. 1), and ``summary.json`` gives the sizes,
family counts and the balanced sample ids per split.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cmrqc_segmenter.checkpoints import list_checkpoints, load_builtin, load_checkpoint
from cmrqc_segmenter.inference import Segmenter
from cmrqc_shared.datasets.splits import QC_TEST, QC_TRAIN, QC_VAL
from cmrqc_shared.metrics import dice_per_class
from cmrqc_shared.qcdata.classical import segment_classical
from cmrqc_shared.qcdata.corruptions import random_corruption
from cmrqc_shared.qcdata.dataset import (
    QcDataset,
    QcDatasetWriter,
    QcSample,
    balance_by_bins,
    bin_counts,
    split_of_seed,
    write_histogram_png,
)
from cmrqc_shared.synth import render_study

logger = logging.getLogger(__name__)


def _segmenters(checkpoint_dir: Path | None, device: str) -> list[tuple[str, Segmenter]]:
    if checkpoint_dir is None:
        return [("builtin", load_builtin(device=device))]
    found = list_checkpoints(checkpoint_dir)
    if not found:
        raise FileNotFoundError(f"no checkpoints under {checkpoint_dir}/checkpoints")
    return [(f"step-{step}", load_checkpoint(path, device=device)) for step, path in found]


def make_qc_dataset(
    out: Path,
    *,
    subjects: dict[str, int],
    checkpoint_dir: Path | None = None,
    corruptions_per_scan: int = 6,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate (or resume) the dataset under ``out``; returns the summary.

    Args:
        subjects: synthetic subjects per split, e.g. ``{"train": 400, "val": 50, "test": 50}``;
            each subject gives two scans (ED, ES).
        checkpoint_dir: a ``cmrqc train segmenter`` output directory (its checkpoints make
            the ``unet`` family); None uses the committed model only.
    """
    ranges = {"train": QC_TRAIN, "val": QC_VAL, "test": QC_TEST}
    seeds = [s for split, count in subjects.items() for s in ranges[split].seeds(count)]
    segmenters = _segmenters(checkpoint_dir, device)
    writer = QcDatasetWriter(out)
    for subject in tqdm(seeds, desc="qc-dataset", unit="subject", disable=not progress):
        study = None
        for phase_name in ("ED", "ES"):
            scan_id = f"{subject}-{phase_name}"
            if scan_id in writer.done_scans:
                continue
            study = study or render_study(subject)
            phase = study.phase(phase_name)
            image, truth = phase.image.astype(np.float32), phase.labels
            writer.write_scan(
                scan_id,
                image,
                truth,
                phase.pixel_spacing_mm,
                phase.slice_spacing_mm,
                phase.affine,
            )
            rng = np.random.default_rng([seed, subject, 0 if phase_name == "ED" else 1])
            results: list[tuple[str, str, np.ndarray, dict[str, Any]]] = []
            for member, segmenter in segmenters:
                labels = segmenter.segment(image, phase.pixel_spacing_mm).labels
                results.append(("unet", member, labels, {}))
            scale = float(rng.uniform(0.8, 1.2))
            results.append(
                (
                    "classical",
                    "threshold-morphology",
                    segment_classical(image, phase.pixel_spacing_mm, threshold_scale=scale),
                    {"threshold_scale": scale},
                )
            )
            final_unet = results[len(segmenters) - 1][2]
            for index in range(corruptions_per_scan):
                source_name, source = ("truth", truth) if index % 2 == 0 else ("unet", final_unet)
                corrupted, applied = random_corruption(source, rng)
                results.append(
                    (
                        "corruption",
                        f"{source_name}:{'+'.join(a.name for a in applied)}",
                        corrupted,
                        {
                            "source": source_name,
                            "applied": [{"name": a.name, "severity": a.severity} for a in applied],
                        },
                    )
                )
            for index, (family, member, labels, params) in enumerate(results):
                sample = QcSample(
                    sample_id=f"{scan_id}-{index:02d}",
                    scan_id=scan_id,
                    seed=subject,
                    phase=phase_name,
                    split=str(split_of_seed(subject)),
                    family=family,
                    member=member,
                    true_dsc=dice_per_class(labels, truth).model_dump(),
                    params=params,
                )
                writer.write_sample(sample, labels.astype(np.uint8))
            writer.finish_scan(scan_id)
    return summarise(out, seed=seed)


def summarise(out: Path, *, seed: int = 0) -> dict[str, Any]:
    """Balance each split by WH DSC bins; write histograms and ``summary.json``."""
    dataset = QcDataset(out)
    rng = np.random.default_rng(seed)
    summary: dict[str, Any] = {"root": str(out), "splits": {}}
    all_before: list[QcSample] = []
    all_after: list[QcSample] = []
    for split in ("train", "val", "test"):
        samples = dataset.select(split=split)
        if not samples:
            continue
        balanced = balance_by_bins(samples, rng)
        all_before.extend(samples)
        all_after.extend(balanced)
        summary["splits"][split] = {
            "scans": len({s.scan_id for s in samples}),
            "samples": len(samples),
            "balanced_samples": len(balanced),
            "bins_before": bin_counts(samples),
            "bins_after": bin_counts(balanced),
            "families": dict(Counter(s.family for s in samples)),
            "balanced_families": dict(Counter(s.family for s in balanced)),
            "balanced_ids": [s.sample_id for s in balanced],
        }
    summary["histogram_png"] = str(
        write_histogram_png(
            all_before,
            all_after,
            out / "dsc_histogram.png",
            title="Whole-heart DSC of every segmentation (all splits), before / after balancing",
        )
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
