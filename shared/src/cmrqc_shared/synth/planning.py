"""Plan a short-axis stack on a subject the way an operator would (sizes in mm).

The planned slice normal is the LV long axis plus a small planning error, the in-plane
axes are rotated by a random angle, the stack runs from around the mitral valve plane to
just beyond the apex, and the field of view is placed around the heart. Coverage
truncation (``missing_slices``) and a too-small phase FOV (``wraparound``) are planning
errors too, so they are decided here from parameters drawn by the artefact sampler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from cmrqc_shared.synth.anatomy import SubjectAnatomy
from cmrqc_shared.synth.config import SynthConfig
from cmrqc_shared.synth.geometry import StackGeometry

HEART_HALF_EXTENT_MM = 95.0
"""Half-size of the box (around the heart centre) that must stay inside the FOV, mm."""


@dataclass(frozen=True)
class CoverageTruncation:
    """Planning error that leaves the basal or apical part of the LV uncovered."""

    end: Literal["base", "apex"]
    missing_mm: float
    """Length of LV (ED) left outside the stack, mm."""
    slices_removed: int
    """How many slices fewer than planned were acquired (0: the stack was only shifted)."""


@dataclass(frozen=True)
class PlannedStack:
    """Geometry plus what the renderer needs to simulate fold-over."""

    geometry: StackGeometry
    pe_extension_px: int
    """Pixels rendered beyond each FOV edge along phase encoding (folded in if wrapping)."""
    body_extent_pe_mm: float
    """Extent of the body along the phase-encode direction through the FOV centre, mm."""


def _rodrigues(
    v: NDArray[np.float64], axis: NDArray[np.float64], angle: float
) -> NDArray[np.float64]:
    axis = axis / np.linalg.norm(axis)
    return (
        v * math.cos(angle)
        + np.cross(axis, v) * math.sin(angle)
        + axis * float(axis @ v) * (1.0 - math.cos(angle))
    )


def body_extent_along(
    anat: SubjectAnatomy, center: NDArray[np.float64], direction: NDArray[np.float64]
) -> tuple[float, float]:
    """Distances (mm) from ``center`` to the body outline along -direction and +direction."""
    b = anat.body
    t = np.arange(-900.0, 900.0, 2.0)
    x = center[0] + t * direction[0] - b.center_xy_mm[0]
    y = center[1] + t * direction[1] - b.center_xy_mm[1]
    q = b.outline_exponent
    inside = (np.abs(x / b.half_axes_mm[0]) ** q + np.abs(y / b.half_axes_mm[1]) ** q) <= 1.0
    if not inside.any():
        return 0.0, 0.0
    return float(max(0.0, -t[inside].min())), float(max(0.0, t[inside].max()))


def plan_stack(
    anat: SubjectAnatomy,
    config: SynthConfig,
    rng: np.random.Generator,
    *,
    wrap_fraction: float | None = None,
    truncation: tuple[Literal["base", "apex"], float, int] | None = None,
) -> tuple[PlannedStack, CoverageTruncation | None]:
    """Plan the stack geometry for ``anat``.

    The same number of random draws is made whatever the artefact arguments, so a subject's
    geometry only changes where an artefact requires it.

    Args:
        anat: the subject.
        config: ranges for spacing, thickness, matrix, FOV, slice count.
        rng: geometry random stream.
        wrap_fraction: if set, the phase-encode FOV is this fraction of the body extent
            along phase encoding (clipped to the matrix range) so the body folds over.
        truncation: if set, ``(end, missing_mm, slices_removed)`` for coverage truncation.
    """
    ed = anat.ed
    px = float(rng.uniform(*config.pixel_spacing_range_mm))
    thick = float(rng.uniform(*config.slice_thickness_range_mm))
    gap_draw = float(rng.uniform(*config.slice_gap_range_mm))
    gap = gap_draw if rng.random() < config.slice_gap_probability else 0.0
    tilt = math.radians(float(rng.uniform(0.0, 7.0)))
    tilt_dir = float(rng.uniform(0.0, 2.0 * math.pi))
    psi = math.radians(float(rng.uniform(-25.0, 25.0)))
    d_top = float(rng.uniform(-10.0, 4.0))
    bottom_margin = float(rng.uniform(-2.0, 12.0))
    fov_long = float(rng.uniform(*config.fov_range_mm))
    aspect = float(rng.uniform(0.75, 1.0))
    portrait = bool(rng.random() < 0.3)
    off_u, off_v = (float(v) for v in rng.uniform(-1.0, 1.0, size=2))

    n_lo, n_hi = config.n_slices_range
    th_lo, th_hi = config.slice_thickness_range_mm
    spacing = thick + gap
    needed = ed.epi_apex_mm + bottom_margin - d_top
    n = math.ceil(needed / spacing) + 1
    if n > n_hi:
        thick = float(np.clip(needed / (n_hi - 1) - gap, th_lo, th_hi))
        spacing = thick + gap
        n = min(n_hi, math.ceil(needed / spacing) + 1)
    if n < n_lo:
        extra = n_lo - n
        d_top -= (extra // 2) * spacing
        n = n_lo

    trunc: CoverageTruncation | None = None
    if truncation is not None:
        end, missing_mm, removed = truncation
        n_new = max(n_lo, n - removed)
        if end == "apex":
            bottom = ed.epi_apex_mm - missing_mm
            d_top = bottom - (n_new - 1) * spacing
        else:
            d_top = ed.base_mm + missing_mm
        trunc = CoverageTruncation(end=end, missing_mm=missing_mm, slices_removed=n - n_new)
        n = n_new

    rot = anat.heart_rotation()
    ex, ey, ed_axis = rot[:, 0], rot[:, 1], rot[:, 2]
    tilt_axis = math.cos(tilt_dir) * ex + math.sin(tilt_dir) * ey
    n_p = _rodrigues(ed_axis, tilt_axis, tilt)
    ey_p = ey - float(ey @ n_p) * n_p
    ey_p /= np.linalg.norm(ey_p)
    ex_p = np.cross(n_p, ey_p)
    row = math.cos(psi) * ex_p + math.sin(psi) * ey_p
    col = -math.sin(psi) * ex_p + math.cos(psi) * ey_p
    normal = np.cross(row, col)

    m_lo, m_hi = config.matrix_range
    n_long = int(np.clip(round(fov_long / px), m_lo, m_hi))
    n_short = int(np.clip(round(n_long * aspect), m_lo, m_hi))
    if portrait:
        rows, cols, pe = n_long, n_short, "ROW"
    else:
        rows, cols, pe = n_short, n_long, "COL"

    origin_h = np.asarray(anat.heart_origin_mm)
    h_ref = origin_h + n_p * (0.5 * ed.epi_apex_mm) - ex * 12.0
    pe_dir = col if pe == "COL" else row
    slice_pos = [float((origin_h + d_top * n_p) @ normal) - (n - 1 - k) * spacing for k in range(n)]

    def _extents(center: NDArray[np.float64]) -> tuple[float, float]:
        lo_hi = [
            body_extent_along(anat, center + (s - float(center @ normal)) * normal, pe_dir)
            for s in (slice_pos[0], slice_pos[n // 2], slice_pos[-1])
        ]
        return max(e[0] for e in lo_hi), max(e[1] for e in lo_hi)

    if wrap_fraction is not None:
        lo, hi = _extents(h_ref)
        n_pe = int(np.clip(round((lo + hi) * wrap_fraction / px), m_lo, m_hi))
        if pe == "COL":
            rows = min(rows, n_pe)
        else:
            cols = min(cols, n_pe)

    lim_u = max(0.0, cols * px / 2.0 - HEART_HALF_EXTENT_MM) * 0.8
    lim_v = max(0.0, rows * px / 2.0 - HEART_HALF_EXTENT_MM) * 0.8
    center = h_ref + off_u * lim_u * row + off_v * lim_v * col
    center0 = center + (slice_pos[0] - float(center @ normal)) * normal
    origin = center0 - 0.5 * (cols - 1) * px * row - 0.5 * (rows - 1) * px * col

    lo, hi = _extents(center)
    n_pe_now = rows if pe == "COL" else cols
    half_fov = 0.5 * n_pe_now * px
    ext = math.ceil(max(0.0, max(lo, hi) - half_fov) / px) + 4 if wrap_fraction else 0
    ext = min(ext, n_pe_now)  # at most one fold per side (keeps rendering fast)

    geometry = StackGeometry(
        rows=rows,
        cols=cols,
        n_slices=n,
        pixel_spacing_mm=(px, px),
        slice_thickness_mm=thick,
        slice_spacing_mm=spacing,
        row_cosine=(float(row[0]), float(row[1]), float(row[2])),
        col_cosine=(float(col[0]), float(col[1]), float(col[2])),
        origin_mm=(float(origin[0]), float(origin[1]), float(origin[2])),
        phase_encode=pe,  # type: ignore[arg-type]
        planning_tilt_deg=math.degrees(tilt),
        inplane_rotation_deg=math.degrees(psi),
    )
    return PlannedStack(geometry, ext, lo + hi), trunc
