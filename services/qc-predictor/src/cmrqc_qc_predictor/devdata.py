"""A small QC dataset for development and tests, written in the shared QC dataset format.

The real dataset (``cmrqc make-qc-dataset``, segmenter service) adds U-Net checkpoints as a
third family. Until it exists, and for tests that must not depend on it, this module builds
samples from the two families the shared library provides:

* ``classical``: ``segment_classical`` with a random blood-pool threshold scale per sample
  (member ``threshold_scale=…``);
* ``corruption``: ``random_corruption`` of the true labels (member ``light``), a heavier chain
  of 2–4 corruptions with severities in [0.5, 1] (member ``heavy``, reaching the low whole-heart
  DSC bins that light corruptions rarely produce), and the true labels unchanged
  (member ``identity``, DSC 1).

Scans are rendered by ``cmrqc_shared.synth.render_study`` from the QC seed ranges only, so the
split of a scan follows from its seed and no scan is in two splits. Every draw comes from a
generator seeded by (subject seed, phase), so the same arguments give the same dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cmrqc_shared.datasets.splits import QC_TEST, QC_TRAIN, QC_VAL
from cmrqc_shared.metrics import dice_per_class
from cmrqc_shared.qcdata.classical import segment_classical
from cmrqc_shared.qcdata.corruptions import CORRUPTIONS, random_corruption
from cmrqc_shared.qcdata.dataset import QcDatasetWriter, QcSample, split_of_seed
from cmrqc_shared.synth import render_study

logger = logging.getLogger(__name__)

PHASES = ("ED", "ES")


@dataclass(frozen=True)
class DevDatasetPlan:
    """How many subjects per split and samples per scan (a scan is one phase of a subject)."""

    train_subjects: int = 400
    val_subjects: int = 50
    test_subjects: int = 50
    classical_per_scan: int = 3
    light_per_scan: int = 6
    heavy_per_scan: int = 5
    identity_probability: float = 0.25

    def seeds(self) -> list[int]:
        """Subject seeds, train then val then test, each from its QC seed range."""
        return [
            *QC_TRAIN.seeds(self.train_subjects),
            *QC_VAL.seeds(self.val_subjects),
            *QC_TEST.seeds(self.test_subjects),
        ]


def heavy_corruption(
    labels: NDArray[np.uint8], rng: np.random.Generator
) -> tuple[NDArray[np.uint8], list[dict[str, Any]]]:
    """Chain 2–4 distinct corruptions with severities in [0.5, 1] (gross failures)."""
    count = int(rng.integers(2, 5))
    names = [str(n) for n in rng.choice(sorted(CORRUPTIONS), size=count, replace=False)]
    out = labels
    applied: list[dict[str, Any]] = []
    for name in names:
        severity = float(rng.uniform(0.5, 1.0))
        out, params = CORRUPTIONS[name](out, rng, severity)
        applied.append({"name": name, "severity": severity, "params": params})
    return out, applied


def scan_samples(
    seed: int,
    phase: str,
    image: NDArray[np.number],
    labels: NDArray[np.uint8],
    pixel_spacing_mm: tuple[float, float],
    plan: DevDatasetPlan,
) -> Iterator[tuple[str, str, NDArray[np.uint8], dict[str, Any]]]:
    """(family, member, segmentation, params) of every sample of one scan, deterministic."""
    rng = np.random.default_rng([seed, PHASES.index(phase), 0x51C])
    for _ in range(plan.classical_per_scan):
        scale = float(rng.uniform(0.7, 1.4))
        seg = segment_classical(image, pixel_spacing_mm, threshold_scale=scale)
        yield "classical", f"threshold_scale={scale:.3f}", seg, {"threshold_scale": scale}
    for _ in range(plan.light_per_scan):
        seg, applied = random_corruption(labels, rng)
        params = {"corruptions": [a.__dict__ for a in applied]}
        yield "corruption", "light", seg, params
    for _ in range(plan.heavy_per_scan):
        seg, heavy = heavy_corruption(labels, rng)
        yield "corruption", "heavy", seg, {"corruptions": heavy}
    if rng.random() < plan.identity_probability:
        yield "corruption", "identity", labels.copy(), {"corruptions": []}


def write_dev_dataset(root: Path, plan: DevDatasetPlan, *, progress: bool = True) -> int:
    """Write (or resume) the dev dataset under ``root``; returns the number of samples written.

    Resumable: scans already finished are skipped (``QcDatasetWriter`` remembers them).
    """
    from tqdm import tqdm

    writer = QcDatasetWriter(root)
    written = 0
    seeds = plan.seeds()
    for seed in tqdm(seeds, desc="subjects", disable=not progress, unit="subject"):
        scan_ids = [f"synth-{seed}-{phase}" for phase in PHASES]
        if all(scan_id in writer.done_scans for scan_id in scan_ids):
            continue
        study = render_study(seed)
        split = split_of_seed(seed)
        for phase, scan_id in zip(PHASES, scan_ids, strict=True):
            if scan_id in writer.done_scans:
                continue
            volume = study.phase(phase)  # type: ignore[arg-type]
            writer.write_scan(
                scan_id,
                volume.image,
                volume.labels,
                volume.pixel_spacing_mm,
                volume.slice_spacing_mm,
                volume.affine,
            )
            samples = scan_samples(
                seed, phase, volume.image, volume.labels, volume.pixel_spacing_mm, plan
            )
            for index, (family, member, seg, params) in enumerate(samples):
                scores = dice_per_class(seg, volume.labels)
                sample = QcSample(
                    sample_id=f"{scan_id}-{index:02d}",
                    scan_id=scan_id,
                    seed=seed,
                    phase=phase,
                    split=split.value,
                    family=family,
                    member=member,
                    true_dsc=scores.model_dump(),
                    params=_jsonable(params),
                )
                writer.write_sample(sample, seg)
                written += 1
            writer.finish_scan(scan_id)
    logger.info("dev dataset written", extra={"root": str(root), "samples": written})
    return written


def _jsonable(value: Any) -> Any:
    """Params as plain JSON types (numpy scalars and tuples become Python ones)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
