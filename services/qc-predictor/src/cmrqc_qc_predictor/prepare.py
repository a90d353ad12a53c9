"""Input preparation: an image and its labelmap -> the networks' 5-channel 8 × 224 × 224 grid.

The paper's input (Robinson et al. 2018, Sect. 2): the image and the one-hot segmentation
(BG, LV, LVM, RVC) resampled to 224 × 224 × 8, intensities in [0, 1]: five channels.

Choices, and why:

* **Whole field of view, not a crop.** The paper resampled whole images. More importantly a
  crop would have to be centred on something: the segmentation's bounding box is exactly
  what is in doubt (a segmentation shifted off the heart, a false-positive blob in the liver
  or an empty labelmap would move, stretch or remove the box), and the image has no heart
  detector to offer. The whole FOV keeps every false positive in view and behaves the same
  for every segmentation. The ``fast`` model derives its heart-centred crop *from this grid*
  (``crop_around_segmentation``) and gets the global facts a crop loses (mass outside the
  crop, volumes, …) as shape features.
* **Aspect ratio kept (letterbox).** The in-plane FOV is scaled so that its longer side spans
  224 pixels and centred; the rest is zero. Square pixels on the grid keep the heart's shape
  (a round LV stays round) whatever the acquisition matrix; the pixel size of the grid is
  ``PreparedInput.grid_mm``.
* **Slices: linear interpolation to 8, ends kept** (``align_corners``). Labels are one-hot
  encoded *before* resampling, so a grid voxel holds the fraction of each class (channels sum
  to 1, in [0, 1]; exactly one-hot wherever the labelmap is locally uniform). Nearest
  neighbour would silently drop 2 of 10 slices, and with them a dropped-slice error.
* **Intensities per volume**: clipped to the 0.5th–99.5th percentile and scaled to [0, 1].
  The paper normalised over its whole dataset; per-volume scaling needs no dataset
  statistics in the service and is the same for a volume seen alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

GRID_SLICES = 8
GRID_SIZE = 224
CHANNELS = 5
"""Image, then one-hot BG, LV, LVM, RVC."""
NUM_LABELS = 4
CLIP_PERCENTILES = (0.5, 99.5)
INPUT_CONTRACT = "qc-input-v1:5x8x224x224:whole-fov-letterbox:onehot-linear-slices:p0.5-99.5"
"""Names this preparation; a model artifact states the contract it was trained on."""


class InputError(ValueError):
    """An image/labelmap pair that cannot be prepared. ``reason`` is machine-readable."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class PreparedInput:
    """The network input of one case and the geometry of its grid.

    Attributes:
        tensor: float32 ``(5, 8, 224, 224)``: image in [0, 1], then BG, LV, LVM, RVC
            fractions in [0, 1] summing to 1 inside the field of view (the letterbox padding
            is background: image 0, BG 1).
        grid_mm: in-plane pixel size of the grid, mm (square).
        slice_mm: distance between the 8 grid slices, mm (0 for a single-slice volume).
        fov_box: (row0, row1, col0, col1) of the field of view inside the 224 × 224 grid.
    """

    tensor: torch.Tensor
    grid_mm: float
    slice_mm: float
    fov_box: tuple[int, int, int, int]


def intensity_window(image: NDArray[np.number]) -> tuple[float, float]:
    """The volume's 0.5th and 99.5th intensity percentiles (on every 7th voxel: cheap, exact
    enough, deterministic).

    Linear interpolation between order statistics, as ``np.percentile``. Unsigned integer
    images (DICOM's usual uint16) find the order statistics from a histogram instead of a
    partial sort: the same values, in a fifth of the time.
    """
    flat = np.asarray(image).ravel()
    sample = flat[::7] if flat.size > 7000 else flat
    if sample.dtype.kind == "u" and sample.dtype.itemsize <= 2 and sample.size:
        cumulative = np.cumsum(np.bincount(sample))
        last = sample.size - 1
        bounds = []
        for percentile in CLIP_PERCENTILES:
            index = percentile / 100.0 * last
            lower = int(np.floor(index))
            upper = min(lower + 1, last)
            # The k-th smallest value (0-based) is the first whose cumulative count exceeds k.
            low_value, high_value = np.searchsorted(cumulative, (lower, upper), side="right")
            bounds.append(float(low_value) + (index - lower) * float(high_value - low_value))
        return bounds[0], bounds[1]
    low, high = np.percentile(sample.astype(np.float32), CLIP_PERCENTILES)
    return float(low), float(high)


def _slice_weights(count: int) -> tuple[list[int], list[int], list[float]]:
    """For the 8 grid slices: lower and upper source slice and the upper slice's weight."""
    if count == 1:
        return [0] * GRID_SLICES, [0] * GRID_SLICES, [0.0] * GRID_SLICES
    lows, highs, weights = [], [], []
    for position in np.linspace(0.0, count - 1, GRID_SLICES):
        low = min(int(np.floor(position)), count - 2)
        lows.append(low)
        highs.append(low + 1)
        weights.append(float(position - low))
    return lows, highs, weights


def check_pair(image: NDArray[np.number], labels: NDArray[np.integer]) -> None:
    """Validate an image/labelmap pair.

    Raises:
        InputError: ``invalid-volume`` (not 3-D, empty, not finite), ``grid-mismatch``
            (shapes differ) or ``invalid-labels`` (values outside 0..3).
    """
    if image.ndim != 3 or min(image.shape) < 1:
        raise InputError("invalid-volume", f"image must be (slices, rows, cols), got {image.shape}")
    if labels.shape != image.shape:
        raise InputError(
            "grid-mismatch",
            f"labelmap grid {tuple(labels.shape)} differs from image grid {tuple(image.shape)}",
        )
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise InputError("invalid-labels", f"labelmap must be integer, got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_LABELS):
        raise InputError(
            "invalid-labels",
            f"label values must be 0..3, got {int(labels.min())}..{int(labels.max())}",
        )
    if np.issubdtype(image.dtype, np.floating) and not np.all(np.isfinite(image)):
        raise InputError("invalid-volume", "image has non-finite values")


def prepare_input(
    image: NDArray[np.number],
    labels: NDArray[np.integer],
    pixel_spacing_mm: tuple[float, float],
    slice_spacing_mm: float = 1.0,
    *,
    checked: bool = False,
) -> PreparedInput:
    """Resample a (slices, rows, cols) image and its labelmap to the 5 × 8 × 224 × 224 grid.

    Any slice count (1 or more) and any in-plane spacing are accepted (see the module
    docstring for the choices). Only the (at most 16) source slices the 8 grid slices
    interpolate between are touched, and slice interpolation runs before in-plane resampling
    (both are linear, so the order does not change the result).

    Args:
        image: intensities, any numeric dtype, shape (slices, rows, cols).
        labels: labelmap on the same grid, values 0 BG, 1 LV, 2 LVM, 3 RVC.
        pixel_spacing_mm: (row spacing, column spacing), mm.
        slice_spacing_mm: distance between slice centres, mm (only reported on the grid).
        checked: the caller already ran ``check_pair`` on this pair (skips a second pass).

    Raises:
        InputError: see ``check_pair``; ``invalid-spacing`` for non-positive spacings.
    """
    if not checked:
        check_pair(image, labels)
    row_mm, col_mm = (float(pixel_spacing_mm[0]), float(pixel_spacing_mm[1]))
    if not (row_mm > 0 and col_mm > 0 and slice_spacing_mm > 0):
        raise InputError("invalid-spacing", f"spacings must be positive: {pixel_spacing_mm}")
    slices, rows, cols = image.shape
    low_value, high_value = intensity_window(image)

    lows, highs, weights = _slice_weights(slices)
    # Channel-major throughout, (image, LV, LVM, RVC) × slices, so that no step transposes:
    # the image and one-hot foreground of the source slices the grid needs, then the 8 grid
    # slices by linear interpolation, then in-plane resampling (both are linear; this order
    # touches the fewest voxels). BG is whatever the foreground leaves.
    needed = sorted(set(lows) | set(highs))
    position = {k: i for i, k in enumerate(needed)}
    picked = labels[needed]
    source = torch.empty((NUM_LABELS, len(needed), rows, cols), dtype=torch.float32)
    np.copyto(source[0].numpy(), image[needed], casting="unsafe")
    for value in range(1, NUM_LABELS):
        # numpy's comparison, then a uint8 -> float32 copy: 5× faster than torch's bool path
        source[value].copy_(torch.from_numpy((picked == value).view(np.uint8)))
    resliced = torch.empty((NUM_LABELS, GRID_SLICES, rows, cols), dtype=torch.float32)
    for index, (low, high, weight) in enumerate(zip(lows, highs, weights, strict=True)):
        # per grid slice on views: no gathered copies of the source slices
        torch.lerp(
            source[:, position[low]], source[:, position[high]], weight, out=resliced[:, index]
        )

    fov_rows_mm, fov_cols_mm = rows * row_mm, cols * col_mm
    grid_mm = max(fov_rows_mm, fov_cols_mm) / GRID_SIZE
    out_rows = max(1, min(GRID_SIZE, round(fov_rows_mm / grid_mm)))
    out_cols = max(1, min(GRID_SIZE, round(fov_cols_mm / grid_mm)))
    # Antialiasing matters only when shrinking a lot (a 512 matrix); skip its cost otherwise.
    shrink = min(out_rows / rows, out_cols / cols)
    resized = F.interpolate(
        resliced,
        size=(out_rows, out_cols),
        mode="bilinear",
        align_corners=False,
        antialias=shrink < 0.75,
    )  # (4, 8, out_rows, out_cols)

    if high_value - low_value < 1e-6:
        resized[0].zero_()
    else:
        resized[0].sub_(low_value).div_(high_value - low_value).clamp_(0.0, 1.0)
    # BG is whatever the foreground classes leave: exact sum to one, padding included.
    foreground = resized[1:].sum(dim=0).clamp_(0.0, 1.0)
    resized[1:].clamp_(0.0, 1.0)

    row0, col0 = (GRID_SIZE - out_rows) // 2, (GRID_SIZE - out_cols) // 2
    window = (slice(row0, row0 + out_rows), slice(col0, col0 + out_cols))
    grid = torch.empty((CHANNELS, GRID_SLICES, GRID_SIZE, GRID_SIZE), dtype=torch.float32)
    # The letterbox margins (image 0, BG 1, classes 0); the window is written below.
    for margin in (
        (slice(None), slice(0, row0)),
        (slice(None), slice(row0 + out_rows, None)),
        (slice(None), slice(row0, row0 + out_rows), slice(0, col0)),
        (slice(None), slice(row0, row0 + out_rows), slice(col0 + out_cols, None)),
    ):
        grid[(slice(None), *margin)] = 0.0
        grid[(1, *margin)] = 1.0
    grid[0][(slice(None), *window)] = resized[0]
    grid[1][(slice(None), *window)] = foreground.neg_().add_(1.0)
    grid[2:][(slice(None), slice(None), *window)] = resized[1:]
    slice_mm = (slices - 1) * slice_spacing_mm / (GRID_SLICES - 1) if slices > 1 else 0.0
    return PreparedInput(
        tensor=grid,
        grid_mm=grid_mm,
        slice_mm=slice_mm,
        fov_box=(row0, row0 + out_rows, col0, col0 + out_cols),
    )


def spacing_from_affine(
    affine: NDArray[np.floating] | list[list[float]],
) -> tuple[float, float, float]:
    """(row spacing, column spacing, slice spacing) in mm from a voxel (i, j, k) -> mm affine.

    Column i runs along the affine's first column, row j along its second, slice k its third.
    """
    matrix = np.asarray(affine, dtype=np.float64)
    col_mm, row_mm, slice_mm = (float(np.linalg.norm(matrix[:3, axis])) for axis in range(3))
    return row_mm, col_mm, slice_mm


CROP_SIZE = 112
"""In-plane size of the fast model's heart-centred crop, grid pixels (half the grid)."""


def segmentation_centre(tensor: torch.Tensor) -> tuple[int, int]:
    """(row, col) on the grid of the segmentation's foreground median; the grid centre if empty.

    The median, not the mean: a small false-positive blob far away barely moves it.
    ``tensor`` is a prepared ``(5, 8, 224, 224)`` input.
    """
    foreground = 1.0 - tensor[1]  # (8, H, W): LV + LVM + RVC fraction
    profile_rows = foreground.sum(dim=(0, 2))
    profile_cols = foreground.sum(dim=(0, 1))
    total = float(profile_rows.sum())
    if total < 1.0:
        return GRID_SIZE // 2, GRID_SIZE // 2

    def _median(profile: torch.Tensor) -> int:
        cumulative = torch.cumsum(profile, dim=0)
        return int(torch.searchsorted(cumulative, cumulative[-1] / 2).clamp(0, GRID_SIZE - 1))

    return _median(profile_rows), _median(profile_cols)


def crop_around_segmentation(
    tensor: torch.Tensor, size: int = CROP_SIZE
) -> tuple[torch.Tensor, tuple[int, int]]:
    """The ``(5, 8, size, size)`` crop of a prepared input centred on ``segmentation_centre``.

    The crop window is shifted to stay inside the grid (never padded). Returns the crop and
    its top-left corner (row, col) on the grid.
    """
    centre_row, centre_col = segmentation_centre(tensor)
    row0 = min(max(centre_row - size // 2, 0), GRID_SIZE - size)
    col0 = min(max(centre_col - size // 2, 0), GRID_SIZE - size)
    return tensor[:, :, row0 : row0 + size, col0 : col0 + size], (row0, col0)
