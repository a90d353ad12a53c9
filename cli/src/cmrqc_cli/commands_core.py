"""The core ``cmrqc`` subcommands: infra, topics, schemas, settings, blobs, bench."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cmrqc_cli.infra import (
    InfraError,
    KafkaCluster,
    cluster_status,
    redis_status,
    start_cluster,
    start_redis,
    stop_cluster,
    stop_redis,
)
from cmrqc_shared.cliutil import verb_subparsers


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the core subcommands to ``cmrqc``."""
    infra = subparsers.add_parser("infra", help="local Kafka (KRaft) and Redis, no Docker")
    infra_sub = infra.add_subparsers(dest="action", required=True)
    up = infra_sub.add_parser("up", help="start (idempotent) and wait until ready")
    up.add_argument("--brokers", type=int, choices=(1, 3), default=1)
    up.add_argument("--no-redis", action="store_true", help="Kafka only")
    up.set_defaults(handler=_infra_up)
    status = infra_sub.add_parser("status", help="what runs, and is it ready")
    status.set_defaults(handler=_infra_status)
    down = infra_sub.add_parser("down", help="stop everything that infra up started")
    down.add_argument(
        "--brokers",
        type=int,
        choices=(1, 3),
        default=None,
        help="stop only this Kafka (1: single broker, 3: the cluster)",
    )
    down.set_defaults(handler=_infra_down)

    topics = subparsers.add_parser("topics", help="the system's topics")
    topics_sub = topics.add_subparsers(dest="action", required=True)
    ensure = topics_sub.add_parser("ensure", help="create missing topics (idempotent)")
    ensure.add_argument("--bootstrap-servers", default=None)
    ensure.set_defaults(handler=_topics_ensure)
    listing = topics_sub.add_parser("list", help="print the declared topics")
    listing.set_defaults(handler=_topics_list)
    manifests = topics_sub.add_parser("manifests", help="write Strimzi KafkaTopic manifests")
    manifests.add_argument("--out", type=Path, default=Path("k8s/base/topics.yaml"))
    manifests.set_defaults(handler=_topics_manifests)

    schemas = subparsers.add_parser("schemas", help="JSON Schema of every event")
    schemas_sub = schemas.add_subparsers(dest="action", required=True)
    export = schemas_sub.add_parser("export", help="write schemas/ from the event models")
    export.add_argument("--out", type=Path, default=Path("schemas"))
    export.set_defaults(handler=_schemas_export)
    check = schemas_sub.add_parser("check", help="fail if schemas/ drifted from the models")
    check.add_argument("--out", type=Path, default=Path("schemas"))
    check.set_defaults(handler=_schemas_check)

    settings = subparsers.add_parser("settings", help="print every setting as Markdown")
    settings.set_defaults(handler=_settings)

    blobs = subparsers.add_parser("blobs", help="blob store maintenance")
    blobs_sub = blobs.add_subparsers(dest="action", required=True)
    gc = blobs_sub.add_parser("gc", help="delete file:// blobs older than N days")
    gc.add_argument("--url", required=True, help="file:///path of the blob store")
    gc.add_argument("--older-than-days", type=float, required=True)
    gc.set_defaults(handler=_blobs_gc)

    bench_sub = verb_subparsers(subparsers, "bench", "benchmarks that print figures side by side")
    bus = bench_sub.add_parser("bus", help="runner hop vs a bare kafka-python loop")
    bus.add_argument("--records", type=int, default=5000)
    bus.add_argument("--rounds", type=int, default=3, help="alternating rounds of each")
    bus.add_argument("--latency-records", type=int, default=600, help="paced at 200/s")
    bus.add_argument("--json", action="store_true", help="print one JSON object")
    bus.add_argument("--bootstrap-servers", default=None)
    bus.set_defaults(handler=_bench_bus)


def _infra_up(args: argparse.Namespace) -> int:
    cluster = KafkaCluster(args.brokers)
    try:
        kafka_s = start_cluster(cluster)
        print(
            f"kafka ({args.brokers} broker(s)) ready at {cluster.bootstrap_servers} "
            f"in {kafka_s:.1f} s{' (already running)' if kafka_s == 0 else ''}"
        )
        if not args.no_redis:
            redis_s = start_redis()
            print(
                f"redis ready at {redis_status()['url']} in {redis_s:.1f} s"
                f"{' (already running)' if redis_s == 0 else ''}"
            )
    except InfraError as error:
        print(f"infra up failed: {error}", file=sys.stderr)
        return 1
    return 0


def _infra_status(args: argparse.Namespace) -> int:
    status = {
        "kafka_single": cluster_status(KafkaCluster(1)),
        "kafka_cluster": cluster_status(KafkaCluster(3)),
        "redis": redis_status(),
    }
    print(json.dumps(status, indent=2))
    return 0


def _infra_down(args: argparse.Namespace) -> int:
    sizes = (3, 1) if args.brokers is None else (args.brokers,)
    stopped = sum(stop_cluster(KafkaCluster(size)) for size in sizes)
    redis = stop_redis() if args.brokers is None else False
    print(f"stopped {stopped} Kafka node(s){' and redis' if redis else ''}")
    return 0


def _kafka_settings(bootstrap: str | None):  # type: ignore[no-untyped-def]
    from cmrqc_shared.settings import ServiceSettings

    kafka = ServiceSettings().kafka
    return kafka.model_copy(update={"bootstrap_servers": bootstrap}) if bootstrap else kafka


def _topics_ensure(args: argparse.Namespace) -> int:
    from kafka.admin import KafkaAdminClient

    from cmrqc_shared.topics import TOPICS, TopicSpec, ensure_topics

    kafka = _kafka_settings(args.bootstrap_servers)
    admin = KafkaAdminClient(client_id="cmrqc-topics", **kafka.client_config())
    try:
        specs = [TopicSpec(**{**s.__dict__, "name": kafka.topic(s.name)}) for s in TOPICS]
        created = ensure_topics(admin, specs)
    finally:
        admin.close()
    print(
        f"created {len(created)} topic(s): {', '.join(created) or '-'}; "
        f"{len(TOPICS) - len(created)} already existed"
    )
    return 0


def _topics_list(args: argparse.Namespace) -> int:
    from cmrqc_shared.topics import TOPICS

    for spec in TOPICS:
        print(
            f"{spec.name}\tpartitions={spec.partitions}\t"
            f"{'compacted' if spec.compacted else f'retention_ms={spec.retention_ms}'}"
        )
    return 0


def _topics_manifests(args: argparse.Namespace) -> int:
    from cmrqc_cli.k8s import render_topic_manifests

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render_topic_manifests())
    print(f"wrote {args.out}")
    return 0


def _schemas_export(args: argparse.Namespace) -> int:
    from cmrqc_shared.schemas import write_schemas

    written = write_schemas(args.out)
    print(f"wrote {len(written)} schema file(s) to {args.out}")
    return 0


def _schemas_check(args: argparse.Namespace) -> int:
    from cmrqc_shared.schemas import schema_drift

    drift = schema_drift(args.out)
    if drift:
        print(
            "schemas/ drifted from the event models (run `cmrqc schemas export`):", file=sys.stderr
        )
        for line in drift:
            print(f"  {line}", file=sys.stderr)
        return 1
    print("schemas/ matches the event models")
    return 0


def _settings(args: argparse.Namespace) -> int:
    from importlib.metadata import entry_points

    from cmrqc_shared.settings import ServiceSettings, settings_markdown

    print("### Every service (prefix `CMRQC_`, or the service's own prefix)\n")
    print(settings_markdown(ServiceSettings))
    for entry in sorted(entry_points(group="cmrqc.settings"), key=lambda e: e.name):
        print(f"\n### {entry.name}\n")
        print(settings_markdown(entry.load()))
    return 0


def _blobs_gc(args: argparse.Namespace) -> int:
    from cmrqc_shared.blobs import FileBlobStore, open_blob_store

    store = open_blob_store(args.url)
    if not isinstance(store, FileBlobStore):
        print("only file:// stores need gc; Redis blobs expire by TTL", file=sys.stderr)
        return 2
    removed = store.garbage_collect(args.older_than_days * 86400)
    print(f"removed {removed} blob(s)")
    return 0


def _bench_bus(args: argparse.Namespace) -> int:
    from cmrqc_cli.bench_bus import run_bus_benchmark

    report = run_bus_benchmark(
        records=args.records,
        rounds=args.rounds,
        kafka=_kafka_settings(args.bootstrap_servers),
        latency_records=args.latency_records,
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name, figures in report["modes"].items():
            print(
                f"{name:>28}: {figures['records_per_s']:8.0f} rec/s  "
                f"p50 {figures['hop_latency_ms']['p50']:.1f} ms  "
                f"p99 {figures['hop_latency_ms']['p99']:.1f} ms"
            )
        for name, ratio in report["ratios"].items():
            print(f"{name}: {ratio:.2f}")
    return 0
