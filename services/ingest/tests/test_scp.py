"""The DICOM node against real peers: pynetdicom SCU, DCMTK storescu / echoscu, TLS."""

from __future__ import annotations

import os
import ssl
import subprocess
from pathlib import Path

import numpy as np
import pytest
from ingest_testing import RecordingPublisher, make_settings, wait_for
from pydicom import dcmread
from pydicom.uid import JPEG2000Lossless

from cmrqc_ingest.senders import AssociationRefused, send_cstore
from cmrqc_ingest.service import IngestService
from cmrqc_ingest.status import StoreStatus
from cmrqc_shared.blobs import BlobStore
from cmrqc_shared.events import VolumeReady

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def _volumes(recorder: RecordingPublisher, count: int = 2) -> list[VolumeReady]:
    wait_for(lambda: len(recorder.of_type(VolumeReady)) >= count)
    return recorder.of_type(VolumeReady)  # type: ignore[return-value]


def _assert_matches(events, study, blobs: BlobStore) -> None:  # type: ignore[no-untyped-def]
    assert sorted(e.cardiac_phase.value for e in events) == ["ED", "ES"]
    for event in events:
        np.testing.assert_allclose(event.affine, study.affine, atol=1e-3)
        truth = study.phase(event.cardiac_phase.value).image
        np.testing.assert_array_equal(blobs.get_array(event.volume), truth)


def test_a_study_sent_over_one_pynetdicom_association_yields_one_volume_per_phase(  # type: ignore[no-untyped-def]
    make_study, service: IngestService, recorder: RecordingPublisher, blobs: BlobStore
) -> None:
    study, paths = make_study()
    statuses = send_cstore("127.0.0.1", service.dicom_port, paths)
    assert statuses == [0] * len(paths)
    _assert_matches(_volumes(recorder), study, blobs)
    wait_for(lambda: service.metrics.series_assembled._value.get() == 1)
    assert len(recorder.events) == 2


def test_an_enhanced_mr_cine_over_c_store_yields_the_same_volumes(  # type: ignore[no-untyped-def]
    make_study, service: IngestService, recorder: RecordingPublisher, blobs: BlobStore
) -> None:
    study, paths = make_study(enhanced=True)
    assert send_cstore("127.0.0.1", service.dicom_port, paths) == [0]
    _assert_matches(_volumes(recorder), study, blobs)


def test_dcmtk_echoscu_gets_an_answer(service: IngestService) -> None:
    result = subprocess.run(
        ["/usr/bin/echoscu", "-aec", "CMRQC", "127.0.0.1", str(service.dicom_port)],
        capture_output=True,
        text=True,
        timeout=30,
        env=DCMTK_ENV,
    )
    assert result.returncode == 0, result.stderr


def test_dcmtk_storescu_delivers_a_study(  # type: ignore[no-untyped-def]
    make_study, service: IngestService, recorder: RecordingPublisher, blobs: BlobStore
) -> None:
    study, paths = make_study()
    result = subprocess.run(
        ["/usr/bin/storescu", "-aec", "CMRQC", "127.0.0.1", str(service.dicom_port)]
        + [str(p) for p in paths],
        capture_output=True,
        text=True,
        timeout=60,
        env=DCMTK_ENV,
    )
    assert result.returncode == 0, result.stderr
    _assert_matches(_volumes(recorder), study, blobs)


def _dcmtk_convert(tool: list[str], paths: list[Path], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    converted = []
    for path in paths:
        target = out / path.name
        subprocess.run([*tool, str(path), str(target)], check=True, capture_output=True)
        converted.append(target)
    return converted


@pytest.mark.parametrize(
    ("tool", "propose"),
    [
        (["/usr/bin/dcmcjpeg", "+e1"], "-xs"),
        (["/usr/bin/dcmcjpls"], "-xt"),
        (["/usr/bin/dcmcrle"], "-xr"),
        (["/usr/bin/dcmconv", "+td"], "-xd"),
        (["/usr/bin/dcmconv", "+ti"], "-xi"),
    ],
    ids=["jpeg-lossless", "jpeg-ls", "rle", "deflated", "implicit"],
)
def test_storescu_sends_each_lossless_transfer_syntax_and_the_volume_is_exact(  # type: ignore[no-untyped-def]
    tool: list[str],
    propose: str,
    make_study,
    service: IngestService,
    recorder: RecordingPublisher,
    blobs: BlobStore,
    tmp_path: Path,
) -> None:
    study, paths = make_study()
    converted = _dcmtk_convert(tool, paths, tmp_path / "converted")
    result = subprocess.run(
        ["/usr/bin/storescu", propose, "-aec", "CMRQC", "127.0.0.1", str(service.dicom_port)]
        + [str(p) for p in converted],
        capture_output=True,
        text=True,
        timeout=60,
        env=DCMTK_ENV,
    )
    assert result.returncode == 0, result.stderr
    _assert_matches(_volumes(recorder), study, blobs)


def test_jpeg_2000_lossless_instances_assemble_exactly(  # type: ignore[no-untyped-def]
    make_study, service: IngestService, recorder: RecordingPublisher, blobs: BlobStore
) -> None:
    study, paths = make_study()
    datasets = []
    for path in paths:
        ds = dcmread(path)
        ds.compress(JPEG2000Lossless)
        datasets.append(ds)
    assert send_cstore("127.0.0.1", service.dicom_port, datasets) == [0] * len(paths)
    _assert_matches(_volumes(recorder), study, blobs)


def test_a_corrupt_instance_is_answered_with_a_failure_status_and_the_rest_still_assemble(  # type: ignore[no-untyped-def]
    make_study, service: IngestService, recorder: RecordingPublisher
) -> None:
    _, paths = make_study()
    bad = dcmread(paths[0])
    bad.Rows = 4000
    statuses = send_cstore("127.0.0.1", service.dicom_port, [bad, *paths])
    assert statuses[0] == StoreStatus.OUT_OF_RESOURCES_LIMIT
    assert statuses[1:] == [0] * len(paths)
    assert len(_volumes(recorder)) == 2


def test_a_calling_ae_title_outside_the_allow_list_is_rejected(  # type: ignore[no-untyped-def]
    make_study, tmp_path: Path, blobs: BlobStore
) -> None:
    _, paths = make_study()
    settings = make_settings(tmp_path, allowed_calling_aets=["PACS1"])
    service = IngestService(settings, publisher=RecordingPublisher(), blobs=blobs)
    service.start()
    try:
        with pytest.raises(AssociationRefused):
            send_cstore("127.0.0.1", service.dicom_port, paths[:1], calling_ae="INTRUDER")
        assert send_cstore("127.0.0.1", service.dicom_port, paths[:1], calling_ae="PACS1") == [0]
    finally:
        service.stop(grace_s=1)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost and a client certificate, signed by the CA."""
    d = tmp_path / "tls"
    d.mkdir()
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=cmrqc-test-ca", cwd=d,
    )  # fmt: skip
    for name in ("server", "client"):
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", "/CN=localhost", cwd=d,
        )  # fmt: skip
        (d / f"{name}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
            "-extfile", f"{name}.ext", cwd=d,
        )  # fmt: skip
    return {n: d / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


def test_a_study_over_mutual_dicom_tls_assembles(  # type: ignore[no-untyped-def]
    make_study, tmp_path: Path, blobs: BlobStore, tls_files: dict[str, Path]
) -> None:
    study, paths = make_study()
    settings = make_settings(
        tmp_path,
        tls_cert_file=tls_files["server.pem"],
        tls_key_file=tls_files["server.key"],
        tls_ca_file=tls_files["ca.pem"],
    )
    recorder = RecordingPublisher()
    service = IngestService(settings, publisher=recorder, blobs=blobs)
    service.start()
    try:
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls_files["ca.pem"])
        client.load_cert_chain(tls_files["client.pem"], tls_files["client.key"])
        client.check_hostname = False
        statuses = send_cstore("127.0.0.1", service.dicom_port, paths, ssl_context=client)
        assert statuses == [0] * len(paths)
        _assert_matches(_volumes(recorder), study, blobs)
        anonymous = ssl.create_default_context(cafile=tls_files["ca.pem"])
        anonymous.check_hostname = False
        with pytest.raises((AssociationRefused, OSError)):
            send_cstore("127.0.0.1", service.dicom_port, paths[:1], ssl_context=anonymous)
    finally:
        service.stop(grace_s=1)
