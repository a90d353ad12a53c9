"""Services with several input streams: each intake is a ``StreamRunner`` in its own thread.

The RCA labeller (segmentations and QC results) and the retrainer (RCA labels and ground
truth) consume two topics each, in separate consumer groups (``<group>`` for the first,
``<group>-<suffix>`` for the others), while their main loop runs in the calling thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from cmrqc_shared.bus.runner import StreamRunner
from cmrqc_shared.settings import RunnerSettings


def intake_settings(
    runner: RunnerSettings, group: str, suffix: str | None = None
) -> RunnerSettings:
    """The runner settings of one intake: its own consumer group ``group[-suffix]``."""
    return runner.model_copy(update={"group_id": f"{group}-{suffix}" if suffix else group})


@contextmanager
def intakes_running(
    intakes: Mapping[str, StreamRunner[Any]], join_timeout_s: float = 60.0
) -> Iterator[None]:
    """Run each intake in a thread named by its key; on exit stop them (each commits what it
    handled) and wait for them."""
    threads = [
        threading.Thread(target=runner.run, name=name, daemon=True)
        for name, runner in intakes.items()
    ]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        for runner in intakes.values():
            runner.stop()
        for thread in threads:
            thread.join(timeout=join_timeout_s)
