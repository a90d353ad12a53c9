"""The QC dataset on disk: (image, segmentation, true per-class Dice) samples, by scan.

Layout under a root folder::

    manifest.jsonl        one JSON line per sample (QcSample), appended as generated
    scans/<scan_id>.npz   image (float32, slices×rows×cols), reference labels, spacing, affine
    segs/<sample_id>.npz  the sample's segmentation (uint8, compressed)
    done_scans.txt        scans fully generated (resume skips them)

A scan is one cardiac phase of one synthetic subject; its split follows from the subject's
seed range (``cmrqc_shared.datasets.splits``), so a scan never appears in two splits.
Every sample records the family that produced it (``unet``, ``classical``, ``corruption``)
and the member of that family (checkpoint, parameters), so generalisation to an unseen
family can be tested by holding a family out.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cmrqc_shared.datasets.splits import ALL_RANGES, Split
from cmrqc_shared.events.common import ClassScores

DSC_BINS = np.linspace(0.0, 1.0, 11)
"""The paper's 10 equally spaced whole-heart DSC bins over [0, 1]."""


@dataclass(frozen=True)
class QcSample:
    """One segmentation of one scan, with its true Dice against the reference labels."""

    sample_id: str
    scan_id: str
    seed: int
    phase: str
    split: str
    family: str
    member: str
    true_dsc: dict[str, float]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def wh_dsc(self) -> float:
        return float(self.true_dsc["WH"])

    def scores(self) -> ClassScores:
        return ClassScores(**self.true_dsc)


def split_of_seed(seed: int) -> Split:
    """The split a synthetic subject belongs to.

    Raises:
        ValueError: the seed is in no split of the QC dataset's ranges.
    """
    for seed_range in ALL_RANGES:
        if seed_range.purpose == "qc-dataset" and seed in seed_range and seed_range.split:
            return seed_range.split
    raise ValueError(f"seed {seed} is not in a qc-dataset seed range")


class QcDatasetWriter:
    """Appends scans and samples; resumable (completed scans are remembered)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "scans").mkdir(parents=True, exist_ok=True)
        (root / "segs").mkdir(parents=True, exist_ok=True)
        self._done_file = root / "done_scans.txt"
        self.done_scans = (
            set(self._done_file.read_text().split()) if self._done_file.exists() else set()
        )
        self._drop_samples_of_unfinished_scans()

    def _drop_samples_of_unfinished_scans(self) -> None:
        """A crash mid-scan leaves some of its samples: drop them, the scan is redone."""
        manifest = self.root / "manifest.jsonl"
        if not manifest.exists():
            return
        kept = [
            line
            for line in manifest.read_text().splitlines()
            if line.strip() and json.loads(line)["scan_id"] in self.done_scans
        ]
        manifest.write_text("".join(line + "\n" for line in kept))

    def write_scan(
        self,
        scan_id: str,
        image: NDArray[np.number],
        reference: NDArray[np.uint8],
        pixel_spacing_mm: tuple[float, float],
        slice_spacing_mm: float,
        affine: NDArray[np.floating],
    ) -> None:
        np.savez_compressed(
            self.root / "scans" / f"{scan_id}.npz",
            image=image.astype(np.float32),
            reference=reference.astype(np.uint8),
            pixel_spacing_mm=np.asarray(pixel_spacing_mm, np.float64),
            slice_spacing_mm=np.float64(slice_spacing_mm),
            affine=np.asarray(affine, np.float64),
        )

    def write_sample(self, sample: QcSample, segmentation: NDArray[np.uint8]) -> None:
        np.savez_compressed(self.root / "segs" / f"{sample.sample_id}.npz", seg=segmentation)
        with open(self.root / "manifest.jsonl", "a") as manifest:
            manifest.write(json.dumps(asdict(sample), sort_keys=True) + "\n")

    def finish_scan(self, scan_id: str) -> None:
        with open(self._done_file, "a") as done:
            done.write(scan_id + "\n")
        self.done_scans.add(scan_id)


@dataclass(frozen=True)
class ScanArrays:
    image: NDArray[np.float32]
    reference: NDArray[np.uint8]
    pixel_spacing_mm: tuple[float, float]
    slice_spacing_mm: float
    affine: NDArray[np.float64]


class QcDataset:
    """Reads a QC dataset written by ``QcDatasetWriter``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        manifest = root / "manifest.jsonl"
        if not manifest.exists():
            raise FileNotFoundError(f"no QC dataset at {root} (manifest.jsonl missing)")
        self.samples = [
            QcSample(**json.loads(line))
            for line in manifest.read_text().splitlines()
            if line.strip()
        ]

    def select(
        self,
        *,
        split: str | None = None,
        families: Iterable[str] | None = None,
        exclude_families: Iterable[str] = (),
    ) -> list[QcSample]:
        wanted = set(families) if families is not None else None
        excluded = set(exclude_families)
        return [
            s
            for s in self.samples
            if (split is None or s.split == split)
            and (wanted is None or s.family in wanted)
            and s.family not in excluded
        ]

    def scan(self, scan_id: str) -> ScanArrays:
        with np.load(self.root / "scans" / f"{scan_id}.npz") as data:
            return ScanArrays(
                image=data["image"],
                reference=data["reference"],
                pixel_spacing_mm=(
                    float(data["pixel_spacing_mm"][0]),
                    float(data["pixel_spacing_mm"][1]),
                ),
                slice_spacing_mm=float(data["slice_spacing_mm"]),
                affine=data["affine"],
            )

    def segmentation(self, sample: QcSample) -> NDArray[np.uint8]:
        with np.load(self.root / "segs" / f"{sample.sample_id}.npz") as data:
            return np.asarray(data["seg"], np.uint8)


def bin_index(wh_dsc: float) -> int:
    """The 10-bin histogram index of a whole-heart DSC (1.0 falls in the last bin)."""
    return min(int(wh_dsc * 10), 9)


def balance_by_bins(
    samples: Sequence[QcSample], rng: np.random.Generator, per_bin: int | None = None
) -> list[QcSample]:
    """Equal numbers from each of the 10 WH DSC bins, as the paper did.

    ``per_bin`` defaults to the smallest bin's count (the paper's choice); a larger value
    keeps every sample of the bins that have fewer.
    """
    by_bin: dict[int, list[QcSample]] = {b: [] for b in range(10)}
    for sample in samples:
        by_bin[bin_index(sample.wh_dsc)].append(sample)
    if per_bin is None:
        per_bin = min(len(members) for members in by_bin.values())
    chosen: list[QcSample] = []
    for members in by_bin.values():
        order = rng.permutation(len(members))[:per_bin]
        chosen.extend(members[i] for i in sorted(order))
    return chosen


def bin_counts(samples: Iterable[QcSample]) -> list[int]:
    counts = Counter(bin_index(s.wh_dsc) for s in samples)
    return [counts.get(b, 0) for b in range(10)]


def write_histogram_png(
    before: Sequence[QcSample], after: Sequence[QcSample], path: Path, title: str = ""
) -> Path:
    """Whole-heart DSC histograms before and after balancing (the paper's Fig. 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=False)
    for axis, samples, name in ((axes[0], before, "all"), (axes[1], after, "balanced")):
        counts = bin_counts(samples)
        axis.bar(DSC_BINS[:-1] + 0.05, counts, width=0.09, color="#4477aa", edgecolor="black")
        axis.set_xticks(DSC_BINS)
        axis.set_xlabel("whole-heart DSC")
        axis.set_ylabel("segmentations")
        axis.set_title(f"{name}: n = {len(samples)}")
        if name == "all" and counts:
            axis.axhline(min(counts), color="red", lw=1, label=f"min bin = {min(counts)}")
            axis.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
