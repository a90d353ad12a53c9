"""DICOM, enhanced multi-frame and NIfTI outputs of the synthetic generator."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import UID

from cmrqc_shared.synth import (
    LPS_TO_RAS,
    SynthConfig,
    SyntheticStudy,
    from_nifti_order,
    plan_study,
    render_study,
    study_uids,
    write_dicom_series,
    write_ground_truth_nifti,
    write_study,
)
from cmrqc_shared.synth.render import render_plan

SEED = 21
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
PN_KEYWORDS = (
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "OtherPatientNames",
)


@pytest.fixture(scope="module")
def study() -> SyntheticStudy:
    # forced misalignment: per-slice shifts must not disturb the geometry
    return render_study(SEED, SynthConfig(forced_artefacts=("misalignment",)))


@pytest.fixture(scope="module")
def classic(study: SyntheticStudy, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_dicom_series(study, tmp_path_factory.mktemp("classic"))


def _affine_from_headers(
    datasets: list[pydicom.Dataset],
) -> tuple[np.ndarray, list[pydicom.Dataset]]:
    """Independent reconstruction: sort by position along the normal, build the affine."""
    iop = np.array(datasets[0].ImageOrientationPatient, dtype=float)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    ordered = sorted(datasets, key=lambda d: float(np.dot(d.ImagePositionPatient, normal)))
    ipp = np.array([d.ImagePositionPatient for d in ordered], dtype=float)
    dr, dc = (float(v) for v in ordered[0].PixelSpacing)
    aff = np.eye(4)
    aff[:3, 0] = row * dc
    aff[:3, 1] = col * dr
    aff[:3, 2] = (ipp[-1] - ipp[0]) / (len(ipp) - 1)
    aff[:3, 3] = ipp[0]
    # every slice lies on the reconstructed grid
    for k, p in enumerate(ipp):
        assert np.allclose(p, aff[:3, 3] + k * aff[:3, 2], atol=1e-3)
    return aff, ordered


def test_classic_files_and_geometry(study: SyntheticStudy, classic: list[Path]) -> None:
    geo = study.geometry
    assert len(classic) == geo.n_slices * 2
    by_time: dict[float, list[pydicom.Dataset]] = defaultdict(list)
    for path in classic:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == EXPLICIT_VR_LITTLE_ENDIAN
        assert ds.SOPClassUID == MR_IMAGE_STORAGE == ds.file_meta.MediaStorageSOPClassUID
        assert ds.Modality == "MR" and ds.SeriesDescription == "cine_sax"
        assert ds.BitsAllocated == 16 and ds.PixelRepresentation == 0
        assert int(ds.CardiacNumberOfImages) == 2
        by_time[float(ds.TriggerTime)].append(ds)
    assert sorted(by_time) == [0.0, study.phase("ES").trigger_time_ms] or np.allclose(
        sorted(by_time), [0.0, study.phase("ES").trigger_time_ms]
    )
    assert 300.0 <= max(by_time) <= 350.0
    for trigger, datasets in by_time.items():
        phase = study.phase("ED" if trigger == 0.0 else "ES")
        aff, ordered = _affine_from_headers(datasets)
        assert np.abs(aff - study.affine).max() < 1e-3
        # mm-level check on the far corner of the volume too
        corner = np.array([geo.cols - 1, geo.rows - 1, geo.n_slices - 1, 1.0])
        assert np.linalg.norm(aff @ corner - study.affine @ corner) < 1e-3
        normal = np.cross(np.asarray(geo.row_cosine), np.asarray(geo.col_cosine))
        for k, ds in enumerate(ordered):
            assert np.array_equal(ds.pixel_array, phase.image[k])
            assert (
                abs(float(ds.SliceLocation) - float(np.dot(ds.ImagePositionPatient, normal))) < 1e-3
            )
            assert abs(float(ds.SpacingBetweenSlices) - geo.slice_spacing_mm) < 1e-6
            assert abs(float(ds.SliceThickness) - geo.slice_thickness_mm) < 1e-6
            assert ds.Rows == geo.rows and ds.Columns == geo.cols
        # acquisition order: InstanceNumber runs base (high k) to apex (k = 0)
        instances = [int(ds.InstanceNumber) for ds in ordered]
        assert instances == sorted(instances, reverse=True)


def test_uids(study: SyntheticStudy, classic: list[Path]) -> None:
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in classic]
    uids = study_uids(study)
    assert {d.StudyInstanceUID for d in datasets} == {uids["StudyInstanceUID"]}
    assert {d.SeriesInstanceUID for d in datasets} == {uids["SeriesInstanceUID"]}
    assert {d.FrameOfReferenceUID for d in datasets} == {uids["FrameOfReferenceUID"]}
    sops = [d.SOPInstanceUID for d in datasets]
    assert len(set(sops)) == len(sops)
    assert len({int(d.InstanceNumber) for d in datasets}) == len(datasets)
    for uid in [*sops, *uids.values()]:
        assert UID(uid).is_valid
    # deterministic per seed, distinct across seeds
    again = render_plan(plan_study(SEED, study.config), ("ED",))
    assert study_uids(again) == uids
    other = render_plan(plan_study(SEED + 1, study.config), ("ED",))
    assert set(study_uids(other).values()).isdisjoint(uids.values())


def test_identifiers_are_plainly_fake(study: SyntheticStudy, classic: list[Path]) -> None:
    for path in classic[:4]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert str(ds.PatientName) == f"SYNTHETIC^SUBJECT{SEED}"
        assert ds.PatientID == f"SYN-{SEED}"
        assert ds.PatientBirthDate == "19000101"
        assert "SYNTHETIC" in ds.ImageComments
        for kw in PN_KEYWORDS:
            assert not str(ds.get(kw, "")), kw
        assert "InstitutionAddress" not in ds


def test_enhanced_multiframe(study: SyntheticStudy, tmp_path: Path) -> None:
    (path,) = write_dicom_series(study, tmp_path, enhanced=True)
    ds = pydicom.dcmread(path)
    geo = study.geometry
    n = geo.n_slices
    assert ds.SOPClassUID == ENHANCED_MR_IMAGE_STORAGE
    assert ds.file_meta.TransferSyntaxUID == EXPLICIT_VR_LITTLE_ENDIAN
    assert int(ds.NumberOfFrames) == 2 * n
    pixels = ds.pixel_array
    assert pixels.shape == (2 * n, geo.rows, geo.cols)
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    assert np.allclose(iop, geo.image_orientation, atol=1e-9)
    spacing = np.array(shared.PixelMeasuresSequence[0].PixelSpacing, dtype=float)
    assert np.allclose(spacing, geo.pixel_spacing_mm)
    assert len(ds.PerFrameFunctionalGroupsSequence) == 2 * n
    normal = geo.slice_normal
    inv = np.linalg.inv(study.affine)
    seen = set()
    for f, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        ipp = np.array(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        trig = float(frame.CardiacSynchronizationSequence[0].NominalCardiacTriggerDelayTime)
        ijk = inv @ np.append(ipp, 1.0)
        assert np.allclose(ijk[:2], 0.0, atol=1e-6)
        k = round(float(ijk[2]))
        assert abs(ijk[2] - k) < 1e-6 and 0 <= k < n
        phase = study.phase("ED" if trig == 0.0 else "ES")
        assert np.array_equal(pixels[f], phase.image[k])
        content = frame.FrameContentSequence[0]
        assert list(content.DimensionIndexValues)[1:] == [
            int(content.InStackPositionNumber),
            int(content.TemporalPositionIndex),
        ]
        seen.add((k, phase.name))
        assert np.dot(ipp, normal) == pytest.approx(
            float(np.dot(study.affine[:3, 3], normal)) + k * geo.slice_spacing_mm, abs=1e-3
        )
    assert len(seen) == 2 * n
    assert len(ds.DimensionIndexSequence) == 3


def test_nifti_ground_truth(study: SyntheticStudy, tmp_path: Path) -> None:
    paths = write_ground_truth_nifti(study, tmp_path, include_images=True)
    names = {p.name for p in paths}
    assert {"labels_ED.nii.gz", "labels_ES.nii.gz", "synth.json"} <= names
    for phase in study.phases:
        img = nib.load(tmp_path / f"labels_{phase.name}.nii.gz")
        data = np.asarray(img.dataobj)
        assert data.dtype == np.uint8
        assert np.array_equal(from_nifti_order(data), phase.labels)
        assert np.allclose(img.affine, LPS_TO_RAS @ study.affine, atol=1e-4)
        assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
        # qform (quaternion) agrees too, so readers preferring it see the same grid
        assert np.allclose(img.get_qform(), img.affine, atol=1e-3)
        # a labelled voxel maps to the same LPS point through either route
        k, j, i = np.argwhere(phase.labels == 1)[0]
        ras = img.affine @ np.array([i, j, k, 1.0])
        lps = study.affine @ np.array([i, j, k, 1.0])
        assert np.allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-4)
        image = nib.load(tmp_path / f"image_{phase.name}.nii.gz")
        assert np.array_equal(from_nifti_order(np.asarray(image.dataobj)), phase.image)
    meta = json.loads((tmp_path / "synth.json").read_text())
    assert meta["seed"] == SEED
    assert np.allclose(meta["geometry"]["affine_lps"], study.affine)
    assert [a["name"] for a in meta["artefacts"]] == [a.name for a in study.artefacts]
    assert "misalignment" in [a["name"] for a in meta["artefacts"]]
    assert meta["phases"]["ES"]["trigger_time_ms"] == study.phase("ES").trigger_time_ms
    assert meta["anatomy"]["ed"]["wall_thickness_mm"] > 0


def test_write_study_layout(tmp_path: Path) -> None:
    study = render_study(3, SynthConfig.clean_config(), phases=("ED",))
    files = write_study(study, tmp_path)
    assert len(files["dicom"]) == study.geometry.n_slices
    assert all(p.parent == tmp_path / "dicom" for p in files["dicom"])
    assert (tmp_path / "ground_truth" / "labels_ED.nii.gz").exists()
    ds = pydicom.dcmread(files["dicom"][0], stop_before_pixels=True)
    assert int(ds.CardiacNumberOfImages) == 1
