"""Slice-stack geometry: DICOM patient coordinates of every voxel.

Conventions (all lengths in mm, patient frame DICOM LPS):

* Arrays are indexed ``[k, j, i]`` = ``[slice, row, column]``.
* ``row_cosine`` is the direction of increasing column index ``i`` (DICOM
  ImageOrientationPatient[0:3]); ``col_cosine`` the direction of increasing row index ``j``
  (ImageOrientationPatient[3:6]); ``slice_normal = row_cosine x col_cosine``.
* The voxel-to-patient affine maps ``(i, j, k, 1)`` to ``(x, y, z, 1)``::

      P = origin + i * col_spacing * row_cosine + j * row_spacing * col_cosine
                 + k * slice_spacing * slice_normal

  with ``(row_spacing, col_spacing) = PixelSpacing`` (DICOM order) and ``origin`` the
  ImagePositionPatient of slice 0 (centre of its first transmitted pixel).
* Slice index ``k`` increases along ``slice_normal``: the arrays are stored in the
  canonical order any reader obtains by sorting ImagePositionPatient along the normal.
  With the short-axis orientations used here the normal points from apex towards base, so
  ``k = 0`` is the most apical slice. (InstanceNumber follows the acquisition order,
  base to apex, which is the opposite.)
* NIfTI is RAS: ``affine_ras = diag(-1, -1, 1, 1) @ affine_lps``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

Vec3 = tuple[float, float, float]

LPS_TO_RAS: NDArray[np.float64] = np.diag([-1.0, -1.0, 1.0, 1.0])
"""Left-multiply an LPS affine by this to get the RAS (NIfTI) affine; it is its own inverse."""


class StackGeometry(BaseModel):
    """Geometry of a short-axis stack, shared by all cardiac phases of the cine."""

    model_config = ConfigDict(frozen=True)

    rows: int
    """Number of image rows (j)."""
    cols: int
    """Number of image columns (i)."""
    n_slices: int
    pixel_spacing_mm: tuple[float, float]
    """DICOM PixelSpacing: (distance between rows, distance between columns), mm."""
    slice_thickness_mm: float
    slice_spacing_mm: float
    """Centre-to-centre distance of adjacent slices (SpacingBetweenSlices), mm."""
    row_cosine: Vec3
    col_cosine: Vec3
    origin_mm: Vec3
    """ImagePositionPatient of slice k = 0, mm."""
    phase_encode: Literal["ROW", "COL"]
    """DICOM InPlanePhaseEncodingDirection: ``COL`` = along the columns (j axis)."""
    planning_tilt_deg: float
    """Angle between the slice normal and the true LV long axis (planning error)."""
    inplane_rotation_deg: float
    """Rotation of the heart in the image plane relative to the standard view."""

    @property
    def slice_normal(self) -> NDArray[np.float64]:
        """Unit normal ``row_cosine x col_cosine`` (direction of increasing k)."""
        return np.cross(np.asarray(self.row_cosine), np.asarray(self.col_cosine))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(n_slices, rows, cols)``."""
        return (self.n_slices, self.rows, self.cols)

    @property
    def affine(self) -> NDArray[np.float64]:
        """4x4 voxel (i = column, j = row, k = slice) to patient LPS mm affine."""
        row_sp, col_sp = self.pixel_spacing_mm
        aff = np.eye(4)
        aff[:3, 0] = np.asarray(self.row_cosine) * col_sp
        aff[:3, 1] = np.asarray(self.col_cosine) * row_sp
        aff[:3, 2] = self.slice_normal * self.slice_spacing_mm
        aff[:3, 3] = np.asarray(self.origin_mm)
        return aff

    @property
    def affine_ras(self) -> NDArray[np.float64]:
        """The same affine in RAS (NIfTI) patient coordinates."""
        return LPS_TO_RAS @ self.affine

    def image_position(self, k: int) -> NDArray[np.float64]:
        """ImagePositionPatient of slice ``k`` (mm, LPS)."""
        return np.asarray(self.origin_mm) + k * self.slice_spacing_mm * self.slice_normal

    def slice_location(self, k: int) -> float:
        """SliceLocation of slice ``k``: its position projected on the normal, mm."""
        return float(self.image_position(k) @ self.slice_normal)

    @property
    def image_orientation(self) -> list[float]:
        """DICOM ImageOrientationPatient (six direction cosines)."""
        return [*map(float, self.row_cosine), *map(float, self.col_cosine)]

    def voxel_to_patient(self, ijk: NDArray[np.float64]) -> NDArray[np.float64]:
        """Map voxel indices (..., 3) as (i, j, k) to patient LPS mm (..., 3)."""
        aff = self.affine
        return np.asarray(ijk, dtype=np.float64) @ aff[:3, :3].T + aff[:3, 3]


def affine_from_dicom(
    image_positions: NDArray[np.float64],
    image_orientation: NDArray[np.float64],
    pixel_spacing: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Rebuild the voxel-to-LPS affine from DICOM attributes of slices sorted along the normal.

    Args:
        image_positions: (n_slices, 3) ImagePositionPatient, mm, sorted by k.
        image_orientation: ImageOrientationPatient (6,).
        pixel_spacing: PixelSpacing (row spacing, column spacing), mm.
    """
    iop = np.asarray(image_orientation, dtype=np.float64)
    row, col = iop[:3], iop[3:]
    ipp = np.asarray(image_positions, dtype=np.float64)
    aff = np.eye(4)
    aff[:3, 0] = row * float(pixel_spacing[1])
    aff[:3, 1] = col * float(pixel_spacing[0])
    if len(ipp) > 1:
        aff[:3, 2] = (ipp[-1] - ipp[0]) / (len(ipp) - 1)
    else:
        aff[:3, 2] = np.cross(row, col)
    aff[:3, 3] = ipp[0]
    return aff
