"""Reading images and labelmaps from files: NIfTI, .npy with spacings, or a DICOM folder.

Conventions (as everywhere in the project): arrays are ``[k, j, i]`` (slices, rows, columns);
the affine maps voxel ``(i, j, k)`` to patient LPS mm. NIfTI files store ``[i, j, k]`` with a
RAS affine (``cmrqc_shared.synth.ground_truth``), converted on reading. A ``.npy`` array has
no geometry: pass the spacings (slice, row, column, mm); the axes are then taken as the
patient axes (the canonical orientation step treats such a stack as apex→base along k).
A DICOM folder must hold one short-axis series of classic MR images (one file per slice and
phase); when it holds several cardiac phases, the phase is chosen by trigger time.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import cast

import numpy as np
from numpy.typing import NDArray

from cmrqc_rca_labeller.volume import CardiacVolume
from cmrqc_shared.synth import LPS_TO_RAS, affine_from_dicom, from_nifti_order


class VolumeReadError(ValueError):
    """A file or folder could not be read as a volume (the message says why)."""


def read_nifti(path: Path) -> tuple[NDArray[np.generic], NDArray[np.float64]]:
    """Array ``[k, j, i]`` and LPS affine of a 3D NIfTI file.

    Raises:
        VolumeReadError: not readable, or not 3D.
    """
    import nibabel as nib

    try:
        image = cast(nib.Nifti1Image, nib.load(str(path)))
        data = np.asarray(image.dataobj)
    except Exception as error:
        raise VolumeReadError(f"{path}: not a readable NIfTI file ({error})") from error
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeReadError(f"{path}: expected a 3D volume, got shape {data.shape}")
    affine_ras = np.asarray(image.affine, dtype=np.float64)
    return from_nifti_order(data), np.linalg.inv(LPS_TO_RAS) @ affine_ras


def read_npy(path: Path, spacing_mm: tuple[float, float, float]) -> CardiacVolume:
    """A ``.npy`` array ``[k, j, i]`` with spacings ``(slice, row, column)`` in mm.

    Raises:
        VolumeReadError: not a plain 3D numpy array.
    """
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as error:
        raise VolumeReadError(f"{path}: not a plain .npy array ({error})") from error
    if data.ndim != 3:
        raise VolumeReadError(f"{path}: expected a 3D array [k, j, i], got {data.shape}")
    dz, dy, dx = spacing_mm
    return CardiacVolume(data, np.diag([dx, dy, dz, 1.0]))


def read_labels(path: Path, like: CardiacVolume) -> NDArray[np.uint8]:
    """A labelmap (NIfTI or .npy) on the grid of ``like``.

    Raises:
        VolumeReadError: unreadable, non-integer, or on another grid than ``like``.
    """
    if path.suffix == ".npy":
        try:
            data = np.load(path, allow_pickle=False)
        except Exception as error:
            raise VolumeReadError(f"{path}: not a plain .npy array ({error})") from error
        affine = like.affine
    else:
        data, affine = read_nifti(path)
    if data.shape != like.image.shape:
        raise VolumeReadError(
            f"{path}: labelmap shape {data.shape} differs from the image's {like.image.shape}"
        )
    if not np.allclose(affine, like.affine, atol=1e-2):
        raise VolumeReadError(f"{path}: labelmap affine differs from the image's")
    if not np.all(np.equal(np.mod(data, 1), 0)) or data.min() < 0 or data.max() > 3:
        raise VolumeReadError(f"{path}: labels must be integers 0..3")
    return np.asarray(data, dtype=np.uint8)


def read_image(path: Path, spacing_mm: tuple[float, float, float] | None = None) -> CardiacVolume:
    """An image from a NIfTI file, a ``.npy`` array (needs ``spacing_mm``) or a DICOM folder.

    Raises:
        VolumeReadError: unreadable, or a ``.npy`` without spacings.
    """
    if path.is_dir():
        return read_dicom_folder(path)
    if path.suffix == ".npy":
        if spacing_mm is None:
            raise VolumeReadError(f"{path}: a .npy image needs --spacing SLICE ROW COLUMN (mm)")
        return read_npy(path, spacing_mm)
    data, affine = read_nifti(path)
    return CardiacVolume(data, affine)


def read_dicom_folder(folder: Path, trigger_time_ms: float | None = None) -> CardiacVolume:
    """Assemble one phase of a short-axis series from a folder of classic MR files.

    Args:
        folder: searched recursively; files that are not DICOM images are skipped.
        trigger_time_ms: the phase to take; default the earliest (end-diastole by the usual
            R-wave trigger).

    Raises:
        VolumeReadError: no images, several series, or slices of unequal geometry.
    """
    import pydicom

    phases: dict[float, list[tuple[float, NDArray[np.float32], list[float], object]]] = defaultdict(
        list
    )
    series: set[str] = set()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path)
        except Exception:
            continue
        if "PixelData" not in ds or "ImageOrientationPatient" not in ds:
            continue
        series.add(str(ds.SeriesInstanceUID))
        orientation = [float(v) for v in ds.ImageOrientationPatient]
        position = np.array([float(v) for v in ds.ImagePositionPatient])
        normal = np.cross(orientation[:3], orientation[3:])
        pixels = ds.pixel_array.astype(np.float32) * float(
            getattr(ds, "RescaleSlope", 1) or 1
        ) + float(getattr(ds, "RescaleIntercept", 0) or 0)
        trigger = float(getattr(ds, "TriggerTime", 0.0) or 0.0)
        phases[round(trigger, 1)].append(
            (float(position @ normal), pixels, orientation, (position, ds.PixelSpacing))
        )
    if not phases:
        raise VolumeReadError(f"{folder}: no DICOM images found")
    if len(series) > 1:
        raise VolumeReadError(f"{folder}: holds {len(series)} series; give one series' folder")
    key = min(phases) if trigger_time_ms is None else round(trigger_time_ms, 1)
    if key not in phases:
        raise VolumeReadError(f"{folder}: no phase at trigger time {trigger_time_ms} ms")
    slices = sorted(phases[key], key=lambda item: item[0])
    shapes = {s[1].shape for s in slices}
    if len(shapes) != 1:
        raise VolumeReadError(f"{folder}: slices of different sizes {shapes}")
    positions = np.array([s[3][0] for s in slices])  # type: ignore[index]
    spacing = np.array([float(v) for v in slices[0][3][1]])  # type: ignore[index]
    affine = affine_from_dicom(positions, np.array(slices[0][2]), spacing)
    return CardiacVolume(np.stack([s[1] for s in slices]), affine)
