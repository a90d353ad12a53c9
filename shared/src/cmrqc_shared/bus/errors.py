"""Error policy of the bus runner: what to do when a handler raises.

Injected, not scattered: a service passes an ``ErrorPolicy`` (a callable) to the runner; the
default retries with backoff and dead-letters after ``max_attempts``.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from pydantic import ValidationError

from cmrqc_shared.blobs.errors import BlobError


class PermanentError(Exception):
    """Raised by a handler for input that can never succeed (dead-lettered at once).

    ``reason`` is a short machine-readable cause that the dead-letter record carries.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ErrorAction(Enum):
    """What the runner does with a record whose handler raised."""

    RETRY = "retry"
    """Call the handler again after a backoff."""
    DEAD_LETTER = "dead-letter"
    """Give up on this record: publish it to the dead-letter topic and move on."""
    RAISE = "raise"
    """Stop the service without committing (for errors that make every record fail)."""


ErrorPolicy = Callable[[BaseException, int], ErrorAction]
"""(exception, attempt number starting at 1) -> action."""


def retry_then_dead_letter(max_attempts: int) -> ErrorPolicy:
    """The default policy: permanent errors dead-letter at once; others retry, then dead-letter.

    A missing or corrupted blob and an invalid payload are permanent: retrying cannot help.
    """

    def policy(error: BaseException, attempt: int) -> ErrorAction:
        if isinstance(error, PermanentError | ValidationError | BlobError):
            return ErrorAction.DEAD_LETTER
        if attempt < max_attempts:
            return ErrorAction.RETRY
        return ErrorAction.DEAD_LETTER

    return policy


def failure_reason(error: BaseException) -> str:
    """The dead-letter reason for an error."""
    if isinstance(error, PermanentError):
        return error.reason
    if isinstance(error, ValidationError):
        return "invalid-record"
    if isinstance(error, BlobError):
        return "blob-unavailable"
    return "handler-failed"
