"""``cmrqc rca-labels``: RCA estimates for the samples of a QC dataset split, as JSON lines.

The input of the paper's Experiment 2 (a QC predictor trained on RCA labels instead of manual
ones): every chosen sample of the split (the split's WH-DSC bins capped at the median count, as
the predictor's training does; then a seeded subset of ``max_cases``) is RCA-labelled, and one
line per sample is appended to the output — ``sample_id``, ``rca_dsc`` (max over references),
``calibrated_dsc`` (when the reference set has a calibration), ``top_k_mean_dsc``, and for the
record ``true_dsc`` (never used by the predictor trained on RCA labels). Resumable: samples
already in the file are skipped. The true Dice stays in the file only for evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cmrqc_rca_labeller.rca import RcaEstimator
from cmrqc_rca_labeller.volume import CardiacVolume
from cmrqc_shared.qcdata.dataset import QcDataset, QcSample, balance_by_bins, bin_counts


def chosen_samples(
    dataset: QcDataset, split: str, max_cases: int | None, seed: int = 0
) -> list[QcSample]:
    """The split's bin-balanced samples, then a seeded subset of at most ``max_cases``.

    Raises:
        ValueError: the split has no samples.
    """
    samples = dataset.select(split=split)
    if not samples:
        raise ValueError(f"no {split} samples in {dataset.root}")
    cap = max(1, int(np.median(bin_counts(samples))))
    balanced = balance_by_bins(samples, np.random.default_rng([seed, sum(split.encode())]), cap)
    if max_cases is not None and max_cases < len(balanced):
        order = np.random.default_rng(seed + 17).permutation(len(balanced))[:max_cases]
        balanced = [balanced[i] for i in sorted(order)]
    return balanced


def label_dataset(
    estimator: RcaEstimator,
    dataset_root: Path,
    out: Path,
    *,
    split: str,
    max_cases: int | None,
    seed: int = 0,
    progress: bool = True,
) -> int:
    """Append the RCA labels of the chosen samples to ``out``; returns how many were added."""
    dataset = QcDataset(dataset_root)
    samples = chosen_samples(dataset, split, max_cases, seed)
    done: set[str] = set()
    if out.exists():
        done = {json.loads(line)["sample_id"] for line in out.read_text().splitlines() if line}
    todo = [s for s in samples if s.sample_id not in done]
    out.parent.mkdir(parents=True, exist_ok=True)
    added = 0
    scan_id, volume = None, None
    with open(out, "a") as handle:
        for sample in tqdm(todo, desc=f"rca labels ({split})", unit="case", disable=not progress):
            if sample.scan_id != scan_id:
                scan = dataset.scan(sample.scan_id)
                volume = CardiacVolume(scan.image, np.asarray(scan.affine, np.float64))
                scan_id = sample.scan_id
            assert volume is not None
            result = estimator.estimate(volume, dataset.segmentation(sample))
            record = {
                "sample_id": sample.sample_id,
                "split": split,
                "family": sample.family,
                "rca_dsc": result.estimated_dsc.model_dump(),
                "calibrated_dsc": (
                    result.calibrated_dsc.model_dump() if result.calibrated_dsc else None
                ),
                "top_k_mean_dsc": result.top_k_mean_dsc.model_dump(),
                "true_dsc": sample.true_dsc,
                "seconds": round(result.seconds, 3),
            }
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            added += 1
    return added
