"""``cmrqc bench ingest``: our ingest service against DCMTK's storescp, same files, same client.

Both receivers get the same synthetic studies from DCMTK's ``storescu`` (one association per
study, ``TCP_NODELAY=1``, 128 KiB PDUs — the settings a PACS should use; without
TCP_NODELAY both sides fall to ~20 instances/s on Nagle's algorithm). The receivers run as
their own processes, in alternating rounds:

* ``dcmtk-storescp``: stores the files into a folder (the floor: receive and write only);
* ``ingest``: the real service (``cmrqc-ingest``) with its durable spool (fsync before the
  C-STORE answer), assembly, blob store and Kafka publishing;
* ``ingest-no-fsync``: the same with ``SPOOL_FSYNC=false``, to show what durability costs
  (storescp does not fsync: this is the like-for-like comparison);
* ``ingest-pynetdicom``: the real service on the pynetdicom node (``SCP_ENGINE=pynetdicom``)
  instead of the native one, to show what the native node gains.

Figures: instances/s received (the sends' wall time), instances/s assembled (first send to
the last VolumeReady seen by a Kafka consumer) and, per series, last instance received ->
VolumeReady produced (the service's own timestamps) and storescu's release -> VolumeReady
seen by a consumer polling during the sends, p50 and p99.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer

from cmrqc_shared.events import VolumeReady
from cmrqc_shared.processes import free_port
from cmrqc_shared.settings import KafkaSettings
from cmrqc_shared.topics import delete_topics_with_prefix

STORESCP = "/usr/bin/storescp"
STORESCU = "/usr/bin/storescu"
MODES = ("dcmtk-storescp", "ingest", "ingest-no-fsync", "ingest-pynetdicom")
_NODELAY = {"TCP_NODELAY": "1"}


def _wait_port(port: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout_s:.0f} s")


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def make_studies(out: Path, studies: int, seed_start: int) -> list[list[Path]]:
    """Write ``studies`` synthetic studies as DICOM files; one file list per study."""
    from cmrqc_shared.synth import render_study, write_dicom_series

    return [
        sorted(write_dicom_series(render_study(seed), out / str(seed)))
        for seed in range(seed_start, seed_start + studies)
    ]


def _send(port: int, files: list[Path]) -> float:
    """storescu one study (one association); returns the time its release completed."""
    subprocess.run(
        [
            STORESCU,
            "--max-pdu",
            "131072",
            "-aec",
            "CMRQC",
            "-aet",
            "BENCH",
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        env={**os.environ, **_NODELAY},
        check=True,
        capture_output=True,
    )
    return time.time()


def _measure(
    mode: str,
    studies: list[list[Path]],
    kafka: KafkaSettings,
    work: Path,
    warmup: list[Path] | None = None,
    run_prefix: str = "bench-ingest-",
) -> dict[str, Any]:
    port = free_port()
    instances = sum(len(files) for files in studies)
    namespace = f"{run_prefix}{uuid.uuid4().hex[:8]}."
    consumer = None
    if mode == "dcmtk-storescp":
        received = work / f"storescp-{port}"
        received.mkdir()
        command = [
            STORESCP,
            "--max-pdu",
            "131072",
            "-aet",
            "CMRQC",
            "-od",
            str(received),
            str(port),
        ]
        env = {**os.environ, **_NODELAY}
    else:
        spool = work / f"spool-{port}"
        command = [
            shutil.which("cmrqc-ingest") or str(Path(sys.executable).parent / "cmrqc-ingest")
        ]
        env = {
            **os.environ,
            "CMRQC_INGEST_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "CMRQC_INGEST_KAFKA__TOPIC_NAMESPACE": namespace,
            "CMRQC_INGEST_DICOM_PORT": str(port),
            "CMRQC_INGEST_DICOM_HOST": "127.0.0.1",
            "CMRQC_INGEST_STOW_PORT": "0",
            "CMRQC_INGEST_RUNNER__HEALTH_PORT": "0",
            "CMRQC_INGEST_SPOOL_DIR": str(spool),
            "CMRQC_INGEST_SPOOL_FSYNC": "false" if mode == "ingest-no-fsync" else "true",
            "CMRQC_INGEST_SCP_ENGINE": "pynetdicom" if mode == "ingest-pynetdicom" else "native",
            "CMRQC_INGEST_LOG_LEVEL": "WARNING",
        }
    receiver = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        _wait_port(port)
        if mode != "dcmtk-storescp":
            consumer = KafkaConsumer(
                group_id=None,
                auto_offset_reset="earliest",
                isolation_level="read_committed",
                # a long poll: the broker answers as soon as an event arrives (fetch.min.bytes
                # 1); a short one only adds ~100 idle fetches a second to the measured machine
                fetch_max_wait_ms=500,
                **kafka.client_config(),
            )
            topic = f"{namespace}{VolumeReady.TOPIC}"
            deadline = time.monotonic() + 60
            while topic not in consumer.topics() and time.monotonic() < deadline:
                time.sleep(0.1)
            consumer.subscribe([topic])
        if warmup:  # a long-running service is warm: imports, connections, first topic write
            _send(port, warmup)
            if consumer is not None:
                _collect(consumer, 2, [])
        arrivals: list[tuple[float, VolumeReady]] = []
        collector = None
        if consumer is not None:  # events are timed as they arrive, while the sends go on
            collector = threading.Thread(
                target=_collect, args=(consumer, len(studies) * 2, arrivals), daemon=True
            )
            collector.start()
        started = time.time()
        released = [_send(port, files) for files in studies]
        sent = time.time()
        figures: dict[str, Any] = {
            "instances": instances,
            "received_per_s": instances / (sent - started),
        }
        if collector is not None:
            collector.join(timeout=150)
            figures.update(_volume_figures(arrivals, len(studies) * 2, started, released, studies))
            figures["assembled_per_s"] = instances / (figures.pop("last_volume_at") - started)
        return figures
    finally:
        if consumer is not None:
            consumer.close()
        receiver.terminate()
        try:
            receiver.wait(timeout=30)
        except subprocess.TimeoutExpired:
            receiver.kill()


def _delete_namespaces(kafka: KafkaSettings, prefix: str) -> None:
    """Delete the topics the measured services created (each measurement has a namespace of
    its own under ``prefix``). Done once at the end: the broker deletes in the background, so
    deleting after each measurement would slow the one after it."""
    config = kafka.client_config()
    delete_topics_with_prefix(
        config.pop("bootstrap_servers"), prefix, "cmrqc-bench-cleanup", **config
    )


def _collect(
    consumer: KafkaConsumer, expected: int, arrivals: list[tuple[float, VolumeReady]]
) -> None:
    """Poll until ``expected`` VolumeReady events arrived (or 120 s); note arrival times."""
    deadline = time.monotonic() + 120
    while len(arrivals) < expected and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=50).values():
            for record in records:
                arrivals.append((time.time(), VolumeReady.from_bytes(record.value)))


def _volume_figures(
    arrivals: list[tuple[float, VolumeReady]],
    expected: int,
    started: float,
    released: list[float],
    studies: list[list[Path]],
) -> dict[str, Any]:
    from pydicom import dcmread

    if len(arrivals) < expected:
        raise RuntimeError(f"only {len(arrivals)}/{expected} VolumeReady events arrived")
    release_by_series = {
        str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID): at
        for files, at in zip(studies, released, strict=True)
    }
    internal, external = [], []
    for arrived, event in arrivals:
        stamps = event.timestamps
        if stamps.last_instance_received_at:
            internal.append(
                (event.produced_at - stamps.last_instance_received_at).total_seconds() * 1e3
            )
        release = release_by_series.get(event.series_instance_uid or "")
        if release is not None:
            external.append((arrived - release) * 1e3)
    return {
        "volumes": len(arrivals),
        "last_volume_at": max(arrived for arrived, _ in arrivals),
        "last_instance_to_volume_ready_ms": {
            "p50": _percentile(internal, 50),
            "p99": _percentile(internal, 99),
        },
        "release_to_volume_ready_seen_ms": {
            "p50": _percentile(external, 50),
            "p99": _percentile(external, 99),
        },
    }


def run_ingest_benchmark(
    *,
    studies: int,
    rounds: int,
    kafka: KafkaSettings,
    seed_start: int = 100_500,
    warm: bool = True,
) -> dict[str, Any]:
    """All modes over the same files, ``rounds`` alternating rounds; medians and ratios.

    With ``warm`` every receiver first takes one other study (and, for ours, publishes its
    volumes) before the timed sends: a PACS talks to a service that has been running, not
    to one whose first series pays its imports and first topic write.
    """
    if not (Path(STORESCP).exists() and Path(STORESCU).exists()):
        raise RuntimeError("DCMTK is needed for the benchmark: apt-get install dcmtk")
    with tempfile.TemporaryDirectory(prefix="cmrqc-bench-ingest-") as tmp:
        work = Path(tmp)
        files = make_studies(work / "studies", studies, seed_start)
        warmup = make_studies(work / "warmup", 1, seed_start - 1)[0] if warm else None
        per_mode: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        run_prefix = f"bench-ingest-{uuid.uuid4().hex[:8]}-"
        try:
            for _ in range(rounds):
                for mode in MODES:
                    per_mode[mode].append(
                        _measure(mode, files, kafka, work, warmup, run_prefix=run_prefix)
                    )
        finally:
            _delete_namespaces(kafka, run_prefix)

    def median(mode: str, *keys: str) -> float | None:
        values = []
        for result in per_mode[mode]:
            value: Any = result
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
            if value is not None:
                values.append(float(value))
        return statistics.median(values) if values else None

    summary: dict[str, dict[str, Any]] = {
        mode: {
            "received_per_s": median(mode, "received_per_s"),
            "assembled_per_s": median(mode, "assembled_per_s"),
            "last_instance_to_volume_ready_ms": {
                q: median(mode, "last_instance_to_volume_ready_ms", q) for q in ("p50", "p99")
            },
            "release_to_volume_ready_seen_ms": {
                q: median(mode, "release_to_volume_ready_seen_ms", q) for q in ("p50", "p99")
            },
            "rounds": per_mode[mode],
        }
        for mode in MODES
    }
    floor = float(summary["dcmtk-storescp"]["received_per_s"] or float("nan"))

    def rate(mode: str, key: str) -> float:
        return float(summary[mode][key] or 0.0)

    def paired(mode: str) -> dict[str, Any]:
        """Round by round, ours / storescp measured just before it: machine-wide slow spells
        (a noisy neighbour) hit both sides of a pair, not one side of a median."""
        ratios = [
            ours["received_per_s"] / floor_round["received_per_s"]
            for ours, floor_round in zip(per_mode[mode], per_mode["dcmtk-storescp"], strict=True)
        ]
        return {"per_round": ratios, "median": statistics.median(ratios)}

    return {
        "studies": studies,
        "instances": per_mode["dcmtk-storescp"][0]["instances"],
        "rounds": rounds,
        "warm": warm,
        "modes": summary,
        "ratios": {
            "ingest_received_vs_storescp": (summary["ingest"]["received_per_s"] or 0) / floor,
            "ingest_assembled_vs_storescp": (summary["ingest"]["assembled_per_s"] or 0) / floor,
            "ingest_no_fsync_received_vs_storescp": (
                summary["ingest-no-fsync"]["received_per_s"] or 0
            )
            / floor,
            "ingest_pynetdicom_received_vs_storescp": (
                summary["ingest-pynetdicom"]["received_per_s"] or 0
            )
            / floor,
            "native_vs_pynetdicom_received": (summary["ingest"]["received_per_s"] or 0)
            / float(summary["ingest-pynetdicom"]["received_per_s"] or float("nan")),
        },
        "paired_received_vs_storescp": {
            mode: paired(mode) for mode in ("ingest", "ingest-no-fsync", "ingest-pynetdicom")
        },
        "note": "ratios: ours / DCMTK storescp (aim >= 0.5); same storescu client, TCP_NODELAY=1",
    }
