"""`make_qc_dataset`: every family, splits by seed range, true Dice recorded, resumable."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cmrqc_segmenter.qc_dataset import make_qc_dataset
from cmrqc_shared.metrics import dice_per_class
from cmrqc_shared.qcdata.dataset import QcDataset


def test_the_qc_dataset_holds_every_family_with_its_true_dice_and_resumes(tmp_path: Path) -> None:
    summary = make_qc_dataset(
        tmp_path, subjects={"train": 1, "test": 1}, corruptions_per_scan=2, progress=False
    )
    dataset = QcDataset(tmp_path)
    assert {s.family for s in dataset.samples} == {"unet", "classical", "corruption"}
    assert {s.split for s in dataset.samples} == {"train", "test"}
    assert summary["splits"]["train"]["scans"] == 2  # ED and ES
    sample = next(s for s in dataset.samples if s.family == "corruption")
    reference = dataset.scan(sample.scan_id).reference
    recomputed = dice_per_class(dataset.segmentation(sample), reference).model_dump()
    assert np.allclose(
        [recomputed[k] for k in sorted(recomputed)],
        [sample.true_dsc[k] for k in sorted(recomputed)],
    )
    unet = [s for s in dataset.samples if s.family == "unet"]
    assert min(s.wh_dsc for s in unet) > 0.9  # the committed model on held-out subjects
    assert (tmp_path / "dsc_histogram.png").exists()

    before = len(dataset.samples)
    make_qc_dataset(
        tmp_path, subjects={"train": 1, "test": 1}, corruptions_per_scan=2, progress=False
    )
    assert len(QcDataset(tmp_path).samples) == before
