"""Local infrastructure without a Docker engine: Kafka (KRaft) and Redis on loopback."""

from cmrqc_cli.infra.kafka import (
    InfraError,
    KafkaCluster,
    cluster_ready,
    cluster_status,
    start_cluster,
    start_node,
    stop_cluster,
    stop_node,
)
from cmrqc_cli.infra.redis import redis_status, redis_url, start_redis, stop_redis

__all__ = [
    "InfraError",
    "KafkaCluster",
    "cluster_ready",
    "cluster_status",
    "redis_status",
    "redis_url",
    "start_cluster",
    "start_node",
    "start_redis",
    "stop_cluster",
    "stop_node",
    "stop_redis",
]
