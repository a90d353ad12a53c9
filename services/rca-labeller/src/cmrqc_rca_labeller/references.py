"""Reference sets: images with verified labelmaps, their content hash, and a prepared cache.

A reference set is identified by the SHA-256 of its content (``reference_set_hash``): every
reference's id, image, labels and affine, in id order, so the same references give the same
identifier wherever they are read from (a synthetic set generated on two machines, or the
same files copied elsewhere), and any change to an image or a label gives a new one. RCA
labels carry it (``RcaLabel.reference_set``).

Sources:
* **Synthetic** (``synthetic_reference_set``): K subjects from the
  ``cmrqc_shared.datasets.splits.RCA_REFERENCES`` seed range (disjoint from every training,
  validation and test split), rendered without artefacts (verified labels, clean images);
  even positions take the end-diastolic phase, odd ones the end-systolic. Generated on first
  use and cached, prepared, under the cache folder; deterministic.
* **A folder of your own** (``load_reference_folder``), one reference per entry:
  ``<id>_image.nii.gz`` + ``<id>_labels.nii.gz``; or a folder ``<id>/`` holding
  ``image.nii.gz`` + ``labels.nii.gz``; or ``<id>/dicom/`` (a DICOM series) + ``<id>/labels.nii.gz``
  (``.nii`` works too); the layout ``cmrqc synth`` writes (``<id>/dicom/`` +
  ``<id>/ground_truth/labels_ED.nii.gz`` or ``labels_ES.nii.gz`` with its ``synth.json``) is
  read as well. The prepared form is cached by content hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from safetensors.numpy import load_file, save_file
from tqdm import tqdm

from cmrqc_rca_labeller.io import VolumeReadError, read_dicom_folder, read_labels, read_nifti
from cmrqc_rca_labeller.paths import default_cache_dir
from cmrqc_rca_labeller.prepare import PreparedReference, ReferenceError, prepare_reference
from cmrqc_rca_labeller.volume import CardiacVolume, to_canonical
from cmrqc_shared.datasets.splits import RCA_REFERENCES

logger = logging.getLogger(__name__)

PREPARE_VERSION = "2"
"""Bumped whenever preparation would turn the same references into different arrays."""


@dataclass(frozen=True)
class ReferenceSet:
    """Prepared references and the content hash of the set they came from."""

    content_hash: str
    references: list[PreparedReference]
    source: str

    @property
    def size(self) -> int:
        return len(self.references)


def reference_set_hash(items: Iterable[tuple[str, CardiacVolume]]) -> str:
    """SHA-256 (hex) of the references' ids, images, labels and geometry, in id order.

    Images are hashed as float32 (so a uint16 DICOM and the same values read from NIfTI as
    float agree), labels as uint8. Geometry enters as what the preparation uses: the voxel
    spacing to 4 significant digits (float32 NIfTI headers and float64 DICOM agree) and the
    stack's orientation (which way the slices run, and whether it is turned round); where a
    stack lies in patient space does not change the prepared reference and is left out.

    Raises:
        ValueError: a reference without labels, or duplicate ids.
    """
    digest = hashlib.sha256(b"cmrqc-rca-reference-set-v1")
    seen: set[str] = set()
    for reference_id, volume in sorted(items, key=lambda item: item[0]):
        if reference_id in seen:
            raise ValueError(f"duplicate reference id {reference_id!r}")
        seen.add(reference_id)
        if volume.labels is None:
            raise ValueError(f"reference {reference_id!r} has no labels")
        digest.update(reference_id.encode() + b"\x1f")
        digest.update(np.asarray(volume.image.shape, np.int64).tobytes())
        digest.update(np.ascontiguousarray(volume.image, dtype=np.float32).tobytes())
        digest.update(np.ascontiguousarray(volume.labels, dtype=np.uint8).tobytes())
        canonical = to_canonical(CardiacVolume(np.zeros((1, 1, 1)), volume.affine))
        reversed_k = (
            float(np.cross(volume.affine[:3, 0], volume.affine[:3, 1]) @ volume.affine[:3, 2]) < 0
        )
        geometry = ",".join(f"{v:.4g}" for v in volume.spacing_mm)
        digest.update(f"{geometry};{canonical.flipped};{reversed_k}".encode())
    return digest.hexdigest()


def _synthetic_items(count: int) -> Iterator[tuple[str, CardiacVolume]]:
    from cmrqc_shared.synth import SynthConfig, render_study

    config = SynthConfig.clean_config()
    for index, seed in enumerate(RCA_REFERENCES.seeds(count)):
        phase: Literal["ED", "ES"] = "ED" if index % 2 == 0 else "ES"
        volume = render_study(seed, config, phases=(phase,)).phase(phase)
        yield (
            f"synth-{seed:06d}-{phase}",
            CardiacVolume(volume.image, volume.affine, volume.labels),
        )


def synthetic_reference_set(
    count: int = 100,
    *,
    cache_dir: Path | None = None,
    field_px: int = 80,
    grid_mm: float = 2.0,
    progress: bool = False,
) -> ReferenceSet:
    """The synthetic reference set of ``count`` references, generated once then cached.

    Raises:
        ValueError: ``count`` is not in 1..1000 (the size of the seed range).
    """
    from cmrqc_shared.synth.render import GENERATOR_VERSION

    if not 1 <= count <= RCA_REFERENCES.stop - RCA_REFERENCES.start:
        raise ValueError(f"count must be in 1..{RCA_REFERENCES.stop - RCA_REFERENCES.start}")
    name = (
        f"synthetic-k{count}-gen{GENERATOR_VERSION}-prep{PREPARE_VERSION}-f{field_px}-g{grid_mm:g}"
    )
    folder = (cache_dir or default_cache_dir()) / name
    cached = _load_prepared(folder)
    if cached is not None:
        return cached
    items = _synthetic_items(count)
    if progress:
        items = tqdm(items, total=count, desc="rca references", unit="ref")
    return _prepare_and_cache(list(items), folder, f"synthetic:{count}", field_px, grid_mm)


def _reference_entries(folder: Path) -> Iterator[tuple[str, CardiacVolume]]:
    def nifti(base: Path, stem: str) -> Path | None:
        for suffix in (".nii.gz", ".nii"):
            candidate = base / f"{stem}{suffix}"
            if candidate.exists():
                return candidate
        return None

    for entry in sorted(folder.iterdir()):
        if entry.is_file() and "_image.nii" in entry.name:
            reference_id = entry.name.split("_image.nii")[0]
            labels_path = nifti(folder, f"{reference_id}_labels")
            if labels_path is None:
                raise VolumeReadError(f"{entry}: no {reference_id}_labels.nii(.gz) beside it")
            data, affine = read_nifti(entry)
            image = CardiacVolume(data, affine)
            yield reference_id, CardiacVolume(data, affine, read_labels(labels_path, image))
        elif entry.is_dir():
            yield entry.name, _reference_from_folder(entry, nifti)


def _reference_from_folder(entry: Path, nifti) -> CardiacVolume:  # type: ignore[no-untyped-def]
    image_path = nifti(entry, "image")
    labels_path = nifti(entry, "labels")
    if image_path is not None and labels_path is not None:
        data, affine = read_nifti(image_path)
        image = CardiacVolume(data, affine)
        return CardiacVolume(data, affine, read_labels(labels_path, image))
    dicom = entry / "dicom"
    if not dicom.is_dir():
        raise VolumeReadError(f"{entry}: neither image+labels NIfTI nor a dicom/ folder")
    trigger = None
    if labels_path is None:
        truth = entry / "ground_truth"
        labels_path = nifti(truth, "labels_ED") or nifti(truth, "labels_ES")
        if labels_path is None:
            raise VolumeReadError(f"{entry}: no labels.nii(.gz) or ground_truth/labels_*")
        if labels_path.name.startswith("labels_ES"):
            sidecar = truth / "synth.json"
            if not sidecar.exists():
                raise VolumeReadError(f"{labels_path}: ES labels need synth.json for the phase")
            trigger = float(json.loads(sidecar.read_text())["phases"]["ES"]["trigger_time_ms"])
    image = read_dicom_folder(dicom, trigger)
    return CardiacVolume(image.image, image.affine, read_labels(labels_path, image))


def load_reference_folder(
    folder: Path,
    *,
    cache_dir: Path | None = None,
    field_px: int = 80,
    grid_mm: float = 2.0,
    progress: bool = False,
) -> ReferenceSet:
    """Read a user's reference folder (layouts in the module docstring), prepared and cached.

    Raises:
        FileNotFoundError: the folder does not exist.
        VolumeReadError: an entry cannot be read.
        ValueError: no references found.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"reference folder {folder} does not exist")
    items = list(_reference_entries(folder))
    if not items:
        raise ValueError(f"no references found in {folder}")
    content_hash = reference_set_hash(items)
    cache = (cache_dir or default_cache_dir()) / (
        f"folder-{content_hash[:24]}-prep{PREPARE_VERSION}-f{field_px}-g{grid_mm:g}"
    )
    cached = _load_prepared(cache)
    if cached is not None:
        return cached
    if progress:
        items = list(tqdm(items, desc="rca references", unit="ref"))
    return _prepare_and_cache(items, cache, str(folder), field_px, grid_mm)


def load_reference_set(
    path: Path | None,
    count: int,
    *,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> ReferenceSet:
    """A user's folder when ``path`` is given (all of it), else the synthetic set of ``count``.

    A folder is used whole, so that its content hash names exactly the references used.
    """
    if path is None:
        return synthetic_reference_set(count, cache_dir=cache_dir, progress=progress)
    return load_reference_folder(path, cache_dir=cache_dir, progress=progress)


def _prepare_and_cache(
    items: list[tuple[str, CardiacVolume]],
    folder: Path,
    source: str,
    field_px: int,
    grid_mm: float,
) -> ReferenceSet:
    content_hash = reference_set_hash(items)
    prepared = []
    for reference_id, volume in items:
        try:
            prepared.append(
                prepare_reference(volume, reference_id, field_px=field_px, grid_mm=grid_mm)
            )
        except ReferenceError as error:
            logger.warning("reference skipped: %s", error)
    if not prepared:
        raise ValueError(f"no usable reference in {source}")
    result = ReferenceSet(content_hash, prepared, source)
    _save_prepared(result, folder)
    return result


def _save_prepared(reference_set: ReferenceSet, folder: Path) -> None:
    """Write the prepared arrays (safetensors) and metadata, atomically by folder rename."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    staging.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    meta = []
    for n, ref in enumerate(reference_set.references):
        tensors[f"{n}.image"] = ref.image
        tensors[f"{n}.labels"] = ref.labels
        tensors[f"{n}.z_rel_mm"] = ref.z_rel_mm
        meta.append(
            {
                "reference_id": ref.reference_id,
                "angle_rad": ref.angle_rad,
                "slice_spacing_mm": ref.slice_spacing_mm,
                "outside_px": ref.outside_px,
                "grid_mm": ref.grid_mm,
            }
        )
    save_file(tensors, str(staging / "references.safetensors"))
    (staging / "meta.json").write_text(
        json.dumps(
            {
                "content_hash": reference_set.content_hash,
                "source": reference_set.source,
                "prepare_version": PREPARE_VERSION,
                "references": meta,
            },
            indent=1,
        )
    )
    try:
        staging.rename(folder)
    except OSError:  # another process cached it first: keep theirs
        for child in staging.iterdir():
            child.unlink()
        staging.rmdir()


def _load_prepared(folder: Path) -> ReferenceSet | None:
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        tensors = load_file(str(folder / "references.safetensors"))
        references = [
            PreparedReference(
                reference_id=item["reference_id"],
                image=tensors[f"{n}.image"],
                labels=tensors[f"{n}.labels"],
                z_rel_mm=tensors[f"{n}.z_rel_mm"],
                angle_rad=float(item["angle_rad"]),
                slice_spacing_mm=float(item["slice_spacing_mm"]),
                outside_px=float(item["outside_px"]),
                grid_mm=float(item["grid_mm"]),
            )
            for n, item in enumerate(meta["references"])
        ]
    except (OSError, KeyError, ValueError) as error:
        logger.warning("ignoring an unreadable reference cache %s: %s", folder, error)
        return None
    return ReferenceSet(meta["content_hash"], references, meta["source"])
