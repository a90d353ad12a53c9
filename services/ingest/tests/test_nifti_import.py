"""``import-nifti``: synthetic, ACDC-like and M&Ms-like layouts to VolumeReady (RAS -> LPS)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from ingest_testing import SEED0, SMALL, RecordingPublisher

from cmrqc_ingest.nifti_import import ACDC_TO_OURS, discover, import_subject
from cmrqc_ingest.publishing import default_producer
from cmrqc_shared.blobs import BlobStore
from cmrqc_shared.events import CardiacPhase
from cmrqc_shared.synth import render_study, to_nifti_order, write_ground_truth_nifti


@pytest.fixture
def study():  # type: ignore[no-untyped-def]
    return render_study(SEED0 + 20, SMALL)


def _nifti(data: np.ndarray, affine_ras: np.ndarray, path: Path) -> None:
    nib.save(nib.Nifti1Image(data, affine_ras), path)


def _check(events, study, blobs: BlobStore) -> None:  # type: ignore[no-untyped-def]
    assert [e.cardiac_phase for e in events] == [CardiacPhase.ED, CardiacPhase.ES]
    for event in events:
        truth = study.phase(event.cardiac_phase.value)
        np.testing.assert_allclose(event.affine, study.affine, atol=1e-3)
        np.testing.assert_array_equal(blobs.get_array(event.volume), truth.image)
        assert event.ground_truth is not None
        np.testing.assert_array_equal(blobs.get_array(event.ground_truth), truth.labels)


def test_the_synthetic_nifti_layout_imports_with_lps_affine_and_labels(  # type: ignore[no-untyped-def]
    study, tmp_path: Path, blobs: BlobStore
) -> None:
    write_ground_truth_nifti(study, tmp_path / "subject", include_images=True)
    [subject] = discover(tmp_path)
    recorder = RecordingPublisher()
    events = import_subject(subject, blobs=blobs, publisher=recorder, producer=default_producer())
    _check(events, study, blobs)
    again = import_subject(subject, blobs=blobs, publisher=recorder, producer=default_producer())
    assert [e.event_id for e in again] == [e.event_id for e in events]


def test_an_acdc_layout_imports_with_its_labels_remapped(  # type: ignore[no-untyped-def]
    study, tmp_path: Path, blobs: BlobStore
) -> None:
    folder = tmp_path / "patient001"
    folder.mkdir()
    ours_to_acdc = np.argsort(ACDC_TO_OURS).astype(np.uint8)
    for frame, phase in ((1, study.phase("ED")), (9, study.phase("ES"))):
        _nifti(
            to_nifti_order(phase.image),
            study.geometry.affine_ras,
            folder / f"patient001_frame{frame:02d}.nii.gz",
        )
        acdc = ours_to_acdc[phase.labels]
        _nifti(
            to_nifti_order(acdc),
            study.geometry.affine_ras,
            folder / f"patient001_frame{frame:02d}_gt.nii.gz",
        )
    (folder / "Info.cfg").write_text("ED: 1\nES: 9\nGroup: NOR\n")
    [subject] = discover(tmp_path)
    assert subject.layout == "acdc"
    events = import_subject(
        subject, blobs=blobs, publisher=RecordingPublisher(), producer=default_producer()
    )
    _check(events, study, blobs)


def test_an_mnms_layout_finds_ed_and_es_from_the_labelled_frames(  # type: ignore[no-untyped-def]
    study, tmp_path: Path, blobs: BlobStore
) -> None:
    folder = tmp_path / "A0S9V9"
    folder.mkdir()
    ed, es = study.phase("ED"), study.phase("ES")
    frames = [ed.image, ed.image, es.image, es.image, ed.image]
    labels = [
        np.zeros_like(ed.labels),
        es.labels,
        np.zeros_like(ed.labels),
        np.zeros_like(ed.labels),
        ed.labels,
    ]
    # ED labelled at t=4, ES at t=1 (the order in time must not matter)
    images4d = np.stack(
        [to_nifti_order(f) for f in [ed.image, es.image, *frames[2:4], ed.image]], axis=-1
    )
    labels4d = np.stack([to_nifti_order(lab) for lab in labels], axis=-1)
    _nifti(images4d, study.geometry.affine_ras, folder / "A0S9V9_sa.nii.gz")
    _nifti(labels4d, study.geometry.affine_ras, folder / "A0S9V9_sa_gt.nii.gz")
    [subject] = discover(tmp_path)
    assert subject.layout == "mnms"
    events = import_subject(
        subject, blobs=blobs, publisher=RecordingPublisher(), producer=default_producer()
    )
    _check(events, study, blobs)
