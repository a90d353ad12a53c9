"""bSSFP contrast and acquisition chain: coil bias, k-space resolution, Rician noise.

Signal values are relative to the LV blood pool (1.0) until :func:`to_pixel_values`
scales them to stored integers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import scipy.fft
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from cmrqc_shared.synth.anatomy import SubjectAnatomy
from cmrqc_shared.synth.config import SynthConfig

F32 = NDArray[np.float32]


class TissueContrast(BaseModel):
    """Relative bSSFP signal of each tissue (LV blood = 1)."""

    model_config = ConfigDict(frozen=True)

    blood: float = 1.0
    rv_blood: float
    atrial_blood: float
    myocardium: float
    fat: float
    liver: float
    muscle: float
    lung: float
    lung_vessel: float
    stomach: float
    marrow: float
    csf: float
    mediastinum: float
    aorta: float
    texture: float
    """Relative amplitude of the smooth tissue texture."""


class AcquisitionParams(BaseModel):
    """Everything about one study's acquisition except geometry and artefacts."""

    model_config = ConfigDict(frozen=True)

    contrast: TissueContrast
    snr: float
    """Blood signal / noise sigma (per real/imaginary channel)."""
    bias_strength: float
    """0 = flat receive field; the field is ``1 - s + s * S / S(heart)``."""
    coil_positions_mm: tuple[tuple[float, float, float], ...]
    """Receive-coil element centres, patient LPS mm."""
    coil_weights: tuple[float, ...]
    coil_radius_mm: float
    kspace_fraction_pe: float
    """Fraction of k-space acquired along phase encoding."""
    kspace_fraction_ro: float
    """Fraction of k-space kept along readout."""
    kspace_taper: float
    """Tukey taper fraction of the k-space window (0 = hard cut, strong Gibbs ringing)."""
    phase_gradient_rad_per_mm: tuple[float, float]
    """Smooth background phase of the complex image along (row_cosine, col_cosine)."""
    pixel_scale: float
    """Stored value of the (unbiased) blood signal."""
    es_trigger_time_ms: float
    rr_interval_ms: float
    repetition_time_ms: float
    echo_time_ms: float
    flip_angle_deg: float
    field_strength_t: float


def sample_acquisition(
    anat: SubjectAnatomy, config: SynthConfig, rng: np.random.Generator
) -> AcquisitionParams:
    """Draw contrast, noise level, coil layout and sequence timing for one study."""
    u = rng.uniform
    contrast = TissueContrast(
        rv_blood=float(u(0.9, 1.03)),
        atrial_blood=float(u(0.85, 1.0)),
        myocardium=float(u(0.22, 0.36)),
        fat=float(u(0.75, 0.95)),
        liver=float(u(0.22, 0.38)),
        muscle=float(u(0.15, 0.27)),
        lung=float(u(0.015, 0.05)),
        lung_vessel=float(u(0.1, 0.3)),
        stomach=float(u(0.3, 0.55)),
        marrow=float(u(0.35, 0.6)),
        csf=float(u(0.7, 0.95)),
        mediastinum=float(u(0.3, 0.55)),
        aorta=float(u(0.55, 0.95)),
        texture=float(u(0.03, 0.08)),
    )
    b = anat.body
    bx, by = b.center_xy_mm
    hx, hy = b.half_axes_mm
    z0 = anat.heart_origin_mm[2]
    coils: list[tuple[float, float, float]] = []
    weights: list[float] = []
    for side, y in ((-1.0, by - hy - 15.0), (1.0, by + hy + 15.0)):
        for x_off in (-0.45 * hx, 0.0, 0.45 * hx):
            for z_off in (-60.0, 60.0):
                coils.append(
                    (
                        bx + x_off + float(u(-15, 15)),
                        y + float(u(-5, 5)),
                        z0 + z_off + float(u(-20, 20)),
                    )
                )
                weights.append(float(u(0.6, 1.0)) * (1.0 if side < 0 else float(u(0.5, 0.9))))
    hr_bpm = float(u(55.0, 90.0))
    field = 1.5 if rng.random() < 0.6 else 3.0
    return AcquisitionParams(
        contrast=contrast,
        snr=float(u(*config.snr_range)),
        bias_strength=float(u(*config.bias_strength_range)),
        coil_positions_mm=tuple(coils),
        coil_weights=tuple(weights),
        coil_radius_mm=float(u(120.0, 220.0)),
        kspace_fraction_pe=float(u(*config.kspace_fraction_range)),
        kspace_fraction_ro=float(u(max(config.kspace_fraction_range[0], 0.8), 1.0)),
        kspace_taper=float(u(0.1, 0.6)),
        phase_gradient_rad_per_mm=(float(u(-0.004, 0.004)), float(u(-0.004, 0.004))),
        pixel_scale=float(u(0.18, 0.4)) * config.max_pixel_value,
        es_trigger_time_ms=float(u(*config.es_trigger_time_range_ms)),
        rr_interval_ms=60000.0 / hr_bpm,
        repetition_time_ms=float(u(2.6, 3.6)) if field == 1.5 else float(u(2.8, 3.8)),
        echo_time_ms=float(u(1.1, 1.7)),
        flip_angle_deg=float(u(50.0, 70.0)) if field == 1.5 else float(u(35.0, 50.0)),
        field_strength_t=field,
    )


def coil_sensitivity(
    x: F32, y: F32, z: F32, acq: AcquisitionParams, heart_mm: NDArray[np.float64]
) -> F32:
    """Receive bias field at patient points (mm), 1 at the heart centre on average."""
    r2inv = np.float32(1.0 / acq.coil_radius_mm**2)

    def _sum(px: F32 | float, py: F32 | float, pz: F32 | float) -> F32:
        total = np.zeros(np.shape(px), np.float32)
        for (cx, cy, cz), w in zip(acq.coil_positions_mm, acq.coil_weights, strict=True):
            d2 = (
                (px - np.float32(cx)) ** 2 + (py - np.float32(cy)) ** 2 + (pz - np.float32(cz)) ** 2
            )
            total += np.float32(w) / (np.float32(1.0) + d2 * r2inv)
        return total

    s_heart = float(_sum(float(heart_mm[0]), float(heart_mm[1]), float(heart_mm[2])))
    s = _sum(x, y, z)
    beta = np.float32(acq.bias_strength)
    return (np.float32(1.0) - beta + beta * s / np.float32(s_heart)).astype(np.float32)


def kspace_window(n: int, fraction: float, taper: float) -> NDArray[np.float32]:
    """Centred 1D k-space window: ``fraction`` of the ``n`` lines kept, Tukey-tapered edges."""
    kept = max(4, round(n * fraction))
    win = np.zeros(n, np.float64)
    start = (n - kept) // 2
    m = np.arange(kept)
    w = np.ones(kept)
    edge = round(taper * kept / 2)
    if edge > 0:
        ramp = 0.5 * (1 - np.cos(math.pi * (np.arange(edge) + 0.5) / edge))
        w[:edge] = ramp
        w[kept - edge :] = ramp[::-1]
    win[start + m] = w
    return win.astype(np.float32)


def acquire(
    signal: NDArray[np.complex64],
    acq: AcquisitionParams,
    pe_axis: int,
    ghost_hook: Callable[[NDArray[np.complex64], int], NDArray[np.complex64]] | None = None,
) -> NDArray[np.complex64]:
    """Simulate finite k-space sampling (and optional k-space artefacts) of complex images.

    Args:
        signal: complex64 (slices, rows, cols) object signal on the FOV grid.
        acq: acquisition parameters (k-space fractions and taper).
        pe_axis: 1 if phase encoding runs along rows (j), 2 if along columns (i).
        ghost_hook: callable ``(kspace, pe_axis) -> kspace`` applied before reconstruction.
    """
    kspace = scipy.fft.fft2(signal, axes=(1, 2), workers=1)
    n_rows, n_cols = signal.shape[1:]
    f_rows = acq.kspace_fraction_pe if pe_axis == 1 else acq.kspace_fraction_ro
    f_cols = acq.kspace_fraction_ro if pe_axis == 1 else acq.kspace_fraction_pe
    w_rows = np.fft.ifftshift(kspace_window(n_rows, f_rows, acq.kspace_taper))
    w_cols = np.fft.ifftshift(kspace_window(n_cols, f_cols, acq.kspace_taper))
    kspace *= w_rows[None, :, None]
    kspace *= w_cols[None, None, :]
    if ghost_hook is not None:
        kspace = ghost_hook(kspace, pe_axis)
    return scipy.fft.ifft2(kspace, axes=(1, 2), workers=1).astype(np.complex64, copy=False)


def add_rician_noise(
    signal: NDArray[np.complex64], sigma: float, rng: np.random.Generator
) -> NDArray[np.float32]:
    """Add complex Gaussian noise (sigma per channel) and return the magnitude (Rician)."""
    shape = signal.shape
    re = signal.real + np.float32(sigma) * rng.standard_normal(shape, dtype=np.float32)
    im = signal.imag + np.float32(sigma) * rng.standard_normal(shape, dtype=np.float32)
    return np.sqrt(re * re + im * im).astype(np.float32)


def to_pixel_values(magnitude: F32, acq: AcquisitionParams, max_value: int) -> NDArray[np.uint16]:
    """Scale relative magnitudes to stored unsigned 16-bit values clipped to ``max_value``."""
    scaled = magnitude * np.float32(acq.pixel_scale)
    np.clip(scaled, 0.0, float(max_value), out=scaled)
    return np.rint(scaled).astype(np.uint16)
