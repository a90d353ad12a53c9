"""A real Apache Kafka (KRaft) broker or 3-node cluster on loopback, from Maven Central jars.

No Docker engine is needed: the broker's jars are resolved once with Maven into the cache
directory, each node's storage is formatted on first start, and the JVMs run detached with
their pid files, configs, data and logs under the run directory.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cmrqc_cli.infra.paths import KAFKA_VERSION, cache_dir, kafka_libs_dir, run_dir
from cmrqc_cli.infra.process import (
    port_open,
    read_pid,
    start_background,
    stop_process,
    stop_processes,
    wait_until,
)

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
SINGLE_BROKER_PORT = 9092
CLUSTER_BASE_PORT = 19092
JVM_HEAP = "-Xmx768m"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>cmrqc.local</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>2.24.3</version>
    </dependency>
  </dependencies>
</project>
"""

# A rolling log: a broker that runs for days of test sessions would otherwise grow its log
# without bound (it reached 1.3 GB on a development machine).
_LOG4J2 = """status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {log}
appender.file.filePattern = {log}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 64MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.state.name = state.change.logger
logger.state.level = WARN
"""


class InfraError(RuntimeError):
    """Local infrastructure could not be fetched, started or reached."""


@dataclass(frozen=True)
class KafkaNode:
    """One combined broker+controller KRaft node on loopback."""

    node_id: int
    broker_port: int
    controller_port: int
    directory: Path

    @property
    def pid_file(self) -> Path:
        return self.directory / "kafka.pid"

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.broker_port}"


@dataclass(frozen=True)
class KafkaCluster:
    """A single broker (``size`` 1) or a 3-node cluster, each in its own run directory."""

    size: int

    @property
    def directory(self) -> Path:
        return run_dir() / ("kafka-single" if self.size == 1 else f"kafka-cluster-{self.size}")

    @property
    def nodes(self) -> list[KafkaNode]:
        base = SINGLE_BROKER_PORT if self.size == 1 else CLUSTER_BASE_PORT
        return [
            KafkaNode(
                node_id=i + 1,
                broker_port=base + 2 * i,
                controller_port=base + 2 * i + 1,
                directory=self.directory / f"node-{i + 1}",
            )
            for i in range(self.size)
        ]

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    def node_properties(self, node: KafkaNode) -> str:
        voters = ",".join(f"{n.node_id}@{HOST}:{n.controller_port}" for n in self.nodes)
        replication = min(3, self.size)
        min_isr = 2 if self.size >= 3 else 1
        lines = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{HOST}:{node.broker_port},"
            f"CONTROLLER://{HOST}:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{node.bootstrap}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(node.directory / "data"),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",  # topics are declared once, in code
            "default.replication.factor": str(replication),
            "min.insync.replicas": str(min_isr),
            "offsets.topic.replication.factor": str(replication),
            "offsets.topic.num.partitions": "12",
            "transaction.state.log.replication.factor": str(replication),
            "transaction.state.log.min.isr": str(min_isr),
            "transaction.state.log.num.partitions": "12",
            "share.coordinator.state.topic.replication.factor": str(replication),
            "share.coordinator.state.topic.min.isr": str(min_isr),
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.check.interval.ms": "60000",
        }
        return "".join(f"{key}={value}\n" for key, value in lines.items())


def ensure_jars(version: str = KAFKA_VERSION) -> Path:
    """Resolve the Kafka broker's jars from Maven Central into the cache (once)."""
    libs = kafka_libs_dir(version)
    if libs.is_dir() and any(libs.glob(f"kafka_2.13-{version}.jar")):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise InfraError("Maven (mvn) is needed once to fetch the Kafka jars; install maven")
    work = cache_dir() / f"kafka-{version}"
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(_POM.format(version=version))
    partial = work / "libs.partial"
    shutil.rmtree(partial, ignore_errors=True)
    logger.info("fetching Kafka %s jars from Maven Central into %s", version, libs)
    result = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(work / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={partial}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise InfraError(f"mvn could not fetch Kafka {version}:\n{result.stdout}{result.stderr}")
    shutil.rmtree(libs, ignore_errors=True)
    partial.rename(libs)
    return libs


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise InfraError("Java 17+ is needed to run Kafka 4.x; install openjdk-17-jre-headless")
    return java


def _format_storage(cluster: KafkaCluster, libs: Path) -> None:
    """Write configs and format every node's storage with one cluster id (first start only)."""
    cluster_id_file = cluster.directory / "cluster.id"
    cluster.directory.mkdir(parents=True, exist_ok=True)
    classpath = f"{libs}/*"
    if cluster_id_file.exists():
        cluster_id = cluster_id_file.read_text().strip()
    else:
        out = subprocess.run(
            [_java(), "-cp", classpath, "kafka.tools.StorageTool", "random-uuid"],
            capture_output=True,
            text=True,
            check=True,
        )
        cluster_id = out.stdout.strip().splitlines()[-1]
        cluster_id_file.write_text(cluster_id + "\n")
    for node in cluster.nodes:
        node.directory.mkdir(parents=True, exist_ok=True)
        props = node.directory / "server.properties"
        props.write_text(cluster.node_properties(node))
        (node.directory / "log4j2.properties").write_text(
            _LOG4J2.format(log=node.directory / "server.log")
        )
        if (node.directory / "data" / "meta.properties").exists():
            continue
        result = subprocess.run(
            [
                _java(),
                "-cp",
                classpath,
                f"-Dlog4j2.configurationFile={node.directory / 'log4j2.properties'}",
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(props),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise InfraError(
                f"formatting node {node.node_id} failed:\n{result.stdout}{result.stderr}"
            )


def cluster_ready(cluster: KafkaCluster, timeout_s: float = 5.0) -> bool:
    """Every node answers metadata requests and is registered unfenced."""
    if not all(port_open(HOST, n.broker_port) for n in cluster.nodes):
        return False
    from kafka.admin import KafkaAdminClient

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=cluster.bootstrap_servers.split(","),
            request_timeout_ms=int(timeout_s * 1000),
            client_id="cmrqc-infra",
        )
    except Exception:
        return False
    try:
        brokers = admin.describe_cluster().get("brokers", [])
        return len([b for b in brokers if not b.get("is_fenced")]) == cluster.size
    except Exception:
        return False
    finally:
        admin.close()


def start_cluster(cluster: KafkaCluster, timeout_s: float = 90.0) -> float:
    """Start every node not yet running and wait until the cluster is ready.

    Returns the seconds it took (0 if it was already up). Idempotent.

    Raises:
        InfraError: the jars could not be fetched or the cluster did not become ready.
    """
    started = time.monotonic()
    running = [read_pid(n.pid_file) for n in cluster.nodes]
    if all(running) and cluster_ready(cluster):
        return 0.0
    libs = ensure_jars()
    _format_storage(cluster, libs)
    for node, pid in zip(cluster.nodes, running, strict=True):
        if pid is not None:
            continue
        if port_open(HOST, node.broker_port) or port_open(HOST, node.controller_port):
            raise InfraError(
                f"port {node.broker_port} or {node.controller_port} is taken by another process"
            )
        _launch_node(node, libs)
    if not wait_until(lambda: cluster_ready(cluster), timeout_s, interval_s=0.25):
        tail = "".join(
            (n.directory / "stdout.log").read_text(errors="replace")[-2000:] for n in cluster.nodes
        )
        raise InfraError(f"Kafka ({cluster.size} node(s)) not ready in {timeout_s:.0f} s:\n{tail}")
    return time.monotonic() - started


def _launch_node(node: KafkaNode, libs: Path) -> None:
    """Start one node's JVM in the background."""
    start_background(
        [
            _java(),
            JVM_HEAP,
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={node.directory / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
            "kafka.Kafka",
            str(node.directory / "server.properties"),
        ],
        log_file=node.directory / "stdout.log",
        pid_file=node.pid_file,
        cwd=node.directory,
    )


def start_node(cluster: KafkaCluster, node_id: int, timeout_s: float = 60.0) -> None:
    """Restart one stopped node of a running cluster (for fault tests)."""
    node = next(n for n in cluster.nodes if n.node_id == node_id)
    if read_pid(node.pid_file) is None:
        _launch_node(node, ensure_jars())
    if not wait_until(lambda: cluster_ready(cluster), timeout_s, interval_s=0.25):
        raise InfraError(f"node {node_id} did not rejoin in {timeout_s:.0f} s")


def stop_node(cluster: KafkaCluster, node_id: int, *, kill: bool = False) -> bool:
    """Stop one node (SIGKILL with ``kill``); True if it was running."""
    node = next(n for n in cluster.nodes if n.node_id == node_id)
    return stop_process(node.pid_file, timeout_s=0.0 if kill else 30.0)


def stop_cluster(cluster: KafkaCluster, timeout_s: float = 30.0) -> int:
    """Stop every node at once (SIGTERM, SIGKILL after ``timeout_s``); return how many ran."""
    pid_files = [node.pid_file for node in cluster.nodes]
    return stop_processes(pid_files, timeout_s=timeout_s)


def cluster_status(cluster: KafkaCluster) -> dict[str, object]:
    """Pids, ports and readiness of each node."""
    nodes = [
        {"node_id": n.node_id, "pid": read_pid(n.pid_file), "port": n.broker_port}
        for n in cluster.nodes
    ]
    running = any(node["pid"] for node in nodes)
    return {
        "bootstrap_servers": cluster.bootstrap_servers,
        "nodes": nodes,
        "ready": running and cluster_ready(cluster),
        "directory": str(cluster.directory),
    }
