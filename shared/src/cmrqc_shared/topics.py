"""Every topic of the system, declared once, and idempotent creation.

Partitions bound the parallelism of each consumer group (KEDA never scales a group beyond its
partition count), so the hot path topics get more partitions than the control topics.
Replication factor and min.insync.replicas are clamped to the cluster size, so the same
declaration works on one local broker and on a 3-broker cluster.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from cmrqc_shared.events import (
    DeadLetter,
    GroundTruthSubmitted,
    ModelPublished,
    QcAlert,
    QcResult,
    RcaLabel,
    SegmentationReady,
    VolumeReady,
)
from cmrqc_shared.settings import KafkaSettings

logger = logging.getLogger(__name__)

_DAY_MS = 24 * 60 * 60 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """A topic as the system needs it.

    Attributes:
        name: topic name, versioned (``.v1``).
        partitions: partition count (upper bound on a consumer group's parallelism).
        retention_ms: how long records are kept (-1: forever); ignored for compacted topics.
        compacted: keep the latest record per key instead of expiring by time.
        replication_factor: wanted replicas; clamped to the number of brokers.
        min_insync_replicas: wanted min ISR; clamped to replication_factor - 1 (at least 1)
            so that one broker may fail without blocking acks=all producers.
    """

    name: str
    partitions: int
    retention_ms: int = 7 * _DAY_MS
    compacted: bool = False
    replication_factor: int = 3
    min_insync_replicas: int = 2
    extra_configs: dict[str, str] = field(default_factory=dict)

    def configs(self, brokers: int) -> dict[str, str]:
        """Topic-level configs for a cluster of ``brokers`` brokers."""
        replication = self.effective_replication_factor(brokers)
        configs = {
            "cleanup.policy": "compact" if self.compacted else "delete",
            "min.insync.replicas": str(max(1, min(self.min_insync_replicas, replication - 1))),
        }
        if not self.compacted:
            configs["retention.ms"] = str(self.retention_ms)
        configs.update(self.extra_configs)
        return configs

    def effective_replication_factor(self, brokers: int) -> int:
        """Replication factor that a cluster of ``brokers`` brokers can hold."""
        return max(1, min(self.replication_factor, brokers))


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(VolumeReady.TOPIC, partitions=12),
    TopicSpec(SegmentationReady.TOPIC, partitions=12),
    TopicSpec(QcResult.TOPIC, partitions=12, retention_ms=30 * _DAY_MS),
    TopicSpec(QcAlert.TOPIC, partitions=3, retention_ms=30 * _DAY_MS),
    TopicSpec(RcaLabel.TOPIC, partitions=6, retention_ms=-1),
    TopicSpec(GroundTruthSubmitted.TOPIC, partitions=3, retention_ms=-1),
    TopicSpec(
        ModelPublished.TOPIC,
        partitions=1,
        compacted=True,
        extra_configs={"min.compaction.lag.ms": "0", "segment.ms": str(_DAY_MS)},
    ),
    TopicSpec(DeadLetter.TOPIC, partitions=3, retention_ms=90 * _DAY_MS),
)

TOPIC_BY_NAME: dict[str, TopicSpec] = {t.name: t for t in TOPICS}


def ensure_topics(
    admin: KafkaAdminClient, specs: tuple[TopicSpec, ...] | list[TopicSpec] = TOPICS
) -> list[str]:
    """Create the topics in ``specs`` that do not exist yet; return the names created.

    Idempotent: existing topics are left as they are (their partition count is checked and a
    shortfall logged, since partitions can be added but never removed).
    """
    brokers = max(1, len(admin.describe_cluster().get("brokers", [])))
    existing = set(admin.list_topics())
    missing = [s for s in specs if s.name not in existing]
    created: list[str] = []
    for spec in missing:
        new_topic = NewTopic(
            name=spec.name,
            num_partitions=spec.partitions,
            replication_factor=spec.effective_replication_factor(brokers),
            topic_configs=spec.configs(brokers),
        )
        try:
            admin.create_topics([new_topic])
            created.append(spec.name)
            logger.info("created topic", extra={"topic": spec.name})
        except TopicAlreadyExistsError:
            pass  # created concurrently by another service starting up: that is fine
    if created:
        _wait_for_metadata(admin, created)
    return created


def _wait_for_metadata(admin: KafkaAdminClient, names: list[str], timeout_s: float = 30.0) -> None:
    """Wait until newly created topics show up in the cluster metadata.

    Usually milliseconds; a busy KRaft controller (say, deleting many topics at once) has
    taken more than 5 s on a loaded 2-core machine, hence the generous limit.
    """
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        if set(names) <= set(admin.list_topics()):
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"topics {names} did not appear in the metadata")
        time.sleep(0.1)


def ensure_namespaced_topics(kafka: KafkaSettings, client_id: str = "cmrqc-admin") -> list[str]:
    """``ensure_topics`` for every declared topic under ``kafka``'s namespace (a service that
    starts before its producers, and tests, call this so nothing waits on a missing topic)."""
    admin = KafkaAdminClient(client_id=client_id, **kafka.client_config())
    try:
        return ensure_topics(
            admin,
            [TopicSpec(**{**spec.__dict__, "name": kafka.topic(spec.name)}) for spec in TOPICS],
        )
    finally:
        admin.close()


def delete_topics_with_prefix(
    bootstrap_servers: str | list[str], prefix: str, client_id: str = "cmrqc-cleanup", **config: Any
) -> int:
    """Delete every topic whose name starts with ``prefix`` (best effort: never raises);
    returns how many were asked to go.

    Tests and benchmarks give each run a namespace of its own; left behind, their thousands
    of partitions make a local broker slow to restart and, past its file-descriptor limit,
    stop it.
    """
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id=client_id, **config)
    except Exception:  # the broker is unreachable: nothing to clean now
        return 0
    try:
        names = [name for name in admin.list_topics() if name.startswith(prefix)]
        if names:
            admin.delete_topics(names, timeout_ms=30_000)
        return len(names)
    except Exception:  # cleanup must never fail its caller
        return 0
    finally:
        admin.close()
