"""Acquisition artefacts: random selection, parameters and the functions applying them.

Each artefact is a named function with explicit parameters (see the ``*Params`` models);
:func:`sample_artefacts` decides which ones a study gets. The record of what was applied
(:class:`AppliedArtefact`) goes into the study metadata and the JSON sidecar.

* ``ghosting``: respiratory ghosting, periodic modulation of phase-encode lines in
  k-space, which puts attenuated replicas of the image at +-N/period pixels along PE.
* ``misalignment``: breath-hold inconsistency, in-plane shift of the heart in some slices
  (labels shift too: they describe what the image shows).
* ``wraparound``: phase FOV smaller than the body; signal outside folds back in.
* ``banding``: bSSFP off-resonance dark bands where the local frequency offset is half the
  inverse repetition time (modelled by a smooth field in cycles).
* ``missing_slices``: coverage truncated at the base or apex (planning error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from cmrqc_shared.synth.config import ARTEFACT_NAMES, SynthConfig

F32 = NDArray[np.float32]


class AppliedArtefact(BaseModel):
    """One artefact applied to a study, with its parameters (JSON-serialisable)."""

    model_config = ConfigDict(frozen=True)

    name: str
    params: dict[str, Any]


class GhostingParams(BaseModel):
    """k-space line modulation ``1 + a1 cos(2 pi m / P + phi) + a2 cos(4 pi m / P + phi2)``."""

    model_config = ConfigDict(frozen=True)

    amplitude: float
    """a1: first-harmonic modulation depth (each ghost has about half this amplitude)."""
    second_harmonic: float
    """a2: second-harmonic modulation depth."""
    period_lines: float
    """P: modulation period in phase-encode lines (ghost offset = N / P pixels)."""
    phases_rad: list[float]
    """phi per slice (ED and ES of a slice share it)."""
    affected_slices: list[int]
    """Slice indices (k) with ghosting."""


class MisalignmentParams(BaseModel):
    """Per-slice in-plane displacement of the heart (mm along row_cosine, col_cosine)."""

    model_config = ConfigDict(frozen=True)

    shifts_mm: list[tuple[float, float]]
    """(shift along row_cosine = image right, shift along col_cosine = image down) per k."""


class WrapParams(BaseModel):
    """Phase-encode FOV as a fraction of the body's extent along PE."""

    model_config = ConfigDict(frozen=True)

    fov_fraction: float


class BandingParams(BaseModel):
    """Off-resonance field ``f = f0 + g . r + 0.5 r^T Q r`` in cycles.

    ``r`` is the position relative to the heart centre in the heart frame (x, y, d), mm, so
    ``g`` is mostly in the short-axis plane and the bands cross the heart region.
    """

    model_config = ConfigDict(frozen=True)

    offset_cycles: float
    gradient_cycles_per_mm: tuple[float, float, float]
    curvature_cycles_per_mm2: tuple[tuple[float, float, float], ...]
    depth: float
    """Signal loss at the band centre (0..1)."""
    width_cycles: float
    """Gaussian half-width of a band, cycles."""


class MissingSlicesParams(BaseModel):
    """Coverage truncation (see :class:`cmrqc_shared.synth.planning.CoverageTruncation`)."""

    model_config = ConfigDict(frozen=True)

    end: Literal["base", "apex"]
    missing_mm: float
    slices_removed: int


@dataclass(frozen=True)
class ArtefactPlan:
    """Which artefacts a study gets and their parameters (``None`` = not applied)."""

    ghosting: GhostingParams | None = None
    misalignment: MisalignmentParams | None = None
    wraparound: WrapParams | None = None
    banding: BandingParams | None = None
    missing_slices: MissingSlicesParams | None = None

    def names(self) -> list[str]:
        """Names of the artefacts applied, in canonical order."""
        return [n for n in ARTEFACT_NAMES if getattr(self, n) is not None]


def sample_artefacts(
    config: SynthConfig, rng: np.random.Generator, max_slices: int
) -> ArtefactPlan:
    """Decide the artefacts of one study and draw their parameters.

    Every parameter is drawn whether or not its artefact is selected, so toggling one
    artefact in the configuration does not change the parameters of the others.

    Args:
        config: artefact probabilities / forced artefacts.
        rng: artefact random stream.
        max_slices: upper bound on the number of slices (per-slice arrays are this long and
            are cut to the real slice count by the renderer).
    """
    draws = {name: float(rng.random()) for name in ARTEFACT_NAMES}
    chosen = {name: draws[name] < config.artefact_probability(name) for name in ARTEFACT_NAMES}

    # ghosting
    affect_p = float(rng.uniform(0.5, 1.0))
    affected = rng.random(max_slices) < affect_p
    affected[int(rng.integers(max_slices))] = True
    ghost = GhostingParams(
        amplitude=float(rng.uniform(0.25, 0.6)),
        second_harmonic=float(rng.uniform(0.0, 0.2)),
        period_lines=float(rng.uniform(2.5, 6.0)),
        phases_rad=[float(v) for v in rng.uniform(-math.pi, math.pi, max_slices)],
        affected_slices=[int(k) for k in np.flatnonzero(affected)],
    )
    # misalignment
    shift_p = float(rng.uniform(0.3, 0.6))
    shifted = rng.random(max_slices) < shift_p
    mags = rng.uniform(2.5, 8.0, max_slices)
    angles = rng.uniform(0.0, 2.0 * math.pi, max_slices)
    forced_k = int(rng.integers(max_slices))
    shifted[forced_k] = True
    shifts = [
        (float(m * math.cos(a)), float(m * math.sin(a))) if s else (0.0, 0.0)
        for s, m, a in zip(shifted, mags, angles, strict=True)
    ]
    misalign = MisalignmentParams(shifts_mm=shifts)
    # wrap-around
    wrap = WrapParams(fov_fraction=float(rng.uniform(0.55, 0.8)))
    # banding
    g_mag = float(rng.uniform(1.0, 3.0)) / 300.0
    g_ang = float(rng.uniform(0.0, 2.0 * math.pi))
    g_dir = np.array([math.cos(g_ang), math.sin(g_ang), float(rng.uniform(-0.3, 0.3))])
    curv = rng.uniform(-1.0, 1.0, (3, 3)) * 4e-6
    curv = 0.5 * (curv + curv.T)
    band = BandingParams(
        offset_cycles=0.5 + g_mag * float(rng.uniform(-25.0, 25.0)),
        gradient_cycles_per_mm=tuple(float(v) for v in g_dir * g_mag),  # type: ignore[arg-type]
        curvature_cycles_per_mm2=tuple(tuple(float(v) for v in r) for r in curv),
        depth=float(rng.uniform(0.7, 0.95)),
        width_cycles=float(rng.uniform(0.02, 0.05)),
    )
    # missing slices
    end: Literal["base", "apex"] = "base" if rng.random() < 0.5 else "apex"
    missing_mm = float(rng.uniform(8.0, 20.0) if end == "base" else rng.uniform(10.0, 25.0))
    missing = MissingSlicesParams(
        end=end, missing_mm=missing_mm, slices_removed=int(rng.integers(0, 4))
    )

    return ArtefactPlan(
        ghosting=ghost if chosen["ghosting"] else None,
        misalignment=misalign if chosen["misalignment"] else None,
        wraparound=wrap if chosen["wraparound"] else None,
        banding=band if chosen["banding"] else None,
        missing_slices=missing if chosen["missing_slices"] else None,
    )


def apply_ghosting(
    kspace: NDArray[np.complex64], params: GhostingParams, pe_axis: int
) -> NDArray[np.complex64]:
    """Modulate the phase-encode lines of ``kspace`` in place and return it.

    Lines are acquired in linear order from -k_max to +k_max; ``kspace`` is in numpy's
    unshifted FFT order (as returned by ``fft2``), shaped (slices, rows, cols).

    Args:
        kspace: complex64 k-space, modified in place.
        params: modulation parameters.
        pe_axis: 1 (rows: PE along j) or 2 (columns: PE along i).
    """
    n_pe = kspace.shape[pe_axis]
    lines = np.arange(n_pe, dtype=np.float64)
    for k in params.affected_slices:
        if k >= kspace.shape[0]:
            continue
        phi = params.phases_rad[k]
        mod_centred = (
            1.0
            + params.amplitude * np.cos(2.0 * math.pi * lines / params.period_lines + phi)
            + params.second_harmonic * np.cos(4.0 * math.pi * lines / params.period_lines + 2 * phi)
        )
        mod = np.fft.ifftshift(mod_centred).astype(np.float32)
        if pe_axis == 1:
            kspace[k] *= mod[:, None]
        else:
            kspace[k] *= mod[None, :]
    return kspace


def fold_over(image: NDArray[Any], axis: int, n_fov: int, extension: int) -> NDArray[Any]:
    """Alias an image rendered on an extended PE grid back into ``n_fov`` samples.

    ``image`` has ``n_fov + 2 * extension`` samples along ``axis``; sample ``e`` lies at FOV
    index ``e - extension`` and lands on ``(e - extension) mod n_fov`` (Fourier aliasing).
    """
    total = image.shape[axis]
    if total != n_fov + 2 * extension:
        raise ValueError("extended image has the wrong size along the fold axis")
    moved = np.moveaxis(image, axis, -1)
    out = np.zeros((*moved.shape[:-1], n_fov), dtype=image.dtype)
    for start in range(0, total, n_fov):
        stop = min(start + n_fov, total)
        idx = (np.arange(start, stop) - extension) % n_fov  # distinct within one chunk
        out[..., idx] += moved[..., start:stop]
    return np.moveaxis(out, -1, axis)


def banding_attenuation(
    x: F32,
    y: F32,
    z: F32,
    params: BandingParams,
    center_mm: NDArray[np.float64],
    heart_axes: NDArray[np.float64],
) -> F32:
    """Multiplicative bSSFP banding profile at patient points (mm); 1 = no loss.

    Args:
        x, y, z: patient LPS coordinates, mm.
        params: the off-resonance field.
        center_mm: heart centre (LPS mm), origin of ``r``.
        heart_axes: 3x3, columns = heart-frame axes in LPS.
    """
    px = x - np.float32(center_mm[0])
    py = y - np.float32(center_mm[1])
    pz = z - np.float32(center_mm[2])
    ax = heart_axes.astype(np.float32)
    rx = px * ax[0, 0] + py * ax[1, 0] + pz * ax[2, 0]
    ry = px * ax[0, 1] + py * ax[1, 1] + pz * ax[2, 1]
    rz = px * ax[0, 2] + py * ax[1, 2] + pz * ax[2, 2]
    g = params.gradient_cycles_per_mm
    q = params.curvature_cycles_per_mm2
    f = (
        np.float32(params.offset_cycles)
        + np.float32(g[0]) * rx
        + np.float32(g[1]) * ry
        + np.float32(g[2]) * rz
        + np.float32(0.5 * q[0][0]) * rx * rx
        + np.float32(0.5 * q[1][1]) * ry * ry
        + np.float32(0.5 * q[2][2]) * rz * rz
        + np.float32(q[0][1]) * rx * ry
        + np.float32(q[0][2]) * rx * rz
        + np.float32(q[1][2]) * ry * rz
    )
    dist = f - np.floor(f) - np.float32(0.5)
    return (
        np.float32(1.0)
        - np.float32(params.depth) * np.exp(-(dist * dist) / np.float32(params.width_cycles**2))
    ).astype(np.float32)
