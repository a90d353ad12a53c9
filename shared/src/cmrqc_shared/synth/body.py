"""Thorax and upper abdomen (everything but the heart), rendered in patient LPS mm."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from cmrqc_shared.synth.acquisition import TissueContrast
from cmrqc_shared.synth.anatomy import BodyShape
from cmrqc_shared.synth.shapes import (
    Field,
    circle_cylinder,
    ellipsoid,
    elliptic_cylinder,
    intersect,
    occupancy,
    union,
)

F32 = NDArray[np.float32]


def _paint(img: F32, alpha: F32, value: float | F32) -> None:
    """Alpha-composite ``value`` over ``img`` in place."""
    if isinstance(value, np.ndarray):
        img += alpha * (value - img)
    else:
        img += alpha * (np.float32(value) - img)


def _ellipsoid_at(
    x: F32,
    y: F32,
    z: F32,
    center: tuple[float, float, float],
    semi: tuple[float, float, float],
    nu: NDArray[np.float64],
) -> Field:
    return ellipsoid(
        x - np.float32(center[0]), y - np.float32(center[1]), z - np.float32(center[2]), semi, nu
    )


def render_body(
    x: F32,
    y: F32,
    z: F32,
    body: BodyShape,
    contrast: TissueContrast,
    normal: NDArray[np.float64],
    pixel_mm: float,
    thickness_mm: float,
    texture: F32,
    fine_texture: F32,
) -> F32:
    """Relative signal of the body background at patient points ``(x, y, z)`` (mm).

    Args:
        x, y, z: patient LPS coordinates of the voxel centres, mm (any common shape).
        body: thorax shape.
        contrast: tissue signals.
        normal: slice normal in LPS (for through-plane partial volume).
        pixel_mm, thickness_mm: voxel size, mm.
        texture: smooth zero-mean unit-variance field, same shape (tissue texture).
        fine_texture: finer field of the same kind (lung vessels).
    """
    bx, by = body.center_xy_mm
    hx, hy = body.half_axes_mm
    xc = x - np.float32(bx)
    yc = y - np.float32(by)
    img = np.zeros(x.shape, np.float32)

    def occ(f: Field) -> F32:
        return occupancy(f, pixel_mm, thickness_mm)

    outline = elliptic_cylinder(xc, yc, (hx, hy), normal, exponent=body.outline_exponent)
    _paint(img, occ(outline), contrast.fat)
    # angle around the body axis (y > 0 is posterior), for wall thicknesses
    theta = np.arctan2(yc * np.float32(1.0 / hy), xc * np.float32(1.0 / hx))
    sin_t = np.sin(theta)
    fat_t = np.float32(body.fat_mm) * (
        np.float32(1.0)
        + np.float32(body.fat_variation) * np.cos(theta - np.float32(body.fat_angle_rad))
    )
    muscle_t = (
        np.float32(body.muscle_mm)
        + np.float32(body.posterior_muscle_mm) * np.maximum(sin_t, np.float32(0.0)) ** 2
        + np.float32(body.pectoral_mm) * np.maximum(-sin_t, np.float32(0.0)) ** 2
    )
    wall_t = fat_t + muscle_t
    muscle = outline.shifted(-fat_t)
    _paint(img, occ(muscle), contrast.muscle)
    thorax = outline.shifted(-wall_t)

    # ribs: bony ovals in the inner chest wall, one every rib_pitch along (sloping) z
    depth = -outline.sdf - wall_t + np.float32(6.0)  # 0 at the rib centre line
    zr = z - np.float32(body.rib_slope) * (y - np.float32(by)) - np.float32(body.rib_phase_mm)
    pitch = np.float32(body.rib_pitch_mm)
    zm = zr - pitch * np.floor(zr / pitch) - np.float32(0.5) * pitch
    rib_r = np.sqrt((depth * np.float32(1.0 / 5.0)) ** 2 + (zm * np.float32(1.0 / 7.0)) ** 2)
    rib = Field(((rib_r - np.float32(1.0)) * np.float32(5.5)).astype(np.float32), 0.5)
    _paint(img, occ(rib), 0.06)
    _paint(img, occ(rib.shifted(-1.5)), contrast.marrow)

    vessels = np.clip(fine_texture - np.float32(1.3), 0.0, 1.0)
    lung_signal = np.float32(contrast.lung) + np.float32(contrast.lung_vessel) * vessels
    _paint(img, occ(thorax), lung_signal)

    slab_d = np.abs(x - np.float32(body.mediastinum_x_mm)) - np.float32(
        body.mediastinum_half_width_mm
    )
    slab = Field(slab_d.astype(np.float32), float(abs(normal[0])))
    posterior = Field(
        (np.float32(body.mediastinum_anterior_y_mm) - y).astype(np.float32), float(abs(normal[1]))
    )
    _paint(img, occ(intersect(slab, thorax, posterior)), contrast.mediastinum)

    sx, sy = body.spine_center_xy_mm
    spine = circle_cylinder(x - np.float32(sx), y - np.float32(sy), body.spine_radius_mm, normal)
    _paint(img, occ(spine), contrast.marrow)
    canal_y = sy + body.spine_radius_mm + 7.0
    canal = circle_cylinder(
        x - np.float32(sx), y - np.float32(canal_y), 0.4 * body.spine_radius_mm, normal
    )
    _paint(img, occ(canal), contrast.csf)
    ax, ay = body.aorta_center_xy_mm
    aorta_out = circle_cylinder(
        x - np.float32(ax), y - np.float32(ay), body.aorta_radius_mm + 1.5, normal
    )
    _paint(img, occ(aorta_out), contrast.muscle)
    _paint(img, occ(aorta_out.shifted(-1.5)), contrast.aorta)

    abdomen_limit = outline.shifted(-(fat_t + np.float32(0.7) * muscle_t))
    stomach = _ellipsoid_at(x, y, z, body.stomach_center_mm, body.stomach_semi_axes_mm, normal)
    _paint(img, occ(intersect(stomach, abdomen_limit)), contrast.stomach)
    liver = union(
        _ellipsoid_at(x, y, z, body.liver_center_mm, body.liver_semi_axes_mm, normal),
        _ellipsoid_at(x, y, z, body.liver_left_center_mm, body.liver_left_semi_axes_mm, normal),
    )
    liver_vessels = np.clip(fine_texture - np.float32(1.6), 0.0, 1.0)
    liver_signal = np.float32(contrast.liver) * (np.float32(1.0) + np.float32(0.8) * liver_vessels)
    _paint(img, occ(intersect(liver, abdomen_limit)), liver_signal)

    img *= np.float32(1.0) + np.float32(contrast.texture) * texture
    return img
