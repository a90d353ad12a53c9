"""``cmrqc models``: the model registry for people (list, show, register, promote, audit).

A thin front end over ``cmrqc_shared.registry.ModelRegistry``: version records live in Redis
under the registry's key prefix (``cmrqc:models:``, the one the services use), artifacts in
the blob store (retained, never expired), and ``promote`` announces ``ModelPublished`` on the
compacted ``cmrqc.models.v1`` that every predictor follows.

Configuration comes from the usual settings (``CMRQC_KAFKA__BOOTSTRAP_SERVERS``,
``CMRQC_KAFKA__TOPIC_NAMESPACE``, ``CMRQC_BLOBS__URL`` …), with command-line overrides.
Refusals (unknown version, unusable artifact, unreachable Redis or Kafka, bad input) print one
line on stderr and exit 1; ``--json`` prints exactly one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cmrqc_shared.safetensors_header import read_safetensors_metadata as read_metadata

if TYPE_CHECKING:
    import redis

    from cmrqc_shared.blobs import BlobStore
    from cmrqc_shared.bus.publisher import EventPublisher
    from cmrqc_shared.events import ProducerInfo
    from cmrqc_shared.registry import ModelRegistry, ModelVersion
    from cmrqc_shared.settings import KafkaSettings

DEFAULT_MODEL_NAME = "qc-predictor"
DEFAULT_REGISTRY_PREFIX = "cmrqc:models:"  # ModelRegistry's default: what the services read
FALLBACK_REDIS_URL = "redis://127.0.0.1:6379/0"
SHOW_AUDIT_WINDOW = 10_000
"""How many of the most recent audit entries ``show`` searches for the version's history."""

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

Handler = Callable[[argparse.Namespace], int]


class ModelsCommandError(Exception):
    """An expected refusal of a ``cmrqc models`` command (printed, exit code 1)."""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``cmrqc models`` and its actions to ``cmrqc``."""
    store_options = argparse.ArgumentParser(add_help=False)
    store_options.add_argument(
        "--blobs-url",
        default=None,
        help=f"blob store of the artifacts (default: CMRQC_BLOBS__URL, else {FALLBACK_REDIS_URL})",
    )
    store_options.add_argument(
        "--redis-url",
        default=None,
        help="Redis of the registry's records (default: the blobs URL when it is redis://, "
        f"else {FALLBACK_REDIS_URL})",
    )
    store_options.add_argument(
        "--registry-prefix",
        default=DEFAULT_REGISTRY_PREFIX,
        help=f"Redis key prefix of the registry (default {DEFAULT_REGISTRY_PREFIX}, the one "
        "the services use; change it only to isolate tests)",
    )
    store_options.add_argument("--json", action="store_true", help="print one JSON object")
    name_option = argparse.ArgumentParser(add_help=False)
    name_option.add_argument(
        "--name", default=DEFAULT_MODEL_NAME, help=f"model name (default {DEFAULT_MODEL_NAME})"
    )

    models = subparsers.add_parser(
        "models", help="the model registry: list, show, register, promote, audit"
    )
    actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser(
        "list", parents=[name_option, store_options], help="every version of a model"
    )
    listing.set_defaults(handler=_refusals_exit_1(_list))

    show = actions.add_parser(
        "show", parents=[name_option, store_options], help="one version's record and history"
    )
    show.add_argument("version", type=int, metavar="VERSION")
    show.set_defaults(handler=_refusals_exit_1(_show))

    promote = actions.add_parser(
        "promote",
        parents=[name_option, store_options],
        help="make VERSION current and announce it on cmrqc.models.v1 (also a roll-back)",
    )
    promote.add_argument("version", type=int, metavar="VERSION")
    promote.add_argument("--reason", required=True, help="why (kept in the audit history)")
    promote.add_argument(
        "--bootstrap-servers", default=None, help="default: CMRQC_KAFKA__BOOTSTRAP_SERVERS"
    )
    promote.set_defaults(handler=_refusals_exit_1(_promote))

    add = actions.add_parser(
        "register",
        parents=[name_option, store_options],
        help="store a safetensors artifact as a new version (state registered)",
    )
    add.add_argument("--artifact", type=Path, required=True, help="a .safetensors file")
    add.add_argument(
        "--architecture",
        default=None,
        help='default: the artifact\'s safetensors metadata "architecture"',
    )
    add.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a number, e.g. val_mae_WH=0.038 (repeatable)",
    )
    add.add_argument(
        "--provenance",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="training data, labels, seed … (repeatable; reason=… goes into the audit)",
    )
    add.set_defaults(handler=_refusals_exit_1(_register))

    audit = actions.add_parser("audit", parents=[store_options], help="the audit history")
    audit.add_argument("--count", type=int, default=50, help="most recent entries (default 50)")
    audit.set_defaults(handler=_refusals_exit_1(_audit))


# --- connections --------------------------------------------------------------------------


@dataclass
class _Backends:
    """The registry's Redis client and blob store, plus the Kafka settings for promotion."""

    client: redis.Redis
    blobs: BlobStore
    kafka: KafkaSettings
    prefix: str
    redis_url: str

    def registry(self, publisher: EventPublisher | None = None) -> ModelRegistry:
        from cmrqc_shared.registry import ModelRegistry

        return ModelRegistry(
            self.client, self.blobs, publisher, actor=_actor(), key_prefix=self.prefix
        )


def _redis_url_for(args: argparse.Namespace, blobs_url: str) -> str:
    if getattr(args, "redis_url", None):
        return str(args.redis_url)
    return blobs_url if blobs_url.startswith(("redis://", "rediss://")) else FALLBACK_REDIS_URL


@contextmanager
def _backends(args: argparse.Namespace) -> Iterator[_Backends]:
    import redis

    from cmrqc_shared.blobs import open_blob_store
    from cmrqc_shared.settings import ServiceSettings

    settings = ServiceSettings()
    kafka = settings.kafka
    if getattr(args, "bootstrap_servers", None):
        kafka = kafka.model_copy(update={"bootstrap_servers": args.bootstrap_servers})
    blob_settings = settings.blobs
    if args.blobs_url:
        blob_settings = blob_settings.model_copy(update={"url": args.blobs_url})
    blobs_url = blob_settings.resolved_url()
    redis_url = _redis_url_for(args, blobs_url)
    blobs = open_blob_store(blobs_url, ttl_seconds=blob_settings.ttl_seconds)
    client = redis.Redis.from_url(redis_url)
    try:
        yield _Backends(client, blobs, kafka, args.registry_prefix, redis_url)
    finally:
        blobs.close()
        client.close()


def _actor() -> ProducerInfo:
    from importlib.metadata import PackageNotFoundError, version

    from cmrqc_shared.events import ProducerInfo

    try:
        cli_version = version("cmrqc-cli")
    except PackageNotFoundError:
        cli_version = "0"
    return ProducerInfo(service="cmrqc-cli", version=cli_version, instance=_who()[:128])


def _who() -> str:
    import getpass

    from cmrqc_shared.settings import default_instance_id

    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name (some containers)
        return default_instance_id()
    return f"{user}@{default_instance_id()}"


def _public_url(url: str) -> str:
    """``url`` without credentials, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _refusals_exit_1(handler: Handler) -> Handler:
    """Run ``handler``; print an expected error as one line on stderr and return 1."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        import redis
        from kafka.errors import KafkaError
        from pydantic import ValidationError

        from cmrqc_shared.blobs import BlobError
        from cmrqc_shared.registry import RegistryError

        prefix = f"cmrqc models {args.action}"
        try:
            return handler(args)
        except (ModelsCommandError, RegistryError, BlobError) as error:
            message = str(error)
        except redis.RedisError as error:
            message = f"Redis: {error}"
        except KafkaError as error:  # kafka-python's str() already names the error class
            message = f"Kafka: {error}"
        except ValidationError as error:
            message = f"invalid settings: {error}"
        except OSError as error:
            message = str(error)
        print(f"{prefix}: {message}", file=sys.stderr)
        return 1

    return run


# --- actions -------------------------------------------------------------------------------


def _check_name(name: str) -> str:
    if not _MODEL_NAME.match(name):
        raise ModelsCommandError(
            f"model name {name!r}: use letters, digits, '.', '_' and '-' (at most 128)"
        )
    return name


def _version_json(entry: ModelVersion, current: int | None) -> dict[str, Any]:
    return {**entry.to_json(), "current": entry.version == current}


def _metrics_text(metrics: dict[str, float], shown: int = 3) -> str:
    if not metrics:
        return "-"
    keys = sorted(metrics)
    text = " ".join(f"{key}={metrics[key]:.4g}" for key in keys[:shown])
    return f"{text} (+{len(keys) - shown} more)" if len(keys) > shown else text


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def _list(args: argparse.Namespace) -> int:
    name = _check_name(args.name)
    with _backends(args) as backends:
        registry = backends.registry()
        versions = registry.versions(name)
        promoted = registry.current(name) if versions else None
    current = promoted.version if promoted else None
    if args.json:
        print(
            json.dumps(
                {
                    "name": name,
                    "current": current,
                    "versions": [_version_json(v, current) for v in versions],
                },
                indent=2,
            )
        )
        return 0
    if not versions:
        print(f"no versions of model {name!r} are registered")
        return 0
    rows = [
        [
            "*" if v.version == current else "",
            str(v.version),
            v.state,
            v.architecture,
            v.artifact.sha256[:12],
            _metrics_text(v.metrics),
            v.registered_at.isoformat(timespec="seconds"),
        ]
        for v in versions
    ]
    header = ["", "VERSION", "STATE", "ARCHITECTURE", "SHA256", "METRICS", "REGISTERED"]
    print(f"model {name}: {len(versions)} version(s)")
    print(_table(header, rows))
    print(f"current: v{current} (*)" if current is not None else "no version is promoted yet")
    return 0


def _show(args: argparse.Namespace) -> int:
    name = _check_name(args.name)
    with _backends(args) as backends:
        registry = backends.registry()
        entry = registry.get(name, args.version)
        promoted = registry.current(name)
        present = backends.blobs.exists(entry.artifact.sha256)
        history = [
            item
            for item in registry.audit_log(count=SHOW_AUDIT_WINDOW)
            if item.get("name") == name and item.get("version") == str(args.version)
        ]
    record = {
        **_version_json(entry, promoted.version if promoted else None),
        "artifact_present": present,
        "audit": history,
    }
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    current_mark = " (current)" if record["current"] else ""
    print(f"model {name} v{entry.version}{current_mark}")
    fields = [
        ("state", entry.state),
        ("architecture", entry.architecture),
        ("registered", entry.registered_at.isoformat(timespec="seconds")),
        ("artifact", entry.artifact.uri),
        ("sha256", entry.artifact.sha256),
        ("size", f"{entry.artifact.size} bytes ({entry.artifact.media_type})"),
        ("in store", "yes" if present else "NO: missing from the blob store"),
    ]
    for label, value in fields:
        print(f"  {label:<13}{value}")
    for title, mapping in (("metrics", entry.metrics), ("provenance", entry.provenance)):
        print(f"  {title}:" + ("" if mapping else " -"))
        for key in sorted(mapping):
            print(f"    {key} = {mapping[key]}")
    print("  audit:" + ("" if history else " -"))
    for item in history:
        reason = f": {item['reason']}" if item.get("reason") else ""
        at, action, actor = (item.get(key, "?") for key in ("at", "action", "actor"))
        print(f"    {at} {action} by {actor}{reason}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from cmrqc_shared.bus.publisher import EventPublisher
    from cmrqc_shared.topics import ensure_namespaced_topics

    name = _check_name(args.name)
    reason = args.reason.strip()
    if not reason:
        raise ModelsCommandError("--reason must say why (it goes into the audit history)")
    if not getattr(args, "verbose", False):
        # kafka-python logs every failed connection attempt as an ERROR; the refusal says it.
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    with _backends(args) as backends:
        registry = backends.registry()
        registry.get(name, args.version)  # unknown version: refused before touching Kafka
        previous = registry.current(name)
        # The models topic is compacted: a broker auto-creating it would expire the current model.
        ensure_namespaced_topics(backends.kafka, client_id="cmrqc-models")
        with EventPublisher(backends.kafka, client_id="cmrqc-models") as publisher:
            event = backends.registry(publisher).promote(name, args.version, reason)
    action = (
        "rolled-back" if previous is not None and previous.version > args.version else "promoted"
    )
    topic = backends.kafka.topic(event.TOPIC)
    summary = {
        "name": name,
        "version": event.version,
        "action": action,
        "previous": previous.version if previous is not None else None,
        "event_id": event.event_id,
        "topic": topic,
        "artifact": event.artifact.model_dump(),
        "architecture": event.architecture,
        "reason": reason,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    was = f" (was v{previous.version})" if previous is not None else ""
    verb = "rolled back to" if action == "rolled-back" else "promoted"
    print(f"{verb} {name} v{event.version}{was}")
    print(f"published ModelPublished {event.event_id} version {event.version} to {topic}")
    return 0


def read_safetensors_metadata(data: bytes) -> dict[str, str]:
    """``cmrqc_shared.safetensors_header.read_safetensors_metadata``, refusing as the CLI does.

    Raises:
        ModelsCommandError: the bytes are not a well-formed safetensors file.
    """
    try:
        return read_metadata(data)
    except ValueError as error:
        raise ModelsCommandError(str(error)) from error


def _key_values(items: list[str], option: str) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ModelsCommandError(f"{option} {item!r}: expected KEY=VALUE")
        if key in parsed:
            raise ModelsCommandError(f"{option} {key!r} given twice")
        parsed[key] = value
    return parsed


def _metrics(items: list[str]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for key, text in _key_values(items, "--metric").items():
        try:
            value = float(text)
        except ValueError:
            raise ModelsCommandError(f"--metric {key}={text!r}: not a number") from None
        if not math.isfinite(value):
            raise ModelsCommandError(f"--metric {key}={text!r}: not a finite number")
        metrics[key] = value
    return metrics


def _register(args: argparse.Namespace) -> int:
    from cmrqc_shared.blobs import MediaType

    name = _check_name(args.name)
    metrics = _metrics(args.metric)
    provenance = _key_values(args.provenance, "--provenance")
    provenance.setdefault("source", args.artifact.name)
    try:
        data = args.artifact.read_bytes()
    except OSError as error:
        raise ModelsCommandError(f"cannot read {args.artifact}: {error.strerror}") from error
    metadata = read_safetensors_metadata(data)
    architecture = (args.architecture or metadata.get("architecture", "")).strip()
    if not architecture:
        raise ModelsCommandError(
            f"{args.artifact} has no 'architecture' in its safetensors metadata: "
            "pass --architecture"
        )
    with _backends(args) as backends:
        entry = backends.registry().register(
            name,
            data,
            architecture=architecture,
            metrics=metrics,
            provenance=provenance,
            media_type=MediaType.SAFETENSORS,
        )
    if args.json:
        print(json.dumps(entry.to_json(), indent=2))
        return 0
    print(
        f"registered {name} v{entry.version}: {architecture}, sha256 "
        f"{entry.artifact.sha256[:12]}, {entry.artifact.size} bytes"
    )
    print(f"promote it with: cmrqc models promote {entry.version} --name {name} --reason '…'")
    return 0


def _audit(args: argparse.Namespace) -> int:
    if args.count < 1:
        raise ModelsCommandError("--count must be at least 1")
    with _backends(args) as backends:
        entries = backends.registry().audit_log(count=args.count)
        where = f"{_public_url(backends.redis_url)} {backends.prefix}audit"
    if args.json:
        print(json.dumps({"entries": entries}, indent=2))
        return 0
    if not entries:
        print(f"the audit history is empty ({where})")
        return 0
    keys = ["at", "action", "name", "version", "actor", "reason"]
    rows = [[entry.get(key, "") for key in keys] for entry in entries]
    print(_table([key.upper() for key in keys], rows))
    return 0
