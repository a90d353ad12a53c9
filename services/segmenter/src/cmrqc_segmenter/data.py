"""Synthetic labelled volumes for training and evaluation, rendered once and cached.

Each subject of ``cmrqc_shared.synth`` gives two volumes (ED and ES) with exact labels. The
generator takes ~0.3-0.5 s per subject, so training renders its subjects once into a cache
directory (one compressed ``.npz`` per subject, keyed by the generator version and
configuration) and reads them back on later runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from cmrqc_shared.synth import SynthConfig, render_study
from cmrqc_shared.synth.anatomy import PhaseName
from cmrqc_shared.synth.render import GENERATOR_VERSION

PHASES: tuple[PhaseName, PhaseName] = ("ED", "ES")


@dataclass(frozen=True)
class LabelledVolume:
    """One phase of one synthetic subject: image, exact labels and spacing.

    Attributes:
        seed: the generator seed of the subject.
        phase: ``"ED"`` or ``"ES"``.
        image: stored pixel values ``(k, j, i)`` (uint16, as the DICOM files hold them).
        labels: uint8 ``(k, j, i)``: 0 BG, 1 LV, 2 LVM, 3 RVC.
        pixel_spacing_mm: (row spacing, column spacing), mm.
        affine: 4x4 voxel (i, j, k) -> patient LPS, mm.
    """

    seed: int
    phase: str
    image: NDArray[np.uint16]
    labels: NDArray[np.uint8]
    pixel_spacing_mm: tuple[float, float]
    affine: NDArray[np.float64]

    def heart_centre(self) -> tuple[float, float]:
        """(row j, column i) centroid of every labelled voxel; the image centre if none."""
        fg = np.nonzero(self.labels.any(axis=0))
        if fg[0].size == 0:
            return (self.image.shape[1] - 1) / 2.0, (self.image.shape[2] - 1) / 2.0
        return float(fg[0].mean()), float(fg[1].mean())


def default_cache_dir() -> Path:
    """``$CMRQC_CACHE_DIR/segmenter-data`` (default ``~/.cache/cmrqc/segmenter-data``)."""
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cmrqc"
    return Path(os.environ.get("CMRQC_CACHE_DIR", base)) / "segmenter-data"


def _config_dir(cache_dir: Path, config: SynthConfig) -> Path:
    return cache_dir / f"synth-{GENERATOR_VERSION}-{config.fingerprint()}"


def render_volumes(seed: int, config: SynthConfig | None = None) -> list[LabelledVolume]:
    """Render subject ``seed`` and return its ED and ES volumes."""
    study = render_study(seed, config)
    return [
        LabelledVolume(
            seed=seed,
            phase=name,
            image=study.phase(name).image,
            labels=study.phase(name).labels,
            pixel_spacing_mm=study.phase(name).pixel_spacing_mm,
            affine=study.phase(name).affine,
        )
        for name in PHASES
    ]


def _render_to_cache(args: tuple[int, Path, SynthConfig]) -> int:
    seed, directory, config = args
    volumes = render_volumes(seed, config)
    arrays: dict[str, NDArray[np.generic]] = {}
    for volume in volumes:
        arrays[f"image_{volume.phase}"] = volume.image
        arrays[f"labels_{volume.phase}"] = volume.labels
        arrays[f"spacing_{volume.phase}"] = np.asarray(volume.pixel_spacing_mm)
        arrays[f"affine_{volume.phase}"] = volume.affine
    tmp = directory / f"seed-{seed:06d}.tmp.npz"
    np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]
    tmp.replace(directory / f"seed-{seed:06d}.npz")
    return seed


def _load_cached(path: Path, seed: int) -> list[LabelledVolume]:
    with np.load(path, allow_pickle=False) as data:
        return [
            LabelledVolume(
                seed=seed,
                phase=phase,
                image=data[f"image_{phase}"],
                labels=data[f"labels_{phase}"],
                pixel_spacing_mm=(
                    float(data[f"spacing_{phase}"][0]),
                    float(data[f"spacing_{phase}"][1]),
                ),
                affine=data[f"affine_{phase}"],
            )
            for phase in PHASES
        ]


def cached_volumes(
    seeds: Iterable[int],
    cache_dir: Path | None = None,
    *,
    config: SynthConfig | None = None,
    workers: int = 1,
    progress: bool = True,
    description: str = "subjects",
) -> list[LabelledVolume]:
    """ED and ES volumes of every subject in ``seeds``, rendering the missing ones once.

    Args:
        seeds: generator seeds (draw them from ``cmrqc_shared.datasets.splits``).
        cache_dir: cache root (default :func:`default_cache_dir`).
        config: generator configuration (default: ``SynthConfig()``).
        workers: rendering processes for the subjects not cached yet.
        progress: show a tqdm bar while rendering.
    """
    config = config or SynthConfig()
    directory = _config_dir(cache_dir or default_cache_dir(), config)
    directory.mkdir(parents=True, exist_ok=True)
    seeds = list(seeds)
    missing = [s for s in seeds if not (directory / f"seed-{s:06d}.npz").exists()]
    if missing:
        jobs = [(s, directory, config) for s in missing]
        bar = tqdm(total=len(jobs), desc=f"rendering {description}", disable=not progress)
        if workers > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for _ in pool.map(_render_to_cache, jobs, chunksize=4):
                    bar.update()
        else:
            for job in jobs:
                _render_to_cache(job)
                bar.update()
        bar.close()
    volumes: list[LabelledVolume] = []
    for seed in seeds:
        volumes.extend(_load_cached(directory / f"seed-{seed:06d}.npz", seed))
    return volumes


def volumes_of(seeds: Sequence[int], config: SynthConfig | None = None) -> list[LabelledVolume]:
    """Render without caching (a few subjects, e.g. in tests)."""
    return [v for seed in seeds for v in render_volumes(seed, config)]
