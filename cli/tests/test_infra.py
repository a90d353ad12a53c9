"""`cmrqc infra`: real Kafka (single and 3-node) and Redis, idempotent, nothing left behind."""

from __future__ import annotations

import json
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from cmrqc_cli.infra import KafkaCluster, cluster_ready, start_node, stop_node
from cmrqc_cli.infra.process import read_pid
from cmrqc_cli.main import main
from cmrqc_shared.topics import TopicSpec, ensure_topics


@pytest.mark.kafka
def test_infra_up_twice_is_fine_and_reports_the_running_services(
    infra: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["infra", "up"]) == 0
    assert "(already running)" in capsys.readouterr().out
    assert main(["infra", "status"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["kafka_single"]["ready"] is True
    assert status["redis"]["ready"] is True


@pytest.mark.kafka
def test_topics_ensure_creates_every_declared_topic_once(
    infra: dict[str, str], capsys: pytest.CaptureFixture[str], env_clean: pytest.MonkeyPatch
) -> None:
    # a test- namespace: the session's cleanup deletes it with the other test topics
    env_clean.setenv("CMRQC_KAFKA__TOPIC_NAMESPACE", f"test-ensure-{time.time_ns()}.")
    assert main(["topics", "ensure"]) == 0
    assert "created 8 topic(s)" in capsys.readouterr().out
    assert main(["topics", "ensure"]) == 0
    assert "created 0 topic(s)" in capsys.readouterr().out


@pytest.mark.cluster
@pytest.mark.slow
def test_a_three_broker_cluster_keeps_accepting_acked_writes_with_one_broker_down(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cluster = KafkaCluster(3)
    assert main(["infra", "up", "--brokers", "3", "--no-redis"]) == 0
    print(capsys.readouterr().out)
    try:
        # `infra up` has just seen it ready; a single 5 s re-check can still miss under load
        # (an admin request timing out), so the cluster must be ready again within 30 s.
        deadline = time.monotonic() + 30
        while not cluster_ready(cluster) and time.monotonic() < deadline:
            time.sleep(1.0)
        assert cluster_ready(cluster)
        admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap_servers.split(","))
        topic = f"fault-{time.time_ns()}"
        ensure_topics(admin, [TopicSpec(topic, partitions=3)])
        (described,) = admin.describe_topics([topic])
        assert all(len(p["replica_nodes"]) == 3 for p in described["partitions"])
        # a broker that has not caught up with the new topic's metadata answers without its
        # configs: ask again (bounded) before reading them
        deadline = time.monotonic() + 15
        while True:
            configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
            if "min.insync.replicas" in configs["topic"].get(topic, {}):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert configs["topic"][topic]["min.insync.replicas"]["value"] == "2"
        admin.close()

        stop_node(cluster, 2, kill=True)
        producer = KafkaProducer(
            bootstrap_servers=cluster.bootstrap_servers.split(","),
            acks="all",
            enable_idempotence=True,
        )
        for i in range(100):
            producer.send(topic, key=str(i).encode(), value=b"x")
        producer.flush(timeout=60)
        producer.close()
        start_node(cluster, 2)

        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=cluster.bootstrap_servers.split(","),
            group_id=None,
            auto_offset_reset="earliest",
        )
        received = 0
        deadline = time.monotonic() + 60
        while received < 100 and time.monotonic() < deadline:
            received += sum(len(b) for b in consumer.poll(timeout_ms=200).values())
        consumer.close()
        assert received == 100
    finally:
        down_status = main(["infra", "down", "--brokers", "3"])
    assert down_status == 0
    assert all(read_pid(node.pid_file) is None for node in cluster.nodes)
    assert cluster_ready(KafkaCluster(1)), "stopping the cluster must not touch the single broker"
