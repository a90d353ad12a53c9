"""Experiment 2's plumbing: training targets taken from an RCA label file, never the truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cmrqc_qc_predictor.data import QcDatasets
from cmrqc_qc_predictor.training import _relabelled
from cmrqc_shared.datasets.splits import QC_TRAIN, QC_VAL
from cmrqc_shared.qcdata.dataset import QcDatasetWriter, QcSample

CLASSES = ("BG", "LV", "LVM", "RVC", "WH")


def _dataset(root: Path) -> list[QcSample]:
    writer = QcDatasetWriter(root)
    samples = []
    for seed, split in ((QC_TRAIN.start, "train"), (QC_VAL.start, "val")):
        scan_id = f"{seed}-ED"
        labels = np.zeros((2, 8, 8), np.uint8)
        writer.write_scan(scan_id, np.zeros((2, 8, 8)), labels, (1.0, 1.0), 8.0, np.eye(4))
        for member in range(2):
            sample = QcSample(
                sample_id=f"{scan_id}-{member}",
                scan_id=scan_id,
                seed=seed,
                phase="ED",
                split=split,
                family="corruption" if member else "classical",
                member=str(member),
                true_dsc=dict.fromkeys(CLASSES, 0.9),
            )
            writer.write_sample(sample, labels)
            samples.append(sample)
        writer.finish_scan(scan_id)
    return samples


def _write_labels(path: Path, samples: list[QcSample], rca: float) -> None:
    with open(path, "w") as handle:
        for sample in samples:
            record = {
                "sample_id": sample.sample_id,
                "rca_dsc": dict.fromkeys(CLASSES, rca),
                "calibrated_dsc": None,
                "true_dsc": sample.true_dsc,
            }
            handle.write(json.dumps(record) + "\n")


def test_the_targets_are_the_rca_labels_and_the_truth_only_on_request(tmp_path: Path) -> None:
    samples = _dataset(tmp_path / "ds")
    _write_labels(tmp_path / "labels.jsonl", samples, rca=0.4)
    dataset = QcDatasets([tmp_path / "ds"])
    train, val = _relabelled(dataset, tmp_path / "labels.jsonl", "calibrated_dsc", [])
    assert len(train) == 2 and len(val) == 2
    assert all(s.true_dsc["WH"] == 0.4 for s in train + val)  # calibrated missing: raw RCA
    train, _ = _relabelled(dataset, tmp_path / "labels.jsonl", "true_dsc", [])
    assert all(s.true_dsc["WH"] == 0.9 for s in train)
    train, _ = _relabelled(dataset, tmp_path / "labels.jsonl", "rca_dsc", ["classical"])
    assert [s.family for s in train] == ["corruption"]


def test_a_label_file_naming_unknown_samples_or_missing_a_split_is_refused(
    tmp_path: Path,
) -> None:
    samples = _dataset(tmp_path / "ds")
    dataset = QcDatasets([tmp_path / "ds"])
    stranger = QcSample("99-ED-0", "99-ED", 99, "ED", "train", "x", "0", {})
    _write_labels(tmp_path / "unknown.jsonl", [*samples, stranger], rca=0.5)
    with pytest.raises(ValueError, match="not in the dataset"):
        _relabelled(dataset, tmp_path / "unknown.jsonl", "rca_dsc", [])
    _write_labels(tmp_path / "train-only.jsonl", samples[:2], rca=0.5)
    with pytest.raises(ValueError, match="train and val"):
        _relabelled(dataset, tmp_path / "train-only.jsonl", "rca_dsc", [])
