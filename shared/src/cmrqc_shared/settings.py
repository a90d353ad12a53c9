"""Typed settings shared by every service (pydantic-settings).

A service defines ``class IngestSettings(ServiceSettings)`` with
``model_config = service_settings_config("CMRQC_INGEST_")`` and its own fields; nested groups
are set with a double underscore, e.g. ``CMRQC_INGEST_KAFKA__BOOTSTRAP_SERVERS``.
Secrets are ``SecretStr``: masked as ``**********`` whenever settings are printed or logged.
"""

from __future__ import annotations

import os
import socket
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ProcessingGuarantee = Literal["exactly-once", "at-least-once"]


class KafkaSettings(BaseModel):
    """How to reach the Kafka cluster."""

    model_config = ConfigDict(extra="forbid")

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092", description="Comma-separated host:port list of brokers."
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="Kafka security protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="SASL mechanism when the protocol is SASL_*."
    )
    sasl_username: str | None = Field(default=None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(default=None, description="SASL password (secret).")
    ssl_cafile: str | None = Field(default=None, description="CA bundle for SSL, a file path.")
    topic_namespace: str = Field(
        default="",
        description="Prefix prepended to every topic name and to the default consumer groups "
        "(shared clusters, isolated tests).",
    )

    def consumer_group(self, service: str) -> str:
        """The default consumer group of ``service``: its name after the topic namespace.

        Two deployments on one cluster under different namespaces (staging and production,
        two test runs) then never share a group — nor, through it, the static-membership and
        transactional ids derived from group and instance id, which would fence each other.
        """
        return f"{self.topic_namespace}{service}"

    def client_config(self) -> dict[str, Any]:
        """Keyword arguments common to every kafka-python client."""
        config: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",") if s],
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            config["sasl_mechanism"] = self.sasl_mechanism
            config["sasl_plain_username"] = self.sasl_username
            if self.sasl_password is not None:
                config["sasl_plain_password"] = self.sasl_password.get_secret_value()
        if self.ssl_cafile:
            config["ssl_cafile"] = self.ssl_cafile
        return config

    def topic(self, name: str) -> str:
        """The real topic name for a declared topic name."""
        return f"{self.topic_namespace}{name}"


class BlobSettings(BaseModel):
    """Where claim-check blobs (volumes, labelmaps, weights) live."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Blob store: redis://host:port/db or file:///absolute/dir.",
    )
    password: SecretStr | None = Field(default=None, description="Redis password (secret).")
    ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60, description="Redis blob TTL, s.")

    def resolved_url(self) -> str:
        """The URL with the password filled in (never log this)."""
        if self.password is None or not self.url.startswith("redis"):
            return self.url
        scheme, rest = self.url.split("://", 1)
        return f"{scheme}://:{self.password.get_secret_value()}@{rest}"


def default_instance_id() -> str:
    """This process's stable identity: the pod name in Kubernetes, else the host name."""
    return os.environ.get("POD_NAME") or os.environ.get("HOSTNAME") or socket.gethostname()


class RunnerSettings(BaseModel):
    """How the bus runner consumes, retries, commits and reports."""

    model_config = ConfigDict(extra="forbid")

    group_id: str | None = Field(
        default=None,
        description="Consumer group; default: the topic namespace, then the service name.",
    )
    processing_guarantee: ProcessingGuarantee = Field(
        default="exactly-once",
        description="exactly-once (Kafka transactions, read_committed) or at-least-once.",
    )
    instance_id: str = Field(
        default_factory=default_instance_id,
        description="Stable per-replica id; the transactional id is derived from it.",
    )
    max_poll_records: int = Field(default=100, ge=1, description="Most records per batch.")
    poll_timeout_ms: int = Field(default=200, ge=1, description="Poll wait when idle, ms.")
    fetch_max_wait_ms: int = Field(
        default=50,
        ge=0,
        description="Longest the broker holds a fetch waiting for data, ms (latency bound).",
    )
    max_poll_interval_ms: int = Field(
        default=300_000, ge=1000, description="Longest gap between polls before a rebalance, ms."
    )
    static_membership: bool = Field(
        default=True,
        description="Join the group as instance_id (KIP-345): a restarted replica takes its "
        "partitions back at once instead of waiting out the session timeout.",
    )
    session_timeout_ms: int = Field(
        default=30_000, ge=1000, description="A member silent this long leaves the group, ms."
    )
    transaction_timeout_ms: int = Field(
        default=60_000, ge=1000, description="Broker aborts a transaction left open this long."
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Handler attempts before a record is dead-lettered."
    )
    retry_backoff_initial_ms: int = Field(default=100, ge=0, description="First retry wait.")
    retry_backoff_max_ms: int = Field(default=5_000, ge=0, description="Longest retry wait.")
    health_host: str = Field(default="0.0.0.0", description="Bind address of health/metrics.")
    health_port: int = Field(
        default=8080, ge=0, le=65535, description="Port of /healthz /readyz /metrics; 0: any."
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        default="earliest", description="Where a new consumer group starts."
    )


def service_settings_config(env_prefix: str) -> SettingsConfigDict:
    """The settings config every service uses, differing only in the prefix."""
    return SettingsConfigDict(
        env_prefix=env_prefix, env_nested_delimiter="__", extra="ignore", frozen=True
    )


COMMON_ENV_PREFIX = "CMRQC_"


class ServiceSettings(BaseSettings):
    """What every service process needs; services subclass it with their own prefix.

    Settings are read from the service's own prefix first (``CMRQC_INGEST_KAFKA__…``), then
    from the common prefix ``CMRQC_`` (``CMRQC_KAFKA__BOOTSTRAP_SERVERS``), so a deployment
    sets what all services share once and overrides per service where needed.
    """

    model_config = service_settings_config(COMMON_ENV_PREFIX)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("env_prefix") != COMMON_ENV_PREFIX:
            sources.append(
                EnvSettingsSource(
                    settings_cls, env_prefix=COMMON_ENV_PREFIX, env_nested_delimiter="__"
                )
            )
        sources.extend([dotenv_settings, file_secret_settings])
        return tuple(sources)

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    blobs: BlobSettings = Field(default_factory=BlobSettings)
    runner: RunnerSettings = Field(default_factory=RunnerSettings)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level."
    )
    log_format: Literal["json", "text"] = Field(
        default="json", description="json: one JSON object per line; text: for humans."
    )

    def redis_url(self, explicit: str | None = None) -> str:
        """A service's own Redis (queue, label store): ``explicit`` if set, else the blob
        store's Redis, else the local default. Never log it: it may hold a password."""
        if explicit:
            return explicit
        if self.blobs.url.startswith("redis"):
            return self.blobs.resolved_url()
        return "redis://127.0.0.1:6379/0"


def settings_rows(
    settings_cls: type[BaseModel], env_prefix: str, nested: str = "__"
) -> list[tuple[str, str, str, str]]:
    """(environment variable, type, default, description) for every field, recursively.

    Secrets show their default as masked; used to generate the README's settings table.
    """
    rows: list[tuple[str, str, str, str]] = []
    for name, info in settings_cls.model_fields.items():
        annotation = info.annotation
        env = f"{env_prefix}{name}".upper()
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(settings_rows(annotation, f"{env}{nested}", nested))
            continue
        if info.default_factory is not None:
            default = "(derived)"
        elif info.default is None:
            default = ""
        else:
            default = str(info.default)
        type_name = _type_name(annotation)
        if "SecretStr" in type_name and default:
            default = "**********"
        rows.append((env, type_name, default, info.description or ""))
    return rows


def _type_name(annotation: object) -> str:
    """A short readable name of a settings field's type (Literal values spelled out)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, UnionType):
        return " | ".join(_type_name(a) for a in args)
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", None) or str(annotation)


def settings_markdown(settings_cls: type[BaseSettings]) -> str:
    """A Markdown table of every setting of ``settings_cls`` (for the README)."""
    prefix = str(settings_cls.model_config.get("env_prefix", ""))
    lines = ["| variable | type | default | meaning |", "|---|---|---|---|"]
    for env, type_name, default, description in settings_rows(settings_cls, prefix):
        cell_type = type_name.replace("|", "\\|")
        lines.append(f"| `{env}` | {cell_type} | {default and f'`{default}`'} | {description} |")
    return "\n".join(lines)
