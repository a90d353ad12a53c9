"""The pipeline without network: receive -> spool -> assemble -> events, restarts, limits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ingest_testing import SEED0, RecordingPublisher, make_settings
from pydicom import dcmread
from pydicom.data import get_testdata_file

from cmrqc_ingest.pipeline import IngestPipeline
from cmrqc_ingest.spool import SpoolLocked
from cmrqc_ingest.status import StoreStatus
from cmrqc_shared.blobs import BlobStore
from cmrqc_shared.events import DeadLetter, IngestSource, VolumeReady

C_STORE = IngestSource.C_STORE


def _receive_all(pipeline: IngestPipeline, paths: list[Path], session: str = "s") -> None:
    for path in paths:
        result = pipeline.receive(path.read_bytes(), source=C_STORE, session=session)
        assert result.status == StoreStatus.SUCCESS, result


def test_a_received_study_is_published_as_ed_and_es_with_the_true_affine(  # type: ignore[no-untyped-def]
    make_study, pipeline: IngestPipeline, recorder: RecordingPublisher, blobs: BlobStore
) -> None:
    study, paths = make_study()
    _receive_all(pipeline, paths)
    [outcome] = pipeline.assemble_ready()
    assert outcome.kind == "published" and outcome.reason == "expected-count"
    events = recorder.of_type(VolumeReady)
    assert [e.cardiac_phase.value for e in events] == ["ED", "ES"]
    for event in events:
        np.testing.assert_allclose(event.affine, study.affine, atol=1e-3)
        truth = study.phase(event.cardiac_phase.value)
        np.testing.assert_array_equal(blobs.get_array(event.volume), truth.image)
        stamps = event.timestamps
        assert stamps.first_instance_received_at <= stamps.last_instance_received_at
        assert stamps.last_instance_received_at <= stamps.volume_assembled_at
        assert event.instance_count == study.geometry.n_slices
    assert len(pipeline.tracker) == 0
    assert pipeline.spool.held_instances == 0  # its log was released with it


def test_a_series_interrupted_by_a_restart_is_recovered_from_the_spool_with_the_same_event_ids(  # type: ignore[no-untyped-def]
    make_study, tmp_path: Path, blobs: BlobStore
) -> None:
    _, paths = make_study()
    uninterrupted = RecordingPublisher()
    first = IngestPipeline(make_settings(tmp_path / "a"), blobs=blobs, publisher=uninterrupted)
    first.open()
    _receive_all(first, paths)
    first.assemble_ready()
    first.close()

    settings = make_settings(tmp_path / "b")
    crashed = IngestPipeline(settings, blobs=blobs, publisher=RecordingPublisher())
    crashed.open()
    _receive_all(crashed, paths[:-3])
    crashed.close()  # no assembly: as if the process died here

    recorder = RecordingPublisher()
    restarted = IngestPipeline(settings, blobs=blobs, publisher=recorder)
    assert restarted.open() == len(paths) - 3
    _receive_all(restarted, paths[-3:])
    restarted.assemble_ready()
    restarted.close()
    assert [e.event_id for e in recorder.events] == [e.event_id for e in uninterrupted.events]


def test_re_sending_a_published_series_publishes_nothing_new(  # type: ignore[no-untyped-def]
    make_study, pipeline: IngestPipeline, recorder: RecordingPublisher
) -> None:
    _, paths = make_study()
    _receive_all(pipeline, paths)
    pipeline.assemble_ready()
    _receive_all(pipeline, paths, session="again")
    [outcome] = pipeline.assemble_ready()
    assert outcome.kind == "duplicate"
    assert len(recorder.events) == 2


def test_an_inconsistent_series_is_dead_lettered_and_its_files_quarantined(  # type: ignore[no-untyped-def]
    make_study, pipeline: IngestPipeline, recorder: RecordingPublisher, tmp_path: Path
) -> None:
    _, paths = make_study()
    kept = [p for i, p in enumerate(paths) if i // 2 != 2]  # a middle slice is missing
    _receive_all(pipeline, kept)
    pipeline.close_session("s", released=True)
    [outcome] = pipeline.flush()
    assert outcome.kind == "dead-lettered"
    [letter] = recorder.of_type(DeadLetter)
    assert letter.reason == "inconsistent-geometry"
    assert letter.details["instances"] == str(len(kept))
    assert "SYNTHETIC" not in letter.to_bytes().decode()  # no patient name on the bus
    dead = list((tmp_path / "spool" / "dead").iterdir())
    assert len(dead) == 1 and len(list(dead[0].glob("*.dcm"))) == len(kept)


def test_a_ct_series_is_acknowledged_skipped_and_counted_once(pipeline: IngestPipeline) -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    for _ in range(2):
        assert pipeline.receive(data, source=C_STORE).status == StoreStatus.SUCCESS
    skipped = pipeline.metrics.series_skipped.labels("not-mr")._value.get()
    assert skipped == 1
    assert len(pipeline.tracker) == 0


def test_plain_instances_are_read_by_the_fast_reader_and_others_by_pydicom(  # type: ignore[no-untyped-def]
    make_study, pipeline: IngestPipeline
) -> None:
    _, paths = make_study()
    _receive_all(pipeline, paths)
    _, enhanced = make_study(SEED0 + 1, enhanced=True)  # functional groups: pydicom reads them
    _receive_all(pipeline, enhanced, session="e")
    reads = pipeline.metrics.headers_read
    assert reads.labels("fast")._value.get() == len(paths)
    assert reads.labels("pydicom")._value.get() == len(enhanced)


def test_a_single_mr_image_is_skipped_as_too_few_slices(
    pipeline: IngestPipeline, recorder: RecordingPublisher
) -> None:
    data = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    assert pipeline.receive(data, source=C_STORE, session="s").status == StoreStatus.SUCCESS
    pipeline.close_session("s", released=True)
    [outcome] = pipeline.assemble_ready()
    assert (outcome.kind, outcome.reason) == ("skipped", "too-few-slices")
    assert recorder.events == []
    assert pipeline.metrics.series_skipped.labels("too-few-slices")._value.get() == 1


def test_instances_are_refused_with_out_of_resources_above_the_spool_watermark(  # type: ignore[no-untyped-def]
    make_study, tmp_path: Path, blobs: BlobStore
) -> None:
    _, paths = make_study()
    size = paths[0].stat().st_size
    settings = make_settings(tmp_path, spool_max_bytes=int(size * 2.5))
    pipeline = IngestPipeline(settings, blobs=blobs, publisher=RecordingPublisher())
    pipeline.open()
    statuses = [pipeline.receive(p.read_bytes(), source=C_STORE).status for p in paths[:4]]
    pipeline.close()
    assert statuses[:2] == [StoreStatus.SUCCESS, StoreStatus.SUCCESS]
    assert statuses[2:] == [StoreStatus.OUT_OF_RESOURCES, StoreStatus.OUT_OF_RESOURCES]
    assert not pipeline.ready()


def test_two_processes_cannot_share_a_spool(
    settings,
    blobs: BlobStore,
    pipeline: IngestPipeline,  # type: ignore[no-untyped-def]
) -> None:
    other = IngestPipeline(settings, blobs=blobs, publisher=RecordingPublisher())
    with pytest.raises(SpoolLocked):
        other.open()


def test_a_failing_publisher_keeps_the_series_for_a_retry(  # type: ignore[no-untyped-def]
    make_study, tmp_path: Path, blobs: BlobStore
) -> None:
    class Down:
        def publish(self, event: object) -> None:
            raise ConnectionError("broker down")

    _, paths = make_study()
    settings = make_settings(tmp_path, assembly_retry_s=0.01)
    pipeline = IngestPipeline(settings, blobs=blobs, publisher=Down())
    pipeline.open()
    _receive_all(pipeline, paths)
    [outcome] = pipeline.assemble_ready()
    assert outcome.kind == "retry" and not pipeline.downstream_ok
    recorder = RecordingPublisher()
    pipeline.publisher = recorder
    pipeline.tracker.wakeup.wait(0.05)
    outcomes = []
    while not outcomes:
        outcomes = pipeline.assemble_ready()
    pipeline.close()
    assert [o.kind for o in outcomes] == ["published"] and len(recorder.events) == 2


def test_patient_identifiers_never_reach_an_event(  # type: ignore[no-untyped-def]
    make_study, pipeline: IngestPipeline, recorder: RecordingPublisher
) -> None:
    _, paths = make_study()
    ds = dcmread(paths[0])
    _receive_all(pipeline, paths)
    pipeline.assemble_ready()
    wire = b"".join(e.to_bytes() for e in recorder.events).decode()
    for value in (str(ds.PatientName), str(ds.PatientID), str(ds.PatientBirthDate)):
        assert value not in wire
