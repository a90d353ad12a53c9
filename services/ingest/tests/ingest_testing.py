"""Test support of the ingest tests, importable from test modules (conftest puts this
folder on sys.path): small studies, settings on free ports, a recording publisher.
"""

from __future__ import annotations

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
