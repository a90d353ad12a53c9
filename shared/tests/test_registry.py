"""The model registry against real Redis and Kafka: versions, promotion, roll-back, audit."""

from __future__ import annotations

import uuid

import pytest
import redis

from cmrqc_shared.blobs import RedisBlobStore
from cmrqc_shared.bus.publisher import EventPublisher, read_events
from cmrqc_shared.events import ModelPublished, ProducerInfo
from cmrqc_shared.registry import ModelRegistry, RegistryError
from cmrqc_shared.settings import KafkaSettings

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

ACTOR = ProducerInfo(service="registry-test", version="0")


@pytest.fixture
def registry(kafka: KafkaSettings, redis_url: str):  # type: ignore[no-untyped-def]
    from kafka.admin import KafkaAdminClient

    from cmrqc_shared.topics import TOPIC_BY_NAME, TopicSpec, ensure_topics

    admin = KafkaAdminClient(**kafka.client_config())
    spec = TOPIC_BY_NAME[ModelPublished.TOPIC]
    ensure_topics(admin, [TopicSpec(**{**spec.__dict__, "name": kafka.topic(spec.name)})])
    admin.close()
    prefix = f"test:{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(redis_url)
    blobs = RedisBlobStore(redis_url, key_prefix=f"{prefix}blob:")
    with EventPublisher(kafka) as publisher:
        yield ModelRegistry(client, blobs, publisher, actor=ACTOR, key_prefix=prefix)


def test_versions_are_numbered_in_order_and_keep_their_metadata(registry: ModelRegistry) -> None:
    first = registry.register(
        "qc", b"w1", architecture="a", metrics={"mae": 0.05}, provenance={"labels": "rca"}
    )
    second = registry.register(
        "qc", b"w2", architecture="a", metrics={"mae": 0.04}, provenance={"labels": "rca"}
    )
    assert (first.version, second.version) == (1, 2)
    assert [v.metrics["mae"] for v in registry.versions("qc")] == [0.05, 0.04]
    assert registry.get("qc", 2).artifact.sha256 == second.artifact.sha256


def test_registered_artifacts_do_not_expire_like_ordinary_blobs(
    registry: ModelRegistry, redis_url: str
) -> None:
    entry = registry.register("qc", b"weights", architecture="a", metrics={}, provenance={})
    keys = redis.Redis.from_url(redis_url).keys(f"*{entry.artifact.sha256}")
    assert keys and all(redis.Redis.from_url(redis_url).ttl(key) == -1 for key in keys)


def test_promotion_announces_the_model_and_a_roll_back_announces_the_old_one(
    registry: ModelRegistry, kafka: KafkaSettings
) -> None:
    for payload in (b"w1", b"w2"):
        registry.register("qc", payload, architecture="a", metrics={}, provenance={})
    registry.promote("qc", 2, "better holdout MAE")
    registry.promote("qc", 1, "roll back: v2 misbehaved")
    announced = read_events(kafka, ModelPublished, expected=2)
    assert [e.version for e in announced] == ["2", "1"]
    assert registry.current("qc").version == 1  # type: ignore[union-attr]
    assert registry.get("qc", 2).state == "retired"
    actions = [(e["action"], e["version"]) for e in registry.audit_log()]
    assert actions[-2:] == [("promoted", "2"), ("rolled-back", "1")]


def test_a_version_whose_artifact_is_gone_cannot_be_promoted(registry: ModelRegistry) -> None:
    entry = registry.register("qc", b"w", architecture="a", metrics={}, provenance={})
    registry._blobs.delete(entry.artifact.sha256)
    with pytest.raises(RegistryError, match="artifact unusable"):
        registry.promote("qc", entry.version, "try")
    assert registry.current("qc") is None


def test_an_unknown_version_is_refused(registry: ModelRegistry) -> None:
    with pytest.raises(RegistryError, match="no version 9"):
        registry.promote("qc", 9, "nope")
