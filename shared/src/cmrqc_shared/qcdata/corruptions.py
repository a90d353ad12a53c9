"""Realistic corruptions of good segmentations, each a named function with its parameters.

Labelmaps are uint8 arrays shaped (slices, rows, columns) with 0 BG, 1 LV, 2 LVM, 3 RVC.
Every function takes the labelmap and a numpy Generator, returns a new labelmap (the input
is never modified) and a dict of the parameters it drew, so a dataset sample records exactly
what was done to it. ``severity`` in [0, 1] scales each corruption from barely visible to
gross failure, so a uniform severity spreads the resulting Dice over the whole range.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

Labels = NDArray[np.uint8]
Corruption = Callable[[Labels, np.random.Generator, float], tuple[Labels, dict[str, Any]]]

FOREGROUND = (1, 2, 3)
_IN_PLANE = ndimage.generate_binary_structure(3, 1)
_IN_PLANE[0] = _IN_PLANE[2] = False  # 2D cross per slice: slices are thick, edit in-plane


def _pick_class(rng: np.random.Generator, labels: Labels) -> int:
    present = [c for c in FOREGROUND if np.any(labels == c)]
    return int(rng.choice(present)) if present else 1


def erode(
    labels: Labels, rng: np.random.Generator, severity: float
) -> tuple[Labels, dict[str, Any]]:
    """Under-segment one class: erode it in-plane by 1–6 pixels; lost voxels become BG."""
    cls = _pick_class(rng, labels)
    iterations = 1 + round(severity * 5)
    mask = labels == cls
    kept = ndimage.binary_erosion(mask, _IN_PLANE, iterations=iterations)
    out = labels.copy()
    out[mask & ~kept] = 0
    return out, {"class": cls, "iterations": iterations}


def dilate(
    labels: Labels, rng: np.random.Generator, severity: float
) -> tuple[Labels, dict[str, Any]]:
    """Over-segment one class into the background by 1–8 pixels in-plane."""
    cls = _pick_class(rng, labels)
    iterations = 1 + round(severity * 7)
    grown = ndimage.binary_dilation(labels == cls, _IN_PLANE, iterations=iterations)
    out = labels.copy()
    out[grown & (labels == 0)] = cls
    return out, {"class": cls, "iterations": iterations}


def shift(
    labels: Labels, rng: np.random.Generator, severity: float
) -> tuple[Labels, dict[str, Any]]:
    """Misplace the whole segmentation: in-plane by up to ~15 pixels, through-plane by 0–1."""
    magnitude = severity * 15.0
    angle = rng.uniform(0, 2 * np.pi)
    dy, dx = round(magnitude * np.sin(angle)), round(magnitude * np.cos(angle))
    dk = int(rng.random() < severity * 0.5) * int(rng.choice([-1, 1]))
    out = np.zeros_like(labels)
    src = labels[
        max(0, -dk) : labels.shape[0] - max(0, dk),
        max(0, -dy) : labels.shape[1] - max(0, dy),
        max(0, -dx) : labels.shape[2] - max(0, dx),
    ]
    out[
        max(0, dk) : max(0, dk) + src.shape[0],
        max(0, dy) : max(0, dy) + src.shape[1],
        max(0, dx) : max(0, dx) + src.shape[2],
    ] = src
    return out, {"dk": dk, "dy": dy, "dx": dx}


def drop_slices(
    labels: Labels, rng: np.random.Generator, severity: float
) -> tuple[Labels, dict[str, Any]]:
    """Miss whole slices: the basal or apical end, or scattered slices (segmenter gave up)."""
    occupied = [k for k in range(labels.shape[0]) if np.any(labels[k] > 0)]
    if not occupied:
        return labels.copy(), {"slices": []}
    count = max(1, round(severity * len(occupied) * 0.8))
    mode = str(rng.choice(["basal", "apical", "scattered"]))
    if mode == "apical":  # k = 0 is apical in the synthetic generator's order
        dropped = occupied[:count]
    elif mode == "basal":
        dropped = occupied[-count:]
    else:
        dropped = sorted(int(k) for k in rng.choice(occupied, size=count, replace=False))
    out = labels.copy()
    out[dropped] = 0
    return out, {"mode": mode, "slices": dropped}


def swap_classes(
    labels: Labels, rng: np.random.Generator, severity: float
) -> tuple[Labels, dict[str, Any]]:
    """Confuse two classes on some slices (LV<->RVC, LV<->LVM or LVM<->RVC)."""
    a, b = [(1, 3), (1, 2), (2, 3)][int(rng.integers(3))]
    slices = [k for k in range(labels.shape[0]) if rng.random() < 0.2 + 0.8 * severity]
    out = labels.copy()
    for k in slices:
        plane = labels[k]
        out[k][plane == a], out[k][plane == b] = b, a
    return out, {"classes": [a, b], "slices": slices}


def partial_miss(
    labels: Labels, rng: np.random.Generator, severity: float
) -> tuple[Labels, dict[str, Any]]:
    """Miss an angular sector of the heart (e.g. the lateral wall) on some slices."""
    cls = _pick_class(rng, labels)
    width = np.deg2rad(30 + 150 * severity)
    start = rng.uniform(0, 2 * np.pi)
    out = labels.copy()
    affected = []
    for k in range(labels.shape[0]):
        if not np.any(labels[k] > 0) or rng.random() > 0.3 + 0.7 * severity:
            continue
        cy, cx = ndimage.center_of_mass(labels[k] > 0)
        yy, xx = np.indices(labels[k].shape)
        angle = np.mod(np.arctan2(yy - cy, xx - cx) - start, 2 * np.pi)
        out[k][(angle < width) & (labels[k] == cls)] = 0
        affected.append(k)
    return out, {"class": cls, "width_deg": float(np.rad2deg(width)), "slices": affected}


def spurious_blob(
    labels: Labels, rng: np.random.Generator, severity: float
) -> tuple[Labels, dict[str, Any]]:
    """Add a false-positive blob of a class somewhere off the heart (liver, stomach, …)."""
    cls = int(rng.choice(FOREGROUND))
    k0 = int(rng.integers(labels.shape[0]))
    radius = 3 + severity * 20
    cy, cx = rng.uniform(0.2, 0.8) * labels.shape[1], rng.uniform(0.2, 0.8) * labels.shape[2]
    yy, xx = np.indices(labels.shape[1:])
    disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    depth = 1 + int(severity * 3)
    out = labels.copy()
    for k in range(k0, min(labels.shape[0], k0 + depth)):
        out[k][disk & (labels[k] == 0)] = cls
    return out, {"class": cls, "radius_px": float(radius), "slices": list(range(k0, k0 + depth))}


def boundary_warp(
    labels: Labels, rng: np.random.Generator, severity: float
) -> tuple[Labels, dict[str, Any]]:
    """Wobble every boundary with a smooth random in-plane displacement (up to ~6 px)."""
    amplitude = 0.5 + severity * 6.0
    sigma = 4.0 + 6.0 * rng.random()
    field = rng.normal(size=(2, *labels.shape)).astype(np.float32)
    for axis in range(2):
        field[axis] = ndimage.gaussian_filter(field[axis], sigma=(0, sigma, sigma))
        field[axis] *= amplitude / (np.abs(field[axis]).max() + 1e-6)
    kk, jj, ii = np.indices(labels.shape).astype(np.float32)
    warped = ndimage.map_coordinates(labels, [kk, jj + field[0], ii + field[1]], order=0)
    return warped.astype(np.uint8), {"amplitude_px": amplitude, "sigma_px": sigma}


def flood(
    labels: Labels, rng: np.random.Generator, severity: float, image: NDArray[np.floating]
) -> tuple[Labels, dict[str, Any]]:
    """Flood the field of view: give one class to a whole intensity band of the image.

    The failure of a barely trained network, or of one fed a badly normalised image: a large
    part of the field of view (10–60 %, with severity) labelled one class by intensity alone,
    the rest kept or wiped. Not in :data:`CORRUPTIONS` (it needs the image, and adding it there
    would change every dataset drawn from :func:`random_corruption`); see
    ``cmrqc_shared.qcdata.flood_dataset``.
    """
    cls = int(rng.choice(FOREGROUND))
    coverage = 0.1 + 0.5 * severity
    start = float(rng.uniform(0.0, 1.0 - coverage))
    low, high = np.quantile(image, [start, start + coverage])
    band = (image >= low) & (image <= high)
    keep_others = bool(rng.random() < 0.5)
    out = labels.copy() if keep_others else np.zeros_like(labels)
    out[band] = cls
    return out, {
        "class": cls,
        "coverage": coverage,
        "band_quantiles": [start, start + coverage],
        "keep_others": keep_others,
    }


@dataclass(frozen=True)
class AppliedCorruption:
    """One corruption applied to a sample, with its severity and drawn parameters."""

    name: str
    severity: float
    params: dict[str, Any]


CORRUPTIONS: dict[str, Corruption] = {
    "erode": erode,
    "dilate": dilate,
    "shift": shift,
    "drop_slices": drop_slices,
    "swap_classes": swap_classes,
    "partial_miss": partial_miss,
    "spurious_blob": spurious_blob,
    "boundary_warp": boundary_warp,
}


def random_corruption(
    labels: Labels, rng: np.random.Generator, max_corruptions: int = 3
) -> tuple[Labels, list[AppliedCorruption]]:
    """Apply 1..``max_corruptions`` corruptions with uniform severities, in random order."""
    count = int(rng.integers(1, max_corruptions + 1))
    names = [str(n) for n in rng.choice(sorted(CORRUPTIONS), size=count, replace=False)]
    out = labels
    applied = []
    for name in names:
        severity = float(rng.uniform(0, 1))
        out, params = CORRUPTIONS[name](out, rng, severity)
        applied.append(AppliedCorruption(name, severity, params))
    return out, applied
