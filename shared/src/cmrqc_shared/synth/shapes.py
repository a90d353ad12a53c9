"""Implicit-shape primitives evaluated on sampled slice grids.

Every primitive returns a :class:`Field`: an approximate signed distance (mm, negative
inside) plus the magnitude of the through-plane component of the surface normal, so that
:func:`occupancy` can model partial volume over a pixel of in-plane size ``pixel_mm`` and a
slice of thickness ``thickness_mm`` with a linear ramp (first-order box-filter model).

The signed distance of a quadric-like implicit surface ``g = 0`` is approximated from
``sqrt(g + 1) - 1`` and the gradient (exact for spheres, first-order exact near any
surface, where partial volume matters).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]

_EPS = np.float32(1e-6)


@dataclass
class Field:
    """Approximate signed distance field sampled on a grid.

    Attributes:
        sdf: signed distance, mm (negative inside the shape).
        tz: |component of the unit surface normal along the slice normal| in [0, 1]; a
            scalar where the surface is known to be perpendicular to the slice.
    """

    sdf: F32
    tz: F32 | float

    def shifted(self, offset_mm: float | F32) -> Field:
        """Return the shape dilated by ``offset_mm`` (negative to erode)."""
        if isinstance(offset_mm, np.ndarray):
            return Field((self.sdf - offset_mm).astype(np.float32, copy=False), self.tz)
        return Field(self.sdf - np.float32(offset_mm), self.tz)

    def take(self, index: slice) -> Field:
        """The field restricted to slices ``index`` (first array axis)."""
        tz = self.tz[index] if isinstance(self.tz, np.ndarray) else self.tz
        return Field(self.sdf[index], tz)

    def complement(self) -> Field:
        """Return the outside of the shape."""
        return Field(-self.sdf, self.tz)


def intersect(*fields: Field) -> Field:
    """Intersection (max of the signed distances); keeps the normal of the active shape."""
    out = fields[0]
    for f in fields[1:]:
        take = f.sdf > out.sdf
        sdf = np.where(take, f.sdf, out.sdf)
        tz = np.where(take, f.tz, out.tz).astype(np.float32)
        out = Field(sdf, tz)
    return out


def union(*fields: Field) -> Field:
    """Union (min of the signed distances); keeps the normal of the active shape."""
    out = fields[0]
    for f in fields[1:]:
        take = f.sdf < out.sdf
        sdf = np.where(take, f.sdf, out.sdf)
        tz = np.where(take, f.tz, out.tz).astype(np.float32)
        out = Field(sdf, tz)
    return out


def occupancy(field: Field, pixel_mm: float, thickness_mm: float) -> F32:
    """Fraction of a voxel (``pixel_mm`` square, ``thickness_mm`` thick) inside ``field``.

    A linear ramp of width ``sqrt(pixel^2 + (thickness * tz)^2)`` centred on the surface;
    ``occupancy > 0.5`` exactly where ``sdf < 0`` (the voxel centre is inside), which is
    what the label maps use, so images and labels stay consistent.
    """
    tz = field.tz
    if np.isscalar(tz):
        width = np.float32(np.hypot(pixel_mm, thickness_mm * float(tz)))  # type: ignore[arg-type]
        ramp = field.sdf * (np.float32(-1.0) / width)
    else:
        width2 = np.float32(pixel_mm**2) + np.float32(thickness_mm**2) * tz * tz  # type: ignore[operator]
        ramp = -field.sdf / np.sqrt(width2)
    ramp += np.float32(0.5)
    np.clip(ramp, 0.0, 1.0, out=ramp)
    return ramp.astype(np.float32, copy=False)


def _finish(g: F32, gx: F32, gy: F32, gz: F32 | None, nu: NDArray[np.float64]) -> Field:
    """Build a Field from an implicit function value and its gradient (frame of ``nu``).

    ``g + 1`` must be a non-negative "squared radius" (quadric-like); the distance uses
    ``sqrt(g + 1) - 1`` instead of ``g``, which is exact for spheres and much better than
    ``g / |grad g|`` away from the surface (used when shapes are dilated or eroded).
    """
    if gz is None:
        norm2 = gx * gx + gy * gy
        dot = gx * np.float32(nu[0]) + gy * np.float32(nu[1])
    else:
        norm2 = gx * gx + gy * gy + gz * gz
        dot = gx * np.float32(nu[0]) + gy * np.float32(nu[1]) + gz * np.float32(nu[2])
    norm = np.sqrt(norm2) + _EPS
    root = np.sqrt(np.maximum(g + np.float32(1.0), np.float32(0.0)))
    sdf = (root - np.float32(1.0)) * np.float32(2.0) * root / norm
    tz = np.abs(dot) / norm
    np.minimum(tz, 1.0, out=tz)
    return Field(sdf.astype(np.float32, copy=False), tz.astype(np.float32, copy=False))


def ellipsoid(
    x: F32,
    y: F32,
    z: F32,
    semi_axes: tuple[float, float, float],
    nu: NDArray[np.float64],
    *,
    angle_rad: float = 0.0,
    z_exponent: float = 2.0,
    half: bool = False,
    radial_scale: F32 | None = None,
) -> Field:
    """Generalised ellipsoid centred at the origin of ``(x, y, z)`` (mm).

    ``g = (xr / (rho a))^2 + (yr / (rho b))^2 + |z' / c|^p - 1`` where ``(xr, yr)`` is
    ``(x, y)`` rotated by ``-angle_rad`` (so the ``a`` axis points at ``angle_rad``),
    ``rho`` is the optional ``radial_scale`` (angular shape harmonics), ``p`` is
    ``z_exponent`` and ``z' = max(z, 0)`` when ``half`` (the shape continues as an elliptic
    cylinder for ``z < 0``: used for ventricles whose widest part is the base).

    Args:
        x, y, z: coordinates, mm, in the shape's frame.
        semi_axes: (a, b, c), mm.
        nu: the slice normal expressed in the same frame (unit vector).
    """
    a, b, c = semi_axes
    if angle_rad != 0.0:
        ca, sa = np.float32(np.cos(angle_rad)), np.float32(np.sin(angle_rad))
        xr = ca * x + sa * y
        yr = ca * y - sa * x
    else:
        ca, sa = np.float32(1.0), np.float32(0.0)
        xr, yr = x, y
    inv_a2 = np.float32(1.0 / (a * a))
    inv_b2 = np.float32(1.0 / (b * b))
    if radial_scale is not None:
        inv_r2 = np.float32(1.0) / (radial_scale * radial_scale)
        ex = xr * xr * inv_a2 * inv_r2
        ey = yr * yr * inv_b2 * inv_r2
        gxr = np.float32(2.0) * xr * inv_a2 * inv_r2
        gyr = np.float32(2.0) * yr * inv_b2 * inv_r2
    else:
        ex = xr * xr * inv_a2
        ey = yr * yr * inv_b2
        gxr = np.float32(2.0) * xr * inv_a2
        gyr = np.float32(2.0) * yr * inv_b2
    zz = np.maximum(z, np.float32(0.0)) if half else np.abs(z)
    zn = zz * np.float32(1.0 / c)
    if z_exponent == 2.0:
        ez = zn * zn
        gz = np.float32(2.0 / c) * zn
    else:
        zp = np.power(zn, np.float32(z_exponent - 1.0))
        ez = zp * zn
        gz = np.float32(z_exponent / c) * zp
    if not half:
        gz = gz * np.sign(z)
    g = ex + ey + ez - np.float32(1.0)
    if angle_rad != 0.0:
        gx = cast(F32, ca * gxr - sa * gyr)
        gy = cast(F32, sa * gxr + ca * gyr)
    else:
        gx, gy = gxr, gyr
    return _finish(g, gx, gy, gz, nu)


def elliptic_cylinder(
    x: F32,
    y: F32,
    semi_axes: tuple[float, float],
    nu: NDArray[np.float64],
    *,
    exponent: float = 2.0,
) -> Field:
    """Superelliptic cylinder along z, ``|x/a|^q + |y/b|^q = 1`` (mm); ``nu`` in the same frame."""
    a, b = semi_axes
    xa = np.abs(x) * np.float32(1.0 / a)
    yb = np.abs(y) * np.float32(1.0 / b)
    if exponent == 2.0:
        s = xa * xa + yb * yb
        g = s - np.float32(1.0)
        gx: F32 = np.float32(2.0 / a) * xa * np.sign(x)
        gy: F32 = np.float32(2.0 / b) * yb * np.sign(y)
        return _finish(g, gx, gy, None, nu)  # float32 at run time
    q = np.float32(exponent)
    xq1 = np.power(xa, q - np.float32(1.0))
    yq1 = np.power(yb, q - np.float32(1.0))
    s = xq1 * xa + yq1 * yb
    sp = np.power(s + _EPS, np.float32(2.0 / exponent) - np.float32(1.0))
    gq = cast(F32, sp * s - np.float32(1.0))
    gx = np.float32(2.0 / a) * sp * xq1 * np.sign(x)
    gy = np.float32(2.0 / b) * sp * yq1 * np.sign(y)
    return _finish(gq, gx, gy, None, nu)


def circle_cylinder(x: F32, y: F32, radius: float, nu: NDArray[np.float64]) -> Field:
    """Circular cylinder along z with exact signed distance (mm)."""
    r = np.sqrt(x * x + y * y)
    sdf = r - np.float32(radius)
    inv = np.float32(1.0) / (r + _EPS)
    tz = np.abs(x * inv * np.float32(nu[0]) + y * inv * np.float32(nu[1]))
    return Field(sdf.astype(np.float32, copy=False), np.minimum(tz, 1.0).astype(np.float32))


def half_space(signed_distance: F32, tz: float) -> Field:
    """A half-space given its exact signed distance (mm) and constant |normal . slice normal|."""
    return Field(signed_distance.astype(np.float32, copy=False), float(min(abs(tz), 1.0)))
