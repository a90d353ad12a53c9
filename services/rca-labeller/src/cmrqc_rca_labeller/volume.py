"""Short-axis volumes as the RCA engine sees them, and the canonical orientation.

A :class:`CardiacVolume` is an image ``[k, j, i]`` (slices, rows, columns) with the affine
that maps voxel ``(i, j, k, 1)`` to patient LPS millimetres (the convention of every event and
of ``cmrqc_shared.synth``), and optionally a labelmap on the same grid (0 BG, 1 LV, 2 LVM,
3 RVC).

Registration works in a *canonical* frame so that two stacks from different scanners are
comparable: x along the image columns (i), y along the rows (j), z = x × y, with z pointing
from the apex towards the base. Stacks whose slice normal points towards the apex are turned
round (slice order reversed and columns mirrored, which keeps the frame right-handed, so the
RV stays on the same side of the LV). The apex direction is not known without labels; the
anatomical prior is used instead: in patient LPS the LV apex points anterior, left and
inferior, i.e. along ``(+1, -1, -1)/√3``. The in-plane rotation is left as acquired: the
registration searches it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

#: Direction of the LV apex from the base in patient LPS (anterior-left-inferior), unit.
APEX_DIRECTION_LPS = np.array([1.0, -1.0, -1.0]) / np.sqrt(3.0)

LABEL_COUNT = 4
"""Labels 0 BG, 1 LV cavity, 2 LV myocardium, 3 RV cavity."""


@dataclass(frozen=True)
class CardiacVolume:
    """An image on a voxel grid, optionally with its labelmap.

    Attributes:
        image: intensities ``[k, j, i]`` (any real dtype; converted to float32 on use).
        affine: 4×4 voxel ``(i, j, k)`` → patient LPS mm.
        labels: uint8 labelmap ``[k, j, i]`` (0 BG, 1 LV, 2 LVM, 3 RVC) or None.

    Raises:
        ValueError: the image is not 3D, the affine is not 4×4 or singular, or the labels'
            shape differs from the image's.
    """

    image: NDArray[Any]
    affine: NDArray[np.float64]
    labels: NDArray[np.uint8] | None = None

    def __post_init__(self) -> None:
        if self.image.ndim != 3:
            raise ValueError(f"image must be 3D [k, j, i], got shape {self.image.shape}")
        if min(self.image.shape) < 1:
            raise ValueError(f"image has an empty axis: shape {self.image.shape}")
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {affine.shape}")
        if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
            raise ValueError("affine is singular (a zero spacing?)")
        object.__setattr__(self, "affine", affine)
        if self.labels is not None:
            if self.labels.shape != self.image.shape:
                raise ValueError(
                    f"labels shape {self.labels.shape} differs from image shape {self.image.shape}"
                )
            if self.labels.size and int(self.labels.max()) >= LABEL_COUNT:
                raise ValueError(f"labels must be 0..3, found {int(self.labels.max())}")
            object.__setattr__(self, "labels", np.asarray(self.labels, dtype=np.uint8))

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size ``(dz, dy, dx)`` in mm: slice spacing, row spacing, column spacing."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(norms[2]), float(norms[1]), float(norms[0])

    @property
    def voxel_volume_mm3(self) -> float:
        dz, dy, dx = self.spacing_mm
        return dz * dy * dx


@dataclass(frozen=True)
class CanonicalVolume:
    """A volume turned into the canonical frame (see the module docstring).

    ``image`` is float32 ``[k, j, i]``; ``spacing_mm`` is ``(dz, dy, dx)``; ``flipped`` says
    whether the slice order was reversed and the columns mirrored.
    """

    image: NDArray[np.float32]
    labels: NDArray[np.uint8] | None
    spacing_mm: tuple[float, float, float]
    flipped: bool


def to_canonical(volume: CardiacVolume) -> CanonicalVolume:
    """Reorder ``volume`` so that k increases along x × y and z points apex → base."""
    affine = volume.affine
    image = np.asarray(volume.image, dtype=np.float32)
    labels = volume.labels
    x_axis, y_axis, k_axis = affine[:3, 0], affine[:3, 1], affine[:3, 2]
    normal = np.cross(x_axis, y_axis)
    normal /= np.linalg.norm(normal)
    if float(k_axis @ normal) < 0:  # slices stored against the normal: put them along it
        image = image[::-1]
        labels = labels[::-1] if labels is not None else None
    flipped = float(normal @ APEX_DIRECTION_LPS) > 0  # the normal points towards the apex
    if flipped:
        image = image[::-1, :, ::-1]
        labels = labels[::-1, :, ::-1] if labels is not None else None
    return CanonicalVolume(
        image=np.ascontiguousarray(image),
        labels=np.ascontiguousarray(labels) if labels is not None else None,
        spacing_mm=volume.spacing_mm,
        flipped=flipped,
    )
