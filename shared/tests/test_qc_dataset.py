"""The QC dataset format, bin balancing, the classical segmenter family."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cmrqc_shared.metrics import dice_per_class
from cmrqc_shared.qcdata.classical import segment_classical
from cmrqc_shared.qcdata.dataset import (
    QcDataset,
    QcDatasetWriter,
    QcSample,
    balance_by_bins,
    bin_counts,
    bin_index,
    split_of_seed,
    write_histogram_png,
)
from cmrqc_shared.qcdata.flood_dataset import write_flood_dataset
from cmrqc_shared.synth import render_study


def _sample(i: int, wh: float, family: str = "corruption", scan: str = "s") -> QcSample:
    dsc = {"BG": 0.99, "LV": wh, "LVM": wh, "RVC": wh, "WH": wh}
    return QcSample(f"x{i}", scan, 20_000, "ED", "train", family, "m", dsc)


def test_the_split_follows_the_seed_range() -> None:
    assert split_of_seed(20_000) == "train"
    assert split_of_seed(28_500) == "val"
    assert split_of_seed(29_999) == "test"
    with pytest.raises(ValueError, match="not in a qc-dataset"):
        split_of_seed(11_000)


def test_bins_are_the_papers_ten_equal_bins_with_one_in_the_last() -> None:
    assert [bin_index(x) for x in (0.0, 0.099, 0.1, 0.55, 0.999, 1.0)] == [0, 0, 1, 5, 9, 9]


def test_balancing_takes_the_smallest_bins_count_from_every_bin() -> None:
    samples = [_sample(i, (i % 10) / 10 + 0.05) for i in range(100)]
    samples += [_sample(100 + i, 0.95) for i in range(50)]
    balanced = balance_by_bins(samples, np.random.default_rng(0))
    assert bin_counts(samples)[9] == 60 and bin_counts(balanced) == [10] * 10


def test_a_resumed_writer_drops_samples_of_an_unfinished_scan(tmp_path: Path) -> None:
    writer = QcDatasetWriter(tmp_path)
    seg = np.zeros((2, 4, 4), np.uint8)
    writer.write_sample(_sample(1, 0.5, scan="done"), seg)
    writer.finish_scan("done")
    writer.write_sample(_sample(2, 0.5, scan="crashed"), seg)
    resumed = QcDatasetWriter(tmp_path)
    assert resumed.done_scans == {"done"}
    assert [s.sample_id for s in QcDataset(tmp_path).samples] == ["x1"]


def test_samples_round_trip_with_their_scan_and_segmentation(tmp_path: Path) -> None:
    writer = QcDatasetWriter(tmp_path)
    image = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    reference = np.zeros((3, 8, 8), np.uint8)
    reference[1, 2:5, 2:5] = 1
    writer.write_scan("s", image, reference, (1.5, 1.5), 8.0, np.eye(4))
    writer.write_sample(_sample(7, 0.3, family="classical"), reference)
    writer.finish_scan("s")
    dataset = QcDataset(tmp_path)
    (sample,) = dataset.select(split="train", families=["classical"])
    scan = dataset.scan(sample.scan_id)
    assert np.array_equal(scan.image, image) and scan.pixel_spacing_mm == (1.5, 1.5)
    assert np.array_equal(dataset.segmentation(sample), reference)
    assert dataset.select(exclude_families=["classical"]) == []


def test_the_histogram_png_is_written(tmp_path: Path) -> None:
    samples = [_sample(i, (i % 10) / 10 + 0.05) for i in range(30)]
    path = write_histogram_png(samples, samples, tmp_path / "h.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_classical_segmenter_finds_the_heart_but_is_clearly_imperfect() -> None:
    scores = []
    for seed in (29_001, 29_003, 29_006):
        phase = render_study(seed, phases=("ED",)).phase("ED")
        labels = segment_classical(phase.image, phase.pixel_spacing_mm)
        assert labels.shape == phase.labels.shape and set(np.unique(labels)) <= {0, 1, 2, 3}
        scores.append(dice_per_class(labels, phase.labels).WH)
    assert 0.4 < float(np.mean(scores)) < 0.95


def test_the_flood_dataset_links_the_scans_and_floods_the_truth_of_the_asked_splits(
    tmp_path: Path,
) -> None:
    source, out = tmp_path / "source", tmp_path / "flood"
    writer = QcDatasetWriter(source)
    rng = np.random.default_rng(0)
    for scan_id, seed, split in (("train-ED", 20_000, "train"), ("test-ED", 29_999, "test")):
        image = rng.random((3, 16, 16)).astype(np.float32)
        reference = np.zeros((3, 16, 16), np.uint8)
        reference[:, 4:9, 4:9] = 1
        writer.write_scan(scan_id, image, reference, (1.5, 1.5), 8.0, np.eye(4))
        sample = QcSample(
            f"{scan_id}-00",
            scan_id,
            seed,
            "ED",
            split,
            "classical",
            "m",
            dice_per_class(reference, reference).model_dump(),
        )
        writer.write_sample(sample, reference)
        writer.finish_scan(scan_id)

    assert write_flood_dataset(source, out, per_scan=3, progress=False) == 3
    flooded = QcDataset(out)
    assert {s.scan_id for s in flooded.samples} == {"train-ED"}, "train and val only"
    assert (out / "scans" / "train-ED.npz").samefile(source / "scans" / "train-ED.npz")
    truth = flooded.scan("train-ED").reference
    for sample in flooded.samples:
        assert (sample.family, sample.member, sample.split) == (
            "corruption",
            "truth:flood",
            "train",
        )
        recomputed = dice_per_class(flooded.segmentation(sample), truth).model_dump()
        assert sample.true_dsc == pytest.approx(recomputed)
    first = [s.true_dsc for s in flooded.samples]
    assert write_flood_dataset(source, out, per_scan=3, progress=False) == 3, "resumed: no more"
    assert [s.true_dsc for s in QcDataset(out).samples] == first
    with pytest.raises(ValueError, match="its own folder"):
        write_flood_dataset(source, source, progress=False)
