"""The durable priority queue against the real local Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from cmrqc_rca_labeller.priority import qc_priority_cost
from cmrqc_rca_labeller.queue import CaseQueue
from cmrqc_shared.events import (
    ClassScores,
    ModelInfo,
    PipelineTimestamps,
    ProducerInfo,
    QcResult,
    Verdict,
)

pytestmark = [pytest.mark.redis]

NOW = 1_800_000_000.0


@pytest.fixture
def queue(redis_url: str) -> Iterator[CaseQueue]:
    q = CaseQueue.from_url(
        redis_url, f"test-{uuid.uuid4().hex[:10]}", lease_s=60, aging_per_hour=0.1
    )
    yield q
    for key in q.client.scan_iter(match=f"{q.prefix}*"):
        q.client.delete(key)
    q.close()


def _claim_all(queue: CaseQueue, now: float = NOW) -> list[str]:
    order = []
    while (claimed := queue.claim(now)) is not None:
        order.append(claimed.case_id)
        queue.complete(claimed.case_id)
    return order


def test_cases_are_claimed_by_priority_not_by_arrival(queue: CaseQueue) -> None:
    costs = {"far-pass": 0.28, "uncertain": 0.0, "far-fail": 0.5, "near": 0.02}
    for n, case in enumerate(costs):
        queue.enqueue(case, "{}", now=NOW + n)
        queue.record_qc(case, costs[case])

    assert _claim_all(queue, NOW + 10) == ["uncertain", "near", "far-pass", "far-fail"]


def test_a_qc_result_that_arrives_before_its_segmentation_still_counts(
    queue: CaseQueue,
) -> None:
    queue.record_qc("early-qc", 0.0)
    queue.enqueue("no-qc", "{}", now=NOW)  # unknown: 0.15
    queue.enqueue("early-qc", "{}", now=NOW + 1)

    assert _claim_all(queue, NOW + 2) == ["early-qc", "no-qc"]


def test_a_case_delivered_twice_is_queued_once_and_never_after_it_is_done(
    queue: CaseQueue,
) -> None:
    assert queue.enqueue("a", "{}", now=NOW)
    assert not queue.enqueue("a", "{}", now=NOW)  # still pending
    claimed = queue.claim(NOW)
    assert claimed is not None
    assert not queue.enqueue("a", "{}", now=NOW)  # in flight
    queue.complete("a")

    assert not queue.enqueue("a", "{}", now=NOW)  # done: a replay is not labelled again
    assert queue.is_done("a") and queue.stats().pending == 0


def test_a_case_whose_worker_died_is_claimed_again_after_its_lease(queue: CaseQueue) -> None:
    queue.enqueue("a", '{"x": 1}', now=NOW)
    first = queue.claim(NOW)
    assert first is not None and first.attempts == 1
    assert queue.claim(NOW + 30) is None  # leased: nobody else takes it

    again = queue.claim(NOW + 61)

    assert again is not None and again.case_id == "a" and again.attempts == 2
    assert again.event_json == '{"x": 1}'


def test_a_deferred_case_waits_out_its_delay(queue: CaseQueue) -> None:
    queue.enqueue("a", "{}", now=NOW)
    assert queue.claim(NOW) is not None
    queue.defer("a", 10, now=NOW)

    assert queue.claim(NOW + 5) is None
    assert queue.claim(NOW + 11) is not None


def test_an_old_low_priority_case_overtakes_new_urgent_ones_in_time(queue: CaseQueue) -> None:
    queue.enqueue("old", "{}", now=NOW)
    queue.record_qc("old", 0.5)
    later = NOW + 6 * 3600  # six hours later: 0.6 of aging at 0.1 per hour
    queue.enqueue("new", "{}", now=later)
    queue.record_qc("new", 0.0)

    assert _claim_all(queue, later) == ["old", "new"]


def _qc(verdict: Verdict, wh: float) -> QcResult:
    scores = ClassScores(BG=0.99, LV=wh, LVM=wh, RVC=wh, WH=wh)
    return QcResult.create(
        derived_from=("seg", verdict.value, str(wh)),
        producer=ProducerInfo(service="qc", version="0"),
        series_instance_uid="2.25.1",
        segmentation_event_id="seg",
        cardiac_phase="ED",
        predicted_dsc=scores,
        verdict=verdict,
        thresholds={"WH": 0.7},
        model=ModelInfo(name="qc", version="0"),
        timestamps=PipelineTimestamps(),
    )


def test_the_priority_cost_is_zero_when_uncertain_else_the_distance_to_the_threshold() -> None:
    assert qc_priority_cost(_qc(Verdict.UNCERTAIN, 0.95)) == 0.0
    assert qc_priority_cost(_qc(Verdict.PASS, 0.75)) == pytest.approx(0.05)
    assert qc_priority_cost(_qc(Verdict.FAIL, 0.2)) == pytest.approx(0.5)
