"""Several QC datasets read as one: a companion dataset may share a scan only if it is the
very same scan (``cmrqc make-qc-flood-dataset`` hard-links its scans); anything else sharing
a scan id is refused, so no scan can hide in two datasets with different contents."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cmrqc_qc_predictor.data import QcDatasets
from cmrqc_shared.datasets.splits import QC_TRAIN
from cmrqc_shared.qcdata.dataset import QcDatasetWriter, QcSample
from cmrqc_shared.qcdata.flood_dataset import write_flood_dataset

CLASSES = ("BG", "LV", "LVM", "RVC", "WH")


def _source(root: Path, image_value: float = 0.0, member: str = "0") -> None:
    writer = QcDatasetWriter(root)
    scan_id = f"{QC_TRAIN.start}-ED"
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[:, 2:5, 2:5] = 1
    image = np.full((2, 8, 8), image_value, np.float32)
    image[:, 2:5, 2:5] += 1.0
    writer.write_scan(scan_id, image, labels, (1.0, 1.0), 8.0, np.eye(4))
    sample = QcSample(
        f"{scan_id}-{member}",
        scan_id,
        QC_TRAIN.start,
        "ED",
        "train",
        "classical",
        member,
        dict.fromkeys(CLASSES, 1.0),
    )
    writer.write_sample(sample, labels)
    writer.finish_scan(scan_id)


def test_a_flood_companion_shares_its_scans_and_adds_its_samples(tmp_path: Path) -> None:
    _source(tmp_path / "ds")
    write_flood_dataset(tmp_path / "ds", tmp_path / "flood", per_scan=2, progress=False)
    both = QcDatasets([tmp_path / "ds", tmp_path / "flood"])
    assert [s.family for s in both.select(split="train")] == [
        "classical",
        "corruption",
        "corruption",
    ]
    flooded = both.select(split="train", families=["corruption"])[0]
    assert both.root_of(flooded) == tmp_path / "flood"
    assert both.segmentation(flooded).shape == (2, 8, 8)


def test_the_same_scan_id_with_another_scan_file_is_refused(tmp_path: Path) -> None:
    _source(tmp_path / "a")
    _source(tmp_path / "b", image_value=0.5, member="1")
    with pytest.raises(ValueError, match=r"scan .* is in two datasets"):
        QcDatasets([tmp_path / "a", tmp_path / "b"])
