"""`cmrqc bench ingest` runs every receiver over the same files and prints ratios."""

from __future__ import annotations

import json

import pytest
from kafka.admin import KafkaAdminClient

from cmrqc_cli.main import main

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_bench_ingest_measures_every_receiver_side_by_side(
    infra: dict[str, str], capsys: pytest.CaptureFixture[str], env_clean: pytest.MonkeyPatch
) -> None:
    env_clean.setenv("CMRQC_KAFKA__BOOTSTRAP_SERVERS", infra["bootstrap_servers"])
    before = _bench_topics(infra["bootstrap_servers"])
    assert main(["bench", "ingest", "--studies", "2", "--rounds", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["modes"]) == {
        "dcmtk-storescp",
        "ingest",
        "ingest-no-fsync",
        "ingest-pynetdicom",
    }
    for mode in ("ingest", "ingest-no-fsync", "ingest-pynetdicom"):
        figures = report["modes"][mode]
        assert figures["received_per_s"] > 0 and figures["assembled_per_s"] > 0
        assert figures["rounds"][0]["volumes"] == 4
        assert figures["last_instance_to_volume_ready_ms"]["p50"] is not None
    assert report["ratios"]["ingest_received_vs_storescp"] > 0
    assert report["ratios"]["native_vs_pynetdicom_received"] > 0
    assert figures["release_to_volume_ready_seen_ms"]["p50"] is not None
    for pairs in report["paired_received_vs_storescp"].values():
        assert len(pairs["per_round"]) == 1 and pairs["median"] > 0
    # every measured service's topics were deleted afterwards (each round has its own)
    assert _bench_topics(infra["bootstrap_servers"]) <= before


def _bench_topics(bootstrap_servers: str) -> set[str]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        return {t for t in admin.list_topics() if t.startswith("bench-ingest-")}
    finally:
        admin.close()
