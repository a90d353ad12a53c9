"""Crash test: 5,000 records through a pass-through service SIGKILLed three times mid-stream.

Exactly-once: a read_committed consumer sees every output exactly once. At-least-once:
nothing is lost and every repeated output carries the id of its first attempt, so
de-duplication by event id leaves exactly one effect per input.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient

from cmrqc_shared.bus.publisher import EventPublisher, read_topic
from cmrqc_shared.events import VolumeReady
from cmrqc_shared.events.examples import example_volume_ready
from cmrqc_shared.settings import KafkaSettings
from cmrqc_shared.topics import TopicSpec, ensure_topics

sys.path.insert(0, str(Path(__file__).parent))
from passthrough_process import start_passthrough

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

RECORDS = 5000
KILL_AT = (800, 2000, 3300)
IN, OUT = "crash.in.v1", "crash.out.v1"


def _start_service(kafka: KafkaSettings, guarantee: str) -> subprocess.Popen[bytes]:
    # The same instance id on every restart: the same transactional id (fences the killed
    # instance, aborts its open transaction) and the same static group member.
    return start_passthrough(
        kafka,
        input_topic=IN,
        output_topic=OUT,
        group=f"crash-{guarantee}-{kafka.topic_namespace}",
        instance_id="crash-0",
        idle_timeout_s=4,
        processing_guarantee=guarantee,
        max_poll_records="50",
    )


def _run_with_kills(kafka: KafkaSettings, guarantee: str) -> tuple[list[bytes], int, int]:
    admin = KafkaAdminClient(**kafka.client_config())
    ensure_topics(admin, [TopicSpec(kafka.topic(IN), 3), TopicSpec(kafka.topic(OUT), 3)])
    admin.close()
    inputs = [example_volume_ready(i, f"crash-{guarantee}") for i in range(RECORDS)]
    with EventPublisher(kafka) as publisher:
        for event in inputs:
            publisher.publish_async(event, topic=IN)
        publisher.flush()

    # Two watchers: what read_committed consumers see, and everything in the log. When the
    # log holds more than is committed, a transaction is open: that is when to kill.
    committed_watcher, raw_watcher = (
        KafkaConsumer(
            kafka.topic(OUT),
            group_id=None,
            auto_offset_reset="earliest",
            isolation_level=level,
            fetch_max_wait_ms=5,
            **kafka.client_config(),
        )
        for level in ("read_committed", "read_uncommitted")
    )
    rng = random.Random(20261128)
    service = _start_service(kafka, guarantee)
    kills = killed_mid_transaction = committed_seen = raw_seen = 0
    threshold_reached_at: float | None = None
    deadline = time.monotonic() + 240
    try:
        while kills < len(KILL_AT) and time.monotonic() < deadline:
            committed_seen += sum(len(b) for b in committed_watcher.poll(timeout_ms=5).values())
            raw_seen += sum(len(b) for b in raw_watcher.poll(timeout_ms=5).values())
            if committed_seen < KILL_AT[kills]:
                continue
            threshold_reached_at = threshold_reached_at or time.monotonic()
            in_flight = raw_seen > committed_seen
            waited = time.monotonic() - threshold_reached_at
            if not in_flight and waited < (
                5.0 if guarantee == "exactly-once" else rng.random() / 10
            ):
                continue
            service.send_signal(signal.SIGKILL)
            service.wait()
            kills += 1
            killed_mid_transaction += in_flight
            threshold_reached_at = None
            service = _start_service(kafka, guarantee)
        assert kills == len(KILL_AT), f"only {committed_seen} outputs before the deadline"
        assert service.wait(timeout=max(1, deadline - time.monotonic())) == 0
    finally:
        if service.poll() is None:
            service.kill()
        committed_watcher.close()
        raw_watcher.close()
    if guarantee == "exactly-once":
        print(f"\n{kills} SIGKILLs, {killed_mid_transaction} with a transaction open")
    committed = [value for _, value in read_topic(kafka, OUT, idle_s=3, timeout_s=60)]
    raw = sum(1 for _ in read_topic(kafka, OUT, idle_s=3, timeout_s=60, read_committed=False))
    return committed, raw, killed_mid_transaction


def test_exactly_once_survives_three_sigkills_with_no_loss_and_no_duplicates(
    kafka: KafkaSettings,
) -> None:
    committed, raw, killed_mid_transaction = _run_with_kills(kafka, "exactly-once")
    causes = Counter(VolumeReady.from_bytes(v).causation_id for v in committed)
    print(
        f"\nexactly-once: {len(committed)} committed outputs, {raw} raw records in the log "
        f"(aborted ones included), {len(causes)} distinct inputs"
    )
    assert killed_mid_transaction >= 1, "no kill hit an open transaction: the test proved little"
    assert len(causes) == RECORDS, "records were lost"
    assert len(committed) == RECORDS, f"{len(committed) - RECORDS} duplicates were visible"


def test_at_least_once_survives_three_sigkills_with_duplicates_only_by_event_id(
    kafka: KafkaSettings,
) -> None:
    committed, _, _ = _run_with_kills(kafka, "at-least-once")
    events = [VolumeReady.from_bytes(v) for v in committed]
    by_id = Counter(e.event_id for e in events)
    print(
        f"\nat-least-once: {len(events)} outputs, {len(events) - len(by_id)} repeats, "
        f"{len(by_id)} after de-duplication by event id"
    )
    assert len({e.causation_id for e in events}) == RECORDS, "records were lost"
    assert len(by_id) == RECORDS, "a repeated output did not carry its first attempt's id"
