"""``cmrqc bench bus``: one pass-through hop through the runner vs a bare kafka-python loop.

Each mode runs as its own process (so the load generator and the hop never share a GIL):
* ``runner-exactly-once`` / ``runner-at-least-once``: the StreamRunner with its guarantee;
* ``bare-transactional``: the same transaction calls written by hand with kafka-python, no
  parsing, no validation, no metrics — the floor for exactly-once;
* ``bare-at-least-once``: produce, flush, commit by hand — the floor for at-least-once.
Every record carries a blob reference (the claim check), as real events do.

Two figures per mode, measured in alternating rounds in one run:
* throughput: N records preloaded, then records/s from the first output to the last;
* hop latency: records produced at a fixed rate below capacity; latency is the time from
  the send to the output's arrival at a consumer (p50, p99).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.structs import OffsetAndMetadata

from cmrqc_cli.passthrough import forward
from cmrqc_shared.events import VolumeReady
from cmrqc_shared.events.examples import example_volume_ready as sample_volume_event
from cmrqc_shared.settings import KafkaSettings

MODES = (
    "runner-exactly-once",
    "bare-transactional",
    "bare-transactional-typed",
    "runner-at-least-once",
    "bare-at-least-once",
    "bare-at-least-once-typed",
)
BARE_MODES = tuple(mode for mode in MODES if mode.startswith("bare-"))
#: Same broker fetch wait for every consumer in the benchmark (the runner's default).
FETCH_MAX_WAIT_MS = 50


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _hop_command(mode: str, kafka: KafkaSettings, topic_in: str, topic_out: str) -> list[str]:
    if mode.startswith("runner-"):
        return [
            sys.executable,
            "-m",
            "cmrqc_cli.passthrough",
            "--input-topic",
            topic_in,
            "--output-topic",
            topic_out,
        ]
    return [
        sys.executable,
        "-m",
        "cmrqc_cli.bench_bus",
        "--bare",
        mode,
        "--input-topic",
        topic_in,
        "--output-topic",
        topic_out,
        "--bootstrap-servers",
        kafka.bootstrap_servers,
    ]


def _start_hop(mode: str, kafka: KafkaSettings, topic_in: str, topic_out: str, group: str):  # type: ignore[no-untyped-def]
    env = dict(os.environ)
    env.update(
        {
            "CMRQC_PASSTHROUGH_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "CMRQC_PASSTHROUGH_RUNNER__GROUP_ID": group,
            "CMRQC_PASSTHROUGH_RUNNER__INSTANCE_ID": "bench",
            "CMRQC_PASSTHROUGH_RUNNER__HEALTH_PORT": "0",
            "CMRQC_PASSTHROUGH_RUNNER__PROCESSING_GUARANTEE": mode.removeprefix("runner-"),
            "CMRQC_PASSTHROUGH_LOG_LEVEL": "WARNING",
            "BENCH_GROUP": group,
        }
    )
    return subprocess.Popen(
        _hop_command(mode, kafka, topic_in, topic_out), env=env, stdin=subprocess.DEVNULL
    )


def _measure_mode(
    mode: str, kafka: KafkaSettings, records: int, rate_per_s: float, latency_records: int
) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    topic_in, topic_out = f"bench.{run_id}.in", f"bench.{run_id}.out"
    admin = KafkaAdminClient(client_id="bench-admin", **kafka.client_config())
    admin.create_topics([NewTopic(topic_in, 1, 1), NewTopic(topic_out, 1, 1)])
    producer = KafkaProducer(
        acks="all", enable_idempotence=True, linger_ms=1, **kafka.client_config()
    )
    consumer = KafkaConsumer(
        topic_out,
        isolation_level="read_committed",
        group_id=None,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        **kafka.client_config(),
    )
    events = [sample_volume_event(i, run_id) for i in range(records + latency_records)]
    sent_at: dict[str, float] = {}
    try:
        # Throughput: preload, then start the hop.
        for event in events[:records]:
            producer.send(topic_in, key=event.key.encode(), value=event.to_bytes())
        producer.flush()
        hop = _start_hop(mode, kafka, topic_in, topic_out, f"bench-{run_id}")
        first_out = last_out = None
        received = 0
        deadline = time.monotonic() + 300
        while received < records and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                for _ in batch:
                    now = time.perf_counter()
                    first_out = first_out or now
                    last_out = now
                    received += 1
        if received < records or first_out is None or last_out is None:
            raise RuntimeError(f"{mode}: only {received}/{records} outputs arrived")
        throughput = (records - 1) / max(last_out - first_out, 1e-9)

        # Latency: paced sends well below capacity.
        interval = 1.0 / rate_per_s
        latencies: list[float] = []
        next_send = time.perf_counter()
        pending = list(events[records:])
        while (pending or len(latencies) < latency_records) and time.monotonic() < deadline:
            now = time.perf_counter()
            if pending and now >= next_send:
                event = pending.pop(0)
                sent_at[event.event_id] = time.perf_counter()
                producer.send(topic_in, key=event.key.encode(), value=event.to_bytes())
                producer.flush()
                next_send += interval
            for batch in consumer.poll(timeout_ms=1).values():
                for record in batch:
                    arrived = time.perf_counter()
                    cause = dict(record.headers or []).get("cmrqc-causation-id")
                    if cause is None:
                        cause = VolumeReady.from_bytes(record.value).causation_id
                    else:
                        cause = cause.decode()
                    if cause in sent_at:
                        latencies.append((arrived - sent_at.pop(cause)) * 1000)
        hop.terminate()
        hop.wait(timeout=30)
    finally:
        producer.close()
        consumer.close()
        admin.delete_topics([topic_in, topic_out])
        admin.close()
    return {
        "records_per_s": throughput,
        "hop_latency_ms": {
            "p50": _percentile(latencies, 50),
            "p99": _percentile(latencies, 99),
            "n": len(latencies),
        },
    }


def run_bus_benchmark(
    *,
    records: int,
    rounds: int,
    kafka: KafkaSettings,
    rate_per_s: float = 200.0,
    latency_records: int = 600,
) -> dict[str, Any]:
    """Measure every mode in ``rounds`` alternating rounds; report medians and ratios."""
    per_mode: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for _ in range(rounds):
        for mode in MODES:
            per_mode[mode].append(_measure_mode(mode, kafka, records, rate_per_s, latency_records))
    summary = {
        mode: {
            "records_per_s": statistics.median(r["records_per_s"] for r in results),
            "hop_latency_ms": {
                "p50": statistics.median(r["hop_latency_ms"]["p50"] for r in results),
                "p99": statistics.median(r["hop_latency_ms"]["p99"] for r in results),
            },
            "rounds": results,
        }
        for mode, results in per_mode.items()
    }

    def ratio(slow: str, fast: str, key: str) -> float:
        if key == "records_per_s":
            return float(summary[fast]["records_per_s"] / summary[slow]["records_per_s"])
        return float(summary[slow]["hop_latency_ms"][key] / summary[fast]["hop_latency_ms"][key])

    return {
        "records": records,
        "rounds": rounds,
        "latency_rate_per_s": rate_per_s,
        "bootstrap_servers": kafka.bootstrap_servers,
        "modes": summary,
        "ratios": {
            "runner_overhead_throughput_exactly_once_vs_typed": ratio(
                "runner-exactly-once", "bare-transactional-typed", "records_per_s"
            ),
            "runner_overhead_throughput_at_least_once_vs_typed": ratio(
                "runner-at-least-once", "bare-at-least-once-typed", "records_per_s"
            ),
            "runner_overhead_throughput_exactly_once": ratio(
                "runner-exactly-once", "bare-transactional", "records_per_s"
            ),
            "runner_overhead_p50_exactly_once": ratio(
                "runner-exactly-once", "bare-transactional", "p50"
            ),
            "runner_overhead_throughput_at_least_once": ratio(
                "runner-at-least-once", "bare-at-least-once", "records_per_s"
            ),
            "runner_overhead_p50_at_least_once": ratio(
                "runner-at-least-once", "bare-at-least-once", "p50"
            ),
            "exactly_once_cost_throughput": ratio(
                "runner-exactly-once", "runner-at-least-once", "records_per_s"
            ),
        },
        "note": (
            "overhead ratios are runner/bare (1.0 = no overhead; aim <= 1.3). 'bare' forwards "
            "raw bytes; 'bare-…-typed' also parses and rebuilds the event as the pass-through "
            "handler does, so runner vs typed is the runner's own cost."
        ),
    }


# -- the bare loops (run in their own process) -------------------------------------------


def _bare_loop(mode: str, kafka: KafkaSettings, topic_in: str, topic_out: str) -> None:
    """Forward records by hand; ``-typed`` modes also parse and rebuild the event like the
    pass-through handler does, so that comparison isolates the runner's own overhead."""
    group = os.environ.get("BENCH_GROUP", f"bench-bare-{uuid.uuid4().hex[:6]}")
    transactional = mode.startswith("bare-transactional")
    typed = mode.endswith("-typed")
    consumer = KafkaConsumer(
        topic_in,
        group_id=group,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_poll_records=100,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        **kafka.client_config(),
    )
    extra: dict[str, Any] = {"transactional_id": f"{group}-bare"} if transactional else {}
    producer = KafkaProducer(
        acks="all",
        enable_idempotence=True,
        linger_ms=2,
        retry_backoff_ms=10,
        **extra,
        **kafka.client_config(),
    )
    if transactional:
        producer.init_transactions()
    running = True

    def _stop(*_: object) -> None:
        nonlocal running
        running = False

    import signal

    signal.signal(signal.SIGTERM, _stop)
    while running:
        polled = consumer.poll(timeout_ms=200)
        if not polled:
            continue
        offsets = {
            tp: OffsetAndMetadata(recs[-1].offset + 1, "", -1) for tp, recs in polled.items()
        }
        if transactional:
            producer.begin_transaction()
        for records in polled.values():
            for record in records:
                if typed:
                    (out,) = forward(VolumeReady.from_bytes(record.value), topic_out, None)
                    producer.send(
                        topic_out,
                        key=out.event.key.encode(),
                        value=out.event.to_bytes(),
                        headers=[("cmrqc-causation-id", out.event.causation_id.encode())],  # type: ignore[union-attr]
                    )
                    continue
                producer.send(
                    topic_out,
                    key=record.key,
                    value=record.value,
                    headers=[("cmrqc-causation-id", _causation(record.value))],
                )
        if transactional:
            producer.send_offsets_to_transaction(offsets, consumer.group_metadata())
            producer.commit_transaction()
        else:
            producer.flush()
            consumer.commit(offsets)
    producer.close()
    consumer.close()


def _causation(value: bytes) -> bytes:
    # The bare loop forwards bytes untouched; the bench maps outputs to sends by the input id,
    # which the runner puts in the causation header. Extract it without a full parse.
    start = value.find(b'"event_id":"') + len(b'"event_id":"')
    return value[start : value.find(b'"', start)]


def main(args: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cmrqc-bench-bus-bare")
    parser.add_argument("--bare", choices=BARE_MODES, required=True)
    parser.add_argument("--input-topic", required=True)
    parser.add_argument("--output-topic", required=True)
    parser.add_argument("--bootstrap-servers", required=True)
    options = parser.parse_args(args)
    kafka = KafkaSettings(bootstrap_servers=options.bootstrap_servers)
    _bare_loop(options.bare, kafka, options.input_topic, options.output_topic)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
