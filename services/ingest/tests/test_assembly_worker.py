"""Assembly in a child process: the same volumes as in-process, and a dying child costs
nothing but a retry (or, if the series kills it again, a dead letter)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from ingest_testing import RecordingPublisher, make_settings

from cmrqc_ingest.assembly import assemble_series
from cmrqc_ingest.assembly_worker import AssemblyCrashed, AssemblyWorker
from cmrqc_ingest.pipeline import IngestPipeline, SeriesOutcome
from cmrqc_ingest.status import StoreStatus
from cmrqc_shared.blobs import BlobStore
from cmrqc_shared.events import DeadLetter, IngestSource, VolumeReady


@pytest.fixture(scope="module")
def worker() -> Iterator[AssemblyWorker]:
    child = AssemblyWorker(min_slices=3, publish_all_phases=False)
    child.start()
    yield child
    child.close()


def _kill_child(worker: AssemblyWorker) -> None:
    assert worker.pid is not None
    os.kill(worker.pid, signal.SIGKILL)
    time.sleep(0.2)  # (the pool may notice at the next call or while waiting on it)


def _drain(pipeline: IngestPipeline, until_s: float = 30.0) -> list[SeriesOutcome]:
    deadline = time.monotonic() + until_s
    outcomes: list[SeriesOutcome] = []
    while not outcomes and time.monotonic() < deadline:
        pipeline.tracker.wakeup.wait(0.05)
        outcomes = pipeline.assemble_ready()
    return outcomes


def test_the_child_assembles_exactly_what_the_thread_would(  # type: ignore[no-untyped-def]
    make_study, worker: AssemblyWorker
) -> None:
    _, paths = make_study()
    here, there = assemble_series(paths), worker.assemble(paths)
    np.testing.assert_array_equal(here.stack.affine, there.stack.affine)
    assert [p.cardiac_phase for p in here.phases] == [p.cardiac_phase for p in there.phases]
    for mine, theirs in zip(here.phases, there.phases, strict=True):
        np.testing.assert_array_equal(mine.volume, theirs.volume)
        assert mine.frame_keys == theirs.frame_keys


def _received(
    paths: list[Path], tmp_path: Path, blobs: BlobStore, worker: AssemblyWorker
) -> tuple[IngestPipeline, RecordingPublisher]:
    """A pipeline assembling in ``worker`` that has received ``paths`` (one study)."""
    recorder = RecordingPublisher()
    settings = make_settings(tmp_path, assembly_retry_s=0.01)
    pipeline = IngestPipeline(settings, blobs=blobs, publisher=recorder, assembly_worker=worker)
    pipeline.open()
    for path in paths:
        result = pipeline.receive(path.read_bytes(), source=IngestSource.C_STORE, session="s")
        assert result.status == StoreStatus.SUCCESS
    return pipeline, recorder


def test_a_series_is_published_after_the_assembly_process_died(  # type: ignore[no-untyped-def]
    make_study, tmp_path: Path, blobs: BlobStore, worker: AssemblyWorker
) -> None:
    _, paths = make_study()
    pipeline, recorder = _received(paths, tmp_path, blobs, worker)
    restarts = worker.restarts
    _kill_child(worker)
    [first] = pipeline.assemble_ready()
    assert first.kind == "retry" and worker.restarts == restarts + 1
    assert pipeline.downstream_ok  # not a blob store or broker failure
    [second] = _drain(pipeline)
    pipeline.close()
    assert second.kind == "published"
    assert len(recorder.of_type(VolumeReady)) == 2 and not recorder.of_type(DeadLetter)


def test_a_series_that_kills_the_process_twice_is_dead_lettered(  # type: ignore[no-untyped-def]
    make_study, tmp_path: Path, blobs: BlobStore, worker: AssemblyWorker
) -> None:
    _, paths = make_study()
    pipeline, recorder = _received(paths, tmp_path, blobs, worker)
    _kill_child(worker)
    assert [o.kind for o in pipeline.assemble_ready()] == ["retry"]
    worker.start()  # the fresh child, started now so that it can be killed
    _kill_child(worker)
    [outcome] = _drain(pipeline)
    pipeline.close()
    assert outcome.kind == "dead-lettered" and outcome.reason == "assembly-crashed"
    [letter] = recorder.of_type(DeadLetter)
    assert letter.reason == "assembly-crashed" and not recorder.of_type(VolumeReady)
    quarantined = list((pipeline.settings.spool_dir / "dead").iterdir())
    assert len(quarantined) == 1 and len(list(quarantined[0].glob("*.dcm"))) == len(paths)


def test_a_hung_child_is_killed_after_its_timeout_and_replaced(  # type: ignore[no-untyped-def]
    make_study,
) -> None:
    _, paths = make_study()
    child = AssemblyWorker(min_slices=3, publish_all_phases=False, timeout_s=1.0)
    child.start()
    try:
        hung = child.pid
        assert hung is not None
        os.kill(hung, signal.SIGSTOP)  # a decoder stuck in a loop, as far as we can tell
        with pytest.raises(AssemblyCrashed):
            child.assemble(paths)
        assert child.restarts == 1 and child.pid is None
        assert len(child.assemble(paths).phases) == 2  # a fresh child serves the next call
        assert child.pid not in (None, hung)
    finally:
        child.close()
