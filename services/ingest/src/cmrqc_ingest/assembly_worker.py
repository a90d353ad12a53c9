"""Series assembly in a child process: pixel decoding off the receiving process.

The service receives instances on one thread per association and assembles complete series
on its assembler thread. In one process both need the GIL, so every millisecond spent
decoding pixels, sorting slices and stacking volumes delays the C-STORE answers of the
studies still arriving. :class:`AssemblyWorker` runs :func:`~cmrqc_ingest.assembly.
assemble_series` in a child process instead (the same function, the same result): the
assembler thread only waits for the answer, with the GIL released.

It also isolates faults: a pixel decoder that crashes the interpreter, or a series that
makes the child run out of memory, kills the child, not the service. The next call starts a
fresh child; the series is retried once and dead-lettered (``assembly-crashed``) if it
kills the child again.

Results cross the process boundary as plain tuples (``SeriesSkipped`` and ``AssemblyError``
carry constructor arguments pickle cannot restore) and are raised again here as the same
exceptions, so the pipeline's failure policy does not change.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import traceback
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from cmrqc_ingest.assembly import AssembledSeries, AssemblyError, assemble_series
from cmrqc_ingest.frames import InstanceRecord
from cmrqc_ingest.instance_ref import InstanceRef
from cmrqc_ingest.rules import SeriesSkipped, SkipReason

logger = logging.getLogger(__name__)

#: The child's start-up (imports of numpy and pydicom), s.
_START_TIMEOUT_S = 120.0


class AssemblyCrashed(Exception):
    """The child process died while assembling (a crashing decoder, the OOM killer)."""


class AssemblyWorkerError(Exception):
    """An unexpected exception in the child; ``remote_traceback`` holds its traceback."""

    def __init__(self, error_type: str, remote_traceback: str) -> None:
        super().__init__(f"{error_type} in the assembly process")
        self.error_type = error_type
        self.remote_traceback = remote_traceback


def _child_pid() -> int:
    return os.getpid()


def _assemble_in_child(
    paths: Sequence[Path | InstanceRef],
    records: Mapping[Path | InstanceRef, InstanceRecord],
    min_slices: int,
    publish_all_phases: bool,
) -> tuple[Any, ...]:
    try:
        assembled = assemble_series(
            paths,
            min_slices=min_slices,
            publish_all_phases=publish_all_phases,
            records=records,
        )
    except SeriesSkipped as skipped:
        return ("skipped", skipped.reason.value, skipped.detail)
    except AssemblyError as error:
        return ("failed", error.reason, error.message, dict(error.details))
    except Exception as error:  # a bug of ours: the pipeline dead-letters the series
        return ("unexpected", type(error).__name__, traceback.format_exc())
    return ("assembled", assembled)


class AssemblyWorker:
    """One child process that assembles series, one at a time (thread-safe).

    Args:
        min_slices, publish_all_phases: as for :func:`assemble_series`.
    """

    def __init__(self, *, min_slices: int, publish_all_phases: bool) -> None:
        self.min_slices = min_slices
        self.publish_all_phases = publish_all_phases
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._pid: int | None = None
        self.restarts = 0
        """Children replaced after one died."""

    @property
    def pid(self) -> int | None:
        """The child's process id (None before :meth:`start`)."""
        return self._pid

    def start(self) -> None:
        """Start the child and wait until it has imported what assembly needs."""
        with self._lock:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._executor is not None:
            return
        # spawn, not fork: the parent runs Kafka and socket threads that a fork would copy
        # mid-operation
        executor = ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn")
        )
        try:
            self._pid = executor.submit(_child_pid).result(timeout=_START_TIMEOUT_S)
        except BaseException:
            executor.shutdown(wait=False, cancel_futures=True)
            raise
        self._executor = executor

    def assemble(
        self,
        paths: Sequence[Path | InstanceRef],
        *,
        records: Mapping[Path | InstanceRef, InstanceRecord] | None = None,
    ) -> AssembledSeries:
        """:func:`assemble_series` in the child.

        Raises:
            SeriesSkipped, AssemblyError: as :func:`assemble_series`.
            AssemblyCrashed: the child died (a fresh one serves the next call).
            AssemblyWorkerError: an unexpected exception in the child.
        """
        with self._lock:
            self._start_locked()
            assert self._executor is not None
            try:
                outcome = self._executor.submit(
                    _assemble_in_child,
                    list(paths),
                    dict(records or {}),
                    self.min_slices,
                    self.publish_all_phases,
                ).result()
            except BrokenProcessPool:
                dead_pid = self._pid
                self._discard_locked()
                self.restarts += 1
                logger.error("assembly process died; starting a new one", extra={"pid": dead_pid})
                raise AssemblyCrashed(f"the assembly process (pid {dead_pid}) died") from None
        kind = outcome[0]
        if kind == "assembled":
            assembled: AssembledSeries = outcome[1]
            return assembled
        if kind == "skipped":
            raise SeriesSkipped(SkipReason(outcome[1]), outcome[2])
        if kind == "failed":
            raise AssemblyError(outcome[1], outcome[2], outcome[3])
        raise AssemblyWorkerError(outcome[1], outcome[2])

    def _discard_locked(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None
        self._pid = None

    def close(self) -> None:
        """Stop the child (idempotent)."""
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
            self._pid = None
