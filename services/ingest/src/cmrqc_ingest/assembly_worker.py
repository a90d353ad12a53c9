"""Series assembly in a child process: pixel decoding off the receiving process.

The service receives instances on one thread per association and assembles complete series
on its assembler thread. In one process both need the GIL, so every millisecond spent
decoding pixels, sorting slices and stacking volumes delays the C-STORE answers of the
studies still arriving. :class:`AssemblyWorker` runs :func:`~cmrqc_ingest.assembly.
assemble_series` in a child process instead (the same function, the same result): the
assembler thread only waits for the answer, with the GIL released.

It also isolates faults: a pixel decoder that crashes the interpreter, a series that makes
the child run out of memory, or one that hangs it past ``timeout_s`` kills the child, not the
service. The next call starts a fresh child; the pipeline retries the series once and
dead-letters it (``assembly-crashed``) if it kills the child again.

The child is ``python -m cmrqc_ingest.assembly_worker`` speaking length-prefixed pickles over
its stdin and stdout (parent and child are the same code; nothing else writes to that pipe),
not a ``multiprocessing`` pool: no re-import of the parent's main script, which breaks for
scripts without a ``__main__`` guard, and no extra feeder and manager threads per call.
Results come back as plain tuples (``SeriesSkipped`` and ``AssemblyError`` carry constructor
arguments pickle cannot restore) and are raised again here as the same exceptions, so the
pipeline's failure policy does not change.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from cmrqc_ingest.assembly import AssembledSeries, AssemblyError, assemble_series
from cmrqc_ingest.frames import InstanceRecord
from cmrqc_ingest.instance_ref import InstanceRef
from cmrqc_ingest.rules import SeriesSkipped, SkipReason

logger = logging.getLogger(__name__)

#: The child's start-up (imports of numpy and pydicom), s.
_START_TIMEOUT_S = 120.0
_FRAME = struct.Struct("<Q")
#: Pipe buffer asked for the child's answers (Linux caps it at fs.pipe-max-size, 1 MiB).
_PIPE_BYTES = 1 << 20


class AssemblyCrashed(Exception):
    """The child process died (a crashing decoder, the OOM killer) or hung past its time."""


class AssemblyWorkerError(Exception):
    """An unexpected exception in the child; ``remote_traceback`` holds its traceback."""

    def __init__(self, error_type: str, remote_traceback: str) -> None:
        super().__init__(f"{error_type} in the assembly process")
        self.error_type = error_type
        self.remote_traceback = remote_traceback


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


class _ChildGone(Exception):
    """The pipe to the child closed, or its answer did not come in time."""


class AssemblyWorker:
    """One child process that assembles series, one at a time (thread-safe).

    Args:
        min_slices, publish_all_phases: as for :func:`assemble_series`.
        timeout_s: a series still unanswered after this long kills the child, s.
    """

    def __init__(
        self, *, min_slices: int, publish_all_phases: bool, timeout_s: float = 300.0
    ) -> None:
        self.min_slices = min_slices
        self.publish_all_phases = publish_all_phases
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        """Children replaced after one died."""

    @property
    def pid(self) -> int | None:
        """The child's process id (None when none runs)."""
        return self._child.pid if self._child is not None else None

    def start(self) -> None:
        """Start the child and wait until it has imported what assembly needs."""
        with self._lock:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._child is not None:
            return
        child = subprocess.Popen(
            [sys.executable, "-m", "cmrqc_ingest.assembly_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            assert child.stdout is not None
            with contextlib.suppress(OSError):  # volumes come back in fewer, larger reads
                fcntl.fcntl(child.stdout.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
            ready = _read_message(child.stdout, time.monotonic() + _START_TIMEOUT_S)
            if ready != ("ready", child.pid):
                raise _ChildGone(f"unexpected greeting {ready!r}")
        except BaseException:
            _stop(child)
            raise
        self._child = child

    def assemble(
        self,
        paths: Sequence[Path | InstanceRef],
        *,
        records: Mapping[Path | InstanceRef, InstanceRecord] | None = None,
    ) -> AssembledSeries:
        """:func:`assemble_series` in the child.

        Raises:
            SeriesSkipped, AssemblyError: as :func:`assemble_series`.
            AssemblyCrashed: the child died or hung (a fresh one serves the next call).
            AssemblyWorkerError: an unexpected exception in the child.
        """
        request = (list(paths), dict(records or {}), self.min_slices, self.publish_all_phases)
        with self._lock:
            self._start_locked()
            child = self._child
            assert child is not None and child.stdin is not None and child.stdout is not None
            try:
                _write_message(child.stdin, request)
                outcome = _read_message(child.stdout, time.monotonic() + self.timeout_s)
            except (_ChildGone, OSError, EOFError, pickle.UnpicklingError) as error:
                _stop(child, kill=True)
                self._child = None
                self.restarts += 1
                logger.error(
                    "assembly process died or hung; a new one serves the next series",
                    extra={"pid": child.pid, "exit_code": child.returncode, "error": str(error)},
                )
                raise AssemblyCrashed(f"the assembly process (pid {child.pid}) died") from None
        kind = outcome[0]
        if kind == "assembled":
            assembled: AssembledSeries = outcome[1]
            return assembled
        if kind == "skipped":
            raise SeriesSkipped(SkipReason(outcome[1]), outcome[2])
        if kind == "failed":
            raise AssemblyError(outcome[1], outcome[2], outcome[3])
        raise AssemblyWorkerError(outcome[1], outcome[2])

    def close(self) -> None:
        """Stop the child (idempotent)."""
        with self._lock:
            if self._child is not None:
                _stop(self._child)
            self._child = None


def _stop(child: subprocess.Popen[bytes], *, kill: bool = False) -> None:
    """End the child: close its pipes (its loop ends) or, with ``kill``, kill it first."""
    if kill and child.poll() is None:
        child.kill()
    for stream in (child.stdin, child.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    try:  # closing its stdin ends the child's loop; a hung one is killed
        child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _write_message(stream: IO[bytes], message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_FRAME.pack(len(data)) + data)
    stream.flush()


def _read_exactly(stream: IO[bytes], count: int, deadline: float | None) -> bytes:
    fd = stream.fileno()
    chunks: list[bytes] = []
    while count:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise _ChildGone("no answer in time")
        chunk = os.read(fd, min(count, 1 << 20))
        if not chunk:
            raise _ChildGone("the pipe closed")
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def _read_message(stream: IO[bytes], deadline: float | None = None) -> Any:
    (length,) = _FRAME.unpack(_read_exactly(stream, _FRAME.size, deadline))
    return pickle.loads(_read_exactly(stream, length, deadline))


def _serve() -> None:
    """The child: answer requests from stdin on stdout until stdin closes."""
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but answers may reach the pipe
    _write_message(answers, ("ready", os.getpid()))
    while True:
        try:
            request = _read_message(requests)
        except _ChildGone:
            return
        _write_message(answers, _assemble_in_child(*request))


if __name__ == "__main__":
    _serve()
