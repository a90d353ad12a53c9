"""Where local infrastructure keeps its jars, data and logs."""

from __future__ import annotations

import os
from pathlib import Path

KAFKA_VERSION = os.environ.get("CMRQC_KAFKA_VERSION", "4.1.1")
"""Apache Kafka version run locally (a 4.x KRaft broker from Maven Central)."""


def cache_dir() -> Path:
    """Downloaded artifacts (the Kafka jars), outside any repository: $CMRQC_CACHE_DIR."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cmrqc"
    return Path(os.environ.get("CMRQC_CACHE_DIR", default))


def run_dir() -> Path:
    """Logs, data and pid files of the local services: $CMRQC_RUN_DIR."""
    default = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "cmrqc"
    return Path(os.environ.get("CMRQC_RUN_DIR", default))


def kafka_libs_dir(version: str = KAFKA_VERSION) -> Path:
    return cache_dir() / f"kafka-{version}" / "libs"
