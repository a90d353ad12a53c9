"""Session fixtures shared by every test layer: the real local Kafka and Redis.

Tests that need a broker ask for ``kafka`` (KafkaSettings with a topic namespace unique to
the test, so tests never see each other's records); ``infra`` starts the local broker and
Redis once per session if ``.ci/run`` (or a developer) has not already.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from cmrqc_shared.settings import KafkaSettings


@pytest.fixture(scope="session")
def infra() -> dict[str, str]:
    """Local Kafka (single broker) and Redis, started if not running."""
    from cmrqc_cli.infra import KafkaCluster, redis_url, start_cluster, start_redis

    cluster = KafkaCluster(1)
    start_cluster(cluster)
    start_redis()
    return {"bootstrap_servers": cluster.bootstrap_servers, "redis_url": redis_url()}


def _delete_test_topics(bootstrap_servers: str, prefix: str) -> None:
    """Delete the topics under ``prefix`` (best effort)."""
    from cmrqc_shared.topics import delete_topics_with_prefix

    delete_topics_with_prefix(bootstrap_servers, prefix, "test-cleanup")


@pytest.fixture(scope="session", autouse=False)
def _clean_leftover_test_topics(infra: dict[str, str]) -> None:
    _delete_test_topics(infra["bootstrap_servers"], "test-")


@pytest.fixture
def kafka(infra: dict[str, str], _clean_leftover_test_topics: None) -> Iterator[KafkaSettings]:
    """Kafka settings whose topic namespace is unique to this test (its topics are deleted
    afterwards)."""
    settings = KafkaSettings(
        bootstrap_servers=infra["bootstrap_servers"],
        topic_namespace=f"test-{uuid.uuid4().hex[:10]}.",
    )
    yield settings
    _delete_test_topics(settings.bootstrap_servers, settings.topic_namespace)


@pytest.fixture
def redis_url(infra: dict[str, str]) -> str:
    return infra["redis_url"]


@pytest.fixture
def env_clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No CMRQC_* variables from the caller's environment leak into settings tests."""
    for name in list(os.environ):
        if name.startswith("CMRQC_"):
            monkeypatch.delenv(name)
    yield monkeypatch
