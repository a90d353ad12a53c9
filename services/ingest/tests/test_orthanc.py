"""Orthanc (Debian's binary) pushes a study to our SCP, as a hospital PACS would."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from ingest_testing import RecordingPublisher, fresh_uids, wait_for

from cmrqc_ingest.service import IngestService
from cmrqc_shared.blobs import BlobStore
from cmrqc_shared.events import VolumeReady

ORTHANC = Path("/usr/sbin/Orthanc")
pytestmark = pytest.mark.skipif(not ORTHANC.exists(), reason="orthanc is not installed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _call(url: str, body: bytes | None = None, content_type: str = "application/json") -> object:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if body is not None:
        request.add_header("Content-Type", content_type)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"null")


@pytest.fixture
def orthanc(tmp_path: Path, service: IngestService) -> Iterator[str]:
    """A throw-away Orthanc whose modality ``CMRQC`` is our SCP; yields its REST URL."""
    http_port, dicom_port = _free_port(), _free_port()
    storage = tmp_path / "orthanc-db"
    config = {
        "Name": "cmrqc-test",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomModalities": {"cmrqc": ["CMRQC", "127.0.0.1", service.dicom_port]},
        "Plugins": [],
        "StableAge": 1,
    }
    path = tmp_path / "orthanc.json"
    path.write_text(json.dumps(config))
    process = subprocess.Popen(
        [str(ORTHANC), str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                _call(f"{url}/system")
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("Orthanc did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)  # Orthanc needs 2-3 s to exit; wait before the dir goes
        shutil.rmtree(storage, ignore_errors=True)


def test_orthanc_pushes_a_study_and_one_volume_per_phase_comes_out(  # type: ignore[no-untyped-def]
    make_study,
    tmp_path: Path,
    orthanc: str,
    service: IngestService,
    recorder: RecordingPublisher,
    blobs: BlobStore,
) -> None:
    study, paths = make_study()
    paths = fresh_uids(paths, tmp_path / "fresh", salt=tmp_path.name)
    instance_ids = []
    for path in paths:
        reply = _call(f"{orthanc}/instances", path.read_bytes(), "application/dicom")
        instance_ids.append(reply["ID"])  # type: ignore[index]
    body = json.dumps({"Resources": instance_ids, "Synchronous": True}).encode()
    reply = _call(f"{orthanc}/modalities/cmrqc/store", body)
    assert reply["FailedInstancesCount"] == 0  # type: ignore[index]
    wait_for(lambda: len(recorder.of_type(VolumeReady)) >= 2)
    wait_for(lambda: service.metrics.series_assembled._value.get() >= 1)
    events = recorder.of_type(VolumeReady)
    assert sorted(e.cardiac_phase.value for e in events) == ["ED", "ES"]
    for event in events:
        np.testing.assert_allclose(event.affine, study.affine, atol=1e-3)  # type: ignore[attr-defined]
        truth = study.phase(event.cardiac_phase.value).image  # type: ignore[attr-defined]
        np.testing.assert_array_equal(blobs.get_array(event.volume), truth)  # type: ignore[attr-defined]
