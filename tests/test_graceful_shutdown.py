"""SIGTERM drains: the service finishes its batch, commits, leaves, and exits 0."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient

from cmrqc_shared.bus.publisher import EventPublisher, read_events
from cmrqc_shared.events import VolumeReady
from cmrqc_shared.events.examples import example_volume_ready
from cmrqc_shared.settings import KafkaSettings
from cmrqc_shared.topics import TopicSpec, ensure_topics

sys.path.insert(0, str(Path(__file__).parent))
from passthrough_process import start_passthrough

pytestmark = [pytest.mark.kafka]

IN, OUT = "drain.in.v1", "drain.out.v1"


def _service(kafka: KafkaSettings) -> subprocess.Popen[bytes]:
    return start_passthrough(
        kafka,
        input_topic=IN,
        output_topic=OUT,
        group=f"drain-{kafka.topic_namespace}",
        instance_id="drain-0",
        idle_timeout_s=3,
        max_poll_records="20",
    )


def test_sigterm_drains_commits_and_a_restart_finishes_without_duplicates(
    kafka: KafkaSettings,
) -> None:
    admin = KafkaAdminClient(**kafka.client_config())
    ensure_topics(admin, [TopicSpec(kafka.topic(IN), 2), TopicSpec(kafka.topic(OUT), 2)])
    admin.close()
    with EventPublisher(kafka) as publisher:
        for i in range(2000):
            publisher.publish_async(example_volume_ready(i, "drain"), topic=IN)
        publisher.flush()
    watcher = KafkaConsumer(
        kafka.topic(OUT),
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        **kafka.client_config(),
    )
    service = _service(kafka)
    seen = 0
    deadline = time.monotonic() + 120
    while seen < 300 and time.monotonic() < deadline:
        seen += sum(len(b) for b in watcher.poll(timeout_ms=20).values())
    watcher.close()
    service.send_signal(signal.SIGTERM)
    assert service.wait(timeout=30) == 0, "SIGTERM did not end the service cleanly"
    outputs_after_term = read_events(kafka, VolumeReady, topic=OUT, idle_s=2)
    assert 300 <= len(outputs_after_term) < 2000, "the service did not stop mid-stream"

    restarted = _service(kafka)
    assert restarted.wait(timeout=120) == 0
    outputs = read_events(kafka, VolumeReady, topic=OUT, expected=2000, idle_s=3)
    assert len(outputs) == 2000
    assert len({o.causation_id for o in outputs}) == 2000
