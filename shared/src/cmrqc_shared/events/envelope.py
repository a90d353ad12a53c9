"""The envelope every event on the bus carries, and the deterministic event id.

Every record on a ``cmrqc.*`` topic is one JSON object: the envelope fields below plus the
payload fields of its event type, side by side (a flat object is easier for consumers in other
languages than a nested ``payload``). The envelope makes an event traceable (correlation ids,
producing service) and retries recognisable (the event id is a function of the inputs, so the
same input processed twice yields the same id).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Namespace for event ids (uuid5). Never change it: ids would stop matching across versions.
EVENT_ID_NAMESPACE = uuid.UUID("6f1d2c3e-8a41-4b7e-9a0f-5a17c0000001")

_DICOM_UID_MAX_LENGTH = 64


def derive_event_id(schema: str, *inputs: str) -> str:
    """Return a deterministic event id for an event of ``schema`` derived from ``inputs``.

    The same schema and inputs always give the same id, so a record produced again after a
    retry or a crash carries the id of the first attempt and consumers can de-duplicate.

    Args:
        schema: the event's schema name, e.g. ``"cmrqc.SegmentationReady"``.
        inputs: what the event is a function of, e.g. the input event id and the model version.

    Raises:
        ValueError: if no input is given (an id derived from nothing would collide).
    """
    if not inputs:
        raise ValueError("derive_event_id needs at least one input to derive the id from")
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, "\x1f".join((schema, *inputs))))


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class ProducerInfo(BaseModel):
    """Which service (and which version of it) produced an event."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    service: str = Field(min_length=1, max_length=64, description="Producing service name.")
    version: str = Field(min_length=1, max_length=64, description="Producing service version.")
    instance: str | None = Field(
        default=None, max_length=128, description="Producing instance (pod or host), if known."
    )


class Event(BaseModel):
    """Base class of every event: the envelope.

    Subclasses set ``SCHEMA_NAME``, ``SCHEMA_VERSION`` and ``TOPIC``. Within one schema version
    changes are additive and optional (``extra="ignore"`` lets old consumers read new records);
    a breaking change gets a new schema version and a new topic version.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    SCHEMA_NAME: ClassVar[str] = "cmrqc.Event"
    SCHEMA_VERSION: ClassVar[int] = 1
    TOPIC: ClassVar[str] = ""

    event_id: str = Field(
        description="Deterministic id derived from the event's inputs (uuid5): retries reuse it."
    )
    schema_name: str = Field(description="Schema name, e.g. cmrqc.VolumeReady.")
    schema_version: int = Field(ge=1, description="Schema version within the topic version.")
    produced_at: datetime = Field(description="When the event was produced (UTC, ISO 8601).")
    producer: ProducerInfo
    study_instance_uid: str | None = Field(
        default=None,
        max_length=_DICOM_UID_MAX_LENGTH,
        description="DICOM StudyInstanceUID (correlation id); absent on events about no study.",
    )
    series_instance_uid: str | None = Field(
        default=None,
        max_length=_DICOM_UID_MAX_LENGTH,
        description="DICOM SeriesInstanceUID (correlation id and the record key).",
    )
    causation_id: str | None = Field(
        default=None, description="event_id of the event this one was produced from, if any."
    )

    @field_validator("schema_name")
    @classmethod
    def _schema_name_matches_class(cls, value: str) -> str:
        if cls.SCHEMA_NAME != "cmrqc.Event" and value != cls.SCHEMA_NAME:
            raise ValueError(f"schema_name {value!r} does not match {cls.SCHEMA_NAME!r}")
        return value

    @classmethod
    def create(
        cls,
        *,
        derived_from: tuple[str, ...] | list[str],
        producer: ProducerInfo,
        produced_at: datetime | None = None,
        **fields: Any,
    ) -> Self:
        """Build an event whose id is derived from ``derived_from``.

        ``derived_from`` lists what makes this event unique (for a derived event: the input
        event id and anything else that changes the output, such as a model version).
        """
        return cls(
            event_id=derive_event_id(cls.SCHEMA_NAME, *derived_from),
            schema_name=cls.SCHEMA_NAME,
            schema_version=cls.SCHEMA_VERSION,
            produced_at=produced_at or utc_now(),
            producer=producer,
            **fields,
        )

    @property
    def key(self) -> str:
        """The Kafka record key: SeriesInstanceUID, for per-series ordering.

        Events about no series (models, dead letters) override this.
        """
        if self.series_instance_uid is None:
            raise ValueError(f"{self.SCHEMA_NAME} {self.event_id} has no SeriesInstanceUID key")
        return self.series_instance_uid

    def to_bytes(self) -> bytes:
        """Serialise to compact UTF-8 JSON, the wire format."""
        return self.model_dump_json(by_alias=True).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Parse and validate the wire format.

        Raises:
            pydantic.ValidationError: the record is not a valid event of this type.
        """
        return cls.model_validate_json(data)
