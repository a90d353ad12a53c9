"""cmrqc.deadletter.v1: what could not be processed, with the reason; nothing is dropped."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from pydantic import Field

from cmrqc_shared.events.envelope import Event


class DeadLetter(Event):
    """A record (or a series-level failure) a service gave up on, kept for replay.

    ``original_value_b64`` holds the original record bytes, so the record can be replayed to
    its topic once the cause is fixed.
    """

    SCHEMA_NAME: ClassVar[str] = "cmrqc.DeadLetter"
    SCHEMA_VERSION: ClassVar[int] = 1
    TOPIC: ClassVar[str] = "cmrqc.deadletter.v1"

    failed_service: str
    reason: str = Field(description="Short machine-readable cause, e.g. invalid-record.")
    error_type: str
    error_message: str
    attempts: int = Field(ge=0)
    original_topic: str | None = None
    original_partition: int | None = None
    original_offset: int | None = None
    original_key: str | None = None
    original_value_b64: str | None = None
    original_value_truncated: bool = False
    first_failed_at: datetime | None = None
    details: dict[str, str] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        """Keyed like the original record (the series), else by the failing service."""
        return self.original_key or self.series_instance_uid or self.failed_service
