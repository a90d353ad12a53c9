"""A classical segmenter: thresholding, connected components and morphology, no learning.

It is deliberately the kind of method a pipeline might have used before deep learning —
reasonable on clean mid-ventricular slices, fragile at the base, the apex and under
artefacts — so the QC predictor sees the failure modes of a family other than the U-Net.

Steps per volume (slices, rows, columns), with in-plane pixel spacing in mm:
1. robust intensity normalisation (1st–99th percentile);
2. a blood-pool threshold (Otsu's method on the central field of view);
3. LV cavity: the bright in-plane component that is most circular, large enough and closest
   to the stack's running LV centre, tracked from the middle slice outwards;
4. LV myocardium: the dark ring between the cavity and a dilation of ~``wall_mm``;
5. RV cavity: the largest other bright component that touches a slightly wider ring.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

CLASSICAL_FAMILY = "classical-threshold-morphology"


def otsu_threshold(values: NDArray[np.floating]) -> float:
    """Otsu's threshold of a 1-D sample of intensities."""
    hist, edges = np.histogram(values, bins=128)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(hist)
    mean = np.cumsum(hist * centres)
    total_weight, total_mean = weight[-1], mean[-1]
    between = (total_mean * weight - mean * total_weight) ** 2 / (
        weight * (total_weight - weight) + 1e-12
    )
    return float(centres[int(np.argmax(between[:-1]))])


def _circularity(mask: NDArray[np.bool_]) -> float:
    area = mask.sum()
    perimeter = area - ndimage.binary_erosion(mask).sum()
    return float(4 * np.pi * area / max(perimeter, 1) ** 2) if area else 0.0


def segment_classical(
    image: NDArray[np.number],
    pixel_spacing_mm: tuple[float, float],
    *,
    wall_mm: float = 8.0,
    threshold_scale: float = 1.0,
) -> NDArray[np.uint8]:
    """Segment LV, LVM and RVC; returns a uint8 labelmap shaped like ``image``.

    ``threshold_scale`` multiplies the blood-pool threshold (a knob that yields a family of
    related segmenters of different quality).
    """
    volume = image.astype(np.float32)
    low, high = np.percentile(volume, [1, 99])
    volume = np.clip((volume - low) / max(high - low, 1e-6), 0, 1)
    slices, rows, cols = volume.shape
    centre = volume[:, rows // 4 : 3 * rows // 4, cols // 4 : 3 * cols // 4]
    threshold = otsu_threshold(centre.ravel()) * threshold_scale
    pixel_area = pixel_spacing_mm[0] * pixel_spacing_mm[1]
    wall_px = max(1, round(wall_mm / min(pixel_spacing_mm)))
    labels = np.zeros(volume.shape, np.uint8)

    order = sorted(range(slices), key=lambda k: abs(k - slices // 2))
    lv_centre = np.array([rows / 2, cols / 2])
    for k in order:
        bright = ndimage.binary_opening(volume[k] > threshold, iterations=1)
        components, count = ndimage.label(bright)
        best, best_score = 0, 0.0
        score: float
        for index in range(1, count + 1):
            mask = components == index
            area_mm2 = mask.sum() * pixel_area
            if not 150 <= area_mm2 <= 6000:
                continue
            distance = np.linalg.norm(np.array(ndimage.center_of_mass(mask)) - lv_centre)
            score = _circularity(mask) / float(1 + distance / (20 / min(pixel_spacing_mm)))
            if score > best_score:
                best, best_score = index, score
        if best == 0:
            continue
        lv = ndimage.binary_fill_holes(components == best)
        lv_centre = 0.7 * lv_centre + 0.3 * np.array(ndimage.center_of_mass(lv))
        outer = ndimage.binary_dilation(lv, iterations=wall_px)
        myocardium = outer & ~lv & (volume[k] <= threshold)
        wider = ndimage.binary_dilation(outer, iterations=2)
        rv_best, rv_area = 0, 0
        for index in range(1, count + 1):
            mask = components == index
            if index == best or not np.any(mask & wider):
                continue
            if mask.sum() > rv_area:
                rv_best, rv_area = index, int(mask.sum())
        labels[k][myocardium] = 2
        labels[k][lv] = 1
        if rv_best:
            labels[k][(components == rv_best) & ~outer] = 3
    return labels
