"""Publishing events from outside a runner (ingest's SCP threads, CLIs, tests), and reading them.

The runner is for consume-process-produce; a source of events (the DICOM ingest, a CLI
import) publishes with ``EventPublisher``: idempotent producer, acks=all, and ``publish``
returns only when the broker has acknowledged the record.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TypeVar

from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from cmrqc_shared.events import Event
from cmrqc_shared.settings import KafkaSettings

E = TypeVar("E", bound=Event)


class EventPublisher:
    """Publishes events to their topics (namespaced by the Kafka settings)."""

    def __init__(self, kafka: KafkaSettings, *, client_id: str = "cmrqc-publisher") -> None:
        self.kafka = kafka
        self._producer = KafkaProducer(
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=1,
            **kafka.client_config(),
        )

    def publish(self, event: Event, *, topic: str | None = None, timeout_s: float = 30.0) -> None:
        """Send ``event`` and wait for the acknowledgement.

        Raises:
            kafka.errors.KafkaError: the broker did not acknowledge in time.
        """
        self.publish_async(event, topic=topic).get(timeout=timeout_s)

    def publish_async(self, event: Event, *, topic: str | None = None):  # type: ignore[no-untyped-def]
        """Send ``event`` without waiting; returns kafka-python's future."""
        return self._producer.send(
            self.kafka.topic(topic or event.TOPIC),
            key=event.key.encode("utf-8"),
            value=event.to_bytes(),
            headers=[
                ("cmrqc-schema", event.SCHEMA_NAME.encode()),
                ("cmrqc-event-id", event.event_id.encode()),
            ],
        )

    def flush(self, timeout_s: float | None = None) -> None:
        self._producer.flush(timeout=timeout_s)

    def close(self) -> None:
        self._producer.close(timeout=10)

    def __enter__(self) -> EventPublisher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def read_topic(
    kafka: KafkaSettings,
    topic: str,
    *,
    expected: int | None = None,
    timeout_s: float = 30.0,
    idle_s: float = 2.0,
    read_committed: bool = True,
) -> Iterator[tuple[bytes | None, bytes]]:
    """Read a whole topic from the beginning as (key, value), without a consumer group.

    Stops when ``expected`` records were read, when no record arrived for ``idle_s`` after
    the end was reached, or after ``timeout_s``.
    """
    name = kafka.topic(topic)
    consumer = KafkaConsumer(
        isolation_level="read_committed" if read_committed else "read_uncommitted",
        enable_auto_commit=False,
        group_id=None,
        **kafka.client_config(),
    )
    deadline = time.monotonic() + timeout_s
    try:
        # a topic created a moment ago may not be in this client's metadata yet: wait for it
        partitions = consumer.partitions_for_topic(name)
        while not partitions and time.monotonic() < deadline:
            time.sleep(0.1)
            consumer.topics()  # refreshes the metadata
            partitions = consumer.partitions_for_topic(name)
        if not partitions:
            return
        tps = [TopicPartition(name, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        count = 0
        last_record = time.monotonic()
        while time.monotonic() < deadline:
            polled = consumer.poll(timeout_ms=200)
            for records in polled.values():
                for record in records:
                    count += 1
                    last_record = time.monotonic()
                    yield record.key, record.value
            if expected is not None and count >= expected:
                return
            if expected is None and not polled and time.monotonic() - last_record > idle_s:
                return
    finally:
        consumer.close()


def read_events(
    kafka: KafkaSettings, event_type: type[E], *, topic: str | None = None, **kwargs: object
) -> list[E]:
    """Read and parse every event on a topic (see ``read_topic`` for the stop conditions)."""
    return [
        event_type.from_bytes(value)
        for _, value in read_topic(kafka, topic or event_type.TOPIC, **kwargs)  # type: ignore[arg-type]
    ]
