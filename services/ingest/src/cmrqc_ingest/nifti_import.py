"""Import NIfTI short-axis studies with labels (ACDC, M&Ms, synthetic) as VolumeReady events.

Layouts found under the root (one subject per folder, searched recursively):

* **ACDC**: ``<subject>_frameNN.nii.gz`` + ``<subject>_frameNN_gt.nii.gz`` per phase and an
  ``Info.cfg`` with ``ED: n`` / ``ES: n`` naming the frames. ACDC labels are 1 RV, 2 MYO, 3 LV;
  they are remapped to ours (1 LV, 2 LV myocardium, 3 RV).
* **M&Ms**: ``<code>_sa.nii.gz`` (4D cine) + ``<code>_sa_gt.nii.gz`` (4D labels, drawn only at
  ED and ES). The two labelled time frames are the phases; ED is the one with the larger LV
  cavity. Labels are already ours.
* **synthetic** (``cmrqc_shared.synth.write_ground_truth_nifti(include_images=True)``):
  ``image_ED.nii.gz`` + ``labels_ED.nii.gz`` (and ES). Labels are ours.

NIfTI world coordinates are RAS; the event's affine is LPS: ``affine_lps = diag(-1,-1,1,1) @
affine_ras``. The NIfTI voxel order (i, j, k) is kept, the array is stored ``[k, j, i]``. There
are no DICOM UIDs, so Study/SeriesInstanceUIDs are derived (``2.25.<uuid5>``) from the layout
and the subject folder, and event ids from those and the content hashes: importing the
same files again yields the same events.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

from cmrqc_ingest.publishing import Publisher, make_volume_ready, store_volume
from cmrqc_shared.blobs import BlobStore
from cmrqc_shared.events import (
    CardiacPhase,
    IngestSource,
    PipelineTimestamps,
    ProducerInfo,
    VolumeReady,
    utc_now,
)
from cmrqc_shared.synth import LPS_TO_RAS, from_nifti_order

logger = logging.getLogger(__name__)

_UID_NAMESPACE = uuid.UUID("6f1d2c3e-8a41-4b7e-9a0f-5a17c0000002")
#: ACDC label -> ours (ACDC: 1 RV, 2 MYO, 3 LV; ours: 1 LV, 2 MYO, 3 RV).
ACDC_TO_OURS = np.array([0, 3, 2, 1], dtype=np.uint8)
_LV = 1


class NiftiImportError(Exception):
    """A subject folder is incomplete or inconsistent."""


@dataclass(frozen=True)
class PhaseSource:
    """Where one phase's image and labels are: a file, and a time index for 4D files."""

    phase: CardiacPhase
    image: Path
    labels: Path
    time_index: int | None = None
    acdc_labels: bool = False


@dataclass(frozen=True)
class NiftiSubject:
    """One subject's ED and ES sources in one layout."""

    layout: str
    subject: str
    folder: Path
    phases: tuple[PhaseSource, ...]


def derived_uid(*parts: str) -> str:
    """A DICOM UID (``2.25.<decimal uuid5>``) derived from ``parts``."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(31).join(parts)).int}"


def discover(root: Path) -> list[NiftiSubject]:
    """Every subject under ``root`` in a known layout (sorted by folder)."""
    subjects = []
    folders = [root, *sorted(p for p in root.rglob("*") if p.is_dir())]
    for folder in folders:
        for finder in (_acdc, _mnms, _synthetic):
            subject = finder(folder)
            if subject is not None:
                subjects.append(subject)
                break
    return subjects


def _acdc(folder: Path) -> NiftiSubject | None:
    info = folder / "Info.cfg"
    if not info.exists():
        return None
    values = dict(
        (k.strip(), v.strip())
        for k, _, v in (line.partition(":") for line in info.read_text().splitlines())
    )
    phases = []
    for phase in (CardiacPhase.ED, CardiacPhase.ES):
        frame = int(values[phase.value])
        images = sorted(folder.glob(f"*_frame{frame:02d}.nii*"))
        labels = sorted(folder.glob(f"*_frame{frame:02d}_gt.nii*"))
        if not images or not labels:
            raise NiftiImportError(
                f"{folder}: frame {frame} ({phase.value}) image or labels missing"
            )
        phases.append(PhaseSource(phase, images[0], labels[0], acdc_labels=True))
    return NiftiSubject("acdc", folder.name, folder, tuple(phases))


def _mnms(folder: Path) -> NiftiSubject | None:
    images = [p for p in sorted(folder.glob("*_sa.nii*")) if "_gt" not in p.name]
    if not images:
        return None
    image = images[0]
    labels = folder / re.sub(r"_sa(\.nii(\.gz)?)$", r"_sa_gt\1", image.name)
    if not labels.exists():
        raise NiftiImportError(f"{folder}: {labels.name} missing")
    data = np.asanyarray(_nifti(labels).dataobj)
    if data.ndim != 4:
        raise NiftiImportError(f"{labels.name} is not 4D")
    labelled = [t for t in range(data.shape[3]) if np.any(data[..., t])]
    if len(labelled) != 2:
        raise NiftiImportError(f"{labels.name}: {len(labelled)} labelled frames, need 2 (ED, ES)")
    lv = [int(np.count_nonzero(data[..., t] == _LV)) for t in labelled]
    ed, es = (labelled[0], labelled[1]) if lv[0] >= lv[1] else (labelled[1], labelled[0])
    return NiftiSubject(
        "mnms",
        image.name.split("_sa")[0],
        folder,
        (
            PhaseSource(CardiacPhase.ED, image, labels, time_index=ed),
            PhaseSource(CardiacPhase.ES, image, labels, time_index=es),
        ),
    )


def _synthetic(folder: Path) -> NiftiSubject | None:
    phases = []
    for phase in (CardiacPhase.ED, CardiacPhase.ES):
        image = next(iter(sorted(folder.glob(f"image_{phase.value}.nii*"))), None)
        labels = next(iter(sorted(folder.glob(f"labels_{phase.value}.nii*"))), None)
        if image is None or labels is None:
            return None
        phases.append(PhaseSource(phase, image, labels))
    return NiftiSubject("synthetic", folder.name, folder, tuple(phases))


def _nifti(path: Path) -> Any:
    """The NIfTI image at ``path`` (nibabel's loader is typed as a generic image)."""
    return nib.load(path)


def _load(path: Path, time_index: int | None) -> tuple[NDArray[Any], NDArray[np.float64]]:
    image = _nifti(path)
    data = np.asanyarray(image.dataobj)
    if time_index is not None:
        data = data[..., time_index]
    if data.ndim != 3:
        raise NiftiImportError(f"{path.name}: expected a 3D volume, got shape {data.shape}")
    return data, np.asarray(image.affine, dtype=np.float64)


def _as_volume(data: NDArray[Any]) -> NDArray[np.uint16] | NDArray[np.float32]:
    """uint16 when the values are integers in [0, 65535], else float32; order [k, j, i]."""
    ordered = from_nifti_order(data)
    integral = np.issubdtype(ordered.dtype, np.integer) or bool(np.all(np.mod(ordered, 1) == 0))
    if integral and (ordered.size == 0 or (ordered.min() >= 0 and ordered.max() <= 65535)):
        return ordered.astype(np.uint16)
    return ordered.astype(np.float32)


def load_phase(source: PhaseSource) -> tuple[NDArray, NDArray[np.uint8], NDArray[np.float64]]:
    """(volume [k, j, i], labels [k, j, i] in our convention, LPS affine) of one phase.

    Raises:
        NiftiImportError: image and labels differ in shape or grid.
    """
    image, affine_ras = _load(source.image, source.time_index)
    labels, labels_affine = _load(source.labels, source.time_index)
    if image.shape != labels.shape or not np.allclose(affine_ras, labels_affine, atol=1e-3):
        raise NiftiImportError(f"{source.image.name} and {source.labels.name} differ in grid")
    label_values = np.rint(labels).astype(np.uint8)
    if source.acdc_labels:
        label_values = ACDC_TO_OURS[np.clip(label_values, 0, 3)]
    return _as_volume(image), from_nifti_order(label_values), LPS_TO_RAS @ affine_ras


def import_subject(
    subject: NiftiSubject, *, blobs: BlobStore, publisher: Publisher, producer: ProducerInfo
) -> list[VolumeReady]:
    """Store the subject's volumes and label maps as blobs and publish a VolumeReady each."""
    study_uid = derived_uid("nifti", subject.layout, subject.subject, "study")
    series_uid = derived_uid("nifti", subject.layout, subject.subject, "sa")
    events = []
    for source in subject.phases:
        volume, labels, affine = load_phase(source)
        now = utc_now()
        volume_ref = store_volume(blobs, volume)
        labels_ref = store_volume(blobs, labels)
        columns = np.linalg.norm(affine[:3, :3], axis=0)
        events.append(
            make_volume_ready(
                producer=producer,
                study_uid=study_uid,
                series_uid=series_uid,
                cardiac_phase=source.phase,
                frame_keys=(volume_ref.sha256, labels_ref.sha256),
                volume=volume_ref,
                shape=volume.shape,  # type: ignore[arg-type]
                affine=affine,
                pixel_spacing_mm=(float(columns[1]), float(columns[0])),
                slice_spacing_mm=float(columns[2]),
                slice_thickness_mm=None,
                trigger_time_ms=None,
                instance_count=1,
                source=IngestSource.NIFTI_IMPORT,
                timestamps=PipelineTimestamps(
                    first_instance_received_at=now,
                    last_instance_received_at=now,
                    volume_assembled_at=utc_now(),
                ),
                ground_truth=labels_ref,
            )
        )
    for event in events:
        publisher.publish(event)
    return events


def iter_import(
    root: Path, *, blobs: BlobStore, publisher: Publisher, producer: ProducerInfo
) -> Iterator[tuple[NiftiSubject, list[VolumeReady]]]:
    """Import every subject under ``root``, yielding each with its events."""
    for subject in discover(root):
        events = import_subject(subject, blobs=blobs, publisher=publisher, producer=producer)
        logger.info(
            "imported NIfTI subject",
            extra={"layout": subject.layout, "subject_folder": subject.folder.name},
        )
        yield subject, events
