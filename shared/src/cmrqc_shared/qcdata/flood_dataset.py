"""A companion QC dataset of flooded segmentations (``cmrqc make-qc-flood-dataset``).

The ``unet`` family of the QC dataset holds the early checkpoints of a U-Net, whose output
labels half of the field of view as one class by intensity. No other family shows that
failure, so a predictor trained without ``unet`` has never seen a background Dice far below
1 and misjudges those cases (the unseen-family test). This writes, next to a QC dataset, a
second one with the same scans (hard links, no copies) and ``per_scan`` flooded versions of
each scan's true labels (:func:`~cmrqc_shared.qcdata.corruptions.flood`), family
``corruption``, member ``truth:flood``, for the splits asked (train and validation by
default: the test split is left as it is). Deterministic per seed; resumable.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cmrqc_shared.metrics import dice_per_class
from cmrqc_shared.qcdata.corruptions import flood
from cmrqc_shared.qcdata.dataset import QcDataset, QcDatasetWriter, QcSample

FAMILY = "corruption"
MEMBER = "truth:flood"


def write_flood_dataset(
    source: Path,
    out: Path,
    *,
    splits: tuple[str, ...] = ("train", "val"),
    per_scan: int = 2,
    seed: int = 0,
    progress: bool = True,
) -> int:
    """Write (or resume) the flood dataset of ``source`` under ``out``; returns its samples."""
    if out.resolve() == source.resolve():
        raise ValueError("the flood dataset must be written to its own folder")
    dataset = QcDataset(source)
    scans = sorted(
        {s.scan_id: s for s in dataset.samples if s.split in splits}.values(),
        key=lambda s: s.scan_id,
    )
    writer = QcDatasetWriter(out)
    for first in tqdm(scans, desc="flood", unit="scan", disable=not progress):
        if first.scan_id in writer.done_scans:
            continue
        _link_scan(source, out, first.scan_id)
        arrays = dataset.scan(first.scan_id)
        rng = np.random.default_rng([seed, first.seed, 0 if first.phase == "ED" else 1])
        for index in range(per_scan):
            severity = float(rng.uniform(0.0, 1.0))
            labels, params = flood(arrays.reference, rng, severity, arrays.image)
            sample = QcSample(
                sample_id=f"{first.scan_id}-flood{index:02d}",
                scan_id=first.scan_id,
                seed=first.seed,
                phase=first.phase,
                split=first.split,
                family=FAMILY,
                member=MEMBER,
                true_dsc=dice_per_class(labels, arrays.reference).model_dump(),
                params=_params(severity, params),
            )
            writer.write_sample(sample, labels.astype(np.uint8))
        writer.finish_scan(first.scan_id)
    return len(QcDataset(out).samples)


def _link_scan(source: Path, out: Path, scan_id: str) -> None:
    target = out / "scans" / f"{scan_id}.npz"
    if target.exists():
        return
    origin = source / "scans" / f"{scan_id}.npz"
    try:
        os.link(origin, target)
    except OSError:  # another file system: copy
        shutil.copyfile(origin, target)


def _params(severity: float, params: dict[str, Any]) -> dict[str, Any]:
    return {"source": "truth", "applied": [{"name": "flood", "severity": severity, **params}]}
