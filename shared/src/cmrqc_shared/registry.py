"""Model registry: versioned, content-addressed model artifacts with metrics and an audit trail.

* Artifacts live in the blob store (content-addressed; the hash is the identity).
* Metadata (version number, architecture, metrics, provenance, state) lives in Redis, one
  hash per version under ``cmrqc:models:<name>:<version>``; versions are numbered by an
  atomic counter, so two trainers never get the same number.
* Every state change (registered, promoted, rejected, rolled back) is appended to a Redis
  stream ``cmrqc:models:audit`` with who and why: the audit history is append-only.
* Promotion publishes ``ModelPublished`` to the compacted ``cmrqc.models.v1`` (key = model
  name), which every predictor follows to hot-swap; the topic's latest record per name is
  the current model, so a restarted predictor finds it by reading the topic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from cmrqc_shared.blobs import BlobRef, BlobStore, MediaType
from cmrqc_shared.bus.publisher import EventPublisher
from cmrqc_shared.events import ModelPublished, ProducerInfo, utc_now

AUDIT_STREAM = "cmrqc:models:audit"


class RegistryError(Exception):
    """A registry operation was refused (unknown version, hash mismatch, …)."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a named model."""

    name: str
    version: int
    artifact: BlobRef
    architecture: str
    metrics: dict[str, float]
    provenance: dict[str, str]
    registered_at: datetime
    state: str  # registered | promoted | rejected | retired

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "artifact": self.artifact.model_dump(),
            "architecture": self.architecture,
            "metrics": self.metrics,
            "provenance": self.provenance,
            "registered_at": self.registered_at.isoformat(),
            "state": self.state,
        }


class ModelRegistry:
    """Registers, lists, promotes and rolls back model versions."""

    def __init__(
        self,
        client: redis.Redis,
        blobs: BlobStore,
        publisher: EventPublisher | None,
        *,
        actor: ProducerInfo,
        key_prefix: str = "cmrqc:models:",
    ) -> None:
        self._redis = client
        self._blobs = blobs
        self._publisher = publisher
        self._actor = actor
        self._prefix = key_prefix

    def _key(self, name: str, version: int) -> str:
        return f"{self._prefix}{name}:{version}"

    def _audit(self, action: str, name: str, version: int, reason: str) -> None:
        self._redis.xadd(
            f"{self._prefix}audit",
            {
                "action": action,
                "name": name,
                "version": str(version),
                "reason": reason,
                "actor": f"{self._actor.service}/{self._actor.version}",
                "at": utc_now().isoformat(),
            },
        )

    def register(
        self,
        name: str,
        artifact: bytes,
        *,
        architecture: str,
        metrics: dict[str, float],
        provenance: dict[str, str],
        media_type: str = MediaType.SAFETENSORS,
    ) -> ModelVersion:
        """Store the artifact and record a new version (state ``registered``)."""
        ref = self._blobs.put(artifact, media_type, retain=True)
        version = int(self._redis.incr(f"{self._prefix}{name}:counter"))
        entry = ModelVersion(
            name, version, ref, architecture, metrics, provenance, utc_now(), "registered"
        )
        self._redis.hset(self._key(name, version), mapping={"json": json.dumps(entry.to_json())})
        self._redis.sadd(f"{self._prefix}names", name)
        self._audit("registered", name, version, provenance.get("reason", ""))
        return entry

    def get(self, name: str, version: int) -> ModelVersion:
        """One version's record.

        Raises:
            RegistryError: no such version.
        """
        raw = self._redis.hget(self._key(name, version), "json")
        if raw is None:
            raise RegistryError(f"model {name!r} has no version {version}")
        data = json.loads(raw)
        return ModelVersion(
            name=data["name"],
            version=int(data["version"]),
            artifact=BlobRef(**data["artifact"]),
            architecture=data["architecture"],
            metrics={k: float(v) for k, v in data["metrics"].items()},
            provenance=dict(data["provenance"]),
            registered_at=datetime.fromisoformat(data["registered_at"]),
            state=data["state"],
        )

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first."""
        count = int(self._redis.get(f"{self._prefix}{name}:counter") or 0)
        found = []
        for version in range(1, count + 1):
            try:
                found.append(self.get(name, version))
            except RegistryError:
                continue
        return found

    def current(self, name: str) -> ModelVersion | None:
        """The promoted version of ``name``, if any."""
        raw = self._redis.get(f"{self._prefix}{name}:current")
        return self.get(name, int(raw)) if raw is not None else None

    def _set_state(self, entry: ModelVersion, state: str) -> ModelVersion:
        updated = ModelVersion(**{**entry.__dict__, "state": state})
        self._redis.hset(
            self._key(entry.name, entry.version), mapping={"json": json.dumps(updated.to_json())}
        )
        return updated

    def reject(self, name: str, version: int, reason: str) -> ModelVersion:
        """Mark a version rejected (e.g. a challenger that lost); it is kept for the audit."""
        entry = self._set_state(self.get(name, version), "rejected")
        self._audit("rejected", name, version, reason)
        return entry

    def promote(self, name: str, version: int, reason: str) -> ModelPublished:
        """Make ``version`` current and announce it on cmrqc.models.v1 (also a roll-back).

        The artifact is read back and verified before anything is announced.

        Raises:
            RegistryError: unknown version, or its artifact is missing or corrupted.
        """
        entry = self.get(name, version)
        try:
            self._blobs.get(entry.artifact)
        except Exception as error:
            raise RegistryError(f"{name} v{version}: artifact unusable: {error}") from error
        previous = self.current(name)
        event = ModelPublished.create(
            derived_from=(name, str(version), entry.artifact.sha256, utc_now().isoformat()),
            producer=self._actor,
            model_name=name,
            version=str(version),
            artifact=entry.artifact,
            architecture=entry.architecture,
            metrics=entry.metrics,
            provenance={**entry.provenance, "promotion_reason": reason},
            promoted_at=utc_now(),
        )
        if self._publisher is not None:
            self._publisher.publish(event)
        if previous is not None and previous.version != version:
            self._set_state(previous, "retired")
        self._set_state(entry, "promoted")
        self._redis.set(f"{self._prefix}{name}:current", str(version))
        action = "rolled-back" if previous and previous.version > version else "promoted"
        self._audit(action, name, version, reason)
        return event

    def audit_log(self, count: int = 100) -> list[dict[str, str]]:
        """The most recent ``count`` audit entries, oldest first."""
        entries: list[Any] = list(self._redis.xrevrange(f"{self._prefix}audit", count=count) or [])
        return [
            {_text(k): _text(v) for k, v in (fields or {}).items()}
            for _, fields in reversed(entries)
        ]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
