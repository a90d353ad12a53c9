"""Slice geometry: sort frames along the slice normal, check the stack, build the affine.

Conventions (lengths in mm, patient frame DICOM LPS), as in ``cmrqc_shared.synth.geometry``:
the row cosine (ImageOrientationPatient[0:3]) points along increasing column index ``i``,
the column cosine (IOP[3:6]) along increasing row index ``j``, and the slice normal is their
cross product. Slices are ordered by the projection of ImagePositionPatient on the normal,
ascending, so ``k`` increases along the normal. The affine maps ``(i, j, k, 1)`` to patient
coordinates::

    P = IPP_0 + i * col_spacing * row_cosine + j * row_spacing * col_cosine + k * step

where ``step = (IPP_last - IPP_0) / (n - 1)`` (the normal times the slice spacing for an
unsheared stack) and ``(row_spacing, col_spacing) = PixelSpacing``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.ma  # np.median imports it on first use: ~60 ms on the first series)
from numpy.typing import NDArray

from cmrqc_ingest.frames import Frame

#: Largest angle between the row (or column) cosines of frames of one stack, degrees.
ORIENTATION_TOLERANCE_DEG = 0.5
#: Frames closer than this along the normal are the same slice position, mm.
SLICE_TOLERANCE_MM = 0.1
#: Allowed deviation of one slice gap from the median gap: max(absolute mm, relative).
SPACING_TOLERANCE_MM = 0.1
SPACING_TOLERANCE_REL = 0.02


class GeometryError(Exception):
    """The frames do not form one consistent stack (a series-level failure)."""

    def __init__(self, message: str, reason: str = "inconsistent-geometry") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class SliceStack:
    """Frames grouped by slice position, sorted along the normal, with the stack's geometry."""

    slices: tuple[tuple[Frame, ...], ...]
    """``slices[k]``: every frame (all phases) at slice position k."""
    affine: NDArray[np.float64]
    """4x4 voxel (i = column, j = row, k = slice) to patient LPS, mm."""
    normal: NDArray[np.float64]
    slice_spacing_mm: float
    pixel_spacing_mm: tuple[float, float]
    """(row spacing, column spacing), mm."""
    slice_thickness_mm: float | None
    rows: int
    columns: int

    @property
    def n_slices(self) -> int:
        return len(self.slices)


def unit_normal(orientation: Sequence[float]) -> NDArray[np.float64]:
    """The unit slice normal ``row_cosine x col_cosine`` of an ImageOrientationPatient.

    Raises:
        GeometryError: the cosines are degenerate (zero or parallel).
    """
    row = np.asarray(orientation[:3], dtype=np.float64)
    col = np.asarray(orientation[3:6], dtype=np.float64)
    normal = np.cross(row, col)
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6 or not math.isfinite(norm):
        raise GeometryError("ImageOrientationPatient cosines are zero or parallel")
    return normal / norm


def _unit(vector: Sequence[float]) -> NDArray[np.float64]:
    array = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(array))
    if norm < 1e-6 or not math.isfinite(norm):
        raise GeometryError("ImageOrientationPatient holds a zero direction cosine")
    return array / norm


def check_common_plane(frames: Sequence[Frame]) -> NDArray[np.float64]:
    """Check that every frame has the same orientation, matrix and pixel spacing.

    Returns:
        The common unit slice normal.

    Raises:
        GeometryError: orientations not parallel (or rotated in plane), differing
            Rows/Columns or PixelSpacing.
    """
    first = frames[0]
    normal = unit_normal(first.orientation)
    row0, col0 = _unit(first.orientation[:3]), _unit(first.orientation[3:])
    cos_tol = math.cos(math.radians(ORIENTATION_TOLERANCE_DEG))
    for frame in frames[1:]:
        row, col = _unit(frame.orientation[:3]), _unit(frame.orientation[3:])
        if float(row @ row0) < cos_tol or float(col @ col0) < cos_tol:
            raise GeometryError(
                f"orientation of {frame.key} differs from {first.key} by more than "
                f"{ORIENTATION_TOLERANCE_DEG} degrees (slices not parallel)"
            )
        if (frame.rows, frame.columns) != (first.rows, first.columns):
            raise GeometryError(
                f"{frame.key} is {frame.rows}x{frame.columns}, "
                f"{first.key} is {first.rows}x{first.columns}"
            )
        if not np.allclose(frame.pixel_spacing, first.pixel_spacing, rtol=1e-3, atol=1e-4):
            raise GeometryError(
                f"PixelSpacing of {frame.key} {frame.pixel_spacing} differs from "
                f"{first.pixel_spacing}"
            )
    return normal


def group_slices(frames: Sequence[Frame], normal: NDArray[np.float64]) -> list[list[Frame]]:
    """Group frames by slice position, ordered by ImagePositionPatient along ``normal``.

    Raises:
        GeometryError: frames at the same depth whose positions disagree in plane.
    """
    depth = {f.key: float(np.asarray(f.position) @ normal) for f in frames}
    ordered = sorted(frames, key=lambda f: depth[f.key])
    groups: list[list[Frame]] = []
    for frame in ordered:
        if groups and depth[frame.key] - depth[groups[-1][0].key] <= SLICE_TOLERANCE_MM:
            groups[-1].append(frame)
        else:
            groups.append([frame])
    for group in groups:
        anchor = np.asarray(group[0].position)
        for frame in group[1:]:
            if float(np.max(np.abs(np.asarray(frame.position) - anchor))) > SLICE_TOLERANCE_MM:
                raise GeometryError(
                    f"{frame.key} and {group[0].key} lie at the same depth but different "
                    "in-plane positions (two stacks in one series?)"
                )
    return groups


def build_stack(groups: Sequence[Sequence[Frame]], normal: NDArray[np.float64]) -> SliceStack:
    """Check the spacing of grouped slices and compute the voxel-to-patient affine.

    Raises:
        GeometryError: fewer than two slices, uneven spacing (a missing slice) or slice
            positions off the line through the first and last slice.
    """
    if len(groups) < 2:
        raise GeometryError("a stack needs at least two slice positions")
    first = groups[0][0]
    positions = np.array([g[0].position for g in groups], dtype=np.float64)
    depths = positions @ normal
    gaps = np.diff(depths)
    median_gap = float(np.median(gaps))
    tolerance = max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_REL * median_gap)
    worst = float(np.max(np.abs(gaps - median_gap)))
    if worst > tolerance:
        raise GeometryError(
            f"uneven slice spacing: gaps from {float(gaps.min()):.3f} to "
            f"{float(gaps.max()):.3f} mm (missing slice?)"
        )
    n = len(groups)
    step = (positions[-1] - positions[0]) / (n - 1)
    expected = positions[0] + np.outer(np.arange(n), step)
    off_line = float(np.max(np.linalg.norm(positions - expected, axis=1)))
    if off_line > max(SPACING_TOLERANCE_MM, 0.05 * median_gap):
        raise GeometryError(
            f"slice positions deviate {off_line:.3f} mm from a straight stack (sheared stack)"
        )
    row_sp, col_sp = first.pixel_spacing
    affine = np.eye(4)
    affine[:3, 0] = _unit(first.orientation[:3]) * col_sp
    affine[:3, 1] = _unit(first.orientation[3:]) * row_sp
    affine[:3, 2] = step
    affine[:3, 3] = positions[0]
    thicknesses = [f.slice_thickness for g in groups for f in g if f.slice_thickness]
    return SliceStack(
        slices=tuple(tuple(g) for g in groups),
        affine=affine,
        normal=normal,
        slice_spacing_mm=float(np.linalg.norm(step)),
        pixel_spacing_mm=(float(row_sp), float(col_sp)),
        slice_thickness_mm=float(np.median(thicknesses)) if thicknesses else None,
        rows=first.rows,
        columns=first.columns,
    )


def max_axis_alignment_deg(normal: NDArray[np.float64]) -> float:
    """Smallest angle between the slice normal and a patient axis (L, P or S), degrees.

    0 for a pure axial, coronal or sagittal plane; a double-oblique short-axis plan is
    typically 30-60 degrees from every axis.
    """
    largest = float(np.max(np.abs(normal)))
    return math.degrees(math.acos(min(1.0, largest)))
