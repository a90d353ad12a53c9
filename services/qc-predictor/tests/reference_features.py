"""The features as first written (the committed model was trained on them), kept as the
reference the optimised ``segmentation_features`` is compared against."""

from __future__ import annotations

import torch

from cmrqc_qc_predictor.features import _LENGTH_SCALE_MM, _near, _occupancy
from cmrqc_qc_predictor.prepare import CROP_SIZE


def reference_segmentation_features(
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
    half = tensor.shape[-1] // 2
    # The 2 × 2 mean (what bilinear resampling at scale 1/2 computes, to float rounding) as
    # two strided pair sums: a third of the time of F.interpolate on the CPU.
    pairs = tensor[:, :, 0::2] + tensor[:, :, 1::2]
    grid = (pairs[..., 0::2] + pairs[..., 1::2]).mul_(0.25)
    pixel_mm = 2.0 * grid_mm
    image, background, masks = grid[0], grid[1], grid[2:]  # masks: LV, LVM, RVC
    foreground = 1.0 - background
    classes = torch.cat([masks, foreground[None]])  # (4, 8, h, w): LV, LVM, RVC, WH
    # Pixel counts on the pooled grid are a quarter of the full grid's.
    per_slice = classes.sum(dim=(2, 3)).double().numpy() * 4.0
    totals = classes.sum(dim=(1, 2, 3))
    safe = totals.clamp_min(1e-6)
    row0, col0 = crop_corner[0] // 2, crop_corner[1] // 2
    half_crop = CROP_SIZE // 2
    inside = classes[:, :, row0 : row0 + half_crop, col0 : col0 + half_crop].sum(dim=(1, 2, 3))
    outside = torch.where(
        totals > 0, (1.0 - inside / safe).clamp_min(0.0), torch.zeros_like(totals)
    )
    intensity = (classes * image).sum(dim=(1, 2, 3)) / safe
    intensity_sq = (classes * image * image).sum(dim=(1, 2, 3)) / safe
    intensity_sd = (intensity_sq - intensity**2).clamp_min(0.0).sqrt()
    coords = torch.arange(half, dtype=torch.float32) * pixel_mm
    rows, cols = classes.sum(dim=(1, 3)), classes.sum(dim=(1, 2))  # (4, h), (4, w)
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

    def touching(mask: torch.Tensor, near: torch.Tensor) -> float:
        total = float(mask.sum())
        return float((mask * near).sum()) / total if total > 0 else 0.0

    values += [
        float(log_ml[3]),
        wh_occupied,
        wh_gaps,
        float(outside[3]),
        float((ring * image).sum()) / ring_total if ring_total > 0 else 0.0,
        touching(masks[0], near_background),
        touching(masks[2], near_lv),
        touching(masks[1], near_lv),
        float(image.mean()),
        grid_mm / 2.0,
        slice_mm / 10.0,
    ]
    return torch.tensor(values, dtype=torch.float32)
