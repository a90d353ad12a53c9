"""Clean-up of a labelmap: one 3D connected component per class."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from cmrqc_segmenter.contract import NUM_CLASSES

_CONNECTIVITY_3D = ndimage.generate_binary_structure(3, 3)
"""26-connectivity: slices are thick and may be shifted by breath-hold misalignment, so a
diagonal touch between neighbouring slices still counts as the same structure."""


def largest_connected_component(
    labels: NDArray[np.integer], classes: tuple[int, ...] = tuple(range(1, NUM_CLASSES))
) -> NDArray[np.uint8]:
    """Keep only the largest 3D connected component of each class; the rest becomes background.

    Args:
        labels: labelmap ``(k, j, i)`` (0 background).
        classes: label values to clean (default: every foreground class).

    Returns:
        A new uint8 labelmap of the same shape.
    """
    out = np.asarray(labels, dtype=np.uint8).copy()
    foreground = np.nonzero(out)
    if foreground[0].size == 0:
        return out
    # Work inside the foreground's bounding box: same result, a fraction of the voxels.
    box = tuple(slice(int(axis.min()), int(axis.max()) + 1) for axis in foreground)
    _keep_largest(out[box], classes)
    return out


def _keep_largest(out: NDArray[np.uint8], classes: tuple[int, ...]) -> None:
    """In place: zero every component of each class but the largest (``out`` may be a view)."""
    for value in classes:
        mask = out == value
        if not mask.any():
            continue
        components, count = ndimage.label(mask, structure=_CONNECTIVITY_3D)
        if count <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        out[mask & (components != int(sizes.argmax()))] = 0
