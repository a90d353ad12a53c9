"""Turning volumes into what the registration engine consumes.

* A reference (image + verified labels) becomes a heart-centred *field*: ``field_px × field_px``
  pixels of ``grid_mm`` (default 80 × 2 mm = 160 mm) around the whole-heart centroid, on the
  labelled slices plus one slice either side, with its canonical pose (LV→RV angle) and the
  slice positions relative to the heart's centroid along the long axis.
* A test image becomes a stack resampled in-plane to ``grid_mm`` (fine) and ``2 × grid_mm``
  (coarse) over its whole field of view; its segmentation becomes one-hot class fractions on
  the fine grid. Nothing of the test side's segmentation is used to place the registration.

Coordinates: in-plane millimetres ``(x, y)`` from the top-left corner of the first pixel
(x along columns, y along rows), z from the lower edge of the first slice in the canonical
frame (``volume.to_canonical``). Intensities are scaled by the 1st and 99th percentiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from scipy import ndimage

from cmrqc_rca_labeller.volume import LABEL_COUNT, CardiacVolume, to_canonical

LV, LVM, RVC = 1, 2, 3


class ReferenceError(ValueError):
    """A reference cannot be used (no labels, no LV or RV, heart larger than the field)."""


def normalise_intensity(image: NDArray[np.floating]) -> NDArray[np.float32]:
    """Scale to the 1st..99th percentile range: ~0 background, ~1 blood pool."""
    low, high = np.percentile(image, [1.0, 99.0])
    return ((image - low) / max(float(high - low), 1e-6)).astype(np.float32)


def resample_inplane(
    stack: torch.Tensor, spacing_yx: tuple[float, float], grid_mm: float
) -> tuple[torch.Tensor, tuple[float, float]]:
    """Resample ``stack`` ``[c, k, rows, cols]`` in-plane to about ``grid_mm`` (antialiased).

    Returns the resampled stack and its exact spacing ``(dy, dx)`` in mm (the physical extent
    is kept, so the spacing differs from ``grid_mm`` by the rounding of the pixel count).
    """
    channels, slices, rows, cols = stack.shape
    dy, dx = spacing_yx
    new_rows = max(4, round(rows * dy / grid_mm))
    new_cols = max(4, round(cols * dx / grid_mm))
    flat = stack.reshape(channels * slices, 1, rows, cols)
    out = F.interpolate(
        flat, size=(new_rows, new_cols), mode="bilinear", antialias=True, align_corners=False
    )
    return (
        out.reshape(channels, slices, new_rows, new_cols),
        (rows * dy / new_rows, cols * dx / new_cols),
    )


def one_hot(labels: NDArray[np.uint8]) -> torch.Tensor:
    """``[4, k, j, i]`` float32 indicator of each label."""
    tensor = torch.from_numpy(np.ascontiguousarray(labels)).long()
    return F.one_hot(tensor, LABEL_COUNT).permute(3, 0, 1, 2).float()


def field_offsets(field_px: int, grid_mm: float) -> NDArray[np.floating]:
    """Pixel-centre offsets (mm) of a centred field: ``(a + 0.5)·grid − field/2``."""
    return (np.arange(field_px) + 0.5) * grid_mm - field_px * grid_mm / 2


def rotation(angle: torch.Tensor) -> torch.Tensor:
    """2×2 rotation matrices ``[..., 2, 2]`` acting on (x, y) column vectors."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)


@dataclass(frozen=True)
class PreparedReference:
    """One reference as a heart-centred field (see the module docstring).

    Attributes:
        reference_id: stable name of the reference (e.g. ``synth-090000-ED``).
        image: float32 ``[z, field, field]`` normalised intensities.
        labels: uint8 ``[z, field, field]`` verified labels on the field.
        z_rel_mm: float32 ``[z]`` slice centres relative to the whole-heart centroid, mm
            (apex negative, base positive).
        angle_rad: in-plane angle of the LV→RV direction in the field's frame.
        slice_spacing_mm: distance between slice centres.
        outside_px: in-plane pixels (at the field's grid) of the reference's full field of view
            that lie outside the field: background that any propagated segmentation agrees on.
        grid_mm: field pixel size.
    """

    reference_id: str
    image: NDArray[np.float32]
    labels: NDArray[np.uint8]
    z_rel_mm: NDArray[np.float32]
    angle_rad: float
    slice_spacing_mm: float
    outside_px: float
    grid_mm: float


def prepare_reference(
    volume: CardiacVolume, reference_id: str, *, field_px: int = 80, grid_mm: float = 2.0
) -> PreparedReference:
    """Cut the heart-centred field out of a reference volume with verified labels.

    Raises:
        ReferenceError: no labels, LV or RV missing, or the labelled heart does not fit in
            the field.
    """
    if volume.labels is None:
        raise ReferenceError(f"reference {reference_id} has no labelmap")
    canon = to_canonical(volume)
    labels = canon.labels
    assert labels is not None
    dz, dy, dx = canon.spacing_mm
    slices = np.flatnonzero((labels > 0).reshape(labels.shape[0], -1).any(1))
    if not np.any(labels == LV) or not np.any(labels == RVC):
        raise ReferenceError(f"reference {reference_id}: LV and RV cavities must be labelled")
    k0, k1 = max(0, int(slices[0]) - 1), min(labels.shape[0], int(slices[-1]) + 2)

    heart = labels > 0
    kk, jj, ii = np.nonzero(heart)
    centre_x, centre_y = (ii.mean() + 0.5) * dx, (jj.mean() + 0.5) * dy
    centre_z = (kk.mean() + 0.5) * dz
    lv_yx = np.array(ndimage.center_of_mass(labels == LV))[1:]
    rv_yx = np.array(ndimage.center_of_mass(labels == RVC))[1:]
    angle = math.atan2((rv_yx[0] - lv_yx[0]) * dy, (rv_yx[1] - lv_yx[1]) * dx)

    half = field_px * grid_mm / 2
    if (
        (ii.min()) * dx < centre_x - half
        or (ii.max() + 1) * dx > centre_x + half
        or (jj.min()) * dy < centre_y - half
        or (jj.max() + 1) * dy > centre_y + half
    ):
        raise ReferenceError(
            f"reference {reference_id}: the labelled heart does not fit in a "
            f"{2 * half:.0f} mm field"
        )

    image = torch.from_numpy(normalise_intensity(canon.image[k0:k1]))[None]
    onehot = one_hot(labels[k0:k1])
    stack = torch.cat([image, onehot])  # [5, z, rows, cols]
    offsets = torch.from_numpy(field_offsets(field_px, grid_mm)).float()
    rows, cols = labels.shape[1:]
    gx = 2 * (centre_x + offsets) / (cols * dx) - 1
    gy = 2 * (centre_y + offsets) / (rows * dy) - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], -1)  # [f, f, (x, y)]
    smooth, _ = resample_inplane(stack, (dy, dx), grid_mm)
    sampled = F.grid_sample(
        smooth.permute(1, 0, 2, 3),
        grid[None].expand(k1 - k0, -1, -1, -1),
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )  # [z, 5, f, f]
    fov_px = rows * dy * cols * dx / grid_mm**2
    return PreparedReference(
        reference_id=reference_id,
        image=sampled[:, 0].numpy().astype(np.float32),
        labels=sampled[:, 1:].argmax(1).numpy().astype(np.uint8),
        z_rel_mm=((np.arange(k0, k1) + 0.5) * dz - centre_z).astype(np.float32),
        angle_rad=float(angle),
        slice_spacing_mm=float(dz),
        outside_px=float(max(0.0, fov_px - field_px**2)),
        grid_mm=grid_mm,
    )


@dataclass(frozen=True)
class PreparedTest:
    """A test image (and its segmentation) ready for registration, as torch tensors.

    Attributes:
        fine: ``[1, 1, k, rows, cols]`` intensities at about ``grid_mm``.
        coarse: ``[1, 1, k, rows/2, cols/2]`` intensities at about ``2·grid_mm``.
        segmentation: ``[1, 4, k, rows, cols]`` class fractions on the fine grid.
        extent_mm: physical size ``(z, y, x)`` of the stack, mm.
        slice_spacing_mm: distance between slice centres.
        class_volume_mm3: ``[4]`` volume of each label in the segmentation (native grid).
        fine_spacing_mm: ``(dy, dx)`` of the fine grid.
        coarse_spacing_mm: ``(dy, dx)`` of the coarse grid.
    """

    fine: torch.Tensor
    coarse: torch.Tensor
    segmentation: torch.Tensor
    extent_mm: tuple[float, float, float]
    slice_spacing_mm: float
    class_volume_mm3: torch.Tensor
    fine_spacing_mm: tuple[float, float]
    coarse_spacing_mm: tuple[float, float]


def prepare_test(
    image: CardiacVolume, segmentation: NDArray[np.uint8], *, grid_mm: float = 2.0
) -> PreparedTest:
    """Resample a test image and its segmentation for the engine.

    Raises:
        ValueError: the segmentation's shape differs from the image's, or it has labels > 3.
    """
    volume = CardiacVolume(image.image, image.affine, segmentation)
    canon = to_canonical(volume)
    assert canon.labels is not None
    dz, dy, dx = canon.spacing_mm
    slices, rows, cols = canon.image.shape
    intensity = torch.from_numpy(normalise_intensity(canon.image))[None]
    fine, fine_spacing = resample_inplane(intensity, (dy, dx), grid_mm)
    coarse, coarse_spacing = resample_inplane(intensity, (dy, dx), 2 * grid_mm)
    onehot = one_hot(canon.labels)
    seg_fine, _ = resample_inplane(onehot, (dy, dx), grid_mm)
    counts = torch.bincount(torch.from_numpy(canon.labels.ravel()).long(), minlength=LABEL_COUNT)
    return PreparedTest(
        fine=fine[None],
        coarse=coarse[None],
        segmentation=seg_fine[None],
        extent_mm=(slices * dz, rows * dy, cols * dx),
        slice_spacing_mm=dz,
        class_volume_mm3=counts.double() * dz * dy * dx,
        fine_spacing_mm=fine_spacing,
        coarse_spacing_mm=coarse_spacing,
    )


def test_to(test: PreparedTest, device: torch.device) -> PreparedTest:
    """The same prepared test with its tensors on ``device``."""
    from dataclasses import replace

    return replace(
        test,
        fine=test.fine.to(device),
        coarse=test.coarse.to(device),
        segmentation=test.segmentation.to(device),
        class_volume_mm3=test.class_volume_mm3.to(device),
    )
