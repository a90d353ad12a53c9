"""Backfill: feed folders and .zip files through the same receive/assembly path.

``cmrqc ingest-dir PATH`` walks PATH (a folder, searched recursively, or a .zip) in sorted
order; every regular file and every .zip member is offered to
:meth:`IngestPipeline.receive` exactly as if it had arrived by C-STORE (non-DICOM files are
refused and counted, never fatal). Series complete by the usual rules (expected count, quiet
time) while the walk goes on, and everything still pending is assembled at the end — so the
walk assumes a series' files are stored together (one folder or zip per series or study).

Resumable: each path (``archive.zip::member`` for zip members) is appended to a progress file
once it is in the durable spool; a rerun skips those paths and finds the spooled-but-not-yet-
assembled instances in the spool (same spool dir). Series already published are recognised
by their tombstone and not published twice.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cmrqc_ingest.pipeline import IngestPipeline, SeriesOutcome
from cmrqc_ingest.status import StoreStatus
from cmrqc_shared.events import IngestSource

logger = logging.getLogger(__name__)

_ASSEMBLE_EVERY = 50
_FSYNC_EVERY = 100


@dataclass
class BackfillStats:
    """What a backfill run did."""

    files_seen: int = 0
    files_skipped_done: int = 0
    """Already in the progress file (an earlier run)."""
    stored: int = 0
    refused: int = 0
    outcomes: list[SeriesOutcome] = field(default_factory=list)

    @property
    def volumes(self) -> int:
        return sum(len(o.events) for o in self.outcomes if o.kind == "published")

    def count(self, kind: str) -> int:
        return sum(o.kind == kind for o in self.outcomes)


def iter_sources(root: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """(progress key, reader) for every file under ``root`` and every member of a zip."""
    if root.is_file():
        yield from _file_or_zip(root)
        return
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.startswith(".cmrqc-"):
                continue
            yield from _file_or_zip(Path(folder) / name)


def _file_or_zip(path: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    if path.suffix.lower() == ".zip" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for info in sorted(archive.infolist(), key=lambda i: i.filename):
                if info.is_dir():
                    continue
                yield f"{path}::{info.filename}", _zip_reader(path, info.filename)
    else:
        yield str(path), path.read_bytes


def _zip_reader(path: Path, member: str) -> Callable[[], bytes]:
    def read() -> bytes:
        with zipfile.ZipFile(path) as archive:
            return archive.read(member)

    return read


def load_progress(progress_file: Path) -> set[str]:
    """Paths recorded by earlier runs (a torn last line is ignored)."""
    try:
        return {line for line in progress_file.read_text().splitlines() if line}
    except FileNotFoundError:
        return set()


def ingest_dir(
    root: Path,
    pipeline: IngestPipeline,
    *,
    progress_file: Path | None = None,
    on_progress: Callable[[BackfillStats], None] | None = None,
) -> BackfillStats:
    """Feed every file under ``root`` through ``pipeline`` and assemble what completes.

    The pipeline must be open (its spool recovered). Returns the run's statistics.
    """
    done = load_progress(progress_file) if progress_file else set()
    stats = BackfillStats()
    session = f"backfill-{root}"
    handle = progress_file.open("a", encoding="utf-8") if progress_file else None
    try:
        for key, read in iter_sources(root):
            stats.files_seen += 1
            if key in done:
                stats.files_skipped_done += 1
                continue
            try:
                data = read()
            except (OSError, zipfile.BadZipFile) as error:
                logger.warning("cannot read", extra={"path": key, "error": type(error).__name__})
                stats.refused += 1
                continue
            result = pipeline.receive(data, source=IngestSource.BACKFILL, session=session)
            if result.status == StoreStatus.SUCCESS:
                stats.stored += 1
            else:
                stats.refused += 1
            if result.status in (StoreStatus.OUT_OF_RESOURCES, StoreStatus.PROCESSING_FAILURE):
                continue  # transient: not recorded, a rerun tries again
            if handle is not None:
                handle.write(key + "\n")
                handle.flush()
                if stats.files_seen % _FSYNC_EVERY == 0:
                    os.fsync(handle.fileno())
            if stats.files_seen % _ASSEMBLE_EVERY == 0 or pipeline.tracker.wakeup.is_set():
                pipeline.tracker.wakeup.clear()
                stats.outcomes.extend(pipeline.assemble_ready())
                if on_progress is not None:
                    on_progress(stats)
        pipeline.close_session(session, released=True)
        stats.outcomes.extend(pipeline.flush())
    finally:
        if handle is not None:
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
    if on_progress is not None:
        on_progress(stats)
    return stats
