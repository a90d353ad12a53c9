"""``ingest-dir``: folders and zips through the same assembly path, resumable."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from ingest_testing import SEED0, RecordingPublisher, make_settings
from pydicom.data import get_testdata_file

from cmrqc_ingest.backfill import ingest_dir
from cmrqc_ingest.pipeline import IngestPipeline
from cmrqc_shared.blobs import BlobStore
from cmrqc_shared.events import IngestSource, VolumeReady


def _layout(make_study, root: Path):  # type: ignore[no-untyped-def]
    """Two studies: one as a folder, one zipped; plus a README and a CT."""
    first, first_paths = make_study(SEED0 + 10)
    second, second_paths = make_study(SEED0 + 11)
    folder = root / "a"
    folder.mkdir(parents=True)
    for path in first_paths:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "README.txt").write_text("not DICOM")
    (folder / "ct.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    with zipfile.ZipFile(root / "b.zip", "w") as archive:
        for path in second_paths:
            archive.write(path, f"series/{path.name}")
    return first, second


def test_a_folder_and_a_zip_are_assembled_like_received_studies(  # type: ignore[no-untyped-def]
    make_study,
    tmp_path: Path,
    pipeline: IngestPipeline,
    recorder: RecordingPublisher,
    blobs: BlobStore,
) -> None:
    first, second = _layout(make_study, tmp_path / "data")
    stats = ingest_dir(tmp_path / "data", pipeline, progress_file=tmp_path / "progress.txt")
    assert stats.refused == 1  # the README
    events = recorder.of_type(VolumeReady)
    assert len(events) == 4 and stats.volumes == 4
    assert {e.source for e in events} == {IngestSource.BACKFILL}
    for event in events:
        study = (
            first if event.instance_count and np.allclose(event.affine, first.affine) else second
        )
        np.testing.assert_allclose(event.affine, study.affine, atol=1e-3)
        truth = study.phase(event.cardiac_phase.value).image
        np.testing.assert_array_equal(blobs.get_array(event.volume), truth)


def test_an_interrupted_backfill_resumes_without_publishing_twice(  # type: ignore[no-untyped-def]
    make_study, tmp_path: Path, blobs: BlobStore
) -> None:
    _layout(make_study, tmp_path / "data")
    settings = make_settings(tmp_path)
    progress = tmp_path / "progress.txt"

    first_run = RecordingPublisher()
    pipeline = IngestPipeline(settings, blobs=blobs, publisher=first_run)
    pipeline.open()
    ingest_dir(tmp_path / "data", pipeline, progress_file=progress)
    pipeline.close()
    # forget the last three processed paths: as if the process died before recording them
    lines = progress.read_text().splitlines()
    progress.write_text("\n".join(lines[:-3]) + "\n")

    second_run = RecordingPublisher()
    pipeline = IngestPipeline(settings, blobs=blobs, publisher=second_run)
    pipeline.open()
    stats = ingest_dir(tmp_path / "data", pipeline, progress_file=progress)
    pipeline.close()
    assert stats.files_skipped_done == len(lines) - 3 > 0
    assert len(first_run.of_type(VolumeReady)) == 4
    assert second_run.of_type(VolumeReady) == []
    assert stats.count("duplicate") == 1
