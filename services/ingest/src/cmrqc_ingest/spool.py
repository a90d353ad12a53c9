"""The durable spool: every accepted instance is on disk before it is acknowledged.

Why a local disk and not Redis: a cine study is tens of megabytes (12 slices x 25 phases x
~150 KB) and arrives in bursts; Redis keeps all of it in memory and its AOF syncs once per
second, so an acknowledged C-STORE could still be lost in a crash unless every write is
synced, which is what a file system does cheaply. The cost: the spool belongs to one replica
(in Kubernetes a StatefulSet with a PersistentVolumeClaim), and a series split across
replicas would be assembled by each separately; a sender uses one association per series in
practice.

Each session (association, STOW-RS request, backfill run) has an append-only log: an
instance is one record (a small header with its length and CRC-32, then exactly the Part 10
bytes the sender sent), appended and ``fdatasync``-ed before the sender gets its answer, so
an acknowledged instance survives a power cut. Appending to an open file costs far less than
creating, syncing and renaming a file per instance and syncing its folder (what this spool
did before; ~2.5x the time), and a study goes with one unlink. Only accepted instances are
written (the receiving thread validates first). A crash mid-append leaves a partial record at the
end of the log, which recovery ignores: it was never acknowledged. A log is released once none
of its instances is left (published, skipped or quarantined): a few released logs are kept
and reused by the next sessions, under a new name and a higher generation number in their
header and records, because writing inside a file's existing size leaves the sync no
metadata to write; recovery stops at the first record of another generation (stale bytes
of the file's previous use). Instances that arrive while their series is being assembled
stay in the log for the next assembly. A dead-lettered series is
copied out as plain ``.dcm`` files, replayable with any DICOM tool.

Layout under the spool root::

    .lock                               flock: one process per spool
    tmp/                                partial tombstone writes (cleared at start)
    incoming/<ns>-<random>.log          one session's instances (older versions: per-series
                                        folders of .dcm files, still recovered)
    dead/<series-key>-<UTC time>/       a dead-lettered series' files + reason.json
    done/<series-key>.json              tombstone of an assembled series (re-sends de-duplicated)

Keys are SHA-256 prefixes of the UIDs (a UID never becomes a path); a log record's header
holds the source and arrival time only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cmrqc_ingest.instance_ref import InstanceRef

logger = logging.getLogger(__name__)

_FREE_CACHE_S = 0.5


class SpoolFull(Exception):
    """The spool is above its watermark, or its disk is nearly full (answer 0xA700)."""


class SpoolLocked(Exception):
    """Another process holds this spool directory."""


def uid_key(uid: str) -> str:
    """A file-system-safe, fixed-length key for a DICOM UID."""
    return hashlib.sha256(uid.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class SpooledFile:
    """One spooled instance: ``size`` bytes at ``offset`` of ``path`` (a series log)."""

    path: Path
    size: int
    source: str
    received_at: datetime
    offset: int = 0

    @property
    def ref(self) -> InstanceRef:
        """Where its Part 10 bytes lie (what readers and :meth:`Spool.remove_file` take)."""
        return InstanceRef(self.path, self.offset, self.size)


#: A log record: magic, version, length of the source label, the log's generation, received
#: at (microseconds since the epoch), data length, CRC-32 of the data; then the source label,
#: then the instance's Part 10 bytes.
_RECORD = struct.Struct("<4sBBIqQI")
_RECORD_MAGIC = b"CQSP"
_RECORD_VERSION = 3
#: A log's header: magic, version, its generation (raised each time the file is reused).
_LOG_HEADER = struct.Struct("<4sB3xI")
_LOG_MAGIC = b"CQSL"
#: Released logs kept for reuse, and the largest one kept (larger ones are deleted).
_POOL_LOGS = 8
_POOL_MAX_BYTES = 64 * 1024 * 1024
#: A session's log rolls over to a new one beyond this size (disk is freed per log).
MAX_LOG_BYTES = 256 * 1024 * 1024
#: Lock stripes for the logs (a log key always maps to the same stripe).
_STRIPES = 64


@dataclass
class _Log:
    """One log (or a whole .dcm file left by an older version)."""

    path: Path
    key: str
    """The session (association, STOW-RS request, backfill run) appending to it."""
    size: int
    live: set[int] = field(default_factory=set)
    """Data offsets of the records not removed yet; the log is released when none is left."""
    fd: int | None = None
    """Open for writing while it is its session's current log."""
    generation: int = 0
    """Its header's generation; records of another one are stale (the file was reused)."""
    capacity: int = 0
    """The file's size on disk (a reused file is larger than what was written so far)."""


class Spool:
    """Durable, crash-consistent storage of received instances, grouped by series."""

    def __init__(
        self,
        root: Path,
        *,
        fsync: bool = True,
        max_bytes: int = 20 * 1024**3,
        min_free_bytes: int = 2 * 1024**3,
    ) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self._incoming = self.root / "incoming"
        self._tmp = self.root / "tmp"
        self._dead = self.root / "dead"
        self._done = self.root / "done"
        self._lock = threading.Lock()
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]
        self._logs: dict[Path, _Log] = {}
        """Every log (and older-version file) holding instances, by path."""
        self._current: dict[str, _Log] = {}
        """The log each session appends to, by session key (changed under its stripe)."""
        self._pool: list[tuple[Path, int, int]] = []
        """Released logs for reuse: (path, size on disk, generation)."""
        self._used_bytes = 0
        self._free_bytes = 0
        self._free_checked = 0.0
        self._lock_fd: int | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def open(self) -> None:
        """Create the layout, take the directory lock, clear partial writes, measure usage.

        Raises:
            SpoolLocked: another process uses this spool.
        """
        for folder in (self._incoming, self._tmp, self._dead, self._done):
            folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolLocked(f"spool {self.root} is in use by another process") from None
        self._lock_fd = fd
        for leftover in self._tmp.iterdir():
            leftover.unlink(missing_ok=True)
        self._used_bytes = sum(
            p.stat().st_size for p in self.root.rglob("*") if p.is_file() and p.name != ".lock"
        )
        self._refresh_free(force=True)

    def close(self) -> None:
        """Close the logs being appended to and release the directory lock."""
        for log in list(self._current.values()):
            with self._stripe(log.key):
                self._retire(log)
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Spool:
        self.open()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- capacity ------------------------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        """Bytes held under the spool root (incoming, dead, tombstones)."""
        return self._used_bytes

    def free_bytes(self) -> int:
        """Free bytes on the spool's file system (cached for half a second)."""
        self._refresh_free()
        return self._free_bytes

    def _refresh_free(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._free_checked > _FREE_CACHE_S:
            self._free_bytes = shutil.disk_usage(self.root).free
            self._free_checked = now

    def check_capacity(self, incoming_bytes: int) -> None:
        """Raise ``SpoolFull`` when storing ``incoming_bytes`` more would cross a watermark."""
        if self._used_bytes + incoming_bytes > self.max_bytes:
            raise SpoolFull(
                f"spool holds {self._used_bytes} bytes; the watermark is {self.max_bytes}"
            )
        if self.free_bytes() - incoming_bytes < self.min_free_bytes:
            raise SpoolFull(
                f"{self._free_bytes} bytes free on the spool disk; "
                f"at least {self.min_free_bytes} must stay free"
            )

    def below_watermark(self) -> bool:
        """Whether a typical instance (1 MiB) would still be accepted."""
        try:
            self.check_capacity(1024 * 1024)
        except SpoolFull:
            return False
        return True

    # -- instances -----------------------------------------------------------------------

    def write(self, key: str, source: str, data: bytes) -> SpooledFile:
        """Store one instance durably: append it to the log of ``key`` (its session), then
        ``fdatasync``. Writes of one session are serialized (its lock stripe).

        Raises:
            SpoolFull: over a watermark.
            OSError: the disk refused the write (its log ends before it; the session goes
                on in a new one).
        """
        self.check_capacity(len(data))
        received_at = datetime.now(UTC)
        label = source.encode("utf-8")[:255]
        crc = zlib.crc32(data)
        with self._stripe(key):
            log = self._current.get(key)
            if log is not None and log.size >= MAX_LOG_BYTES:
                # a long session (a backfill run, an association kept open for hours)
                # rolls over, so that what it sent early is freed once handled
                self._close_log(log)
                log = None
            if log is None:
                log = self._start_log(key)
            head = (
                _RECORD.pack(
                    _RECORD_MAGIC,
                    _RECORD_VERSION,
                    len(label),
                    log.generation,
                    int(received_at.timestamp() * 1_000_000),
                    len(data),
                    crc,
                )
                + label
            )
            start = log.size
            assert log.fd is not None
            try:
                _write_all(log.fd, start, head, data)
                if self.fsync:
                    os.fdatasync(log.fd)
            except BaseException:
                # a torn record ends the log for recovery: write no more after it
                self._close_log(log)
                raise
            offset = start + len(head)
            log.size = offset + len(data)
            log.live.add(offset)
            grown = max(0, log.size - log.capacity)
            log.capacity += grown
            with self._lock:
                self._used_bytes += grown
        return SpooledFile(
            path=log.path, size=len(data), source=source, received_at=received_at, offset=offset
        )

    def end(self, key: str) -> None:
        """The session ``key`` ended: close its log (released now if nothing is left in it)."""
        with self._stripe(key):
            log = self._current.get(key)
            if log is not None:
                self._close_log(log)

    def _close_log(self, log: _Log) -> None:
        """No more writes to ``log`` (its stripe held); released at once if it holds nothing."""
        self._retire(log)
        if not log.live:
            self._delete_log(log)

    def _stripe(self, key: str) -> threading.Lock:
        return self._stripes[zlib.crc32(key.encode("utf-8")) % _STRIPES]

    def _start_log(self, key: str) -> _Log:
        """Open a log for the session (its stripe held): a released one when the pool has
        one, under a new name and generation, else a new file.

        Writing inside a file's existing size leaves ``fdatasync`` no metadata to write
        (0.14-0.17 ms against 0.22-0.32 ms for an append that grows the file, here).
        """
        path = self._incoming / f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.log"
        with self._lock:
            reused = self._pool.pop() if self._pool else None
        if reused is not None:
            old_path, capacity, generation = reused
            # a new name: references to the old generation's records never match new ones
            os.replace(old_path, path)
            fd = os.open(path, os.O_WRONLY)
            generation += 1
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            capacity, generation = 0, 1
        try:
            _write_all(fd, 0, _LOG_HEADER.pack(_LOG_MAGIC, _RECORD_VERSION, generation))
            if self.fsync:  # the generation before any record of it; a new name too
                os.fdatasync(fd)
                if reused is None:
                    _fsync_dir(self._incoming)
        except BaseException:
            os.close(fd)
            raise
        grown = max(0, _LOG_HEADER.size - capacity)
        log = _Log(
            path=path,
            key=key,
            size=_LOG_HEADER.size,
            fd=fd,
            generation=generation,
            capacity=capacity + grown,
        )
        with self._lock:
            self._logs[path] = log
            self._used_bytes += grown + (capacity if reused is not None else 0)
        self._current[key] = log
        return log

    def _retire(self, log: _Log) -> None:
        """Stop appending to ``log`` (its stripe held)."""
        if log.fd is not None:
            with contextlib.suppress(OSError):
                os.close(log.fd)
            log.fd = None
        if self._current.get(log.key) is log:
            del self._current[log.key]

    def _delete_log(self, log: _Log) -> None:
        """Release an emptied log (its stripe held): into the pool for reuse while it has
        room, else deleted (a legacy series folder goes when empty)."""
        self._retire(log)
        with self._lock:
            self._logs.pop(log.path, None)
            if (
                log.path.suffix == ".log"  # (not a .dcm file of the older layout)
                and log.capacity <= _POOL_MAX_BYTES
                and len(self._pool) < _POOL_LOGS
                and log.path.exists()
            ):
                self._pool.append((log.path, log.capacity, log.generation))
                self._used_bytes -= log.capacity  # reusable space, not held data
                return
        with contextlib.suppress(FileNotFoundError):
            size = log.path.stat().st_size
            log.path.unlink()
            with self._lock:
                self._used_bytes -= size
        with self._lock:
            self._logs.pop(log.path, None)
        if log.path.parent != self._incoming:
            with contextlib.suppress(OSError):
                log.path.parent.rmdir()  # only succeeds when empty

    @property
    def held_instances(self) -> int:
        """Instances written and not yet released."""
        with self._lock:
            return sum(len(log.live) for log in self._logs.values())

    def contains(self, ref: InstanceRef) -> bool:
        """Whether the spool still holds that instance (not removed or quarantined)."""
        with self._lock:
            log = self._logs.get(ref.path)
            return log is not None and ref.offset in log.live

    def iter_incoming(self) -> Iterator[tuple[str, list[SpooledFile]]]:
        """Every log's instances as (log name, instances), for recovery after a restart.

        Reads every log record by record: a record cut short by a crash (never
        acknowledged) ends the log; a record whose data fails its CRC is skipped and
        logged. ``.dcm`` files left by the older one-file-per-instance layout (in series
        folders) are instances of their own. Recovered logs take no more appends.
        """
        for path in sorted(self._incoming.iterdir()):
            if path.is_dir():  # the older layout: incoming/<series-key>/*.dcm
                files = [f for dcm in sorted(path.glob("*.dcm")) for f in self._recover_file(dcm)]
                if files:
                    yield path.name, files
                else:
                    with contextlib.suppress(OSError):
                        path.rmdir()
            elif path.suffix == ".log":
                files = self._recover_log(path)
                if files:
                    yield path.name, files

    def _recover_file(self, path: Path) -> list[SpooledFile]:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return []
        log = _Log(path=path, key=f"recovered:{path}", size=stat.st_size, live={0})
        with self._lock:
            self._logs[path] = log
        return [
            SpooledFile(
                path=path,
                size=stat.st_size,
                source=path.name.split("_", 1)[0],
                received_at=datetime.fromtimestamp(stat.st_mtime, UTC),
            )
        ]

    def _recover_log(self, path: Path) -> list[SpooledFile]:
        files: list[SpooledFile] = []
        with open(path, "rb") as handle:
            file_size = os.fstat(handle.fileno()).st_size
            header = handle.read(_LOG_HEADER.size)
            if len(header) < _LOG_HEADER.size:
                magic, version, generation = b"", 0, 0
            else:
                magic, version, generation = _LOG_HEADER.unpack(header)
            if magic != _LOG_MAGIC or version != _RECORD_VERSION:
                logger.error(
                    "not a spool log of this version; quarantined", extra={"log": path.name}
                )
                handle.close()
                target = self._dead / f"unreadable-{path.name}"
                os.replace(path, target)
                return []
            log = _Log(
                path=path,
                key=f"recovered:{path.name}",
                size=_LOG_HEADER.size,
                generation=generation,
                capacity=file_size,
            )
            while True:
                head = handle.read(_RECORD.size)
                if len(head) < _RECORD.size:
                    break  # the end (a partial record was never acknowledged)
                magic, version, label_length, record_generation, micros, length, crc = (
                    _RECORD.unpack(head)
                )
                if (
                    magic != _RECORD_MAGIC
                    or version != _RECORD_VERSION
                    or record_generation != generation
                ):
                    break  # the end: what follows is stale (a reused file) or torn
                label = handle.read(label_length)
                offset = handle.tell()
                if offset + length > file_size:  # (read no absurd length a torn header holds)
                    logger.warning("spool log ends in a partial record", extra={"log": path.name})
                    break
                data = handle.read(length)
                if len(label) < label_length or len(data) < length:
                    logger.warning("spool log ends in a partial record", extra={"log": path.name})
                    break
                log.size = handle.tell()
                if zlib.crc32(data) != crc:
                    logger.error(
                        "spooled instance fails its CRC; skipped",
                        extra={"log": path.name, "offset": offset},
                    )
                    continue
                log.live.add(offset)
                files.append(
                    SpooledFile(
                        path=path,
                        size=length,
                        source=label.decode("utf-8", "replace"),
                        received_at=datetime.fromtimestamp(micros / 1_000_000, UTC),
                        offset=offset,
                    )
                )
        with self._lock:
            self._logs[path] = log
        if not log.live:
            with self._stripe(log.key):
                self._delete_log(log)
        return files

    def remove_files(self, refs: Iterable[InstanceRef]) -> None:
        """Release spooled instances (a series' snapshot after it was published or skipped).

        Only the named instances go: instances of the same series that arrived while it
        was being assembled stay for the next assembly. A log goes once none of its
        instances is left, and an emptied series folder with it.
        """
        for ref in refs:
            self.remove_file(ref)

    def remove_file(self, ref: InstanceRef) -> None:
        """Release one spooled instance (idempotent)."""
        with self._lock:
            log = self._logs.get(ref.path)
        if log is None:
            return
        with self._stripe(log.key):
            log.live.discard(ref.offset)
            if not log.live:
                self._delete_log(log)

    def _remove_tree(self, folder: Path) -> None:
        if not folder.exists():
            return
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        shutil.rmtree(folder, ignore_errors=True)
        with self._lock:
            self._used_bytes -= size

    def quarantine(self, series_uid: str, refs: list[InstanceRef], reason: dict[str, Any]) -> Path:
        """Copy a series' snapshot under ``dead/`` as Part 10 files beside ``reason.json``
        (replayable with any DICOM tool), release it from the log; return the folder."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        target = self._dead / f"{uid_key(series_uid)}-{stamp}"
        target.mkdir(parents=True)
        copied = 0
        for index, ref in enumerate(refs):
            try:
                data = ref.read_bytes()
            except (OSError, EOFError):
                continue
            (target / f"{index:05d}.dcm").write_bytes(data)
            copied += len(data)
        text = json.dumps(reason, indent=2, default=str).encode()
        (target / "reason.json").write_bytes(text)
        with self._lock:
            self._used_bytes += len(text) + copied
        self.remove_files(refs)
        return target

    # -- tombstones ----------------------------------------------------------------------

    def completed_instances(self, series_uid: str) -> set[str]:
        """SOPInstanceUIDs of the series' last handled instance set (empty if none)."""
        path = self._done / f"{uid_key(series_uid)}.json"
        try:
            return {str(uid) for uid in json.loads(path.read_text())["sop_instance_uids"]}
        except (OSError, ValueError, KeyError, TypeError):
            return set()

    def mark_completed(
        self, series_uid: str, sop_instance_uids: list[str], digest: str, outcome: str
    ) -> None:
        """Record that the series with this instance set was handled (published/skipped)."""
        path = self._done / f"{uid_key(series_uid)}.json"
        text = json.dumps(
            {
                "series_instance_uid": series_uid,
                "digest": digest,
                "sop_instance_uids": sorted(sop_instance_uids),
                "outcome": outcome,
                "at": datetime.now(UTC).isoformat(),
            }
        )
        tmp = self._tmp / f"{uuid.uuid4().hex}.json"
        tmp.write_text(text)
        old = path.stat().st_size if path.exists() else 0
        os.replace(tmp, path)
        with self._lock:
            self._used_bytes += len(text) - old

    def collect_garbage(self, *, dead_older_than_s: float, done_older_than_s: float) -> int:
        """Delete quarantined series and tombstones older than the given ages; return count."""
        now = time.time()
        removed = 0
        for folder in list(self._dead.iterdir()):
            with contextlib.suppress(FileNotFoundError):
                if now - folder.stat().st_mtime > dead_older_than_s:
                    self._remove_tree(folder)
                    removed += 1
        for tomb in list(self._done.glob("*.json")):
            with contextlib.suppress(FileNotFoundError):
                if now - tomb.stat().st_mtime > done_older_than_s:
                    size = tomb.stat().st_size
                    tomb.unlink()
                    with self._lock:
                        self._used_bytes -= size
                    removed += 1
        return removed


def _write_all(fd: int, offset: int, *parts: bytes) -> None:
    """Write every byte of ``parts`` at ``offset`` (``os.pwritev`` may write fewer)."""
    views = [memoryview(part) for part in parts if part]
    while views:
        written = os.pwritev(fd, views, offset)
        offset += written
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
