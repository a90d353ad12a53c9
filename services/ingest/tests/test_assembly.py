"""Series assembly (the domain core) on synthetic files: no network, no Kafka."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from cmrqc_ingest.assembly import AssemblyError, assemble_series
from cmrqc_ingest.rules import SeriesSkipped, SkipReason
from cmrqc_shared.events import CardiacPhase

AFFINE_TOL_MM = 1e-3


def _check_against_truth(assembled, study) -> None:  # type: ignore[no-untyped-def]
    assert [p.cardiac_phase for p in assembled.phases] == [CardiacPhase.ED, CardiacPhase.ES]
    np.testing.assert_allclose(assembled.stack.affine, study.affine, atol=AFFINE_TOL_MM)
    for phase in assembled.phases:
        truth = study.phase(phase.cardiac_phase.value)
        assert phase.volume.dtype == np.uint16
        np.testing.assert_array_equal(phase.volume, truth.image)
        assert phase.trigger_time_ms == pytest.approx(truth.trigger_time_ms)


def test_a_classic_cine_series_assembles_into_the_generators_ed_and_es(make_study) -> None:  # type: ignore[no-untyped-def]
    study, paths = make_study()
    assembled = assemble_series(paths)
    _check_against_truth(assembled, study)
    assert assembled.stack.slice_spacing_mm == pytest.approx(study.geometry.slice_spacing_mm)


def test_an_enhanced_mr_cine_assembles_like_the_classic_one(make_study) -> None:  # type: ignore[no-untyped-def]
    study, paths = make_study(enhanced=True)
    assert len(paths) == 1
    _check_against_truth(assemble_series(paths), study)


def test_file_order_does_not_matter_slices_are_sorted_along_the_normal(make_study) -> None:  # type: ignore[no-untyped-def]
    study, paths = make_study()
    shuffled = list(paths)
    random.Random(3).shuffle(shuffled)
    _check_against_truth(assemble_series(shuffled), study)


def test_a_missing_slice_is_an_inconsistent_geometry_failure(make_study) -> None:  # type: ignore[no-untyped-def]
    _, paths = make_study()
    # instances are written base to apex, phase fastest: drop both phases of a middle slice
    kept = [p for i, p in enumerate(paths) if i // 2 != 2]
    with pytest.raises(AssemblyError) as failure:
        assemble_series(kept)
    assert failure.value.reason == "inconsistent-geometry"
    assert "spacing" in failure.value.message


def test_a_missing_phase_of_one_slice_is_an_inconsistent_phases_failure(make_study) -> None:  # type: ignore[no-untyped-def]
    _, paths = make_study()
    with pytest.raises(AssemblyError) as failure:
        assemble_series(paths[1:])
    assert failure.value.reason == "inconsistent-phases"


def test_a_tilted_slice_is_an_inconsistent_geometry_failure(make_study, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, paths = make_study()
    ds = dcmread(paths[0])
    iop = [float(v) for v in ds.ImageOrientationPatient]
    angle = np.radians(5)
    ds.ImageOrientationPatient = [
        iop[0] * np.cos(angle) - iop[1] * np.sin(angle),
        iop[0] * np.sin(angle) + iop[1] * np.cos(angle),
        iop[2],
        *iop[3:],
    ]
    ds.save_as(paths[0])
    with pytest.raises(AssemblyError) as failure:
        assemble_series(paths)
    assert failure.value.reason == "inconsistent-geometry"


def test_rescale_slope_and_intercept_give_a_float32_volume(make_study) -> None:  # type: ignore[no-untyped-def]
    study, paths = make_study()
    for path in paths:
        ds = dcmread(path)
        ds.RescaleSlope, ds.RescaleIntercept = 2.0, -10.0
        ds.save_as(path)
    assembled = assemble_series(paths)
    ed = assembled.phases[0]
    assert ed.volume.dtype == np.float32
    np.testing.assert_allclose(ed.volume, study.phase("ED").image * 2.0 - 10.0)


def test_with_many_phases_es_is_the_phase_with_the_smallest_bright_blood_pool(  # type: ignore[no-untyped-def]
    make_study, tmp_path: Path
) -> None:
    study, paths = make_study()
    ed_image = study.phase("ED").image.astype(np.float64)
    es_image = study.phase("ES").image.astype(np.float64)
    # six phases: ED, three blends towards ES, ES at 400 ms, one blend back
    weights = {0.0: 0.0, 100.0: 0.3, 200.0: 0.6, 300.0: 0.85, 400.0: 1.0, 600.0: 0.5}
    out = tmp_path / "cine6"
    out.mkdir()
    ed_paths = [p for p in paths if float(dcmread(p).TriggerTime) == 0.0]
    written = []
    for path in ed_paths:
        template = dcmread(path)
        k = int(
            np.argmin(
                [
                    np.linalg.norm(study.geometry.image_position(i) - template.ImagePositionPatient)
                    for i in range(study.geometry.n_slices)
                ]
            )
        )
        for t, (time_ms, w) in enumerate(weights.items()):
            ds = dcmread(path)
            image = np.rint((1 - w) * ed_image[k] + w * es_image[k]).astype("<u2")
            ds.PixelData = image.tobytes()
            ds.TriggerTime = time_ms
            ds.SOPInstanceUID = generate_uid(entropy_srcs=[template.SOPInstanceUID, str(t)])
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            target = out / f"{k}_{t}.dcm"
            ds.save_as(target)
            written.append(target)
    assembled = assemble_series(written)
    assert assembled.phase_count == 6
    es = assembled.phases[1]
    assert es.cardiac_phase == CardiacPhase.ES
    assert es.trigger_time_ms == 400.0


def test_a_tri_plane_localiser_is_skipped(make_study, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, paths = make_study()
    planes = ([1, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, -1], [1, 0, 0, 0, 0, -1])
    written = []
    for index, orientation in enumerate(planes):
        ds = dcmread(paths[index])
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.SeriesDescription = "3-plane loc"
        ds.ImageOrientationPatient = orientation
        target = tmp_path / f"loc{index}.dcm"
        ds.save_as(target)
        written.append(target)
    with pytest.raises(SeriesSkipped) as skipped:
        assemble_series(written)
    assert skipped.value.reason == SkipReason.LOCALIZER


def test_a_long_axis_cine_is_skipped_by_its_description(make_study) -> None:  # type: ignore[no-untyped-def]
    _, paths = make_study()
    for path in paths:
        ds = dcmread(path)
        ds.SeriesDescription = "cine_4ch"
        ds.save_as(path)
    with pytest.raises(SeriesSkipped) as skipped:
        assemble_series(paths)
    assert skipped.value.reason == SkipReason.LONG_AXIS


def test_a_single_image_is_skipped_as_too_few_slices() -> None:
    with pytest.raises(SeriesSkipped) as skipped:
        assemble_series([Path(get_testdata_file("MR_small.dcm"))])
    assert skipped.value.reason == SkipReason.TOO_FEW_SLICES


def test_a_static_stack_without_trigger_times_is_skipped_as_not_cine(make_study) -> None:  # type: ignore[no-untyped-def]
    _, paths = make_study()
    static = []
    for path in paths:
        ds = dcmread(path)
        if float(ds.TriggerTime) != 0.0:
            continue
        for keyword in ("TriggerTime", "TemporalPositionIdentifier"):
            delattr(ds, keyword)
        ds.save_as(path)
        static.append(path)
    with pytest.raises(SeriesSkipped) as skipped:
        assemble_series(static)
    assert skipped.value.reason == SkipReason.NOT_CINE


def test_an_axial_cine_stack_is_skipped_as_not_oblique(make_study) -> None:  # type: ignore[no-untyped-def]
    _, paths = make_study()
    for path in paths:
        ds = dcmread(path)
        z = float(ds.SliceLocation)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-100.0, -100.0, z]
        ds.save_as(path)
    with pytest.raises(SeriesSkipped) as skipped:
        assemble_series(paths)
    assert skipped.value.reason == SkipReason.NOT_OBLIQUE
