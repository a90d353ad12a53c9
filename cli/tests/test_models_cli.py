"""`cmrqc models` against real Redis and Kafka: register, list, promote, roll back, refusals.

Each test uses its own registry key prefix (``--registry-prefix``) and topic namespace, and
deletes its Redis keys and the (retained) artifact blobs it stored afterwards.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from safetensors.numpy import save as save_safetensors

from cmrqc_cli.commands_models import ModelsCommandError, read_safetensors_metadata
from cmrqc_cli.main import main
from cmrqc_shared.bus.publisher import read_events
from cmrqc_shared.events import ModelPublished
from cmrqc_shared.settings import KafkaSettings
from cmrqc_shared.topics import ensure_namespaced_topics

BLOB_PREFIX = "cmrqc:blob:"  # RedisBlobStore's default key prefix


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Cli = Callable[..., Result]


def _artifact(path: Path, metadata: dict[str, str] | None = None) -> Path:
    """A tiny safetensors file with random (so unique, content-addressed) weights."""
    weights = {"w": np.random.default_rng().standard_normal((2, 3)).astype(np.float32)}
    path.write_bytes(save_safetensors(weights, metadata=metadata))
    return path


def _cleanup(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}*"))
    for key in keys:
        if client.type(key) in (b"hash", "hash"):
            raw = client.hget(key, "json")
            if raw is not None:
                client.delete(f"{BLOB_PREFIX}{json.loads(raw)['artifact']['sha256']}")
    if keys:
        client.delete(*keys)


@pytest.fixture
def registry_prefix(redis_url: str) -> Iterator[str]:
    prefix = f"test:models:{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        _cleanup(client, prefix)
    finally:
        client.close()


@pytest.fixture
def cli(redis_url: str, registry_prefix: str, capsys: pytest.CaptureFixture[str]) -> Iterator[Cli]:
    """Runs ``cmrqc models ACTION ARGS…`` in-process against this test's registry."""
    options = ["--redis-url", redis_url, "--blobs-url", redis_url]
    options += ["--registry-prefix", registry_prefix]

    def run(action: str, *args: str) -> Result:
        capsys.readouterr()
        code = main(["models", action, *args, *options])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    yield run


@pytest.fixture
def kafka_cli(cli: Cli, kafka: KafkaSettings, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """``cli`` with this test's Kafka namespace (through the environment, as a person would)."""
    monkeypatch.setenv("CMRQC_KAFKA__BOOTSTRAP_SERVERS", kafka.bootstrap_servers)
    monkeypatch.setenv("CMRQC_KAFKA__TOPIC_NAMESPACE", kafka.topic_namespace)
    ensure_namespaced_topics(kafka)
    return cli


@pytest.mark.kafka
@pytest.mark.redis
def test_register_promote_and_roll_back(
    kafka_cli: Cli, kafka: KafkaSettings, tmp_path: Path
) -> None:
    cli = kafka_cli
    for number, mae in ((1, "0.05"), (2, "0.04")):
        artifact = _artifact(tmp_path / f"v{number}.safetensors", {"architecture": "x"})
        registered = cli(
            "register", "--artifact", str(artifact), "--metric", f"mae={mae}", "--json"
        )
        assert registered.code == 0, registered.err
        assert registered.json()["version"] == number
        assert registered.json()["architecture"] == "x"

    listing = cli("list", "--json").json()
    assert [(v["version"], v["state"]) for v in listing["versions"]] == [
        (1, "registered"),
        (2, "registered"),
    ]
    assert listing["current"] is None
    assert [v["metrics"]["mae"] for v in listing["versions"]] == [0.05, 0.04]

    promoted = cli("promote", "2", "--reason", "better holdout MAE", "--json")
    assert promoted.code == 0, promoted.err
    assert (promoted.json()["version"], promoted.json()["action"]) == ("2", "promoted")
    rolled_back = cli("promote", "1", "--reason", "v2 misbehaved")
    assert rolled_back.code == 0, rolled_back.err
    assert "rolled back to qc-predictor v1 (was v2)" in rolled_back.out

    announced = read_events(kafka, ModelPublished, expected=2, timeout_s=20)
    assert [e.version for e in announced] == ["2", "1"]
    assert announced[0].event_id == promoted.json()["event_id"]
    assert announced[0].artifact.sha256 == listing["versions"][1]["artifact"]["sha256"]
    assert announced[1].provenance["promotion_reason"] == "v2 misbehaved"

    audit = cli("audit", "--json").json()["entries"]
    assert [(e["action"], e["version"]) for e in audit[-2:]] == [
        ("promoted", "2"),
        ("rolled-back", "1"),
    ]
    listing = cli("list", "--json").json()
    assert listing["current"] == 1
    assert {v["version"]: (v["state"], v["current"]) for v in listing["versions"]} == {
        1: ("promoted", True),
        2: ("retired", False),
    }
    table = cli("list").out.splitlines()
    current_rows = [line for line in table if line.startswith("*")]
    assert len(current_rows) == 1 and current_rows[0].split()[1:3] == ["1", "promoted"]

    shown = cli("show", "2", "--json").json()
    assert shown["artifact_present"] is True
    assert [e["action"] for e in shown["audit"]] == ["registered", "promoted"]


@pytest.mark.kafka
@pytest.mark.redis
def test_unusable_artifacts_and_unknown_versions_are_refused(
    kafka_cli: Cli, kafka: KafkaSettings, redis_url: str, tmp_path: Path
) -> None:
    cli = kafka_cli
    refs = []
    for number in (1, 2):
        artifact = _artifact(tmp_path / f"v{number}.safetensors", {"architecture": "x"})
        refs.append(cli("register", "--artifact", str(artifact), "--json").json()["artifact"])
    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(f"{BLOB_PREFIX}{refs[0]['sha256']}")
        client.set(f"{BLOB_PREFIX}{refs[1]['sha256']}", b"x" * refs[1]["size"])
    finally:
        client.close()

    for version, why in (("1", "not in the store"), ("2", "hashes to")):
        refused = cli("promote", version, "--reason", "try")
        assert refused.code == 1
        assert "artifact unusable" in refused.err and why in refused.err
        assert "Traceback" not in refused.err and refused.out == ""
    unknown = cli("promote", "7", "--reason", "try")
    assert unknown.code == 1
    assert "has no version 7" in unknown.err and "Traceback" not in unknown.err

    assert read_events(kafka, ModelPublished, timeout_s=5, idle_s=1) == []
    listing = cli("list", "--json").json()
    assert listing["current"] is None
    assert [v["state"] for v in listing["versions"]] == ["registered", "registered"]
    assert cli("show", "1", "--json").json()["artifact_present"] is False


@pytest.mark.redis
def test_register_needs_an_architecture_and_a_safetensors_file(cli: Cli, tmp_path: Path) -> None:
    empty = cli("list")
    assert empty.code == 0 and "no versions of model 'qc-predictor'" in empty.out

    bare = _artifact(tmp_path / "bare.safetensors", {"format": "other"})
    refused = cli("register", "--artifact", str(bare))
    assert refused.code == 1
    assert "architecture" in refused.err and "Traceback" not in refused.err
    not_safetensors = tmp_path / "weights.pt"
    not_safetensors.write_bytes(b"\x80\x02 pickled torch weights, not safetensors")
    refused = cli("register", "--artifact", str(not_safetensors), "--architecture", "y")
    assert refused.code == 1 and "not a safetensors file" in refused.err
    bad_metric = cli("register", "--artifact", str(bare), "--architecture", "y", "--metric", "a=b")
    assert bad_metric.code == 1 and "not a number" in bad_metric.err
    assert cli("list", "--json").json()["versions"] == []

    given = cli(
        "register", "--artifact", str(bare), "--architecture", "y", "--name", "seg", "--json"
    )
    assert given.code == 0, given.err
    assert (given.json()["name"], given.json()["architecture"]) == ("seg", "y")
    assert given.json()["provenance"] == {"source": "bare.safetensors"}


def test_the_safetensors_header_is_read_without_loading_the_weights(tmp_path: Path) -> None:
    data = _artifact(tmp_path / "a.safetensors", {"architecture": "qc-fast-v1"}).read_bytes()
    assert read_safetensors_metadata(data) == {"architecture": "qc-fast-v1"}
    with pytest.raises(ModelsCommandError, match="truncated"):
        read_safetensors_metadata(data[:-4])
