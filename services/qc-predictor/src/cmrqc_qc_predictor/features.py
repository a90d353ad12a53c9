"""Cheap shape and intensity features of a segmentation on the prepared grid.

The geometry of a segmentation says a lot about its quality (a cavity not enclosed by
myocardium, slices missing between occupied ones, mass far from the heart, a "cavity" that
sits on dark tissue). The ``fast`` model receives these numbers next to its heart-centred crop,
in particular those the crop cannot see (volumes over the whole field of view, the fraction of
each class outside the crop). All are computed with a few tensor reductions and
matrix-vector products (~1 ms a case).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from cmrqc_qc_predictor.prepare import CROP_SIZE, GRID_SLICES

CLASS_NAMES = ("LV", "LVM", "RVC")
_PER_CLASS = (
    "log_ml",
    "slices",
    "gaps",
    "outside_crop",
    "intensity",
    "intensity_sd",
    "centroid_offset",
    "spread",
)
_GLOBAL = (
    "WH_log_ml",
    "WH_slices",
    "WH_gaps",
    "WH_outside_crop",
    "ring_intensity",
    "LV_touches_BG",
    "RVC_touches_LV",
    "LVM_touches_LV",
    "fov_intensity",
    "grid_mm",
    "slice_mm",
)
FEATURE_NAMES: tuple[str, ...] = (
    *(f"{c}_{name}" for c in CLASS_NAMES for name in _PER_CLASS),
    *_GLOBAL,
)
NUM_FEATURES = len(FEATURE_NAMES)
_OCCUPIED_PX = 10.0
"""A grid slice holds a class when it has at least this many pixels' worth of it."""
_LENGTH_SCALE_MM = 50.0


FEATURES_VERSION = 2
"""Bumped whenever a feature's computation changes (cached features are keyed by it)."""


def _occupancy(mass_per_slice: NDArray[np.float64]) -> tuple[float, float]:
    """(fraction of slices occupied, fraction of empty slices between occupied ones)."""
    occupied = np.flatnonzero(mass_per_slice >= _OCCUPIED_PX)
    if occupied.size == 0:
        return 0.0, 0.0
    span = int(occupied[-1] - occupied[0]) + 1
    return occupied.size / GRID_SLICES, (span - occupied.size) / GRID_SLICES


def _near(mask: torch.Tensor) -> torch.Tensor:
    """3 × 3 in-plane max filter of (8, H, W) masks (separable, zero outside): where ``mask``
    is within one pixel."""
    padded = F.pad(mask, (1, 1, 1, 1))
    rows = torch.maximum(torch.maximum(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])
    return torch.maximum(torch.maximum(rows[:, :, :-2], rows[:, :, 1:-1]), rows[:, :, 2:])


def segmentation_features(
    tensor: torch.Tensor, crop_corner: tuple[int, int], grid_mm: float, slice_mm: float
) -> torch.Tensor:
    """The ``NUM_FEATURES`` features (float32, in ``FEATURE_NAMES`` order) of one prepared case.

    Computed on the grid averaged over 2 × 2 pixels (a quarter of the work; the features are
    sums and moments, which barely change). Lengths are in units of 50 mm, volumes are
    log(1 + mL), intensities are the prepared [0, 1] values.

    Args:
        tensor: a prepared ``(5, 8, 224, 224)`` input.
        crop_corner: top-left (row, col) of the fast model's crop on the grid.
        grid_mm: in-plane grid pixel size, mm.
        slice_mm: grid slice distance, mm.
    """
    channels, slices, size = tensor.shape[0], tensor.shape[1], tensor.shape[-1]
    half = size // 2
    # The 2 × 2 mean (what bilinear resampling at scale 1/2 computes, to float rounding) as
    # two strided pair sums, written into one buffer whose last plane is the foreground
    # (1 − BG): LV, LVM, RVC and WH are then one contiguous (4, 8, h, w) view, no copy.
    pairs = tensor[:, :, 0::2] + tensor[:, :, 1::2]
    pooled = torch.empty((channels + 1, slices, half, half), dtype=torch.float32)
    torch.add(pairs[..., 0::2], pairs[..., 1::2], out=pooled[:channels]).mul_(0.25)
    pooled[channels].copy_(pooled[1]).neg_().add_(1.0)
    pixel_mm = 2.0 * grid_mm
    image, background, masks = pooled[0], pooled[1], pooled[2:channels]  # masks: LV, LVM, RVC
    foreground = pooled[channels]
    classes = pooled[2:]  # (4, 8, h, w): LV, LVM, RVC, WH
    flat = classes.reshape(4, -1)
    # Pixel counts on the pooled grid are a quarter of the full grid's.
    per_slice_t = classes.sum(dim=(2, 3))
    per_slice = per_slice_t.double().numpy() * 4.0
    totals = per_slice_t.sum(dim=1)
    safe = totals.clamp_min(1e-6)
    planes = classes.sum(dim=1)  # (4, h, w): over slices, for the crop and the moments
    row0, col0 = crop_corner[0] // 2, crop_corner[1] // 2
    half_crop = CROP_SIZE // 2
    inside = planes[:, row0 : row0 + half_crop, col0 : col0 + half_crop].sum(dim=(1, 2))
    outside = torch.where(
        totals > 0, (1.0 - inside / safe).clamp_min(0.0), torch.zeros_like(totals)
    )
    pixels = image.reshape(-1)
    # Σ mask·I and Σ mask·I² as matrix-vector products (no (4, 8, h, w) temporaries).
    intensity = (flat @ pixels) / safe
    intensity_sq = (flat @ (pixels * pixels)) / safe
    intensity_sd = (intensity_sq - intensity**2).clamp_min(0.0).sqrt()
    coords = torch.arange(half, dtype=torch.float32) * pixel_mm
    rows, cols = planes.sum(dim=2), planes.sum(dim=1)  # (4, h), (4, w)
    mean_r, mean_c = (rows * coords).sum(1) / safe, (cols * coords).sum(1) / safe
    spread = (
        (
            (rows * (coords - mean_r[:, None]) ** 2).sum(1)
            + (cols * (coords - mean_c[:, None]) ** 2).sum(1)
        )
        / safe
    ).sqrt()
    offset = ((mean_r - mean_r[3]) ** 2 + (mean_c - mean_c[3]) ** 2).sqrt()
    present = totals > 0
    voxel_ml = pixel_mm * pixel_mm * max(slice_mm, grid_mm) / 1000.0
    log_ml = torch.log1p(totals * voxel_ml)

    values: list[float] = []
    for index in range(3):
        occupied, gaps = _occupancy(per_slice[index])
        if bool(present[index]):
            moments = [
                float(intensity[index]),
                float(intensity_sd[index]),
                float(offset[index]) / _LENGTH_SCALE_MM,
                float(spread[index]) / _LENGTH_SCALE_MM,
            ]
        else:
            moments = [0.0, 0.0, 0.0, 0.0]
        values += [float(log_ml[index]), occupied, gaps, float(outside[index]), *moments]
    wh_occupied, wh_gaps = _occupancy(per_slice[3])
    ring = (_near(foreground) - foreground).clamp_min(0.0)
    ring_total = float(ring.sum())
    near_background = _near(background)
    near_lv = _near(masks[0])

    def touching(index: int, near: torch.Tensor) -> float:
        total = float(totals[index])
        return float(torch.dot(flat[index], near.reshape(-1))) / total if total > 0 else 0.0

    values += [
        float(log_ml[3]),
        wh_occupied,
        wh_gaps,
        float(outside[3]),
        float(torch.dot(ring.reshape(-1), pixels)) / ring_total if ring_total > 0 else 0.0,
        touching(0, near_background),
        touching(2, near_lv),
        touching(1, near_lv),
        float(image.mean()),
        grid_mm / 2.0,
        slice_mm / 10.0,
    ]
    return torch.tensor(values, dtype=torch.float32)
