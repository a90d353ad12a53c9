"""The bus runner against the real broker: flow, dead letters, guarantees, health."""

from __future__ import annotations

import base64
import threading
import urllib.request
from collections.abc import Iterable

import pytest
from kafka import KafkaProducer

from cmrqc_shared.bus import PermanentError, Produce, RecordContext, StreamRunner
from cmrqc_shared.bus.publisher import EventPublisher, read_events, read_topic
from cmrqc_shared.events import DeadLetter, ProducerInfo, VolumeReady
from cmrqc_shared.events.examples import example_volume_ready
from cmrqc_shared.settings import KafkaSettings, RunnerSettings
from cmrqc_shared.topics import TopicSpec

pytestmark = [pytest.mark.kafka]

SERVICE = ProducerInfo(service="runner-test", version="0")
IN, OUT = "in.v1", "out.v1"


def _forward(event: VolumeReady, _ctx: RecordContext) -> list[Produce]:
    out = VolumeReady.create(
        derived_from=(event.event_id, "fwd"),
        producer=SERVICE,
        causation_id=event.event_id,
        **event.model_dump(include=set(VolumeReady.model_fields) - set(_ENVELOPE)),
    )
    return [Produce(out, OUT)]


_ENVELOPE = ("event_id", "schema_name", "schema_version", "produced_at", "producer", "causation_id")


def _runner(
    kafka: KafkaSettings, handler=_forward, **settings: object
) -> StreamRunner[VolumeReady]:  # type: ignore[no-untyped-def]
    options: dict[str, object] = {
        "group_id": "g",
        "instance_id": "i",
        "health_port": 0,
        "retry_backoff_initial_ms": 1,
        "retry_backoff_max_ms": 5,
    }
    options.update(settings)
    return StreamRunner(
        service=SERVICE,
        input_type=VolumeReady,
        input_topic=IN,
        handler=handler,
        kafka=kafka,
        settings=RunnerSettings(**options),  # type: ignore[arg-type]
        extra_topics=[TopicSpec(OUT, partitions=3)],
    )


def _publish(kafka: KafkaSettings, events: Iterable[VolumeReady]) -> None:
    with EventPublisher(kafka) as publisher:
        for event in events:
            publisher.publish_async(event, topic=IN)
        publisher.flush()


def _ensure_input_topic(kafka: KafkaSettings) -> None:
    # The runner creates its topics at start; the tests publish first, so create them now.
    from kafka.admin import KafkaAdminClient

    from cmrqc_shared.topics import TopicSpec, ensure_topics

    admin = KafkaAdminClient(**kafka.client_config())
    ensure_topics(admin, [TopicSpec(kafka.topic(IN), partitions=3)])
    admin.close()


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
def test_every_record_is_forwarded_once_in_order_per_series(
    kafka: KafkaSettings, guarantee: str
) -> None:
    _ensure_input_topic(kafka)
    events = [example_volume_ready(i, "flow") for i in range(200)]
    _publish(kafka, events)
    stats = _runner(kafka, processing_guarantee=guarantee).run(max_records=200, timeout_s=60)
    outputs = read_events(kafka, VolumeReady, topic=OUT, expected=200)
    assert stats.records_in == 200 and stats.records_out == 200
    assert sorted(o.causation_id for o in outputs) == sorted(e.event_id for e in events)  # type: ignore[type-var]
    assert len({o.event_id for o in outputs}) == 200


def test_a_poison_record_is_dead_lettered_after_n_attempts_and_the_rest_flows(
    kafka: KafkaSettings,
) -> None:
    _ensure_input_topic(kafka)
    events = [example_volume_ready(i, "poison") for i in range(30)]
    poison = events[10]
    attempts_seen: list[int] = []

    def handler(event: VolumeReady, ctx: RecordContext) -> list[Produce]:
        if event.event_id == poison.event_id:
            attempts_seen.append(ctx.attempt)
            raise RuntimeError("cannot segment this")
        return _forward(event, ctx)

    _publish(kafka, events)
    stats = _runner(kafka, handler, max_attempts=4).run(max_records=30, timeout_s=60)
    outputs = read_events(kafka, VolumeReady, topic=OUT, expected=29)
    letters = read_events(kafka, DeadLetter, expected=1)
    assert attempts_seen == [1, 2, 3, 4]
    assert stats.dead_lettered == 1 and len(outputs) == 29
    (letter,) = letters
    assert letter.attempts == 4 and letter.reason == "handler-failed"
    assert letter.error_type == "RuntimeError" and "cannot segment" in letter.error_message
    assert letter.original_topic == kafka.topic(IN) and letter.original_offset is not None
    assert letter.original_key == poison.series_instance_uid
    assert base64.b64decode(letter.original_value_b64 or "") == poison.to_bytes()


def test_a_permanent_error_is_dead_lettered_without_retrying(kafka: KafkaSettings) -> None:
    _ensure_input_topic(kafka)
    calls: list[int] = []

    def handler(event: VolumeReady, ctx: RecordContext) -> list[Produce]:
        calls.append(ctx.attempt)
        raise PermanentError("empty-volume", "the volume has no voxels")

    _publish(kafka, [example_volume_ready(0, "perm")])
    _runner(kafka, handler, max_attempts=5).run(max_records=1, timeout_s=60)
    (letter,) = read_events(kafka, DeadLetter, expected=1)
    assert calls == [1] and letter.reason == "empty-volume" and letter.attempts == 1


def test_a_record_that_is_not_a_valid_event_is_dead_lettered_with_the_reason(
    kafka: KafkaSettings,
) -> None:
    _ensure_input_topic(kafka)
    producer = KafkaProducer(**kafka.client_config())
    producer.send(kafka.topic(IN), key=b"k", value=b'{"not": "an event"}')
    producer.send(kafka.topic(IN), key=b"k", value=b"\xff\xfe binary garbage")
    producer.flush()
    producer.close()
    _publish(kafka, [example_volume_ready(0, "valid")])
    stats = _runner(kafka).run(max_records=3, timeout_s=60)
    letters = read_events(kafka, DeadLetter, expected=2)
    assert stats.dead_lettered == 2 and stats.records_out == 1
    assert {letter.reason for letter in letters} == {"invalid-record"}
    assert all(letter.attempts == 0 for letter in letters)


def test_a_failing_batch_handler_falls_back_to_records_one_by_one(kafka: KafkaSettings) -> None:
    _ensure_input_topic(kafka)
    events = [example_volume_ready(i, "batch") for i in range(20)]
    batch_sizes: list[int] = []

    def batch_handler(items):  # type: ignore[no-untyped-def]
        batch_sizes.append(len(items))
        if len(batch_sizes) == 1:
            raise RuntimeError("GPU out of memory")
        return [_forward(event, ctx) for event, ctx in items]

    _publish(kafka, events)
    runner = _runner(kafka)
    runner.batch_handler = batch_handler
    stats = runner.run(max_records=20, timeout_s=60)
    outputs = read_events(kafka, VolumeReady, topic=OUT, expected=20)
    assert stats.records_out == 20 and len(outputs) == 20
    assert batch_sizes[0] >= 1


def test_a_stopped_runner_resumes_where_it_committed(kafka: KafkaSettings) -> None:
    _ensure_input_topic(kafka)
    events = [example_volume_ready(i, "resume") for i in range(50)]
    _publish(kafka, events)
    first = _runner(kafka, max_poll_records=10).run(max_records=20, timeout_s=60)
    second = _runner(kafka).run(idle_timeout_s=3, timeout_s=60)
    outputs = read_events(kafka, VolumeReady, topic=OUT, expected=50)
    assert first.records_in == 20 and second.records_in == 30
    assert len({o.causation_id for o in outputs}) == 50 and len(outputs) == 50


def test_health_readiness_and_metrics_are_served_while_running(kafka: KafkaSettings) -> None:
    _ensure_input_topic(kafka)
    _publish(kafka, [example_volume_ready(i, "health") for i in range(5)])
    runner = _runner(kafka)
    thread = threading.Thread(target=runner.run, kwargs={"timeout_s": 60})
    thread.start()
    try:
        assert _wait(lambda: runner.ready and runner.observability is not None)
        assert runner.observability is not None
        base = f"http://127.0.0.1:{runner.observability.port}"
        assert _wait(lambda: "cmrqc_records_out_total" in _get(base + "/metrics")[1])
        assert _get(base + "/healthz")[0] == 200
        assert _get(base + "/readyz")[0] == 200
        metrics = _get(base + "/metrics")[1]
        assert f'cmrqc_records_in_total{{topic="{kafka.topic(IN)}"}} 5.0' in metrics
        assert "cmrqc_handler_latency_seconds_bucket" in metrics
    finally:
        runner.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


def _wait(condition, timeout_s: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_read_topic_sees_nothing_of_an_empty_topic(kafka: KafkaSettings) -> None:
    _ensure_input_topic(kafka)
    assert list(read_topic(kafka, IN, idle_s=0.5, timeout_s=5)) == []


def test_the_default_consumer_group_is_namespaced_like_the_topics() -> None:
    """Two deployments sharing a cluster under different namespaces must not share a group:
    static membership and transactional ids derive from it, and they would fence each other."""
    staging = KafkaSettings(bootstrap_servers="unused:9092", topic_namespace="staging.")
    production = KafkaSettings(bootstrap_servers="unused:9092")
    runners = [
        StreamRunner(
            service=SERVICE,
            input_type=VolumeReady,
            handler=_forward,
            kafka=kafka,
            settings=RunnerSettings(instance_id="pod-0", health_port=0),
        )
        for kafka in (staging, production)
    ]
    assert [r.group_id for r in runners] == [f"staging.{SERVICE.service}", SERVICE.service]
    assert runners[0].transactional_id != runners[1].transactional_id
    explicit = _runner(staging, group_id="chosen")
    assert explicit.group_id == "chosen"  # an explicit group is taken as given
