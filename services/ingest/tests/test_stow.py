"""DICOMweb STOW-RS over real HTTP (urllib): statuses and the DICOM JSON response."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
from ingest_testing import RecordingPublisher, wait_for
from pydicom import dcmread
from pydicom.data import get_testdata_file

from cmrqc_ingest.senders import post_stow
from cmrqc_ingest.service import IngestService
from cmrqc_ingest.status import StoreStatus
from cmrqc_shared.blobs import BlobStore
from cmrqc_shared.events import IngestSource, VolumeReady


def _url(service: IngestService, suffix: str = "") -> str:
    return f"http://127.0.0.1:{service.stow_port}/dicomweb/studies{suffix}"


def test_a_study_posted_to_stow_rs_is_stored_and_assembled(  # type: ignore[no-untyped-def]
    make_study, service: IngestService, recorder: RecordingPublisher, blobs: BlobStore
) -> None:
    study, paths = make_study()
    response = post_stow(_url(service), paths)
    assert response.status == 200
    expected = sorted(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths)
    assert sorted(response.stored_sop_instance_uids()) == expected
    wait_for(lambda: len(recorder.of_type(VolumeReady)) == 2)
    for event in recorder.of_type(VolumeReady):
        assert event.source == IngestSource.STOW_RS
        truth = study.phase(event.cardiac_phase.value).image
        np.testing.assert_array_equal(blobs.get_array(event.volume), truth)


def test_a_partly_bad_request_is_accepted_with_202_and_failure_reasons(  # type: ignore[no-untyped-def]
    make_study, service: IngestService
) -> None:
    _, paths = make_study()
    response = post_stow(_url(service), [paths[0], b"not dicom at all"])
    assert response.status == 202
    assert response.failure_reasons() == [int(StoreStatus.CANNOT_UNDERSTAND)]


def test_instances_of_another_study_than_the_url_names_conflict_with_409(  # type: ignore[no-untyped-def]
    make_study, service: IngestService
) -> None:
    _, paths = make_study()
    response = post_stow(_url(service, "/1.2.3.4.5"), paths[:2])
    assert response.status == 409
    assert response.failure_reasons() == [int(StoreStatus.DATASET_MISMATCH)] * 2


def test_an_undecodable_transfer_syntax_fails_with_0xc122(service: IngestService) -> None:
    big_endian = Path(get_testdata_file("MR_small_bigendian.dcm"))
    response = post_stow(_url(service), [big_endian])
    assert response.status == 409
    assert response.failure_reasons() == [int(StoreStatus.TRANSFER_SYNTAX_NOT_SUPPORTED)]


def test_a_body_that_is_not_multipart_related_is_unsupported_media(service: IngestService) -> None:
    request = urllib.request.Request(
        _url(service), data=b"{}", method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        urllib.request.urlopen(request, timeout=10)
        raise AssertionError("expected HTTP 415")
    except urllib.error.HTTPError as error:
        assert error.code == 415


def test_a_ct_posted_to_stow_rs_is_stored_and_skipped(service: IngestService) -> None:
    response = post_stow(_url(service), [Path(get_testdata_file("CT_small.dcm"))])
    assert response.status == 200
    assert service.metrics.series_skipped.labels("not-mr")._value.get() == 1
