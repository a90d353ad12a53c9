"""Subject anatomy: a continuous 3D model of heart and thorax in patient mm coordinates.

Two frames are used (both in millimetres):

* **Patient frame**, DICOM LPS: +x patient left, +y posterior, +z superior; the subject
  lies head-first supine (PatientPosition ``HFS``).
* **Heart frame** ``(x, y, d)``: origin on the LV long axis at the end-diastolic base
  (mitral valve) plane; ``d`` runs along the long axis from base towards apex; ``x`` points
  at the LV lateral free wall and ``y`` at the inferior wall. In a standard short-axis view
  ``x`` is image-right and ``y`` image-down, so the RV (at negative ``x``) lies to the
  image-left of the LV and the anterior wall is at the top. ``heart_axes`` maps heart-frame
  unit vectors to patient LPS.

Phase-dependent parameters (:class:`HeartPhase`) share the frame of the ED phase, so the
same subject is described at end diastole and end systole.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

PhaseName = Literal["ED", "ES"]

Vec2 = tuple[float, float]
Vec3 = tuple[float, float, float]


class Harmonic(BaseModel):
    """One angular harmonic ``amplitude * cos(order * phi - phase_rad)`` (dimensionless)."""

    model_config = ConfigDict(frozen=True)

    order: int
    amplitude: float
    phase_rad: float


class HeartPhase(BaseModel):
    """Phase-dependent heart shape (heart frame, mm)."""

    model_config = ConfigDict(frozen=True)

    base_mm: float
    """Depth of the mitral valve plane where it crosses the long axis."""
    endo_semi_axes_mm: Vec2
    """LV endocardial semi-axes at the base (widest level)."""
    endo_apex_mm: float
    """Depth of the endocardial apex (the cavity closes there)."""
    epi_apex_mm: float
    """Depth of the epicardial apex (myocardium caps the cavity)."""
    wall_thickness_mm: float
    """LV wall thickness at the base."""
    rv_center_mm: Vec2
    """Centre of the RV cavity ellipse relative to the LV axis."""
    rv_semi_axes_mm: Vec2
    """RV cavity semi-axes (along ``rv_angle_rad``, perpendicular to it)."""
    rv_base_mm: float
    """Depth of the tricuspid valve plane."""
    rv_apex_mm: float
    """Depth of the RV apex."""
    papillary_radius_mm: float
    """In-plane radius of each papillary muscle."""
    atrial_scale: float
    """Scale of both atria relative to their subject size (atria fill during systole)."""

    @property
    def epi_semi_axes_mm(self) -> Vec2:
        """LV epicardial semi-axes at the base, mm."""
        a, b = self.endo_semi_axes_mm
        return (a + self.wall_thickness_mm, b + self.wall_thickness_mm)


class HeartShape(BaseModel):
    """Subject-level (phase-independent) heart shape parameters (heart frame, mm / rad)."""

    model_config = ConfigDict(frozen=True)

    ellipse_angle_rad: float
    """Orientation of the LV cross-section's major axis."""
    shape_exponent: float
    """Exponent of the LV long-axis profile (2 = ellipsoid; larger = blunter, bullet-like)."""
    rv_shape_exponent: float
    """Same for the RV."""
    base_tilt: Vec2
    """Valve-plane slopes (d change per mm of x and of y): the base is not a short-axis plane."""
    axis_curvature_mm: Vec2
    """Apical displacement of the LV axis (x, y), growing quadratically with depth."""
    endo_harmonics: tuple[Harmonic, ...]
    """Angular shape irregularity of the endocardium (relative radius change)."""
    epi_harmonics: tuple[Harmonic, ...]
    """Angular shape irregularity of the epicardium."""
    rv_angle_rad: float
    """Orientation of the RV ellipse's first semi-axis (about pi: towards image left)."""
    rv_wall_mm: float
    """RV free-wall thickness (drawn dark, not labelled, as in ACDC/M&Ms conventions)."""
    lvot_angle_rad: float
    """Direction of the LV outflow tract gap in the basal myocardium (anteroseptal)."""
    lvot_half_width_rad: float
    """Angular half-width of that gap at the base."""
    lvot_depth_mm: float
    """How far below the base the outflow gap reaches (0: none)."""
    papillary_angles_rad: Vec2
    """Angles of the anterolateral and posteromedial papillary muscles."""
    papillary_radial_fraction: float
    """Distance of the papillary muscles from the axis as a fraction of the cavity radius."""
    papillary_depth_fraction: Vec2
    """Depth extent (start, end) of the papillary muscles as fractions of the cavity length."""
    fat_mean_mm: float
    """Mean epicardial/pericardial fat thickness."""
    fat_harmonics: tuple[Harmonic, ...]
    """Angular variation of the fat thickness (mm, not relative)."""
    fat_av_groove_mm: float
    """Extra fat in the atrioventricular groove (near the base)."""
    la_center_mm: Vec3
    """Left atrium centre (x, y, depth relative to the base; negative = above the base)."""
    la_semi_axes_mm: Vec3
    ra_center_mm: Vec3
    """Right atrium centre (x, y, depth relative to the RV base)."""
    ra_semi_axes_mm: Vec3
    aorta_center_mm: Vec2
    """Aortic root centre (x, y)."""
    aorta_radius_mm: float
    pa_center_mm: Vec2
    """Pulmonary trunk centre (x, y)."""
    pa_radius_mm: float
    es_volume_ratio: float
    """Target ES/ED LV cavity volume of the continuous model."""


class BodyShape(BaseModel):
    """Thorax and upper abdomen in patient LPS mm (cylinders run along patient z)."""

    model_config = ConfigDict(frozen=True)

    center_xy_mm: Vec2
    half_axes_mm: Vec2
    """Body outline half-axes (left-right, anterior-posterior)."""
    outline_exponent: float
    """Superellipse exponent of the outline (2 = ellipse, larger = boxier)."""
    fat_mm: float
    """Subcutaneous fat thickness."""
    muscle_mm: float
    """Chest-wall muscle thickness."""
    posterior_muscle_mm: float
    """Extra posterior (paraspinal) muscle thickness."""
    pectoral_mm: float
    """Extra anterior (pectoral) muscle thickness."""
    fat_variation: float
    """Relative angular variation of the subcutaneous fat thickness."""
    fat_angle_rad: float
    """Angle (around the body axis, from +x towards +y) of the thickest fat."""
    rib_pitch_mm: float
    """Distance between ribs along z."""
    rib_slope: float
    """dz/dy of a rib (ribs descend anteriorly)."""
    rib_phase_mm: float
    mediastinum_x_mm: float
    """Centre x of the mediastinal band."""
    mediastinum_half_width_mm: float
    mediastinum_anterior_y_mm: float
    """The mediastinal band only lies posterior to this y (behind the heart centre)."""
    spine_center_xy_mm: Vec2
    spine_radius_mm: float
    aorta_center_xy_mm: Vec2
    """Descending aorta centre."""
    aorta_radius_mm: float
    liver_center_mm: Vec3
    liver_semi_axes_mm: Vec3
    liver_left_center_mm: Vec3
    """Left lobe of the liver (under the heart)."""
    liver_left_semi_axes_mm: Vec3
    stomach_center_mm: Vec3
    """Stomach / spleen block under the left hemidiaphragm."""
    stomach_semi_axes_mm: Vec3


class SubjectAnatomy(BaseModel):
    """Everything anatomical about one synthetic subject (no acquisition parameters)."""

    model_config = ConfigDict(frozen=True)

    heart: HeartShape
    ed: HeartPhase
    es: HeartPhase
    body: BodyShape
    heart_origin_mm: Vec3
    """Patient LPS position of the heart-frame origin (LV axis at the ED base), mm."""
    heart_axes: tuple[Vec3, Vec3, Vec3]
    """Heart-frame unit vectors (x lateral, y inferior, d base-to-apex) in patient LPS."""

    def phase(self, name: PhaseName) -> HeartPhase:
        """Return the heart shape of phase ``"ED"`` or ``"ES"``."""
        return self.ed if name == "ED" else self.es

    def heart_rotation(self) -> NDArray[np.float64]:
        """3x3 matrix whose columns are the heart axes in patient LPS."""
        return np.array(self.heart_axes, dtype=np.float64).T

    def to_heart(self, points_lps: NDArray[np.float64]) -> NDArray[np.float64]:
        """Map patient LPS points (..., 3) in mm to heart-frame (x, y, d) mm."""
        rot = self.heart_rotation()
        return (np.asarray(points_lps) - np.asarray(self.heart_origin_mm)) @ rot

    def lv_volume_ml(self, name: PhaseName) -> float:
        """Continuous-model LV cavity volume below the base plane (mL), ignoring tilt."""
        ph = self.phase(name)
        a, b = ph.endo_semi_axes_mm
        p = self.heart.shape_exponent
        length = ph.endo_apex_mm - ph.base_mm
        return math.pi * a * b * length * p / (p + 1.0) / 1000.0


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _unit(v: NDArray[np.float64]) -> NDArray[np.float64]:
    return v / float(np.linalg.norm(v))


def _harmonics(
    rng: np.random.Generator, orders: tuple[int, ...], max_amp: float
) -> tuple[Harmonic, ...]:
    return tuple(
        Harmonic(order=k, amplitude=_u(rng, 0.0, max_amp), phase_rad=_u(rng, -math.pi, math.pi))
        for k in orders
    )


def _sample_heart_axes(rng: np.random.Generator) -> NDArray[np.float64]:
    """Columns: heart x (lateral), y (inferior), d (apex) in patient LPS."""
    azimuth = math.radians(_u(rng, 35.0, 55.0))  # from +x (left) towards -y (anterior)
    elevation = math.radians(_u(rng, 25.0, 45.0))  # below the horizontal plane
    n = np.array(
        [
            math.cos(elevation) * math.cos(azimuth),
            -math.cos(elevation) * math.sin(azimuth),
            -math.sin(elevation),
        ]
    )
    inferior = np.array([0.0, 0.0, -1.0])
    ey = _unit(inferior - float(inferior @ n) * n)
    ex = np.cross(n, ey)
    roll = math.radians(_u(rng, -15.0, 15.0))
    ex, ey = math.cos(roll) * ex + math.sin(roll) * ey, -math.sin(roll) * ex + math.cos(roll) * ey
    return np.stack([ex, ey, n], axis=1)


def _myocardial_es_thickness(
    a: float,
    b: float,
    t: float,
    len_endo: float,
    len_epi: float,
    a_s: float,
    b_s: float,
    len_endo_s: float,
    len_epi_s: float,
) -> float:
    """ES wall thickness that conserves myocardial volume (profiles share one exponent)."""
    myo = (a + t) * (b + t) * len_epi - a * b * len_endo
    q = (myo + a_s * b_s * len_endo_s) / len_epi_s
    s = a_s + b_s
    disc = s * s - 4.0 * (a_s * b_s - q)
    return 0.5 * (-s + math.sqrt(max(disc, 0.0)))


def _sample_heart(
    rng: np.random.Generator, es_ratio_range: tuple[float, float]
) -> tuple[HeartShape, HeartPhase, HeartPhase]:
    radius = _u(rng, 21.0, 29.0)
    ecc = _u(rng, 0.0, 0.12)
    a, b = radius * (1.0 + ecc), radius * (1.0 - ecc)
    t = _u(rng, 6.5, 11.5)
    len_endo = _u(rng, 62.0, 85.0)
    cap = _u(rng, 4.0, 8.0)
    p = _u(rng, 1.8, 2.8)
    r_epi = radius + t

    # End systole: the base descends, the apex stays, the cavity shrinks, the wall thickens.
    base_es = _u(rng, 7.0, 14.0)
    epi_apex_es = len_endo + cap - _u(rng, 0.0, 3.0)
    cap_es = cap * _u(rng, 1.2, 1.6)
    endo_apex_es = epi_apex_es - cap_es
    ratio = _u(rng, *es_ratio_range)
    scale = math.sqrt(ratio * len_endo / (endo_apex_es - base_es))
    a_s, b_s = a * scale, b * scale
    t_s = _myocardial_es_thickness(
        a, b, t, len_endo, len_endo + cap, a_s, b_s, endo_apex_es - base_es, epi_apex_es - base_es
    )
    t_s = float(np.clip(t_s, 1.15 * t, 2.2 * t))

    # RV crescent: an ellipse beside the septum, minus the LV. Parametrised by the crescent
    # thickness along its axis (free wall to septum) and how far it wraps past the LV centre.
    rv_dir = math.radians(_u(rng, 192.0, 215.0))
    c_dist = r_epi * _u(rng, 0.2, 0.5)
    rv_thick = _u(rng, 14.0, 28.0)
    rv_wrap = _u(rng, 0.0, 10.0)
    rv_a = r_epi - c_dist + rv_thick
    rv_b = (r_epi + rv_wrap) / math.sqrt(max(1.0 - (c_dist / rv_a) ** 2, 0.2))
    rv_angle = rv_dir + math.radians(_u(rng, -15.0, 15.0))
    rv_base = -_u(rng, 0.0, 8.0)
    rv_apex = (len_endo + cap) * _u(rng, 0.8, 0.95)
    # ES: thinner crescent that still wraps around the (thicker) septum
    c_es = c_dist * _u(rng, 0.85, 0.95)
    r_epi_es = (a_s + b_s) / 2.0 + t_s
    rv_a_es = r_epi_es - c_es + rv_thick * _u(rng, 0.6, 0.8)
    rv_b_es = (r_epi_es + rv_wrap * _u(rng, 0.5, 0.9)) / math.sqrt(
        max(1.0 - (c_es / rv_a_es) ** 2, 0.2)
    )
    rv_base_es = rv_base + base_es * _u(rng, 0.6, 1.0)
    pap_r = _u(rng, 4.0, 6.5)

    ed = HeartPhase(
        base_mm=0.0,
        endo_semi_axes_mm=(a, b),
        endo_apex_mm=len_endo,
        epi_apex_mm=len_endo + cap,
        wall_thickness_mm=t,
        rv_center_mm=(c_dist * math.cos(rv_dir), c_dist * math.sin(rv_dir)),
        rv_semi_axes_mm=(rv_a, rv_b),
        rv_base_mm=rv_base,
        rv_apex_mm=rv_apex,
        papillary_radius_mm=pap_r,
        atrial_scale=1.0,
    )
    es = HeartPhase(
        base_mm=base_es,
        endo_semi_axes_mm=(a_s, b_s),
        endo_apex_mm=endo_apex_es,
        epi_apex_mm=epi_apex_es,
        wall_thickness_mm=t_s,
        rv_center_mm=(c_es * math.cos(rv_dir), c_es * math.sin(rv_dir)),
        rv_semi_axes_mm=(rv_a_es, rv_b_es),
        rv_base_mm=rv_base_es,
        rv_apex_mm=rv_apex - _u(rng, 0.0, 4.0),
        papillary_radius_mm=pap_r * _u(rng, 1.1, 1.3),
        atrial_scale=_u(rng, 1.05, 1.2),
    )
    shape = HeartShape(
        ellipse_angle_rad=_u(rng, -math.pi, math.pi),
        shape_exponent=p,
        rv_shape_exponent=_u(rng, 2.0, 3.0),
        base_tilt=(_u(rng, -0.25, 0.25), _u(rng, -0.25, 0.25)),
        axis_curvature_mm=(_u(rng, -8.0, 8.0), _u(rng, -8.0, 8.0)),
        endo_harmonics=(
            *_harmonics(rng, (2, 3, 4), 0.035),
            *_harmonics(rng, (6, 9, 13), 0.012),
        ),
        epi_harmonics=_harmonics(rng, (2, 3), 0.02),
        rv_angle_rad=rv_angle,
        rv_wall_mm=_u(rng, 2.5, 4.0),
        lvot_angle_rad=math.radians(_u(rng, -160.0, -125.0)),
        lvot_half_width_rad=math.radians(_u(rng, 20.0, 40.0)),
        lvot_depth_mm=_u(rng, 0.0, 14.0),
        papillary_angles_rad=(
            math.radians(_u(rng, -65.0, -25.0)),
            math.radians(_u(rng, 95.0, 135.0)),
        ),
        papillary_radial_fraction=_u(rng, 0.62, 0.8),
        papillary_depth_fraction=(_u(rng, 0.25, 0.4), _u(rng, 0.65, 0.8)),
        fat_mean_mm=_u(rng, -1.0, 2.5),
        fat_harmonics=_harmonics(rng, (1, 2, 3), 2.5),
        fat_av_groove_mm=_u(rng, 2.0, 8.0),
        la_center_mm=(
            radius * _u(rng, -0.1, 0.3),
            radius * _u(rng, 0.5, 0.9),
            -_u(rng, 18.0, 28.0),
        ),
        la_semi_axes_mm=(_u(rng, 24.0, 32.0), _u(rng, 18.0, 26.0), _u(rng, 24.0, 32.0)),
        ra_center_mm=(-r_epi * _u(rng, 1.1, 1.5), radius * _u(rng, 0.2, 0.6), -_u(rng, 15.0, 25.0)),
        ra_semi_axes_mm=(_u(rng, 20.0, 28.0), _u(rng, 24.0, 32.0), _u(rng, 24.0, 32.0)),
        aorta_center_mm=(-radius * _u(rng, 0.4, 0.7), -radius * _u(rng, 0.2, 0.5)),
        aorta_radius_mm=_u(rng, 11.0, 15.0),
        pa_center_mm=(-r_epi * _u(rng, 0.9, 1.3), -r_epi * _u(rng, 0.9, 1.3)),
        pa_radius_mm=_u(rng, 11.0, 14.0),
        es_volume_ratio=ratio,
    )
    return shape, ed, es


def heart_surface_points(shape: HeartShape, phase: HeartPhase) -> NDArray[np.float64]:
    """Coarse samples (N, 3) of the LV epicardium and RV outline in the heart frame, mm."""
    phi = np.linspace(0.0, 2.0 * math.pi, 24, endpoint=False)
    pts = []
    ea, eb = phase.epi_semi_axes_mm
    length = phase.epi_apex_mm - phase.base_mm
    for u in np.linspace(0.0, 0.98, 10):
        f = math.sqrt(max(1.0 - u**shape.shape_exponent, 0.0))
        d = phase.base_mm + u * length
        pts.append(np.stack([ea * f * np.cos(phi), eb * f * np.sin(phi), np.full_like(phi, d)], 1))
    ra, rb = phase.rv_semi_axes_mm
    ca, sa = math.cos(shape.rv_angle_rad), math.sin(shape.rv_angle_rad)
    rv_len = phase.rv_apex_mm - phase.rv_base_mm
    for u in np.linspace(0.0, 0.98, 8):
        f = math.sqrt(max(1.0 - u**shape.rv_shape_exponent, 0.0))
        x0 = (ra + shape.rv_wall_mm) * f * np.cos(phi)
        y0 = (rb + shape.rv_wall_mm) * f * np.sin(phi)
        x = phase.rv_center_mm[0] + ca * x0 - sa * y0
        y = phase.rv_center_mm[1] + sa * x0 + ca * y0
        pts.append(np.stack([x, y, np.full_like(phi, phase.rv_base_mm + u * rv_len)], 1))
    return np.concatenate(pts, axis=0)


def _sample_body(
    rng: np.random.Generator, heart_mid: NDArray[np.float64], z_heart_inferior: float
) -> BodyShape:
    hx, hy = _u(rng, 150.0, 190.0), _u(rng, 95.0, 125.0)
    fat = _u(rng, 6.0, 22.0)
    muscle = _u(rng, 10.0, 18.0)
    post = _u(rng, 20.0, 40.0)
    pect = _u(rng, 0.0, 15.0)
    # place the anterior inner thoracic wall a little in front of the heart
    y_ant_inner = float(heart_mid[1]) - _u(rng, 52.0, 66.0)
    by = y_ant_inner + (hy - fat - muscle - pect)
    bx = float(heart_mid[0]) - _u(rng, 25.0, 45.0)
    y_post_inner = by + hy - fat - muscle - post
    spine_r = _u(rng, 16.0, 21.0)
    spine_y = y_post_inner - 0.3 * spine_r
    ao_r = _u(rng, 10.0, 13.0)
    z_r = z_heart_inferior + _u(rng, 5.0, 35.0)
    z_l = z_heart_inferior - _u(rng, 0.0, 10.0)
    z_s = z_heart_inferior + _u(rng, -5.0, 20.0)
    liver_semi = (_u(rng, 100.0, 130.0), hy * _u(rng, 0.75, 0.9), _u(rng, 90.0, 120.0))
    left_semi = (_u(rng, 70.0, 100.0), _u(rng, 60.0, 80.0), _u(rng, 60.0, 80.0))
    stomach_semi = (_u(rng, 60.0, 85.0), _u(rng, 60.0, 80.0), _u(rng, 70.0, 90.0))
    return BodyShape(
        center_xy_mm=(bx, by),
        half_axes_mm=(hx, hy),
        outline_exponent=_u(rng, 2.0, 2.6),
        fat_mm=fat,
        muscle_mm=muscle,
        posterior_muscle_mm=post,
        pectoral_mm=pect,
        fat_variation=_u(rng, 0.0, 0.6),
        fat_angle_rad=_u(rng, -math.pi, math.pi),
        rib_pitch_mm=_u(rng, 26.0, 36.0),
        rib_slope=_u(rng, 0.3, 0.6),
        rib_phase_mm=_u(rng, 0.0, 36.0),
        mediastinum_x_mm=bx + _u(rng, 5.0, 20.0),
        mediastinum_half_width_mm=_u(rng, 15.0, 28.0),
        mediastinum_anterior_y_mm=float(heart_mid[1]) + _u(rng, -10.0, 10.0),
        spine_center_xy_mm=(bx + _u(rng, -5.0, 5.0), spine_y),
        spine_radius_mm=spine_r,
        aorta_center_xy_mm=(
            bx + spine_r + _u(rng, 0.0, 10.0),
            spine_y - spine_r - _u(rng, 0.0, 10.0),
        ),
        aorta_radius_mm=ao_r,
        liver_center_mm=(bx - _u(rng, 40.0, 70.0), by + _u(rng, -10.0, 15.0), z_r - liver_semi[2]),
        liver_semi_axes_mm=liver_semi,
        liver_left_center_mm=(
            bx + _u(rng, 0.0, 30.0),
            by - _u(rng, 10.0, 30.0),
            z_l - left_semi[2],
        ),
        liver_left_semi_axes_mm=left_semi,
        stomach_center_mm=(
            bx + _u(rng, 60.0, 90.0),
            by + _u(rng, 0.0, 20.0),
            z_s - stomach_semi[2],
        ),
        stomach_semi_axes_mm=stomach_semi,
    )


def sample_anatomy(
    rng: np.random.Generator, es_volume_ratio_range: tuple[float, float] = (0.35, 0.60)
) -> SubjectAnatomy:
    """Draw one subject's anatomy (heart at ED and ES, thorax, pose in the scanner).

    Args:
        rng: the random generator (the only source of randomness).
        es_volume_ratio_range: range of the target ES/ED LV cavity volume ratio.
    """
    shape, ed, es = _sample_heart(rng, es_volume_ratio_range)
    axes = _sample_heart_axes(rng)
    heart_mid = np.array([_u(rng, -20.0, 20.0), _u(rng, -20.0, 20.0), _u(rng, -30.0, 30.0)])
    origin = heart_mid - axes[:, 2] * 0.5 * ed.epi_apex_mm
    pts = heart_surface_points(shape, ed) @ axes.T + origin
    body = _sample_body(rng, heart_mid, float(pts[:, 2].min()))
    return SubjectAnatomy(
        heart=shape,
        ed=ed,
        es=es,
        body=body,
        heart_origin_mm=(float(origin[0]), float(origin[1]), float(origin[2])),
        heart_axes=tuple(tuple(float(v) for v in axes[:, c]) for c in range(3)),  # type: ignore[arg-type]
    )
