"""Render a synthetic short-axis cine study (ED + ES) with exact labels.

``render_study(seed)`` is deterministic: the same seed and configuration give
bit-identical arrays. Independent random streams are used for anatomy, acquisition,
geometry, artefacts, texture and per-phase noise, so switching an artefact on or off
leaves the subject (and, except for geometry-changing artefacts, the planning) unchanged.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from cmrqc_shared.synth.acquisition import (
    AcquisitionParams,
    acquire,
    add_rician_noise,
    coil_sensitivity,
    sample_acquisition,
    to_pixel_values,
)
from cmrqc_shared.synth.anatomy import PhaseName, SubjectAnatomy, sample_anatomy
from cmrqc_shared.synth.artefacts import (
    AppliedArtefact,
    ArtefactPlan,
    GhostingParams,
    MissingSlicesParams,
    apply_ghosting,
    banding_attenuation,
    fold_over,
    sample_artefacts,
)
from cmrqc_shared.synth.body import render_body
from cmrqc_shared.synth.config import SynthConfig
from cmrqc_shared.synth.geometry import StackGeometry
from cmrqc_shared.synth.heart import LABEL_LV, LABEL_MYO, LABEL_RV, HeartRenderer
from cmrqc_shared.synth.planning import plan_stack

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "1.0"
"""Bumped whenever the same seed would render differently."""

_STREAMS = {
    "anatomy": 1,
    "acquisition": 2,
    "geometry": 3,
    "artefacts": 4,
    "texture": 5,
    "noise_ED": 6,
    "noise_ES": 7,
}
_SEED_TAG = 0x434D5251  # "CMRQ"

F32 = NDArray[np.float32]


def stream(seed: int, name: str) -> np.random.Generator:
    """Independent random generator ``name`` of subject ``seed``."""
    if seed < 0:
        raise ValueError("seed must be a non-negative integer")
    return np.random.default_rng(np.random.SeedSequence([_SEED_TAG, int(seed), _STREAMS[name]]))


@dataclass(frozen=True)
class StudyPlan:
    """Everything about a study except its pixels (cheap to compute, ~ms)."""

    seed: int
    config: SynthConfig
    anatomy: SubjectAnatomy
    acquisition: AcquisitionParams
    geometry: StackGeometry
    artefact_plan: ArtefactPlan
    pe_extension_px: int
    """Pixels rendered beyond each FOV edge along phase encoding (0 unless wrapping)."""
    artefacts: tuple[AppliedArtefact, ...]


@dataclass(frozen=True)
class PhaseVolume:
    """One cardiac phase of the stack.

    Arrays are ``(slices, rows, cols)`` on the grid described by ``affine``.
    """

    name: PhaseName
    trigger_time_ms: float
    """Time after the R wave, ms."""
    image: NDArray[np.uint16]
    """Stored pixel values (exactly what the DICOM files contain)."""
    labels: NDArray[np.uint8]
    """0 background, 1 LV cavity, 2 LV myocardium, 3 RV cavity."""
    affine: NDArray[np.float64]
    """4x4 voxel (i = column, j = row, k = slice) to patient LPS mm."""
    pixel_spacing_mm: tuple[float, float]
    """(row spacing, column spacing), mm (DICOM PixelSpacing order)."""
    slice_thickness_mm: float
    slice_spacing_mm: float

    def volumes_ml(self) -> dict[str, float]:
        """Label volumes in mL (voxel count x voxel volume)."""
        vox_ml = self.pixel_spacing_mm[0] * self.pixel_spacing_mm[1] * self.slice_spacing_mm / 1000
        counts = np.bincount(self.labels.ravel(), minlength=4)
        return {
            "lv_cavity": float(counts[LABEL_LV] * vox_ml),
            "lv_myocardium": float(counts[LABEL_MYO] * vox_ml),
            "rv_cavity": float(counts[LABEL_RV] * vox_ml),
        }


@dataclass(frozen=True)
class SyntheticStudy:
    """A rendered study: the plan plus one :class:`PhaseVolume` per phase."""

    plan: StudyPlan
    phases: tuple[PhaseVolume, ...]
    timings_s: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def seed(self) -> int:
        return self.plan.seed

    @property
    def config(self) -> SynthConfig:
        return self.plan.config

    @property
    def anatomy(self) -> SubjectAnatomy:
        return self.plan.anatomy

    @property
    def acquisition(self) -> AcquisitionParams:
        return self.plan.acquisition

    @property
    def geometry(self) -> StackGeometry:
        return self.plan.geometry

    @property
    def artefacts(self) -> tuple[AppliedArtefact, ...]:
        return self.plan.artefacts

    @property
    def affine(self) -> NDArray[np.float64]:
        """4x4 voxel (i = column, j = row, k = slice) to patient LPS mm."""
        return self.plan.geometry.affine

    def phase(self, name: PhaseName) -> PhaseVolume:
        """The phase called ``name`` ("ED" or "ES")."""
        for p in self.phases:
            if p.name == name:
                return p
        raise KeyError(name)

    def metadata(self) -> dict[str, Any]:
        """JSON-serialisable description (subject, acquisition, geometry, artefacts)."""
        geo = self.geometry
        return {
            "generator": "cmrqc_shared.synth",
            "generator_version": GENERATOR_VERSION,
            "seed": self.seed,
            "config": self.config.model_dump(mode="json"),
            "config_fingerprint": self.config.fingerprint(),
            "anatomy": self.anatomy.model_dump(mode="json"),
            "acquisition": self.acquisition.model_dump(mode="json"),
            "geometry": {
                **geo.model_dump(mode="json"),
                "slice_normal": [float(v) for v in geo.slice_normal],
                "affine_lps": geo.affine.tolist(),
                "affine_ras": geo.affine_ras.tolist(),
                "index_order": "(i=column, j=row, k=slice) -> patient LPS mm; arrays [k, j, i]",
            },
            "artefacts": [a.model_dump(mode="json") for a in self.artefacts],
            "phases": {
                p.name: {"trigger_time_ms": p.trigger_time_ms, "volumes_ml": p.volumes_ml()}
                for p in self.phases
            },
            "labels": {"0": "background", "1": "LV cavity", "2": "LV myocardium", "3": "RV cavity"},
        }


def plan_study(seed: int, config: SynthConfig | None = None) -> StudyPlan:
    """Sample subject, acquisition, artefacts and geometry of study ``seed`` (no pixels)."""
    config = config or SynthConfig()
    anatomy = sample_anatomy(stream(seed, "anatomy"), config.es_volume_ratio_range)
    acquisition = sample_acquisition(anatomy, config, stream(seed, "acquisition"))
    art = sample_artefacts(config, stream(seed, "artefacts"), config.n_slices_range[1])
    trunc = None
    if art.missing_slices is not None:
        m = art.missing_slices
        trunc = (m.end, m.missing_mm, m.slices_removed)
    planned, coverage = plan_stack(
        anatomy,
        config,
        stream(seed, "geometry"),
        wrap_fraction=None if art.wraparound is None else art.wraparound.fov_fraction,
        truncation=trunc,
    )
    geo = planned.geometry
    n = geo.n_slices
    applied: list[AppliedArtefact] = []
    if art.ghosting is not None:
        g = art.ghosting
        art = _replace(
            art,
            ghosting=g.model_copy(
                update={
                    "phases_rad": g.phases_rad[:n],
                    "affected_slices": [k for k in g.affected_slices if k < n] or [n // 2],
                }
            ),
        )
        applied.append(
            AppliedArtefact(
                name="ghosting",
                params={
                    **art.ghosting.model_dump(mode="json"),  # type: ignore[union-attr]
                    "phase_encode": geo.phase_encode,
                },
            )
        )
    if art.misalignment is not None:
        shifts = art.misalignment.shifts_mm[:n]
        if not any(s != (0.0, 0.0) for s in shifts):
            shifts[n // 2] = (
                art.misalignment.shifts_mm[0]
                if art.misalignment.shifts_mm[0] != (0.0, 0.0)
                else (4.0, 0.0)
            )
        art = _replace(art, misalignment=art.misalignment.model_copy(update={"shifts_mm": shifts}))
        applied.append(
            AppliedArtefact(
                name="misalignment",
                params={
                    **art.misalignment.model_dump(mode="json"),  # type: ignore[union-attr]
                    "frame": "mm along (row_cosine, col_cosine)",
                },
            )
        )
    if art.wraparound is not None:
        n_pe = geo.rows if geo.phase_encode == "COL" else geo.cols
        applied.append(
            AppliedArtefact(
                name="wraparound",
                params={
                    **art.wraparound.model_dump(mode="json"),
                    "phase_encode": geo.phase_encode,
                    "fov_pe_mm": n_pe * geo.pixel_spacing_mm[0],
                    "body_extent_pe_mm": planned.body_extent_pe_mm,
                    "rendered_beyond_fov_px": planned.pe_extension_px,
                },
            )
        )
    if art.banding is not None:
        applied.append(AppliedArtefact(name="banding", params=art.banding.model_dump(mode="json")))
    if art.missing_slices is not None and coverage is not None:
        art = _replace(
            art,
            missing_slices=MissingSlicesParams(
                end=coverage.end,
                missing_mm=coverage.missing_mm,
                slices_removed=coverage.slices_removed,
            ),
        )
        applied.append(
            AppliedArtefact(
                name="missing_slices",
                params=art.missing_slices.model_dump(mode="json"),  # type: ignore[union-attr]
            )
        )
    return StudyPlan(
        seed=seed,
        config=config,
        anatomy=anatomy,
        acquisition=acquisition,
        geometry=geo,
        artefact_plan=art,
        pe_extension_px=planned.pe_extension_px,
        artefacts=tuple(applied),
    )


def _replace(plan: ArtefactPlan, **kw: Any) -> ArtefactPlan:
    return ArtefactPlan(**{**plan.__dict__, **kw})


def _upsample(coarse: F32, shape: tuple[int, ...]) -> F32:
    """Linear, corner-aligned upsampling of (slices, r, c) to ``shape``."""
    factors = tuple(o / i for o, i in zip(shape, coarse.shape, strict=True))
    out = ndimage.zoom(coarse, factors, order=1, mode="nearest", prefilter=False)
    if out.shape != shape:  # pragma: no cover - zoom rounds exactly for these factors
        raise RuntimeError(f"upsample produced {out.shape}, wanted {shape}")
    return out.astype(np.float32, copy=False)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], cell_px: float) -> F32:
    """Zero-mean, unit-variance random field with correlation length ~``cell_px`` pixels."""
    k, r, c = shape
    cr, cc = max(2, math.ceil(r / cell_px) + 1), max(2, math.ceil(c / cell_px) + 1)
    coarse = rng.standard_normal((k, cr, cc), dtype=np.float32)
    coarse = ndimage.gaussian_filter(coarse, sigma=(0, 0.7, 0.7), mode="wrap")
    coarse /= np.float32(coarse.std() + 1e-6)
    return _upsample(coarse, shape)


def _grid_coords(
    geo: StackGeometry,
    j: NDArray[np.float64],
    i: NDArray[np.float64],
    offsets: NDArray[np.float64] | None = None,
    rot: NDArray[np.float64] | None = None,
    origin: NDArray[np.float64] | None = None,
) -> tuple[F32, F32, F32]:
    """Coordinates of voxels (all k) x ``j`` x ``i`` (fractional indices allowed).

    Patient LPS mm by default; with ``rot``/``origin`` they are expressed in the frame
    ``rot.T @ (P - origin)``; ``offsets`` (k, 3) are patient-mm translations subtracted
    per slice (used for heart misalignment).
    """
    aff = geo.affine
    col_i, col_j = aff[:3, 0], aff[:3, 1]
    k = np.arange(geo.n_slices, dtype=np.float64)
    base = aff[:3, 3][None, :] + k[:, None] * aff[:3, 2][None, :]
    if offsets is not None:
        base = base - offsets
    if rot is not None:
        assert origin is not None
        base = (base - origin) @ rot
        col_i = col_i @ rot
        col_j = col_j @ rot
    out = []
    for c in range(3):
        v = (
            base[:, c, None, None].astype(np.float32)
            + (j * col_j[c]).astype(np.float32)[None, :, None]
            + (i * col_i[c]).astype(np.float32)[None, None, :]
        )
        out.append(v)
    return out[0], out[1], out[2]


def _heart_radius_mm(anat: SubjectAnatomy) -> float:
    """Radius around the LV axis containing every drawn heart structure, mm."""
    h = anat.heart
    fat = h.fat_mean_mm + sum(f.amplitude for f in h.fat_harmonics) + h.fat_av_groove_mm + 1.0
    curv = math.hypot(*h.axis_curvature_mm)
    radii = []
    for ph in (anat.ed, anat.es):
        radii.append(max(ph.epi_semi_axes_mm) * 1.1 + curv)
        radii.append(math.hypot(*ph.rv_center_mm) + max(ph.rv_semi_axes_mm) + h.rv_wall_mm)
        s = ph.atrial_scale
        radii.append(math.hypot(*h.la_center_mm[:2]) + s * max(h.la_semi_axes_mm[:2]) + 2.0)
        radii.append(math.hypot(*h.ra_center_mm[:2]) + s * max(h.ra_semi_axes_mm[:2]) + 2.0)
    radii.append(math.hypot(*h.aorta_center_mm) + h.aorta_radius_mm + 2.0)
    radii.append(math.hypot(*h.pa_center_mm) + h.pa_radius_mm + 2.0)
    return max(radii) + fat + 4.0


def _shift_vectors(plan: StudyPlan) -> NDArray[np.float64]:
    """Per-slice heart displacement (n_slices, 3) in patient mm."""
    geo = plan.geometry
    out = np.zeros((geo.n_slices, 3))
    mis = plan.artefact_plan.misalignment
    if mis is not None:
        row, col = np.asarray(geo.row_cosine), np.asarray(geo.col_cosine)
        for k, (du, dv) in enumerate(mis.shifts_mm[: geo.n_slices]):
            out[k] = du * row + dv * col
    return out


def _heart_box(plan: StudyPlan, shifts: NDArray[np.float64]) -> tuple[slice, slice]:
    """Rows/cols of the FOV that can contain heart structures in any slice."""
    geo, anat = plan.geometry, plan.anatomy
    aff = geo.affine
    rot = anat.heart_rotation()
    axis = rot[:, 2]
    o_h = np.asarray(anat.heart_origin_mm)
    normal = geo.slice_normal
    px = geo.pixel_spacing_mm[0]
    pts = []
    for k in range(geo.n_slices):
        ipp = aff[:3, 3] + k * aff[:3, 2]
        denom = float(axis @ normal)
        t = float((ipp - o_h) @ normal) / denom if abs(denom) > 1e-6 else 0.0
        q = o_h + t * axis + shifts[k] - ipp
        pts.append(
            (float(q @ np.asarray(geo.row_cosine)) / px, float(q @ np.asarray(geo.col_cosine)) / px)
        )
    arr = np.asarray(pts)
    rad = _heart_radius_mm(anat) / px / max(abs(float(axis @ normal)), 0.5)
    i0 = int(max(0, math.floor(arr[:, 0].min() - rad)))
    i1 = int(min(geo.cols, math.ceil(arr[:, 0].max() + rad) + 1))
    j0 = int(max(0, math.floor(arr[:, 1].min() - rad)))
    j1 = int(min(geo.rows, math.ceil(arr[:, 1].max() + rad) + 1))
    return slice(j0, max(j0, j1)), slice(i0, max(i0, i1))


def _ghost(
    params: GhostingParams, kspace: NDArray[np.complex64], pe_axis: int
) -> NDArray[np.complex64]:
    return apply_ghosting(kspace, params, pe_axis)


def render_plan(plan: StudyPlan, phases: tuple[PhaseName, ...] = ("ED", "ES")) -> SyntheticStudy:
    """Render the pixels of a planned study (see :func:`render_study`)."""
    t_start = time.perf_counter()
    geo, anat, acq = plan.geometry, plan.anatomy, plan.acquisition
    art = plan.artefact_plan
    px = geo.pixel_spacing_mm[0]
    thick = geo.slice_thickness_mm
    normal = geo.slice_normal
    pe_axis = 1 if geo.phase_encode == "COL" else 2
    ext = plan.pe_extension_px if art.wraparound is not None else 0
    j_idx = (
        np.arange(-ext, geo.rows + ext, dtype=np.float64)
        if pe_axis == 1
        else np.arange(geo.rows, dtype=np.float64)
    )
    i_idx = (
        np.arange(-ext, geo.cols + ext, dtype=np.float64)
        if pe_axis == 2
        else np.arange(geo.cols, dtype=np.float64)
    )
    j_off = ext if pe_axis == 1 else 0
    i_off = ext if pe_axis == 2 else 0
    shape = (geo.n_slices, len(j_idx), len(i_idx))

    # static (phase-independent) background, texture, bias and banding
    x, y, z = _grid_coords(geo, j_idx, i_idx)
    tex_rng = stream(plan.seed, "texture")
    texture = _smooth_noise(tex_rng, shape, 6.0 / px * 1.5)
    fine = _smooth_noise(tex_rng, shape, 2.5)
    background = render_body(x, y, z, anat.body, acq.contrast, normal, px, thick, texture, fine)
    heart_mid = np.asarray(anat.heart_origin_mm) + anat.heart_rotation()[:, 2] * (
        0.5 * anat.ed.epi_apex_mm
    )
    cj = np.linspace(j_idx[0], j_idx[-1], max(2, shape[1] // 8))
    ci = np.linspace(i_idx[0], i_idx[-1], max(2, shape[2] // 8))
    gain = _upsample(coil_sensitivity(*_grid_coords(geo, cj, ci), acq, heart_mid), shape)
    if art.banding is not None:
        gain *= banding_attenuation(x, y, z, art.banding, heart_mid, anat.heart_rotation())
    del x, y, z
    row_sp = geo.pixel_spacing_mm[0]
    g_u, g_v = acq.phase_gradient_rad_per_mm
    phase_map = (
        g_u * (i_idx - geo.cols / 2.0)[None, :] * px
        + g_v * (j_idx - geo.rows / 2.0)[:, None] * row_sp
    )
    carrier = np.exp(1j * phase_map).astype(np.complex64)
    t_static = time.perf_counter()

    # heart block coordinates (heart frame), with per-slice misalignment
    shifts = _shift_vectors(plan)
    rows_sl, cols_sl = _heart_box(plan, shifts)
    rot = anat.heart_rotation()
    hx, hy, hd = _grid_coords(
        geo,
        np.arange(rows_sl.start, rows_sl.stop, dtype=np.float64),
        np.arange(cols_sl.start, cols_sl.stop, dtype=np.float64),
        offsets=shifts,
        rot=rot,
        origin=np.asarray(anat.heart_origin_mm),
    )
    heart = HeartRenderer(hx, hy, hd, rot.T @ normal, px, thick)
    ext_rows = slice(rows_sl.start + j_off, rows_sl.stop + j_off)
    ext_cols = slice(cols_sl.start + i_off, cols_sl.stop + i_off)

    ghost_hook = None
    if art.ghosting is not None:
        ghost_hook = functools.partial(_ghost, art.ghosting)

    volumes: list[PhaseVolume] = []
    for name in phases:
        ph = anat.phase(name)
        signal = background.copy()
        labels = np.zeros(geo.shape, np.uint8)
        block = np.ascontiguousarray(signal[:, ext_rows, ext_cols])
        heart.render(anat.heart, ph, acq.contrast, block, labels[:, rows_sl, cols_sl])
        signal[:, ext_rows, ext_cols] = block
        signal *= np.float32(1.0) + np.float32(acq.contrast.texture) * texture
        signal *= gain
        cplx = signal.astype(np.complex64) * carrier[None]
        if ext:
            cplx = fold_over(cplx, pe_axis, geo.rows if pe_axis == 1 else geo.cols, ext)
        cplx = acquire(cplx, acq, pe_axis, ghost_hook)
        mag = add_rician_noise(cplx, 1.0 / acq.snr, stream(plan.seed, f"noise_{name}"))
        image = to_pixel_values(mag, acq, plan.config.max_pixel_value)
        volumes.append(
            PhaseVolume(
                name=name,
                trigger_time_ms=0.0 if name == "ED" else acq.es_trigger_time_ms,
                image=image,
                labels=labels,
                affine=geo.affine,
                pixel_spacing_mm=geo.pixel_spacing_mm,
                slice_thickness_mm=thick,
                slice_spacing_mm=geo.slice_spacing_mm,
            )
        )
    t_end = time.perf_counter()
    timings = {
        "static_s": t_static - t_start,
        "phases_s": t_end - t_static,
        "total_s": t_end - t_start,
    }
    logger.debug("rendered seed %d in %.3f s", plan.seed, t_end - t_start)
    return SyntheticStudy(plan=plan, phases=tuple(volumes), timings_s=timings)


def render_study(
    seed: int,
    config: SynthConfig | None = None,
    phases: tuple[PhaseName, ...] = ("ED", "ES"),
) -> SyntheticStudy:
    """Render study ``seed``: images and exact labels of each phase, no files written.

    Args:
        seed: non-negative subject seed; same seed + config -> bit-identical arrays.
        config: generator settings (defaults: :class:`SynthConfig`).
        phases: which phases to render ("ED", "ES" or both, in that order).
    """
    return render_plan(plan_study(seed, config), phases)
