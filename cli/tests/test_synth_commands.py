"""`cmrqc synth` writes studies with ground truth; `cmrqc simulate` pushes them to a real SCP."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom import dcmread

from cmrqc_cli.main import main


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_synth_writes_dicom_and_matching_ground_truth(tmp_path: Path) -> None:
    assert main(["synth", "--out", str(tmp_path), "--studies", "2", "--seed-start", "100000"]) == 0
    studies = sorted(tmp_path.glob("study-*"))
    assert [s.name for s in studies] == ["study-100000", "study-100001"]
    for study in studies:
        files = sorted((study / "dicom").glob("*.dcm"))
        labels = nib.load(study / "ground_truth" / "labels_ED.nii.gz")
        slices = len({float(dcmread(f, stop_before_pixels=True).SliceLocation) for f in files})
        assert labels.shape[2] == slices
        assert set(np.unique(np.asarray(labels.dataobj))) <= {0, 1, 2, 3}
        first = dcmread(files[0], stop_before_pixels=True)
        assert str(first.PatientName).startswith("SYNTHETIC^")


@pytest.mark.slow
def test_simulate_pushes_every_instance_to_dcmtk_storescp(tmp_path: Path) -> None:
    port = _free_port()
    received = tmp_path / "received"
    received.mkdir()
    scp = subprocess.Popen(
        ["/usr/bin/storescp", "-od", str(received), "-aet", "CMRQC", str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        code = main(
            [
                "simulate",
                "--studies",
                "2",
                "--rate",
                "20",
                "--to",
                f"127.0.0.1:{port}",
                "--called-aet",
                "CMRQC",
                "--seed-start",
                "100010",
            ]
        )
    finally:
        scp.terminate()
        scp.wait(timeout=10)
    assert code == 0
    stored = [dcmread(path, stop_before_pixels=True) for path in received.iterdir()]
    assert len({ds.StudyInstanceUID for ds in stored}) == 2
    assert len({ds.SOPInstanceUID for ds in stored}) == len(stored) >= 2 * 16


def test_simulate_reports_failure_when_no_scp_listens() -> None:
    port = _free_port()
    assert main(["simulate", "--studies", "1", "--to", f"127.0.0.1:{port}"]) == 1
