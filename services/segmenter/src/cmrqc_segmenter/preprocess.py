"""From a native volume to network input, and from network output back to the native grid.

Conventions: a volume is a numpy array ``(slices k, rows j, columns i)``; ``pixel_spacing_mm``
is DICOM PixelSpacing order ``(row spacing, column spacing)`` — the distance between rows and
between columns, mm. The network grid is square (``InputContract``): ``size`` pixels of
``spacing_mm`` centred on a point of the native image, axis-aligned with it. Resampling to the
network grid is bilinear (with an anti-aliasing blur when the native pixels are much smaller);
class probabilities are resampled back bilinearly onto every native pixel before the argmax,
so the labelmap has exactly the input's shape and sub-pixel boundaries survive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from scipy import ndimage

from cmrqc_segmenter.contract import InputContract

MIN_MATRIX = 16
"""Smallest accepted rows/columns: below this a slice holds no usable anatomy."""
MAX_MATRIX = 2048
MAX_SLICES = 512
_ANTIALIAS_FACTOR = 1.5
ArrayOrFloat = NDArray[np.number] | float


class VolumeRejected(ValueError):
    """A volume that can never be segmented; ``reason`` is a short machine-readable cause.

    Reasons: ``empty-volume``, ``not-a-volume``, ``non-finite-volume``, ``constant-volume``,
    ``volume-too-small``, ``volume-too-large``, ``invalid-spacing``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def validate_volume(
    volume: NDArray[np.generic], pixel_spacing_mm: tuple[float, float]
) -> NDArray[np.float32]:
    """Check a volume and return it as float32 ``(k, j, i)``.

    A 2D array is taken as a single slice. Non-finite voxels in an otherwise finite volume are
    replaced by the smallest finite value (they carry no signal).

    Raises:
        VolumeRejected: no voxels, not 2D/3D, no finite voxel, all voxels equal, a matrix below
            ``MIN_MATRIX`` or above ``MAX_MATRIX``, too many slices, or a non-positive or
            non-finite pixel spacing.
    """
    array = np.asarray(volume)
    if array.size == 0:
        raise VolumeRejected("empty-volume", f"the volume has no voxels (shape {array.shape})")
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim != 3:
        raise VolumeRejected(
            "not-a-volume", f"expected (slices, rows, columns), got shape {array.shape}"
        )
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise VolumeRejected("not-a-volume", f"voxels must be real numbers, got {array.dtype}")
    slices, rows, cols = array.shape
    if rows < MIN_MATRIX or cols < MIN_MATRIX:
        raise VolumeRejected(
            "volume-too-small", f"matrix {rows}x{cols} is below {MIN_MATRIX}x{MIN_MATRIX}"
        )
    if rows > MAX_MATRIX or cols > MAX_MATRIX or slices > MAX_SLICES:
        raise VolumeRejected(
            "volume-too-large",
            f"shape {array.shape} exceeds {MAX_SLICES} slices or a {MAX_MATRIX} matrix",
        )
    spacing = tuple(float(s) for s in pixel_spacing_mm)
    if len(spacing) != 2 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise VolumeRejected(
            "invalid-spacing", f"pixel spacing must be two positive mm values, got {spacing}"
        )
    out = array.astype(np.float32, copy=True)
    finite = np.isfinite(out)
    if not finite.all():
        if not finite.any():
            raise VolumeRejected("non-finite-volume", "every voxel is NaN or infinite")
        out[~finite] = out[finite].min()
    if out.max() == out.min():
        raise VolumeRejected("constant-volume", f"every voxel has the value {out.flat[0]}")
    return out


def pixel_spacing_from_affine(
    affine: NDArray[np.floating] | list[list[float]],
) -> tuple[float, float]:
    """(row spacing, column spacing) in mm from a voxel (i, j, k) -> patient affine."""
    matrix = np.asarray(affine, dtype=np.float64)
    return float(np.linalg.norm(matrix[:3, 1])), float(np.linalg.norm(matrix[:3, 0]))


def intensity_window(
    volume: NDArray[np.number], percentiles: tuple[float, float]
) -> tuple[float, float]:
    """The (low, high) intensities at ``percentiles`` of the volume (high > low).

    Computed on at most ~250k voxels (a regular subsample), which is exact enough for a
    window and keeps large volumes fast.
    """
    flat = volume.reshape(-1)
    step = max(1, flat.size // 250_000)
    lo, hi = np.percentile(flat[::step], percentiles)
    if not hi > lo:  # a mostly constant volume: fall back to the full range
        lo, hi = float(flat.min()), float(flat.max())
    return float(lo), float(hi)


def normalise_intensity(
    volume: NDArray[np.number], percentiles: tuple[float, float]
) -> NDArray[np.float32]:
    """Clip to the volume's intensity percentiles and scale to [0, 1] (float32)."""
    lo, hi = intensity_window(volume, percentiles)
    out = (np.asarray(volume, dtype=np.float32) - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


@dataclass(frozen=True)
class FieldGeometry:
    """Where the network grid lies on a native image: the link between the two grids.

    Attributes:
        native_shape: (rows, columns) of the native image.
        pixel_spacing_mm: native (row spacing, column spacing), mm.
        centre: native (row j, column i) position of the network grid's centre, pixels
            (fractional allowed).
        spacing_mm: network pixel spacing, mm.
        size: network rows = columns.
    """

    native_shape: tuple[int, int]
    pixel_spacing_mm: tuple[float, float]
    centre: tuple[float, float]
    spacing_mm: float
    size: int

    @classmethod
    def centred(
        cls,
        native_shape: tuple[int, int],
        pixel_spacing_mm: tuple[float, float],
        contract: InputContract,
        centre: tuple[float, float] | None = None,
    ) -> FieldGeometry:
        """The field of ``contract`` centred on ``centre`` (default: the image centre)."""
        rows, cols = native_shape
        if centre is None:
            centre = ((rows - 1) / 2.0, (cols - 1) / 2.0)
        return cls(
            native_shape=(int(rows), int(cols)),
            pixel_spacing_mm=(float(pixel_spacing_mm[0]), float(pixel_spacing_mm[1])),
            centre=(float(centre[0]), float(centre[1])),
            spacing_mm=contract.spacing_mm,
            size=contract.size,
        )

    def network_to_native(self, v: ArrayOrFloat, u: ArrayOrFloat) -> tuple[Any, Any]:
        """Native (j, i) pixel coordinates of network pixel (row v, column u)."""
        half = (self.size - 1) / 2.0
        j = self.centre[0] + (np.asarray(v) - half) * self.spacing_mm / self.pixel_spacing_mm[0]
        i = self.centre[1] + (np.asarray(u) - half) * self.spacing_mm / self.pixel_spacing_mm[1]
        return j, i

    def native_to_network(self, j: ArrayOrFloat, i: ArrayOrFloat) -> tuple[Any, Any]:
        """Network (v, u) pixel coordinates of native pixel (row j, column i)."""
        half = (self.size - 1) / 2.0
        v = (np.asarray(j) - self.centre[0]) * self.pixel_spacing_mm[0] / self.spacing_mm + half
        u = (np.asarray(i) - self.centre[1]) * self.pixel_spacing_mm[1] / self.spacing_mm + half
        return v, u

    def sampling_grid(self, rotation_rad: float = 0.0, scale: float = 1.0) -> torch.Tensor:
        """``grid_sample`` grid ``(1, size, size, 2)`` reading the native image.

        ``rotation_rad`` and ``scale`` rotate and zoom the field about its centre (training
        augmentation; ``scale`` > 1 shows more anatomy, i.e. a smaller-looking heart).
        """
        half = (self.size - 1) / 2.0
        offsets = (np.arange(self.size, dtype=np.float64) - half) * self.spacing_mm
        d_row, d_col = np.meshgrid(offsets, offsets, indexing="ij")
        cos, sin = math.cos(rotation_rad) * scale, math.sin(rotation_rad) * scale
        r_row, r_col = cos * d_row - sin * d_col, sin * d_row + cos * d_col
        j = self.centre[0] + r_row / self.pixel_spacing_mm[0]
        i = self.centre[1] + r_col / self.pixel_spacing_mm[1]
        rows, cols = self.native_shape
        grid = np.stack(
            [2.0 * i / max(cols - 1, 1) - 1.0, 2.0 * j / max(rows - 1, 1) - 1.0], axis=-1
        )
        return torch.from_numpy(grid.astype(np.float32))[None]

    def native_window(self) -> tuple[slice, slice]:
        """The native rows and columns the field covers (everything else is outside it)."""
        j, i = self.network_to_native(
            np.array([0.0, self.size - 1.0]), np.array([0.0, self.size - 1.0])
        )
        rows, cols = self.native_shape
        # One network pixel of margin: bilinear weights reach that far beyond the field.
        margin_j = self.spacing_mm / self.pixel_spacing_mm[0]
        margin_i = self.spacing_mm / self.pixel_spacing_mm[1]
        row_slice = slice(
            max(0, int(np.floor(j[0] - margin_j))), min(rows, int(np.ceil(j[1] + margin_j)) + 1)
        )
        col_slice = slice(
            max(0, int(np.floor(i[0] - margin_i))), min(cols, int(np.ceil(i[1] + margin_i)) + 1)
        )
        return row_slice, col_slice

    def inverse_grid(self, window: tuple[slice, slice] | None = None) -> torch.Tensor:
        """``grid_sample`` grid ``(1, rows, cols, 2)`` reading network outputs at native pixels.

        With ``window``, only at the native pixels inside it (``(1, window rows, window cols,
        2)``).
        """
        rows, cols = self.native_shape
        row_slice, col_slice = window or (slice(0, rows), slice(0, cols))
        v, u = self.native_to_network(
            np.arange(row_slice.start, row_slice.stop, dtype=np.float64),
            np.arange(col_slice.start, col_slice.stop, dtype=np.float64),
        )
        denom = max(self.size - 1, 1)
        vv, uu = np.meshgrid(2.0 * v / denom - 1.0, 2.0 * u / denom - 1.0, indexing="ij")
        return torch.from_numpy(np.stack([uu, vv], axis=-1).astype(np.float32))[None]

    def antialias_sigma(self) -> tuple[float, float]:
        """Gaussian sigma (native pixels, rows then columns) to blur before downsampling."""
        sigmas = []
        for native in self.pixel_spacing_mm:
            factor = self.spacing_mm / native
            sigmas.append(0.5 * factor if factor > _ANTIALIAS_FACTOR else 0.0)
        return sigmas[0], sigmas[1]


def slice_context_indices(slices: int, context: int) -> NDArray[np.int64]:
    """``(slices, 2 * context + 1)`` slice indices of each slice's input channels (clamped)."""
    offsets = np.arange(-context, context + 1)
    return np.clip(np.arange(slices)[:, None] + offsets[None, :], 0, slices - 1)


def to_network_grid(
    normalised: NDArray[np.float32], geometry: FieldGeometry, contract: InputContract
) -> torch.Tensor:
    """Network input ``(k, channels, size, size)`` float32 for a normalised native volume."""
    sigma = geometry.antialias_sigma()
    if any(sigma):
        normalised = ndimage.gaussian_filter(normalised, sigma=(0.0, *sigma), mode="nearest")
    volume = torch.from_numpy(np.ascontiguousarray(normalised, dtype=np.float32))
    slices = volume.shape[0]
    resampled = F.grid_sample(
        volume[:, None],
        geometry.sampling_grid().expand(slices, -1, -1, -1),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )[:, 0]
    index = torch.from_numpy(slice_context_indices(slices, contract.context_slices))
    return resampled[index]


def to_native_grid(probabilities: torch.Tensor, geometry: FieldGeometry) -> torch.Tensor:
    """Resample class probabilities ``(k, classes, size, size)`` onto the native grid.

    Returns ``(k, classes, rows, cols)`` float32; outside the network field every class has
    probability 0 except background, which has 1.
    """
    probabilities = probabilities.float()
    slices = probabilities.shape[0]
    native = F.grid_sample(
        probabilities,
        geometry.inverse_grid().expand(slices, -1, -1, -1),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )
    native[:, 0] += 1.0 - native.sum(dim=1)
    return native


def class_argmax(scores: torch.Tensor) -> torch.Tensor:
    """uint8 argmax over dim 1 of ``(k, classes, …)`` scores (first class wins ties).

    A running comparison over the few classes: several times faster on the CPU than
    ``Tensor.argmax(dim=1)``, which reduces along a strided axis.
    """
    best = scores[:, 0].clone()
    labels = torch.zeros(best.shape, dtype=torch.uint8)
    for value in range(1, scores.shape[1]):
        better = scores[:, value] > best
        labels[better] = value
        best = torch.maximum(best, scores[:, value])
    return labels


def to_native_labels(probabilities: torch.Tensor, geometry: FieldGeometry) -> NDArray[np.uint8]:
    """The argmax labelmap ``(k, rows, cols)`` of :func:`to_native_grid`, computed only where
    the field covers the native image (background elsewhere): same labels, less work."""
    slices = probabilities.shape[0]
    rows, cols = geometry.native_shape
    labels = np.zeros((slices, rows, cols), dtype=np.uint8)
    window = geometry.native_window()
    if window[0].start >= window[0].stop or window[1].start >= window[1].stop:
        return labels
    grid = geometry.inverse_grid(window).expand(slices, -1, -1, -1)
    native = F.grid_sample(
        probabilities.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )
    native[:, 0] += 1.0 - native.sum(dim=1)
    labels[:, window[0], window[1]] = class_argmax(native).numpy()
    return labels
