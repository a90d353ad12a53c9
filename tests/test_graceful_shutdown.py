"""SIGTERM drains: the service finishes its batch, commits, leaves, and exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient

from cmrqc_shared.bus.publisher import EventPublisher, read_events
from cmrqc_shared.events import VolumeReady
from cmrqc_shared.events.examples import example_volume_ready
from cmrqc_shared.settings import KafkaSettings
from cmrqc_shared.topics import TopicSpec, ensure_topics

pytestmark = [pytest.mark.kafka]

IN, OUT = "drain.in.v1", "drain.out.v1"


def _service(kafka: KafkaSettings) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        {
            "CMRQC_PASSTHROUGH_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "CMRQC_PASSTHROUGH_KAFKA__TOPIC_NAMESPACE": kafka.topic_namespace,
            "CMRQC_PASSTHROUGH_RUNNER__GROUP_ID": f"drain-{kafka.topic_namespace}",
            "CMRQC_PASSTHROUGH_RUNNER__INSTANCE_ID": "drain-0",
            "CMRQC_PASSTHROUGH_RUNNER__MAX_POLL_RECORDS": "20",
            "CMRQC_PASSTHROUGH_RUNNER__HEALTH_PORT": "0",
            "CMRQC_PASSTHROUGH_LOG_LEVEL": "WARNING",
        }
    )
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cmrqc_cli.passthrough",
            "--input-topic",
            IN,
            "--output-topic",
            OUT,
            "--idle-timeout",
            "3",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
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
