"""Completion rules of the series tracker, on a fake clock (no sleeps)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cmrqc_ingest.instance import InstanceInfo
from cmrqc_ingest.spool import SpooledFile
from cmrqc_ingest.tracker import SeriesTracker

NOW = datetime(2024, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _instance(
    n: int, *, expected: int | None = None, cni: int | None = None, position: str = "0"
) -> tuple[InstanceInfo, SpooledFile]:
    info = InstanceInfo(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        sop_instance_uid=f"1.2.3.{n}",
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="MR",
        number_of_frames=1,
        size_bytes=10,
        received_at=NOW,
        expected_instances=expected,
        cardiac_number_of_images=cni,
        slice_position_key=position,
    )
    return info, SpooledFile(Path(f"/spool/{n}.dcm"), 10, "c-store", NOW)


def test_a_series_completes_as_soon_as_the_expected_count_arrives_even_on_an_open_association() -> (
    None
):
    clock = Clock()
    tracker = SeriesTracker(clock=clock)
    for n in range(3):
        tracker.add(*_instance(n, expected=4), session="a")
    assert tracker.take_ready() == []
    tracker.add(*_instance(3, expected=4), session="a")
    [snapshot] = tracker.take_ready()
    assert snapshot.reason == "expected-count"
    assert len(snapshot.instances) == 4


def test_a_series_completes_when_its_association_is_released() -> None:
    tracker = SeriesTracker(clock=Clock())
    tracker.add(*_instance(0), session="a")
    tracker.add(*_instance(1), session="a")
    assert tracker.take_ready() == []
    tracker.close_session("a", released=True)
    [snapshot] = tracker.take_ready()
    assert snapshot.reason == "released"


def test_an_aborted_association_leaves_the_series_to_the_quiet_time() -> None:
    clock = Clock()
    tracker = SeriesTracker(quiet_time_s=2.0, clock=clock)
    tracker.add(*_instance(0), session="a")
    tracker.close_session("a", released=False)
    assert tracker.take_ready() == []
    clock.now += 2.0
    [snapshot] = tracker.take_ready()
    assert snapshot.reason == "quiet-time"


def test_a_release_with_slice_positions_missing_phases_waits_for_the_quiet_time() -> None:
    clock = Clock()
    tracker = SeriesTracker(quiet_time_s=2.0, clock=clock)
    tracker.add(*_instance(0, cni=2, position="a"), session="s")
    tracker.add(*_instance(1, cni=2, position="a"), session="s")
    tracker.add(*_instance(2, cni=2, position="b"), session="s")
    tracker.close_session("s", released=True)
    assert tracker.take_ready() == []
    clock.now += 2.0
    assert [s.reason for s in tracker.take_ready()] == ["quiet-time"]


def test_a_series_fed_by_two_associations_waits_for_both() -> None:
    tracker = SeriesTracker(clock=Clock())
    tracker.add(*_instance(0), session="a")
    tracker.add(*_instance(1), session="b")
    tracker.close_session("a", released=True)
    assert tracker.take_ready() == []
    tracker.close_session("b", released=True)
    assert len(tracker.take_ready()) == 1


def test_a_re_sent_instance_is_registered_once() -> None:
    tracker = SeriesTracker(clock=Clock())
    assert tracker.add(*_instance(0), session="a") is None
    assert tracker.add(*_instance(0), session="a") is not None
    tracker.close_session("a", released=True)
    [snapshot] = tracker.take_ready()
    assert len(snapshot.instances) == 1


def test_a_series_put_back_after_a_failure_is_retried_after_the_delay() -> None:
    clock = Clock()
    tracker = SeriesTracker(clock=clock)
    tracker.add(*_instance(0, expected=1))
    [snapshot] = tracker.take_ready()
    tracker.put_back(snapshot, retry_after_s=5.0)
    assert tracker.take_ready() == []
    clock.now += 5.0
    [retry] = tracker.take_ready()
    assert retry.attempts == 1


def test_a_re_sent_instance_does_not_complete_a_slice_position() -> None:
    tracker = SeriesTracker(clock=lambda: 0.0)
    tracker.add(*_instance(0, cni=2, position="a"), session="s")
    tracker.add(*_instance(0, cni=2, position="a"), session="s")  # re-sent, counted once
    tracker.close_session("s", released=True)
    assert tracker.take_ready() == []
    tracker.add(*_instance(1, cni=2, position="a"), session="t")
    tracker.close_session("t", released=True)
    assert [s.reason for s in tracker.take_ready()] == ["released"]
