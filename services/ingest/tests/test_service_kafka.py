"""The service with the real broker: VolumeReady and DeadLetter on Kafka, metrics, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from ingest_testing import make_settings, wait_for

from cmrqc_ingest.senders import send_cstore
from cmrqc_ingest.service import IngestService
from cmrqc_shared.blobs import open_blob_store
from cmrqc_shared.bus.publisher import read_events
from cmrqc_shared.events import DeadLetter, VolumeReady
from cmrqc_shared.settings import KafkaSettings

pytestmark = [pytest.mark.kafka]


def test_a_study_over_c_store_yields_exactly_one_volume_ready_per_phase_on_kafka(  # type: ignore[no-untyped-def]
    make_study, tmp_path: Path, kafka: KafkaSettings
) -> None:
    study, paths = make_study()
    settings = make_settings(tmp_path, kafka=kafka)
    service = IngestService(settings)
    service.start()
    try:
        assert send_cstore("127.0.0.1", service.dicom_port, paths) == [0] * len(paths)
        # the same study again, on a second association: no new events
        assert send_cstore("127.0.0.1", service.dicom_port, paths) == [0] * len(paths)
        wait_for(lambda: service.metrics.series_assembled._value.get() == 1)
        wait_for(lambda: len(service.outcomes) >= 1 and len(service.pipeline.tracker) == 0)  # type: ignore[union-attr]
        metrics = (
            urllib.request.urlopen(f"http://127.0.0.1:{service.health_port}/metrics", timeout=5)
            .read()
            .decode()
        )
        ready = urllib.request.urlopen(
            f"http://127.0.0.1:{service.health_port}/readyz", timeout=5
        ).status
    finally:
        service.stop(grace_s=2)
    events = read_events(kafka, VolumeReady, idle_s=1.0, timeout_s=20)
    assert sorted(e.cardiac_phase.value for e in events) == ["ED", "ES"]
    blobs = open_blob_store(settings.blobs.url)
    for event in events:
        np.testing.assert_allclose(event.affine, study.affine, atol=1e-3)
        truth = study.phase(event.cardiac_phase.value).image
        np.testing.assert_array_equal(blobs.get_array(event.volume), truth)
    assert "cmrqc_ingest_volume_latency_seconds_count 1.0" in metrics
    assert 'cmrqc_ingest_instances_received_total{source="c-store",status="0x0000"}' in metrics
    assert ready == 200


def test_a_series_with_a_missing_slice_is_dead_lettered_on_kafka(  # type: ignore[no-untyped-def]
    make_study, tmp_path: Path, kafka: KafkaSettings
) -> None:
    _, paths = make_study()
    kept = [p for i, p in enumerate(paths) if i // 2 != 2]
    service = IngestService(make_settings(tmp_path, kafka=kafka))
    service.start()
    try:
        assert send_cstore("127.0.0.1", service.dicom_port, kept) == [0] * len(kept)
        wait_for(
            lambda: (
                service.metrics.series_dead_lettered.labels("inconsistent-geometry")._value.get()
                == 1
            )
        )
    finally:
        service.stop(grace_s=2)
    [letter] = read_events(kafka, DeadLetter, expected=1, timeout_s=20)
    assert letter.failed_service == "ingest"
    assert letter.reason == "inconsistent-geometry"
    assert letter.series_instance_uid


def test_the_process_stops_gracefully_on_sigterm_and_publishes_what_it_received(  # type: ignore[no-untyped-def]
    make_study, tmp_path: Path, kafka: KafkaSettings, env_clean: pytest.MonkeyPatch
) -> None:
    _, paths = make_study()
    env = {
        **os.environ,
        "CMRQC_INGEST_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "CMRQC_INGEST_KAFKA__TOPIC_NAMESPACE": kafka.topic_namespace,
        "CMRQC_INGEST_BLOBS__URL": f"file://{tmp_path / 'blobs'}",
        "CMRQC_INGEST_SPOOL_DIR": str(tmp_path / "spool"),
        "CMRQC_INGEST_DICOM_HOST": "127.0.0.1",
        "CMRQC_INGEST_STOW_HOST": "127.0.0.1",
        "CMRQC_INGEST_RUNNER__HEALTH_HOST": "127.0.0.1",
    }
    ports = {"dicom": 0, "stow": 0, "health": 0}
    import socket

    for name in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports[name] = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "cmrqc_ingest.main", "--dicom-port", str(ports["dicom"]),
         "--stow-port", str(ports["stow"]), "--health-port", str(ports["health"])],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{ports['health']}/readyz", timeout=1)
                break
            except OSError:
                assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "the service did not become ready"
                time.sleep(0.1)
        assert send_cstore("127.0.0.1", ports["dicom"], paths) == [0] * len(paths)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    events = read_events(kafka, VolumeReady, expected=2, timeout_s=20)
    assert sorted(e.cardiac_phase.value for e in events) == ["ED", "ES"]
