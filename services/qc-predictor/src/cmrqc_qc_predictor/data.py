"""Reading the QC dataset for training and evaluation: splits, balancing, cached inputs.

* Splits come from the dataset (by scan, via the subject's seed range: QC_TRAIN / QC_VAL /
  QC_TEST), never re-drawn here, so no scan is in two splits.
* Balancing (``balanced_split``): the paper took an equal number of segmentations from each of
  10 whole-heart DSC bins (the smallest bin's count). Our synthetic families leave the lowest
  bins thin, so each bin is capped at the split's *median* bin count: the crowded high-DSC bins
  are cut down to that, the thin low bins keep everything. Every split is balanced the same
  way, so the calibration (val) and test cases stay exchangeable for the conformal intervals.
* The fast model's inputs (heart crop as uint8, 1/255 steps, and shape features) are computed
  once per sample with the service's own preparation and cached as ``.npz`` files under a
  cache folder, so a second training run or a held-out-family run does not prepare again.
"""

from __future__ import annotations

import filecmp
import hashlib
import logging
import os
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from numpy.typing import NDArray

from cmrqc_qc_predictor.classes import OUTPUT_CLASSES
from cmrqc_qc_predictor.features import FEATURE_NAMES, FEATURES_VERSION
from cmrqc_qc_predictor.inputs import case_inputs
from cmrqc_qc_predictor.models import AUX_SCALE, FAST_ARCHITECTURE
from cmrqc_qc_predictor.prepare import (
    CROP_SIZE,
    INPUT_CONTRACT,
    PreparedInput,
    crop_around_segmentation,
    prepare_input,
)
from cmrqc_shared.qcdata.dataset import (
    QcDataset,
    QcSample,
    ScanArrays,
    balance_by_bins,
    bin_counts,
)

logger = logging.getLogger(__name__)

FAMILIES = ("unet", "classical", "corruption")


class QcDatasets:
    """Several QC datasets read as one (same interface as ``QcDataset``: ``samples``,
    ``select``, ``scan``, ``segmentation``), e.g. the development set and the real one.

    Splits stay disjoint across datasets because every dataset draws its subjects from the
    same QC seed ranges (a subject is in the same split in each).

    Raises:
        ValueError: no dataset, a sample id present in two datasets, or a scan id present in
            two datasets with different scan files.
        FileNotFoundError: a path holds no dataset.
    """

    def __init__(self, roots: Sequence[Path]) -> None:
        if not roots:
            raise ValueError("at least one dataset is needed")
        self.roots = [Path(root) for root in roots]
        self.parts = [QcDataset(root) for root in self.roots]
        self.samples: list[QcSample] = []
        self._part_of_sample: dict[str, int] = {}
        self._part_of_scan: dict[str, int] = {}
        shared_scans: set[tuple[int, str]] = set()  # (part, scan) checked as the owner's file
        for index, part in enumerate(self.parts):
            for sample in part.samples:
                if sample.sample_id in self._part_of_sample:
                    raise ValueError(f"sample {sample.sample_id} is in two datasets")
                owner = self._part_of_scan.setdefault(sample.scan_id, index)
                if owner != index and (index, sample.scan_id) not in shared_scans:
                    if not _same_scan_file(self.roots[owner], self.roots[index], sample.scan_id):
                        raise ValueError(f"scan {sample.scan_id} is in two datasets")
                    shared_scans.add((index, sample.scan_id))  # once per scan, not per sample
                self._part_of_sample[sample.sample_id] = index
                self.samples.append(sample)

    def root_of(self, sample: QcSample) -> Path:
        """The dataset folder that holds ``sample``."""
        return self.roots[self._part_of_sample[sample.sample_id]]

    def select(
        self,
        *,
        split: str | None = None,
        families: Iterable[str] | None = None,
        exclude_families: Iterable[str] = (),
    ) -> list[QcSample]:
        families = list(families) if families is not None else None
        excluded = list(exclude_families)
        return [
            sample
            for part in self.parts
            for sample in part.select(split=split, families=families, exclude_families=excluded)
        ]

    def scan(self, scan_id: str) -> ScanArrays:
        return self.parts[self._part_of_scan[scan_id]].scan(scan_id)

    def segmentation(self, sample: QcSample) -> NDArray[np.uint8]:
        return self.parts[self._part_of_sample[sample.sample_id]].segmentation(sample)


def _same_scan_file(first: Path, second: Path, scan_id: str) -> bool:
    """Whether two datasets hold the very same scan file (a companion dataset's hard link,
    as ``cmrqc make-qc-flood-dataset`` writes, or an identical copy)."""
    paths = [root / "scans" / f"{scan_id}.npz" for root in (first, second)]
    try:
        return paths[0].samefile(paths[1]) or filecmp.cmp(paths[0], paths[1], shallow=False)
    except OSError:
        return False


def balanced_split(
    dataset: QcDatasets,
    split: str,
    *,
    seed: int,
    exclude_families: Sequence[str] = (),
    only_family: str | None = None,
) -> list[QcSample]:
    """The samples of ``split``, family-filtered, each WH DSC bin capped at the median count.

    Raises:
        ValueError: no sample is left.
    """
    samples = dataset.select(
        split=split,
        families=[only_family] if only_family else None,
        exclude_families=exclude_families,
    )
    if not samples:
        raise ValueError(
            f"no {split} samples (only {only_family!r}, excluding {list(exclude_families)})"
        )
    cap = max(1, int(np.median(bin_counts(samples))))
    rng = np.random.default_rng([seed, sum(split.encode())])
    return balance_by_bins(samples, rng, per_bin=cap)


def targets_of(samples: Sequence[QcSample]) -> NDArray[np.float32]:
    """True Dice ``(n, 5)`` in ``OUTPUT_CLASSES`` order."""
    return np.array(
        [[s.true_dsc[name] for name in OUTPUT_CLASSES] for s in samples], dtype=np.float32
    )


def prepare_sample(
    dataset: QcDatasets, sample: QcSample, scan_cache: dict[str, object]
) -> PreparedInput:
    """The prepared input of one sample (``scan_cache`` keeps the last scan's arrays)."""
    scan = scan_cache.get(sample.scan_id)
    if scan is None:
        scan_cache.clear()
        scan = dataset.scan(sample.scan_id)
        scan_cache[sample.scan_id] = scan
    return prepare_input(
        scan.image,  # type: ignore[attr-defined]
        dataset.segmentation(sample),
        scan.pixel_spacing_mm,  # type: ignore[attr-defined]
        scan.slice_spacing_mm,  # type: ignore[attr-defined]
    )


@dataclass(frozen=True)
class FastArrays:
    """The fast model's inputs for a list of samples, their reference estimate targets and
    true Dice."""

    crops: NDArray[np.uint8]
    """(n, 5, 8, 112, 112), value × 255."""
    features: NDArray[np.float32]
    references: NDArray[np.uint8]
    """(n, 4, 8, 28, 28): the reference labels' BG/LV/LVM/RVC fractions on the crop, 4 × 4
    pixels averaged, × 255 (the auxiliary target)."""
    targets: NDArray[np.float32]


def default_cache_dir(dataset_root: Path, base: Path | None = None) -> Path:
    """``<base>/<hash of the dataset path and input contract>``; base defaults to
    ``~/.cache/cmrqc/qc-predictor``."""
    key = (
        f"{dataset_root.resolve()}|{INPUT_CONTRACT}|{CROP_SIZE}|{','.join(FEATURE_NAMES)}"
        f"|features-v{FEATURES_VERSION}"
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return (base or Path.home() / ".cache" / "cmrqc" / "qc-predictor") / digest


def _save(target: Path, **arrays: NDArray[np.generic]) -> None:
    """Write-then-rename, with a temporary name of this process's own: two trainings
    preparing the same cache at once each write a whole file and the last rename wins."""
    tmp = target.with_name(f"{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    tmp.replace(target)


def reference_target(reference: PreparedInput, corner: tuple[int, int]) -> NDArray[np.uint8]:
    """The reference's class fractions on a crop, averaged over AUX_SCALE² pixels, × 255."""
    row0, col0 = corner
    window = reference.tensor[1:, :, row0 : row0 + CROP_SIZE, col0 : col0 + CROP_SIZE]
    pooled = F.avg_pool2d(window, AUX_SCALE)  # (4, 8, 28, 28): slices as the batch
    return np.rint(pooled.numpy() * 255.0).astype(np.uint8)


def fast_arrays(
    dataset: QcDatasets,
    samples: Sequence[QcSample],
    cache_base: Path | None = None,
    *,
    progress: bool = True,
    description: str = "prepare",
) -> FastArrays:
    """Fast-model inputs and targets of ``samples`` (in order), cached per sample under
    ``default_cache_dir(<the sample's dataset>, cache_base)``."""
    from tqdm import tqdm

    def cached(sample: QcSample, suffix: str) -> Path:
        return (
            default_cache_dir(dataset.root_of(sample), cache_base) / f"{sample.sample_id}{suffix}"
        )

    for root in dataset.roots:
        default_cache_dir(root, cache_base).mkdir(parents=True, exist_ok=True)
    missing: dict[str, list[QcSample]] = defaultdict(list)
    for sample in samples:
        if not (cached(sample, ".npz").exists() and cached(sample, ".ref.npz").exists()):
            missing[sample.scan_id].append(sample)
    if missing:
        todo = sum(len(v) for v in missing.values())
        with tqdm(total=todo, desc=description, disable=not progress, unit="case") as bar:
            for scan_id, scan_samples in missing.items():
                scan_cache: dict[str, object] = {}
                scan = dataset.scan(scan_id)
                scan_cache[scan_id] = scan
                reference = prepare_input(
                    scan.image, scan.reference, scan.pixel_spacing_mm, scan.slice_spacing_mm
                )
                for sample in scan_samples:
                    prepared = prepare_sample(dataset, sample, scan_cache)
                    inputs = case_inputs(FAST_ARCHITECTURE, prepared)
                    _save(
                        cached(sample, ".npz"),
                        crop=np.rint(inputs["crop"].numpy() * 255.0).astype(np.uint8),
                        features=inputs["features"].numpy(),
                    )
                    _, corner = crop_around_segmentation(prepared.tensor)
                    _save(cached(sample, ".ref.npz"), reference=reference_target(reference, corner))
                    bar.update()
    size = CROP_SIZE // AUX_SCALE
    crops = np.empty((len(samples), 5, 8, CROP_SIZE, CROP_SIZE), np.uint8)
    features = np.empty((len(samples), len(FEATURE_NAMES)), np.float32)
    references = np.empty((len(samples), 4, 8, size, size), np.uint8)
    for index, sample in enumerate(samples):
        with np.load(cached(sample, ".npz")) as arrays:
            crops[index] = arrays["crop"]
            features[index] = arrays["features"]
        with np.load(cached(sample, ".ref.npz")) as arrays:
            references[index] = arrays["reference"]
    return FastArrays(crops, features, references, targets_of(samples))


def fast_arrays_from_cases(
    cases: Sequence[tuple[NDArray[np.number], NDArray[np.integer], tuple[float, float], float]],
    targets: NDArray[np.floating],
) -> FastArrays:
    """Fast-model inputs of in-memory cases (image, labelmap, (row, column) spacing mm, slice
    spacing mm) with their Dice targets (n, 5); no reference-estimate targets (zeros).

    Raises:
        InputError: a case the service itself would refuse (see ``prepare.check_pair``).
        ValueError: as many targets as cases are needed.
    """
    if len(cases) != len(targets):
        raise ValueError(f"{len(cases)} cases but {len(targets)} targets")
    size = CROP_SIZE // AUX_SCALE
    crops = np.empty((len(cases), 5, 8, CROP_SIZE, CROP_SIZE), np.uint8)
    features = np.empty((len(cases), len(FEATURE_NAMES)), np.float32)
    for index, (image, labels, pixel_spacing_mm, slice_spacing_mm) in enumerate(cases):
        prepared = prepare_input(image, labels, pixel_spacing_mm, slice_spacing_mm)
        inputs = case_inputs(FAST_ARCHITECTURE, prepared)
        crops[index] = np.rint(inputs["crop"].numpy() * 255.0).astype(np.uint8)
        features[index] = inputs["features"].numpy()
    references = np.zeros((len(cases), 4, 8, size, size), np.uint8)
    return FastArrays(crops, features, references, np.asarray(targets, np.float32))
