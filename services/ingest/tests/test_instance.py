"""Validation of one received instance: each failed check maps to its DICOM status."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import CTImageStorage, ExplicitVRBigEndian

from cmrqc_ingest.instance import InstanceLimits, InstanceRejected, inspect_instance
from cmrqc_ingest.status import StoreStatus

NOW = datetime(2024, 1, 1, tzinfo=UTC)
LIMITS = InstanceLimits(max_rows=512, max_columns=512, max_frames=64, max_instance_bytes=10**7)


def _bytes(ds) -> bytes:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _status(data: bytes, **kwargs: object) -> StoreStatus:
    with pytest.raises(InstanceRejected) as rejected:
        inspect_instance(data, received_at=NOW, limits=LIMITS, **kwargs)  # type: ignore[arg-type]
    return rejected.value.status


def test_a_synthetic_cine_instance_is_accepted_with_its_expected_count(make_study) -> None:  # type: ignore[no-untyped-def]
    study, paths = make_study()
    info = inspect_instance(paths[0].read_bytes(), received_at=NOW, limits=LIMITS)
    assert info.assembled
    assert info.expected_instances == study.geometry.n_slices * 2
    assert info.cardiac_number_of_images == 2


def test_a_self_contained_enhanced_mr_cine_expects_one_instance(make_study) -> None:  # type: ignore[no-untyped-def]
    _, paths = make_study(enhanced=True)
    info = inspect_instance(paths[0].read_bytes(), received_at=NOW, limits=LIMITS)
    assert info.expected_instances == 1


def test_garbage_bytes_cannot_be_understood() -> None:
    assert _status(b"\x00" * 128 + b"DICM" + b"\xff" * 200) == StoreStatus.CANNOT_UNDERSTAND


def test_a_missing_series_instance_uid_does_not_match_the_sop_class(make_study) -> None:  # type: ignore[no-untyped-def]
    _, paths = make_study()
    ds = dcmread(paths[0])
    del ds.SeriesInstanceUID
    assert _status(_bytes(ds)) == StoreStatus.DATASET_MISMATCH


def test_a_sop_class_other_than_the_requests_does_not_match(make_study) -> None:  # type: ignore[no-untyped-def]
    _, paths = make_study()
    status = _status(paths[0].read_bytes(), affected_sop_class_uid=str(CTImageStorage))
    assert status == StoreStatus.DATASET_MISMATCH


def test_absurd_dimensions_are_refused_as_over_the_limits(make_study) -> None:  # type: ignore[no-untyped-def]
    _, paths = make_study()
    ds = dcmread(paths[0])
    ds.Rows = 60000
    assert _status(_bytes(ds)) == StoreStatus.OUT_OF_RESOURCES_LIMIT


def test_an_instance_over_the_byte_limit_is_refused(make_study) -> None:  # type: ignore[no-untyped-def]
    _, paths = make_study()
    small = InstanceLimits(max_instance_bytes=1000)
    with pytest.raises(InstanceRejected) as rejected:
        inspect_instance(paths[0].read_bytes(), received_at=NOW, limits=small)
    assert rejected.value.status == StoreStatus.OUT_OF_RESOURCES_LIMIT


def test_truncated_pixel_data_cannot_be_understood() -> None:
    data = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    assert _status(data[:-2000]) in (
        StoreStatus.CANNOT_UNDERSTAND_PIXELS,
        StoreStatus.CANNOT_UNDERSTAND,
    )


def test_an_undecodable_transfer_syntax_is_refused_for_stow() -> None:
    data = Path(get_testdata_file("MR_small_bigendian.dcm")).read_bytes()
    assert dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    assert _status(data) == StoreStatus.TRANSFER_SYNTAX_NOT_SUPPORTED


def test_an_enhanced_mr_without_functional_groups_does_not_match_its_sop_class() -> None:
    data = Path(get_testdata_file("emri_small.dcm")).read_bytes()
    assert _status(data) == StoreStatus.DATASET_MISMATCH


def test_a_ct_instance_is_accepted_but_not_for_assembly() -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    info = inspect_instance(data, received_at=NOW, limits=LIMITS)
    assert not info.assembled


@pytest.mark.parametrize(
    "name",
    ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"],
)
def test_compressed_mr_test_files_are_accepted(name: str) -> None:
    data = Path(get_testdata_file(name)).read_bytes()
    info = inspect_instance(data, received_at=NOW, limits=LIMITS)
    assert info.assembled
