"""SIGTERM / SIGINT → a graceful stop, the same way in every service process."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from types import FrameType

logger = logging.getLogger(__name__)


def stop_on_signals(stop: Callable[[], None]) -> bool:
    """Call ``stop`` (drain, commit, return) on SIGTERM and SIGINT.

    Returns False, installing nothing, outside the main thread (tests run services in
    threads: their stop conditions end the run instead).
    """

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal received: draining", extra={"signal": signum})
        stop()

    try:
        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
    except ValueError:  # "signal only works in main thread of the main interpreter"
        return False
    return True
