"""Test support of the ingest tests, importable from test modules (conftest puts this
folder on sys.path): small studies, settings on free ports, a recording publisher.
"""

from __future__ import annotations

import io
import random
import re
import time
from collections.abc import Callable
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid

from cmrqc_ingest.settings import IngestSettings
from cmrqc_shared.datasets.splits import DEMO
from cmrqc_shared.events import Event
from cmrqc_shared.settings import BlobSettings, RunnerSettings
from cmrqc_shared.synth import SynthConfig

#: Seeds of the ingest tests: the start of the DEMO range (never a training subject).
SEED0 = DEMO.start + 7000
SMALL = SynthConfig(matrix_range=(64, 96), n_slices_range=(4, 6), clean=True)


class RecordingPublisher:
    """Keeps published events in order (the pipeline's sink when Kafka is not the subject)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def publish(self, event: Event) -> None:
        self.events.append(event)

    def of_type(self, event_type: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, event_type)]


def fresh_uids(paths: list[Path], out_dir: Path, salt: str) -> list[Path]:
    """Copies of ``paths`` with new Study/Series/SOP Instance UIDs (consistent per series)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    mapping: dict[str, str] = {}

    def new(uid: str) -> str:
        if uid not in mapping:
            mapping[uid] = str(generate_uid(entropy_srcs=[salt, uid]))
        return mapping[uid]

    written = []
    for path in paths:
        ds = dcmread(path)
        ds.StudyInstanceUID = new(ds.StudyInstanceUID)
        ds.SeriesInstanceUID = new(ds.SeriesInstanceUID)
        ds.SOPInstanceUID = new(ds.SOPInstanceUID)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        target = out_dir / path.name
        ds.save_as(target, enforce_file_format=True)
        written.append(target)
    return written


def make_settings(tmp_path: Path, **overrides: object) -> IngestSettings:
    """Settings on free localhost ports, a spool and file blobs under ``tmp_path``."""
    values: dict[str, object] = {
        "dicom_host": "127.0.0.1",
        "dicom_port": 0,
        "stow_host": "127.0.0.1",
        "stow_port": 0,
        "spool_dir": tmp_path / "spool",
        "spool_fsync": False,
        "quiet_time_s": 0.5,
        "spool_min_free_bytes": 0,
        "blobs": BlobSettings(url=f"file://{tmp_path / 'blobs'}"),
        "runner": RunnerSettings(health_host="127.0.0.1", health_port=0, instance_id="test"),
    }
    values.update(overrides)
    return IngestSettings(**values)  # type: ignore[arg-type]


def wait_for(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


_VR_CODES = [b"SQ", b"OB", b"UN", b"FD", b"US", b"UL", b"DS", b"AT", b"LO", b"OW"]
_VR_AT = re.compile(rb"(?<=[\x00-\xff]{4})(US|UL|DS|IS|CS|LO|SH|UI|DA|TM|PN|FD)")


def split_meta(data: bytes) -> int:
    """Offset of the data set after the preamble and file meta group."""
    buffer = io.BytesIO(data)
    dcmread(buffer, stop_before_pixels=True, specific_tags=[0x00020010])
    # group length (0002,0000) is the first meta element: value at bytes 140..144
    group_length = int.from_bytes(data[140:144], "little")
    return 144 + group_length


def mutate_body(data: bytes, rng: random.Random) -> bytes:
    """One random mutation of the data set bytes after the file meta (the fuzz test's)."""
    start = split_meta(data)
    meta, body = data[:start], bytearray(data[start:])
    kind = rng.randrange(6)
    if kind == 0:  # truncation anywhere in the data set
        body = body[: rng.randrange(len(body))]
    elif kind == 1:  # random bytes corrupted in the header region
        for _ in range(rng.randint(1, 20)):
            body[rng.randrange(min(len(body), 2000))] = rng.randrange(256)
    elif kind == 2:  # a corrupted tag (group/element numbers)
        positions = [m.start() - 4 for m in _VR_AT.finditer(bytes(body[:3000]))]
        for pos in rng.sample(positions, k=min(3, len(positions))):
            body[pos : pos + 4] = rng.randbytes(4)
    elif kind == 3:  # wrong VR codes
        positions = [m.start() for m in _VR_AT.finditer(bytes(body[:3000]))]
        for pos in rng.sample(positions, k=min(4, len(positions))):
            body[pos : pos + 2] = rng.choice(_VR_CODES)
    elif kind == 4:  # garbage inserted
        pos = rng.randrange(len(body))
        body[pos:pos] = rng.randbytes(rng.randint(1, 500))
    else:  # length fields blown up
        positions = [m.start() + 2 for m in _VR_AT.finditer(bytes(body[:3000]))]
        for pos in rng.sample(positions, k=min(2, len(positions))):
            body[pos : pos + 2] = b"\xff\xff"
    return meta + bytes(body)


def pydicom_mutant(path: Path, rng: random.Random) -> bytes:
    ds = dcmread(path)
    kind = rng.randrange(4)
    if kind == 0:
        ds.Rows = rng.choice([0, 1, 4097, 65535])
    elif kind == 1:
        ds.NumberOfFrames = rng.choice([0, 99999, -1])
    elif kind == 2:
        ds.BitsAllocated = rng.choice([1, 12, 32, 64])
    else:
        for keyword in rng.sample(
            ["ImagePositionPatient", "PixelSpacing", "StudyInstanceUID", "PixelData", "Rows"], 2
        ):
            if keyword in ds:
                delattr(ds, keyword)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def with_new_sop_uid(path: Path, index: int) -> bytes:
    ds = dcmread(path)
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["fuzz", str(index)])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
