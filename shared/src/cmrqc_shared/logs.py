"""JSON-lines logging with correlation ids, and a guard against patient identifiers.

Libraries only get loggers; ``configure_logging`` is called once, by a service's ``main``.
Correlation ids (StudyInstanceUID, SeriesInstanceUID, event id) are held in context variables
that the bus runner sets around each record, so every log line inside a handler carries them.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

_correlation: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "cmrqc_correlation", default=None
)

#: Attribute names that must never reach a log line, whatever a caller passes in ``extra``.
IDENTIFYING_KEYS = frozenset(
    {
        "patient_name",
        "patientname",
        "patient_id",
        "patientid",
        "patient_birth_date",
        "patientbirthdate",
        "other_patient_ids",
        "patient_address",
    }
)
REDACTED = "[redacted]"

_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime"}
)

logging.getLogger("cmrqc_shared").addHandler(logging.NullHandler())


@contextlib.contextmanager
def correlation(**ids: str | None) -> Iterator[None]:
    """Attach correlation ids to every log line emitted inside the block."""
    current = dict(_correlation.get() or {})
    current.update({k: v for k, v in ids.items() if v})
    token = _correlation.set(current)
    try:
        yield
    finally:
        _correlation.reset(token)


def current_correlation() -> dict[str, str]:
    """The correlation ids in force."""
    return dict(_correlation.get() or {})


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, service, correlation, extras."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "service": self.service,
        }
        entry.update(current_correlation())
        for key, value in vars(record).items():
            if key in _STANDARD_ATTRS or key.startswith("_"):
                continue
            entry[key] = REDACTED if key.lower() in IDENTIFYING_KEYS else value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class IdentifierRedactionFilter(logging.Filter):
    """Replaces identifying ``extra`` attributes with a marker (for the text format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key in list(vars(record)):
            if key.lower() in IDENTIFYING_KEYS:
                setattr(record, key, REDACTED)
        return True


def configure_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    """Configure the root logger of a service process (call once, from ``main``)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLinesFormatter(service))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(IdentifierRedactionFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python is chatty at INFO (every connection); keep its warnings.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, root.level))
