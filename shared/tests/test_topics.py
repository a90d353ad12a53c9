"""Topic declarations: one per event type, clamped to the cluster, created idempotently."""

from __future__ import annotations

import pytest
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from cmrqc_shared.events import EVENT_TYPES
from cmrqc_shared.settings import KafkaSettings
from cmrqc_shared.topics import TOPIC_BY_NAME, TOPICS, TopicSpec, ensure_topics


def test_every_event_type_has_exactly_one_declared_topic() -> None:
    assert {t.TOPIC for t in EVENT_TYPES} == set(TOPIC_BY_NAME)
    assert len(TOPICS) == len(TOPIC_BY_NAME)


def test_replication_and_min_isr_are_clamped_to_the_cluster_size() -> None:
    spec = TopicSpec("x", partitions=1)
    assert spec.effective_replication_factor(1) == 1
    assert spec.configs(1)["min.insync.replicas"] == "1"
    assert spec.effective_replication_factor(3) == 3
    assert spec.configs(3)["min.insync.replicas"] == "2"


def test_the_models_topic_is_compacted_and_keeps_no_time_retention() -> None:
    configs = TOPIC_BY_NAME["cmrqc.models.v1"].configs(3)
    assert configs["cleanup.policy"] == "compact" and "retention.ms" not in configs


@pytest.mark.kafka
def test_ensure_topics_creates_missing_topics_with_their_configs_once(
    kafka: KafkaSettings,
) -> None:
    admin = KafkaAdminClient(**kafka.client_config())
    specs = [TopicSpec(**{**s.__dict__, "name": kafka.topic(s.name)}) for s in TOPICS]
    try:
        assert len(ensure_topics(admin, specs)) == len(TOPICS)
        assert ensure_topics(admin, specs) == []
        models = kafka.topic("cmrqc.models.v1")
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, models)])
        assert described["topic"][models]["cleanup.policy"]["value"] == "compact"
        (volumes,) = admin.describe_topics([kafka.topic("cmrqc.volumes.v1")])
        assert len(volumes["partitions"]) == TOPIC_BY_NAME["cmrqc.volumes.v1"].partitions
    finally:
        admin.close()
