"""The input preparation as first written (straightforward, slower): the reference the
optimised ``prepare.prepare_input`` must reproduce. Kept verbatim apart from names."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from cmrqc_qc_predictor.prepare import (
    CHANNELS,
    CLIP_PERCENTILES,
    GRID_SIZE,
    GRID_SLICES,
    NUM_LABELS,
    PreparedInput,
    _slice_weights,
)


def reference_intensity_window(image: NDArray[np.number]) -> tuple[float, float]:
    """The volume's 0.5th and 99.5th intensity percentiles (on every 7th voxel: cheap, exact
    enough, deterministic), by np.percentile."""
    flat = np.asarray(image).ravel()
    sample = flat[::7] if flat.size > 7000 else flat
    low, high = np.percentile(sample.astype(np.float32), CLIP_PERCENTILES)
    return float(low), float(high)


def reference_prepare_input(
    image: NDArray[np.number],
    labels: NDArray[np.integer],
    pixel_spacing_mm: tuple[float, float],
    slice_spacing_mm: float = 1.0,
) -> PreparedInput:
    """The grid as first computed (valid inputs only: the tests feed it valid pairs)."""
    row_mm, col_mm = float(pixel_spacing_mm[0]), float(pixel_spacing_mm[1])
    slices, rows, cols = image.shape
    low_value, high_value = reference_intensity_window(image)

    lows, highs, weights = _slice_weights(slices)
    weight = torch.tensor(weights, dtype=torch.float32)[:, None, None, None]
    needed = sorted(set(lows) | set(highs))
    position = {k: i for i, k in enumerate(needed)}
    picked = torch.from_numpy(np.ascontiguousarray(labels[needed], dtype=np.uint8))
    source = torch.stack(
        [
            torch.from_numpy(np.asarray(image[needed], dtype=np.float32)),
            *((picked == value).to(torch.float32) for value in range(1, NUM_LABELS)),
        ],
        dim=1,
    )  # (needed, 4, R, C): image, LV, LVM, RVC
    lows = [position[k] for k in lows]
    highs = [position[k] for k in highs]
    resliced = torch.lerp(source[lows], source[highs], weight)  # (8, 4, R, C)

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
    )

    row0, col0 = (GRID_SIZE - out_rows) // 2, (GRID_SIZE - out_cols) // 2
    grid = torch.zeros((CHANNELS, GRID_SLICES, GRID_SIZE, GRID_SIZE), dtype=torch.float32)
    window = grid[:, :, row0 : row0 + out_rows, col0 : col0 + out_cols]
    window[0] = resized[:, 0]
    window[2:] = resized[:, 1:].transpose(0, 1)
    span = max(high_value - low_value, 1e-6)
    if high_value - low_value < 1e-6:
        window[0].zero_()
    else:
        window[0].sub_(low_value).div_(span).clamp_(0.0, 1.0)
    # BG is whatever the foreground classes leave: exact sum to one, padding included.
    foreground = grid[2:].sum(dim=0).clamp_(0.0, 1.0)
    grid[2:].clamp_(0.0, 1.0)
    grid[1] = 1.0 - foreground
    slice_mm = (slices - 1) * slice_spacing_mm / (GRID_SLICES - 1) if slices > 1 else 0.0
    return PreparedInput(
        tensor=grid,
        grid_mm=grid_mm,
        slice_mm=slice_mm,
        fov_box=(row0, row0 + out_rows, col0, col0 + out_cols),
    )
