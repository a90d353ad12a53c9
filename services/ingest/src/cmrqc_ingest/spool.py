"""The durable spool: every accepted instance is on disk before it is acknowledged.

Why a local disk and not Redis: a cine study is tens of megabytes (12 slices x 25 phases x
~150 KB) and arrives in bursts; Redis keeps all of it in memory and its AOF syncs once per
second, so an acknowledged C-STORE could still be lost in a crash unless every write is
synced, which is what a file system does cheaply. The spooled files are exactly the Part 10
bytes the sender sent, so they can be replayed with any DICOM tool, and write-then-rename
gives crash consistency for free. The cost: the spool belongs to one replica (in Kubernetes a
StatefulSet with a PersistentVolumeClaim), and a series split across replicas would be
assembled by each separately; a sender uses one association per series in practice.

Layout under the spool root::

    .lock                               flock: one process per spool
    tmp/                                partial writes (cleared at start)
    incoming/<series-key>/<source>_<sop-key>_<random>.dcm
    dead/<series-key>-<UTC time>/       a dead-lettered series' files + reason.json
    done/<series-key>.json              tombstone of an assembled series (re-sends de-duplicated)

Keys are SHA-256 prefixes of the UIDs (a UID never becomes a path). A file's mtime is its
arrival time, kept across restarts. With ``fsync`` on, the file and its directory are synced
before ``write`` returns, so an acknowledged instance survives a power cut.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
    """One spooled instance file."""

    path: Path
    size: int
    source: str
    received_at: datetime


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
        """Release the directory lock."""
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

    def series_dir(self, series_uid: str) -> Path:
        return self._incoming / uid_key(series_uid)

    def write(
        self, series_uid: str, sop_instance_uid: str, source: str, data: bytes
    ) -> SpooledFile:
        """Store one instance durably (write to tmp, fsync, rename into place).

        Raises:
            SpoolFull: over a watermark.
            OSError: the disk refused the write.
        """
        self.check_capacity(len(data))
        folder = self.series_dir(series_uid)
        # A unique name per write: a re-send arriving while the series is being assembled
        # must not replace the file the assembler is about to delete.
        target = folder / f"{source}_{uid_key(sop_instance_uid)}_{uuid.uuid4().hex[:8]}.dcm"
        tmp = self._tmp / f"{uuid.uuid4().hex}.part"
        created_folder = False
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                if self.fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
            try:
                os.replace(tmp, target)
            except FileNotFoundError:  # the series folder is new (or was just emptied)
                folder.mkdir(parents=True, exist_ok=True)
                created_folder = True
                os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if self.fsync:
            _fsync_dir(folder)
            if created_folder:
                _fsync_dir(self._incoming)
        with self._lock:
            self._used_bytes += len(data)
        return SpooledFile(
            path=target,
            size=len(data),
            source=source,
            received_at=datetime.now(UTC),
        )

    def iter_incoming(self) -> Iterator[tuple[str, list[SpooledFile]]]:
        """Every spooled series as (series key, files), for recovery after a restart."""
        for folder in sorted(p for p in self._incoming.iterdir() if p.is_dir()):
            files = []
            for path in sorted(folder.glob("*.dcm")):
                with contextlib.suppress(FileNotFoundError):
                    stat = path.stat()
                    files.append(
                        SpooledFile(
                            path=path,
                            size=stat.st_size,
                            source=path.name.split("_", 1)[0],
                            received_at=datetime.fromtimestamp(stat.st_mtime, UTC),
                        )
                    )
            if files:
                yield folder.name, files
            else:
                with contextlib.suppress(OSError):
                    folder.rmdir()

    def remove_files(self, paths: list[Path]) -> None:
        """Delete spooled files (a series' snapshot after it was published or skipped).

        Only the named files go: instances of the same series that arrived while it was
        being assembled stay for the next assembly. An emptied series folder is removed.
        """
        folders = set()
        for path in paths:
            self.remove_file(path)
            folders.add(path.parent)
        for folder in folders:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds when empty

    def remove_file(self, path: Path) -> None:
        """Delete one spooled file."""
        with contextlib.suppress(FileNotFoundError):
            size = path.stat().st_size
            path.unlink()
            with self._lock:
                self._used_bytes -= size

    def _remove_tree(self, folder: Path) -> None:
        if not folder.exists():
            return
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        shutil.rmtree(folder, ignore_errors=True)
        with self._lock:
            self._used_bytes -= size

    def quarantine(self, series_uid: str, paths: list[Path], reason: dict[str, Any]) -> Path:
        """Move a series' snapshot under ``dead/`` beside ``reason.json``; return the folder."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        target = self._dead / f"{uid_key(series_uid)}-{stamp}"
        target.mkdir(parents=True)
        folders = set()
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, target / path.name)
                folders.add(path.parent)
        for folder in folders:
            with contextlib.suppress(OSError):
                folder.rmdir()
        text = json.dumps(reason, indent=2, default=str).encode()
        (target / "reason.json").write_bytes(text)
        with self._lock:
            self._used_bytes += len(text)
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
                    self.remove_file(tomb)
                    removed += 1
        return removed


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
