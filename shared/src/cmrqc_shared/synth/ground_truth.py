"""Ground truth beside the DICOM: NIfTI label maps (RAS) and a JSON sidecar.

NIfTI world coordinates are RAS while DICOM is LPS, so the NIfTI affine is
``diag(-1, -1, 1, 1) @ affine_lps`` (negate x and y). Voxel order in the NIfTI files is
``(i, j, k)`` = (column, row, slice), i.e. the study arrays ``[k, j, i]`` transposed, so the
same voxel index maps to the same physical point in both.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

from cmrqc_shared.synth.render import SyntheticStudy

logger = logging.getLogger(__name__)

SIDECAR_NAME = "synth.json"


def to_nifti_order(array: NDArray[Any]) -> NDArray[Any]:
    """Study array ``[k, j, i]`` -> NIfTI voxel order ``[i, j, k]``."""
    return np.ascontiguousarray(np.transpose(array, (2, 1, 0)))


def from_nifti_order(array: NDArray[Any]) -> NDArray[Any]:
    """NIfTI voxel order ``[i, j, k]`` -> study array ``[k, j, i]``."""
    return np.ascontiguousarray(np.transpose(array, (2, 1, 0)))


def _nifti(data: NDArray[Any], affine_ras: NDArray[np.float64]) -> nib.Nifti1Image:
    img = nib.Nifti1Image(to_nifti_order(data), affine_ras)
    img.set_qform(affine_ras, code=1)
    img.set_sform(affine_ras, code=1)
    img.header.set_xyzt_units(xyz="mm")
    return img


def write_ground_truth_nifti(
    study: SyntheticStudy, out_dir: str | Path, include_images: bool = False
) -> list[Path]:
    """Write ``labels_<PHASE>.nii.gz`` per phase and the ``synth.json`` sidecar.

    Args:
        study: the rendered study.
        out_dir: output directory (created if missing).
        include_images: also write ``image_<PHASE>.nii.gz`` (uint16, same grid).

    Returns:
        Paths written (label files first, sidecar last).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    aff = study.geometry.affine_ras
    paths: list[Path] = []
    files: dict[str, str] = {}
    for phase in study.phases:
        path = out / f"labels_{phase.name}.nii.gz"
        nib.save(_nifti(phase.labels.astype(np.uint8), aff), path)
        paths.append(path)
        files[f"labels_{phase.name}"] = path.name
        if include_images:
            ipath = out / f"image_{phase.name}.nii.gz"
            nib.save(_nifti(phase.image.astype(np.uint16), aff), ipath)
            paths.append(ipath)
            files[f"image_{phase.name}"] = ipath.name
    meta = study.metadata()
    meta["files"] = files
    meta["nifti_convention"] = (
        "voxel order (i=column, j=row, k=slice); affine is RAS = diag(-1,-1,1,1) @ affine_lps"
    )
    sidecar = out / SIDECAR_NAME
    sidecar.write_text(json.dumps(meta, indent=2, sort_keys=False))
    paths.append(sidecar)
    logger.debug("wrote ground truth for seed %d to %s", study.seed, out)
    return paths


def write_study(
    study: SyntheticStudy,
    out_dir: str | Path,
    enhanced: bool = False,
    include_images: bool = False,
) -> dict[str, list[Path]]:
    """Write DICOM to ``out_dir/dicom`` and ground truth to ``out_dir/ground_truth``."""
    from cmrqc_shared.synth.dicom_writer import write_dicom_series

    out = Path(out_dir)
    return {
        "dicom": write_dicom_series(study, out / "dicom", enhanced=enhanced),
        "ground_truth": write_ground_truth_nifti(study, out / "ground_truth", include_images),
    }
