"""Which series are still arriving, and when a series is complete.

A *session* is whatever delivers instances: one DICOM association, one STOW-RS request, one
backfill run. A series is complete, and handed to the assembler, when the first of these holds:

1. **Expected count reached**: the header says how many instances the series has
   (ImagesInAcquisition when it is a multiple of CardiacNumberOfImages and larger than it,
   or 1 for an Enhanced MR instance holding every position x phase) and that many distinct
   SOPInstanceUIDs are spooled — even while the association is still open.
2. **Released**: no session that contributed to it is open any more, the last one ended with
   a normal release (A-RELEASE, end of a STOW-RS request, end of a backfill run), and nothing
   says instances are missing (no unmet expected count; with CardiacNumberOfImages, every
   slice position seen has that many instances). Can be switched off (``assemble_on_release``).
3. **Quiet time**: no contributing session is open and nothing arrived for ``quiet_time_s``
   (default 2 s). This covers aborted associations and senders that spread a series over
   several associations; an association left open and silent is aborted by the SCP's
   network timeout, after which this rule applies.

Re-sent instances are idempotent: a SOPInstanceUID already pending is acknowledged again but
counted once. All methods are thread-safe (SCP threads add, the assembler thread takes).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from cmrqc_ingest.instance import InstanceInfo
from cmrqc_ingest.spool import SpooledFile


@dataclass
class PendingSeries:
    """A series whose instances are spooled but not yet assembled."""

    series_instance_uid: str
    study_instance_uid: str
    instances: dict[str, tuple[InstanceInfo, SpooledFile]] = field(default_factory=dict)
    """By SOPInstanceUID; add through :meth:`add_instance`, which keeps the counts."""
    open_sessions: set[str] = field(default_factory=set)
    released: bool = False
    last_activity: float = 0.0
    """Monotonic time of the last instance (or re-sent duplicate), s."""
    next_attempt: float = 0.0
    """Monotonic time before which the assembler must not retry, s."""
    attempts: int = 0
    _expected: int | None = field(default=None, repr=False)
    _phases: int | None = field(default=None, repr=False)
    _per_position: Counter[str] = field(default_factory=Counter, repr=False)

    def add_instance(self, info: InstanceInfo, spooled: SpooledFile) -> SpooledFile | None:
        """Register an instance; returns the file already registered for its SOPInstanceUID.

        Keeps the counts behind :meth:`expected_instances` and :meth:`positions_complete`
        up to date, so the completion rules cost the same for 10 or 10,000 instances.
        """
        existing = self.instances.get(info.sop_instance_uid)
        if existing is not None:
            return existing[1]
        self.instances[info.sop_instance_uid] = (info, spooled)
        if info.expected_instances:
            self._expected = max(self._expected or 0, info.expected_instances)
        if info.cardiac_number_of_images:
            self._phases = max(self._phases or 0, info.cardiac_number_of_images)
        if info.slice_position_key:
            self._per_position[info.slice_position_key] += 1
        return None

    def expected_instances(self) -> int | None:
        """The trusted expected instance count, if any instance's header gave one."""
        return self._expected

    def positions_complete(self) -> bool:
        """With CardiacNumberOfImages: every slice position seen has that many instances."""
        if not self._phases:
            return True
        phases = self._phases
        return all(count >= phases for count in self._per_position.values())


@dataclass(frozen=True)
class SeriesSnapshot:
    """A complete series taken from the tracker for assembly."""

    series_instance_uid: str
    study_instance_uid: str
    instances: tuple[tuple[InstanceInfo, SpooledFile], ...]
    reason: str
    """Which completion rule fired: expected-count, released, quiet-time or flush."""
    attempts: int


class SeriesTracker:
    """Pending series, the sessions feeding them, and the completion rules above."""

    def __init__(
        self,
        *,
        quiet_time_s: float = 2.0,
        assemble_on_release: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.quiet_time_s = quiet_time_s
        self.assemble_on_release = assemble_on_release
        self._clock = clock
        self._lock = threading.Lock()
        self._series: dict[str, PendingSeries] = {}
        self._sessions: dict[str, set[str]] = {}
        self.wakeup = threading.Event()
        """Set whenever a series may have become complete (the assembler waits on it)."""

    def __len__(self) -> int:
        with self._lock:
            return len(self._series)

    def contains(self, series_uid: str, sop_instance_uid: str) -> bool:
        """Whether this instance is already pending."""
        with self._lock:
            series = self._series.get(series_uid)
            return series is not None and sop_instance_uid in series.instances

    def touch(self, series_uid: str, session: str | None) -> None:
        """Note activity on a series (a re-sent duplicate): restarts its quiet time."""
        with self._lock:
            series = self._series.get(series_uid)
            if series is not None:
                series.last_activity = self._clock()
                self._join(series, session)

    def add(
        self, info: InstanceInfo, spooled: SpooledFile, session: str | None = None
    ) -> SpooledFile | None:
        """Register a spooled instance.

        Returns:
            None when added; the file already registered when the SOPInstanceUID was
            pending (a re-send: the caller drops the new copy if it is another file).
        """
        with self._lock:
            series = self._series.get(info.series_instance_uid)
            if series is None:
                series = PendingSeries(info.series_instance_uid, info.study_instance_uid)
                self._series[info.series_instance_uid] = series
            series.last_activity = self._clock()
            self._join(series, session)
            existing = series.add_instance(info, spooled)
            if existing is not None:
                return existing
            expected = series.expected_instances()
            if expected is not None and len(series.instances) >= expected:
                self.wakeup.set()
            return None

    def _join(self, series: PendingSeries, session: str | None) -> None:
        if session is None:
            return
        series.open_sessions.add(session)
        series.released = False
        self._sessions.setdefault(session, set()).add(series.series_instance_uid)

    def close_session(self, session: str, *, released: bool) -> None:
        """A session ended: ``released`` for a normal end, False for an abort or error.

        Idempotent: closing an unknown or already closed session does nothing.
        """
        with self._lock:
            for uid in self._sessions.pop(session, set()):
                series = self._series.get(uid)
                if series is None:
                    continue
                series.open_sessions.discard(session)
                if not series.open_sessions:
                    series.released = released
                    series.last_activity = max(series.last_activity, self._clock())
        self.wakeup.set()

    def completion_reason(self, series: PendingSeries, now: float) -> str | None:
        """The rule that makes ``series`` complete at ``now``, or None (see module doc)."""
        if now < series.next_attempt or not series.instances:
            return None
        expected = series.expected_instances()
        if expected is not None and len(series.instances) >= expected:
            return "expected-count"
        if series.open_sessions:
            return None
        if (
            series.released
            and self.assemble_on_release
            and expected is None
            and series.positions_complete()
        ):
            return "released"
        if now - series.last_activity >= self.quiet_time_s:
            return "quiet-time"
        return None

    def take_ready(self, now: float | None = None) -> list[SeriesSnapshot]:
        """Remove and return every complete series (new instances start a new entry)."""
        now = self._clock() if now is None else now
        taken = []
        with self._lock:
            for uid, series in list(self._series.items()):
                reason = self.completion_reason(series, now)
                if reason is not None:
                    taken.append(self._snapshot(series, reason))
                    del self._series[uid]
        return taken

    def take_all(self) -> list[SeriesSnapshot]:
        """Remove and return every pending series (end of a backfill run)."""
        with self._lock:
            taken = [self._snapshot(s, "flush") for s in self._series.values() if s.instances]
            self._series.clear()
        return taken

    def _snapshot(self, series: PendingSeries, reason: str) -> SeriesSnapshot:
        return SeriesSnapshot(
            series_instance_uid=series.series_instance_uid,
            study_instance_uid=series.study_instance_uid,
            instances=tuple(series.instances.values()),
            reason=reason,
            attempts=series.attempts,
        )

    def put_back(self, snapshot: SeriesSnapshot, retry_after_s: float) -> None:
        """Return a snapshot whose assembly failed for a transient cause, to retry later."""
        with self._lock:
            series = self._series.get(snapshot.series_instance_uid)
            if series is None:
                series = PendingSeries(snapshot.series_instance_uid, snapshot.study_instance_uid)
                series.released = True
                series.last_activity = 0.0  # complete again as soon as the retry is due
                self._series[snapshot.series_instance_uid] = series
            for info, spooled in snapshot.instances:
                series.add_instance(info, spooled)
            series.attempts = snapshot.attempts + 1
            series.next_attempt = self._clock() + retry_after_s

    def open_session_count(self) -> int:
        """Sessions currently feeding at least one pending series."""
        with self._lock:
            return len(self._sessions)
