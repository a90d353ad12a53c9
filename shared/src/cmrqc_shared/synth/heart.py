"""Render the heart (LV, RV, atria, great vessels, epicardial fat) of one cardiac phase.

Input coordinates are in the heart frame (mm, see :mod:`cmrqc_shared.synth.anatomy`).
Structures are painted back to front with partial-volume occupancies; the label of a
voxel is that of the last structure containing its centre, so labels describe exactly
what the image shows. Labels: 0 background, 1 LV cavity (papillary muscles included, as
in ACDC / M&Ms), 2 LV myocardium, 3 RV cavity. RV free wall, atria, aorta, pulmonary
artery and fat are drawn but not labelled.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from cmrqc_shared.synth.acquisition import TissueContrast
from cmrqc_shared.synth.anatomy import Harmonic, HeartPhase, HeartShape
from cmrqc_shared.synth.shapes import Field, ellipsoid, half_space, intersect, occupancy, union

F32 = NDArray[np.float32]

LABEL_BACKGROUND = 0
LABEL_LV = 1
LABEL_MYO = 2
LABEL_RV = 3

_FAR = np.float32(1.0e3)


def _harmonic_sum(cos1: F32, sin1: F32, harmonics: tuple[Harmonic, ...]) -> F32 | None:
    """``sum amplitude * cos(order * phi - phase)`` from cos(phi), sin(phi)."""
    if not harmonics:
        return None
    z1 = cos1 + 1j * sin1
    out = np.zeros(cos1.shape, np.float32)
    powers: dict[int, NDArray[np.complex64]] = {1: z1.astype(np.complex64)}
    for h in harmonics:
        if h.order not in powers:
            zk = powers[1]
            for _ in range(h.order - 1):
                zk = zk * powers[1]
            powers[h.order] = zk
        zk = powers[h.order]
        out += np.float32(h.amplitude * math.cos(h.phase_rad)) * zk.real
        out += np.float32(h.amplitude * math.sin(h.phase_rad)) * zk.imag
    return out


class HeartRenderer:
    """Evaluates and composites heart structures on a block of heart-frame coordinates.

    Args:
        x, y, d: heart-frame coordinates (mm) of voxel centres, shape (slices, rows, cols).
        nu: slice normal in the heart frame (unit vector).
        pixel_mm, thickness_mm: voxel size, mm.
    """

    def __init__(
        self, x: F32, y: F32, d: F32, nu: NDArray[np.float64], pixel_mm: float, thickness_mm: float
    ) -> None:
        self.x, self.y, self.d = x, y, d
        self.nu = nu
        self.pixel_mm = pixel_mm
        self.thickness_mm = thickness_mm
        flat = d.reshape(d.shape[0], -1)
        self.d_min = flat.min(axis=1)
        self.d_max = flat.max(axis=1)

    def _slices_for(self, d_lo: float, d_hi: float) -> slice:
        hit = np.flatnonzero((self.d_max >= d_lo) & (self.d_min <= d_hi))
        if hit.size == 0:
            return slice(0, 0)
        return slice(int(hit[0]), int(hit[-1]) + 1)

    def _restricted(self, d_lo: float, d_hi: float, fn: Callable[[slice], Field]) -> Field:
        """Evaluate ``fn`` only on slices whose depth range meets [d_lo, d_hi]."""
        ks = self._slices_for(d_lo, d_hi)
        sdf = np.full(self.d.shape, _FAR, np.float32)
        tz = np.zeros(self.d.shape, np.float32)
        if ks.stop > ks.start:
            f = fn(ks)
            sdf[ks] = f.sdf
            tz[ks] = f.tz
        return Field(sdf, tz)

    def _plane(self, base: float, tilt: tuple[float, float]) -> Field:
        gx, gy = tilt
        norm = math.sqrt(1.0 + gx * gx + gy * gy)
        sdf = np.float32(base) + np.float32(gx) * self.x + np.float32(gy) * self.y - self.d
        sdf *= np.float32(1.0 / norm)
        tz = abs(gx * self.nu[0] + gy * self.nu[1] - self.nu[2]) / norm
        return half_space(sdf, tz)

    def render(
        self,
        shape: HeartShape,
        ph: HeartPhase,
        contrast: TissueContrast,
        image: F32,
        labels: NDArray[np.uint8],
    ) -> None:
        """Composite the heart of phase ``ph`` over ``image`` and write ``labels`` (in place)."""
        x, y, d, nu = self.x, self.y, self.d, self.nu
        f32 = np.float32
        base, rv_base = ph.base_mm, ph.rv_base_mm
        len_endo = ph.endo_apex_mm - base
        len_epi = ph.epi_apex_mm - base
        a, b = ph.endo_semi_axes_mm
        ea, eb = ph.epi_semi_axes_mm

        # LV axis bends towards the apex
        u = np.maximum(d - f32(base), f32(0.0))
        bend = (u * f32(1.0 / len_epi)) ** 2
        cx, cy = shape.axis_curvature_mm
        x0 = x - f32(cx) * bend
        y0 = y - f32(cy) * bend
        r = np.sqrt(x0 * x0 + y0 * y0) + f32(1e-6)
        cos1, sin1 = x0 / r, y0 / r
        h_endo = _harmonic_sum(cos1, sin1, shape.endo_harmonics)
        h_epi = _harmonic_sum(cos1, sin1, shape.epi_harmonics)
        rho_endo = None if h_endo is None else f32(1.0) + h_endo
        rho_epi = None if h_epi is None else f32(1.0) + h_epi

        def ell(
            xx: F32,
            yy: F32,
            dd: F32,
            semi: tuple[float, float, float],
            angle: float = 0.0,
            p: float = 2.0,
            half: bool = False,
            rho: F32 | None = None,
        ) -> Field:
            return ellipsoid(
                xx, yy, dd, semi, nu, angle_rad=angle, z_exponent=p, half=half, radial_scale=rho
            )

        dz = d - f32(base)
        endo = ell(
            x0,
            y0,
            dz,
            (a, b, len_endo),
            shape.ellipse_angle_rad,
            shape.shape_exponent,
            True,
            rho_endo,
        )
        epi = ell(
            x0,
            y0,
            dz,
            (ea, eb, len_epi),
            shape.ellipse_angle_rad,
            shape.shape_exponent,
            True,
            rho_epi,
        )
        plane_lv = self._plane(base, shape.base_tilt)
        plane_rv = self._plane(rv_base, shape.base_tilt)

        rcx, rcy = ph.rv_center_mm
        ra_, rb_ = ph.rv_semi_axes_mm
        rv = ell(
            x - f32(rcx),
            y - f32(rcy),
            d - f32(rv_base),
            (ra_, rb_, ph.rv_apex_mm - rv_base),
            shape.rv_angle_rad,
            shape.rv_shape_exponent,
            True,
        )
        rv_wall = rv.shifted(shape.rv_wall_mm)

        s_at = ph.atrial_scale

        def blob(center: tuple[float, float, float], semi: tuple[float, float, float]) -> Field:
            lo, hi = center[2] - semi[2] - 4.0, center[2] + semi[2] + 4.0
            return self._restricted(
                lo,
                hi,
                lambda ks: ell(
                    x[ks] - f32(center[0]), y[ks] - f32(center[1]), d[ks] - f32(center[2]), semi
                ),
            )

        lc = shape.la_center_mm
        la = blob((lc[0], lc[1], base + lc[2]), tuple(s * s_at for s in shape.la_semi_axes_mm))  # type: ignore[arg-type]
        rc = shape.ra_center_mm
        ra = blob((rc[0], rc[1], rv_base + rc[2]), tuple(s * s_at for s in shape.ra_semi_axes_mm))  # type: ignore[arg-type]
        ao_r = shape.aorta_radius_mm
        ao = blob((*shape.aorta_center_mm, base - 25.0), (ao_r, ao_r, 35.0))
        pa_r = shape.pa_radius_mm
        pa = blob((*shape.pa_center_mm, rv_base - 30.0), (pa_r, pa_r, 28.0))
        wall = 2.0

        # epicardial / pericardial fat around everything
        fat_t = np.full(d.shape, f32(shape.fat_mean_mm), np.float32)
        h_fat = _harmonic_sum(cos1, sin1, shape.fat_harmonics)
        if h_fat is not None:
            fat_t += h_fat
        fat_t += f32(shape.fat_av_groove_mm) * np.exp(-((dz * f32(1.0 / 12.0)) ** 2))
        np.maximum(fat_t, f32(0.0), out=fat_t)
        hull = union(
            intersect(epi, plane_lv.shifted(2.0)),
            intersect(rv_wall, plane_rv.shifted(2.0)),
            la.shifted(wall),
            ra.shifted(wall),
            ao.shifted(wall),
            pa.shifted(wall),
        )

        above_lv = plane_lv.complement()
        above_rv = plane_rv.complement()
        inside_lv = intersect(endo, plane_lv)
        outside_epi = epi.complement()
        myo = contrast.myocardium
        layers: list[tuple[Field, float, int]] = [
            (hull.shifted(fat_t), contrast.fat, LABEL_BACKGROUND),
            (intersect(la.shifted(wall), above_lv), myo, LABEL_BACKGROUND),
            (intersect(la, above_lv), contrast.atrial_blood, LABEL_BACKGROUND),
            (intersect(ra.shifted(wall), above_rv), myo, LABEL_BACKGROUND),
            (intersect(ra, above_rv), contrast.atrial_blood, LABEL_BACKGROUND),
            (intersect(pa.shifted(wall), above_rv), myo, LABEL_BACKGROUND),
            (intersect(pa, above_rv), contrast.rv_blood, LABEL_BACKGROUND),
            (intersect(ao.shifted(wall), above_lv), myo, LABEL_BACKGROUND),
            (intersect(ao, above_lv), contrast.blood, LABEL_BACKGROUND),
            (intersect(rv_wall, plane_rv, outside_epi), myo, LABEL_BACKGROUND),
            (intersect(rv, plane_rv, outside_epi), contrast.rv_blood, LABEL_RV),
            (intersect(epi, plane_lv), myo, LABEL_MYO),
            (inside_lv, contrast.blood, LABEL_LV),
        ]

        # LV outflow tract: a gap in the basal anteroseptal myocardium, filled with blood
        if shape.lvot_depth_mm > 1.0:
            depth = shape.lvot_depth_mm

            def lvot(ks: slice) -> Field:
                ang = np.arctan2(sin1[ks], cos1[ks]) - f32(shape.lvot_angle_rad)
                ang = np.abs((ang + f32(math.pi)) % f32(2.0 * math.pi) - f32(math.pi))
                below = -plane_lv.sdf[ks]  # distance below the valve plane
                half_w = f32(shape.lvot_half_width_rad) * (f32(1.0) - below / f32(depth))
                wedge = Field(((ang - half_w) * r[ks]).astype(np.float32), 0.0)
                lim = Field((below - f32(depth)).astype(np.float32), float(abs(nu[2])))
                return intersect(epi.take(ks), plane_lv.take(ks), wedge, lim)

            layers.append(
                (self._restricted(base - 20.0, base + depth + 20.0, lvot), contrast.blood, LABEL_LV)
            )

        # papillary muscles (labelled as cavity)
        d_lo = base + shape.papillary_depth_fraction[0] * len_endo
        d_hi = base + shape.papillary_depth_fraction[1] * len_endo
        d_mid, half_len = 0.5 * (d_lo + d_hi), 0.5 * (d_hi - d_lo)
        prof = math.sqrt(max(1.0 - ((d_mid - base) / len_endo) ** shape.shape_exponent, 0.05))
        for angle in shape.papillary_angles_rad:
            rad = shape.papillary_radial_fraction * prof * 0.5 * (a + b)
            px_, py_ = rad * math.cos(angle), rad * math.sin(angle)
            pr = ph.papillary_radius_mm

            def pm(
                ks: slice, px_: float = px_, py_: float = py_, pr: float = pr, angle: float = angle
            ) -> Field:
                f = ell(
                    x0[ks] - f32(px_),
                    y0[ks] - f32(py_),
                    d[ks] - f32(d_mid),
                    (1.4 * pr, pr, half_len),
                    angle,
                )
                return intersect(f, inside_lv.take(ks))

            layers.append((self._restricted(d_lo - 2.0, d_hi + 2.0, pm), myo, LABEL_LV))

        for field, value, label in layers:
            alpha = occupancy(field, self.pixel_mm, self.thickness_mm)
            image += alpha * (f32(value) - image)
            labels[alpha > 0.5] = label
