"""The ingest pipeline: receive -> spool -> track -> assemble -> blobs -> events.

One :class:`IngestPipeline` serves every entry point: the C-STORE SCP and STOW-RS call
:meth:`IngestPipeline.receive` from their threads; the service's assembler thread (or the
backfill command, inline) calls :meth:`IngestPipeline.assemble_ready`. Nothing here needs
a network: give it a blob store and anything with ``publish(event)``.

Failure policy:
* an instance that fails validation is refused with the DICOM status naming the check;
* a series that is not short-axis cine MR is skipped (``rules``), its files deleted;
* a series that cannot be assembled is dead-lettered (``DeadLetter`` on the dead-letter
  topic, files moved to ``spool/dead``);
* a blob store or Kafka failure is transient: the series stays spooled and is retried
  every ``assembly_retry_s`` (never dropped); readiness reports it.

Read-ahead: an instance received over C-STORE or STOW-RS is queued, and the assembler thread
reads its header (geometry, timing, where its pixel data lies) between arrivals, so that when
the series completes only the pixels are left to read. Results are the same as reading every
file at assembly time (which is what happens for anything not read ahead: backfill, spool
recovery, a file that failed to parse); it only moves the work off the completion path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydicom.dataset import Dataset

from cmrqc_ingest.assembly import (
    AssembledSeries,
    AssemblyError,
    assemble_series,
    instance_set_digest,
    read_series,
)
from cmrqc_ingest.assembly_worker import AssemblyCrashed, AssemblyWorker, AssemblyWorkerError
from cmrqc_ingest.fast_header import FastHeader
from cmrqc_ingest.frames import InstanceRecord, read_instance_record, record_from_dataset
from cmrqc_ingest.instance import (
    InstanceInfo,
    InstanceLimits,
    InstanceRejected,
    decodable_transfer_syntaxes,
    inspect_instance,
    inspect_instance_dataset,
    quiet_value_validation,
)
from cmrqc_ingest.instance_ref import InstanceRef
from cmrqc_ingest.metrics import IngestMetrics
from cmrqc_ingest.publishing import (
    Publisher,
    default_producer,
    make_dead_letter,
    make_volume_ready,
    scrub,
    store_volume,
)
from cmrqc_ingest.rules import SeriesSkipped, SkipReason
from cmrqc_ingest.settings import IngestSettings
from cmrqc_ingest.spool import Spool, SpooledFile, SpoolFull
from cmrqc_ingest.status import StoreStatus
from cmrqc_ingest.tracker import SeriesSnapshot, SeriesTracker
from cmrqc_shared.blobs import BlobStore
from cmrqc_shared.events import Event, IngestSource, PipelineTimestamps, ProducerInfo, utc_now
from cmrqc_shared.logs import correlation

logger = logging.getLogger(__name__)

_SKIPPED_MEMORY = 4096
_TOMBSTONE_AGE_S = 24 * 3600.0
#: Read-ahead: headers kept at most (about 1-2 KB each), and time spent per assembler pass.
_READ_AHEAD_MAX_RECORDS = 20000
_READ_AHEAD_BUDGET_S = 0.003
#: Queued instances that keep their parsed header (each holds its bytes, ~0.1-1 MB).
_READ_AHEAD_MAX_PARSED = 256
#: Arrivals that wake the assembler for read-ahead (a wake per instance costs GIL handoffs).
_READ_AHEAD_BATCH = 8
#: A series whose assembly killed the assembly process is tried this many more times.
_CRASH_RETRIES = 1


def _log_key(session: str | None) -> str:
    """The spool log an instance goes to: its session's, or its thread's without one."""
    return session if session is not None else f"thread-{threading.get_ident()}"


@dataclass(frozen=True)
class ReceiveResult:
    """How one instance was answered."""

    status: StoreStatus
    reason: str
    """stored, duplicate, skipped-sop-class, or the rejection reason."""
    message: str = ""
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None


@dataclass
class SeriesOutcome:
    """What happened to one complete series."""

    series_instance_uid: str
    kind: str
    """published, skipped, dead-lettered, duplicate, retry or vanished."""
    reason: str = ""
    events: list[Event] = field(default_factory=list)


class IngestPipeline:
    """Spool, tracker and assembler behind one thread-safe interface."""

    def __init__(
        self,
        settings: IngestSettings,
        *,
        blobs: BlobStore,
        publisher: Publisher,
        metrics: IngestMetrics | None = None,
        producer: ProducerInfo | None = None,
        clock: Callable[[], float] = time.monotonic,
        assembly_worker: AssemblyWorker | None = None,
    ) -> None:
        """``assembly_worker``: assemble in that child process (``assembly_worker``
        module); None: in the calling thread."""
        self.settings = settings
        self.assembly_worker = assembly_worker
        self.blobs = blobs
        self.publisher = publisher
        self.metrics = metrics or IngestMetrics()
        self.producer = producer or default_producer(settings.runner.instance_id)
        self.spool = Spool(
            settings.spool_dir,
            fsync=settings.spool_fsync,
            max_bytes=settings.spool_max_bytes,
            min_free_bytes=settings.spool_min_free_bytes,
        )
        self.tracker = SeriesTracker(
            quiet_time_s=settings.quiet_time_s,
            assemble_on_release=settings.assemble_on_release,
            clock=clock,
        )
        self.limits = InstanceLimits(
            max_rows=settings.max_rows,
            max_columns=settings.max_columns,
            max_frames=settings.max_frames,
            max_instance_bytes=settings.max_instance_bytes,
            max_series_instances=settings.max_series_instances,
        )
        self.transfer_syntaxes = decodable_transfer_syntaxes()
        quiet_value_validation()  # no identifiers in pydicom's warnings
        self._clock = clock
        self._skipped_series: OrderedDict[str, None] = OrderedDict()
        self._skipped_lock = threading.Lock()
        self._assembly_lock = threading.Lock()
        self.downstream_ok = True
        """False while the blob store or Kafka fails (readiness)."""
        self._last_gc = 0.0
        self._read_ahead_queue: deque[tuple[InstanceRef, Dataset | FastHeader | None, int]] = (
            deque()
        )
        """Spooled instances whose headers the assembler thread reads ahead (thread-safe)."""
        self._read_ahead: dict[InstanceRef, InstanceRecord] = {}
        """Headers read ahead, by spooled instance; used under the assembly lock only."""

    # -- lifecycle -----------------------------------------------------------------------

    def open(self) -> int:
        """Open the spool and re-register what a previous run left there.

        Returns the number of instances recovered. Their series complete by the usual rules
        (expected count, or the quiet time since no session is open any more).

        Raises:
            SpoolLocked: another process uses the spool.
        """
        self.spool.open()
        recovered = 0
        for _key, files in self.spool.iter_incoming():
            for spooled in files:
                try:
                    data = spooled.ref.read_bytes()
                    info = inspect_instance(
                        data,
                        received_at=spooled.received_at,
                        limits=self.limits,
                        transfer_syntaxes=self.transfer_syntaxes,
                    )
                except (InstanceRejected, OSError, EOFError) as error:
                    # Accepted under other settings; keep it for inspection, never delete.
                    logger.warning(
                        "spooled instance no longer valid; quarantined",
                        extra={"file": spooled.ref.name, "error": type(error).__name__},
                    )
                    self.spool.quarantine(
                        spooled.path.name,  # (its series is unknown: the log names it)
                        [spooled.ref],
                        {"reason": "invalid-at-recovery", "error_type": type(error).__name__},
                    )
                    continue
                existing = self.tracker.add(info, spooled)
                if existing is not None and existing.ref != spooled.ref:
                    self.spool.remove_file(spooled.ref)
                recovered += existing is None
        self._update_gauges()
        if recovered:
            logger.info(
                "recovered spooled instances",
                extra={"instances": recovered, "series": len(self.tracker)},
            )
        return recovered

    def close(self) -> None:
        self.spool.close()

    def ready(self) -> bool:
        """Ready for new data: spool below its watermarks and downstream reachable."""
        return self.spool.below_watermark() and self.downstream_ok

    # -- receiving -----------------------------------------------------------------------

    def receive(
        self,
        data: bytes,
        *,
        source: IngestSource,
        session: str | None = None,
        affected_sop_class_uid: str | None = None,
        affected_sop_instance_uid: str | None = None,
        study_instance_uid: str | None = None,
    ) -> ReceiveResult:
        """Validate, spool and register one Part 10 instance; never raises.

        Args:
            data: the instance as a Part 10 file.
            source: how it came in (labels metrics and the spooled file).
            session: the association / request / run delivering it (completion rules).
            affected_sop_class_uid, affected_sop_instance_uid: from a C-STORE request.
            study_instance_uid: STOW-RS to a study URL: the instance must belong to it.
        """
        try:
            result = self._receive(
                data,
                source=source,
                session=session,
                affected_sop_class_uid=affected_sop_class_uid,
                affected_sop_instance_uid=affected_sop_instance_uid,
                study_instance_uid=study_instance_uid,
            )
        except Exception as error:  # a bug of ours must not reach the network layer
            logger.exception("unexpected error receiving an instance")
            # 0x0110 processing failure: not the sender's fault; it may retry
            result = ReceiveResult(
                StoreStatus.PROCESSING_FAILURE, "internal-error", type(error).__name__
            )
        self._count(source, result)
        return result

    def record_refusal(
        self, source: IngestSource, status: StoreStatus, reason: str, message: str
    ) -> ReceiveResult:
        """Count and log an instance the network layer refused before it was complete (for
        example one larger than ``max_instance_bytes``, never held in memory)."""
        result = ReceiveResult(status, reason, message)
        self._count(source, result)
        return result

    def _count(self, source: IngestSource, result: ReceiveResult) -> None:
        self.metrics.instances_received.labels(source.value, result.status.label).inc()
        if result.status != StoreStatus.SUCCESS:
            self.metrics.instances_rejected.labels(
                source.value, result.status.label, result.reason
            ).inc()
            logger.info(
                "instance refused",
                extra={
                    "status": result.status.label,
                    "reason": result.reason,
                    "detail": result.message,
                    "source": source.value,
                },
            )

    def _receive(
        self,
        data: bytes,
        *,
        source: IngestSource,
        session: str | None,
        affected_sop_class_uid: str | None,
        affected_sop_instance_uid: str | None,
        study_instance_uid: str | None,
    ) -> ReceiveResult:
        try:
            self.spool.check_capacity(len(data))
        except SpoolFull as error:
            # 0xA700 refused, out of resources: spool watermark or free disk
            return ReceiveResult(StoreStatus.OUT_OF_RESOURCES, "spool-full", str(error))
        try:
            info, dataset = inspect_instance_dataset(
                data,
                received_at=datetime.now(UTC),
                limits=self.limits,
                affected_sop_class_uid=affected_sop_class_uid,
                affected_sop_instance_uid=affected_sop_instance_uid,
                transfer_syntaxes=self.transfer_syntaxes,
            )
        except InstanceRejected as rejected:
            return ReceiveResult(rejected.status, rejected.reason, rejected.message)
        self.metrics.headers_read.labels(
            "fast" if isinstance(dataset, FastHeader) else "pydicom"
        ).inc()
        ids = {"sop_class_uid": info.sop_class_uid, "sop_instance_uid": info.sop_instance_uid}
        if study_instance_uid is not None and info.study_instance_uid != study_instance_uid:
            # 0xA900: STOW-RS to /studies/{uid} with an instance of another study (PS3.18)
            return ReceiveResult(
                StoreStatus.DATASET_MISMATCH,
                "study-mismatch",
                "StudyInstanceUID differs from the request URL",
                **ids,
            )
        if not info.assembled:
            if not self.settings.accept_all_storage:
                # 0x0122 SOP class not supported: only MR / Enhanced MR are taken
                return ReceiveResult(
                    StoreStatus.SOP_CLASS_NOT_SUPPORTED, "sop-class-not-supported", "", **ids
                )
            self._skip_on_arrival(info)
            return ReceiveResult(StoreStatus.SUCCESS, "skipped-sop-class", "", **ids)
        if self.tracker.contains(info.series_instance_uid, info.sop_instance_uid):
            self.tracker.touch(info.series_instance_uid, session)
            self.metrics.instances_duplicate.inc()
            return ReceiveResult(StoreStatus.SUCCESS, "duplicate", "", **ids)
        try:
            spooled = self.spool.write(_log_key(session), source.value, data)
        except SpoolFull as error:
            # 0xA700 refused, out of resources: spool watermark or free disk
            return ReceiveResult(StoreStatus.OUT_OF_RESOURCES, "spool-full", str(error), **ids)
        except OSError as error:
            logger.error("spool write failed", extra={"error": type(error).__name__})
            # 0xA700 refused, out of resources: the disk refused the write
            return ReceiveResult(
                StoreStatus.OUT_OF_RESOURCES, "spool-write-failed", type(error).__name__, **ids
            )
        existing = self.tracker.add(info, spooled, session)
        if existing is not None:
            self.spool.remove_file(spooled.ref)
            self.metrics.instances_duplicate.inc()
            return ReceiveResult(StoreStatus.SUCCESS, "duplicate", "", **ids)
        if source != IngestSource.BACKFILL:
            # backfill assembles in its own loop, on its own schedule: nothing to read ahead
            # the parsed header goes along: a fast one always (a few values), pydicom's
            # while the queue is short (it holds the bytes)
            keep = (
                isinstance(dataset, FastHeader)
                or len(self._read_ahead_queue) < _READ_AHEAD_MAX_PARSED
            )
            self._read_ahead_queue.append((spooled.ref, dataset if keep else None, len(data)))
            if len(self._read_ahead_queue) >= _READ_AHEAD_BATCH:
                self.tracker.wakeup.set()  # (a completed series wakes the assembler anyway)
        self.metrics.spool_bytes.set(self.spool.used_bytes)
        return ReceiveResult(StoreStatus.SUCCESS, "stored", "", **ids)

    def _skip_on_arrival(self, info: InstanceInfo) -> None:
        """Count a non-MR series once (its instances are acknowledged, never spooled)."""
        with self._skipped_lock:
            if info.series_instance_uid in self._skipped_series:
                self._skipped_series.move_to_end(info.series_instance_uid)
                return
            self._skipped_series[info.series_instance_uid] = None
            while len(self._skipped_series) > _SKIPPED_MEMORY:
                self._skipped_series.popitem(last=False)
        self.metrics.series_skipped.labels(SkipReason.NOT_MR.value).inc()
        with correlation(
            study_instance_uid=info.study_instance_uid,
            series_instance_uid=info.series_instance_uid,
        ):
            logger.info(
                "series skipped",
                extra={"reason": SkipReason.NOT_MR.value, "sop_class_uid": info.sop_class_uid},
            )

    def close_session(self, session: str, *, released: bool) -> None:
        """A session (association, STOW-RS request, backfill run) ended."""
        self.tracker.close_session(session, released=released)
        self.spool.end(_log_key(session))

    # -- assembling ----------------------------------------------------------------------

    def assemble_ready(self, now: float | None = None) -> list[SeriesOutcome]:
        """Assemble every complete series; returns what happened to each.

        First reads ahead the headers of arriving instances, for a few milliseconds; if some
        are left it sets ``tracker.wakeup`` so that the assembler comes back soon.
        """
        with self._assembly_lock:
            self._read_headers_ahead()  # first: the instance that completed a series, too
            outcomes = [self.assemble(s) for s in self.tracker.take_ready(now)]
            self._maybe_collect_garbage()
            self._update_gauges()
            return outcomes

    def flush(self) -> list[SeriesOutcome]:
        """Assemble every pending series now, complete or not (end of a backfill run)."""
        with self._assembly_lock:
            outcomes = [self.assemble(s) for s in self.tracker.take_all()]
            self._update_gauges()
            return outcomes

    def _update_gauges(self) -> None:
        self.metrics.spool_bytes.set(self.spool.used_bytes)
        self.metrics.pending_series.set(len(self.tracker))

    def _read_headers_ahead(self) -> None:
        """Read queued headers for up to ``_READ_AHEAD_BUDGET_S`` (assembly lock held)."""
        queue, records = self._read_ahead_queue, self._read_ahead
        deadline = time.perf_counter() + _READ_AHEAD_BUDGET_S
        while queue and time.perf_counter() < deadline:
            ref, dataset, size = queue.popleft()
            if (
                ref in records
                or len(records) >= _READ_AHEAD_MAX_RECORDS
                or not self.spool.contains(ref)
            ):
                continue  # (gone: its series was assembled already)
            try:
                records[ref] = (
                    record_from_dataset(dataset, size, ref)
                    if dataset is not None
                    else read_instance_record(ref)
                )
            except Exception:  # gone (already assembled) or unreadable: assembly reports it
                continue
        if queue:
            self.tracker.wakeup.set()

    def _take_read_ahead(
        self, refs: Iterable[InstanceRef]
    ) -> dict[Path | InstanceRef, InstanceRecord]:
        """Remove and return the headers read ahead for ``refs`` (assembly lock held)."""
        records = self._read_ahead
        taken: dict[Path | InstanceRef, InstanceRecord] = {}
        for ref in refs:
            record = records.pop(ref, None)
            if record is not None:
                taken[ref] = record
        return taken

    def _maybe_collect_garbage(self) -> None:
        now = self._clock()
        if now - self._last_gc < 3600:
            return
        self._last_gc = now
        self.spool.collect_garbage(
            dead_older_than_s=self.settings.quarantine_retention_s,
            done_older_than_s=_TOMBSTONE_AGE_S,
        )

    def assemble(self, snapshot: SeriesSnapshot) -> SeriesOutcome:
        """Assemble one complete series and publish its events (or skip / dead-letter it)."""
        uid = snapshot.series_instance_uid
        with correlation(study_instance_uid=snapshot.study_instance_uid, series_instance_uid=uid):
            started = time.monotonic()
            outcome = self._assemble(snapshot)
            self.metrics.assembly_seconds.observe(time.monotonic() - started)
            return outcome

    def _assemble(self, snapshot: SeriesSnapshot) -> SeriesOutcome:
        uid = snapshot.series_instance_uid
        records = self._take_read_ahead(s.ref for _, s in snapshot.instances)
        present = [(i, s) for i, s in snapshot.instances if self.spool.contains(s.ref)]
        if not present:
            # every file went with an earlier assembly: these were re-sent duplicates
            return SeriesOutcome(uid, "vanished")
        paths: list[Path | InstanceRef] = [s.ref for _, s in present]
        sop_uids = [i.sop_instance_uid for i, _ in present]
        digest = instance_set_digest(sop_uids)
        if set(sop_uids) <= self.spool.completed_instances(uid):
            # every instance was in the set handled last time: a re-send, nothing new
            self.spool.remove_files(s.ref for _, s in present)
            self.metrics.series_duplicate.inc()
            logger.info("series re-sent; its instances were already handled")
            return SeriesOutcome(uid, "duplicate")
        try:
            if self.assembly_worker is not None:
                assembled = self.assembly_worker.assemble(paths, records=records)
            else:
                assembled = assemble_series(
                    paths,
                    min_slices=self.settings.min_slices,
                    publish_all_phases=self.settings.publish_all_phases,
                    records=records,
                )
        except SeriesSkipped as skipped:
            self.metrics.series_skipped.labels(skipped.reason.value).inc()
            logger.info(
                "series skipped",
                extra={"reason": skipped.reason.value, "detail": skipped.detail},
            )
            self.spool.remove_files(s.ref for _, s in present)
            self.spool.mark_completed(uid, sop_uids, digest, f"skipped:{skipped.reason.value}")
            return SeriesOutcome(uid, "skipped", skipped.reason.value)
        except AssemblyError as error:
            return self._dead_letter(
                snapshot, present, digest, error.reason, type(error), error, records
            )
        except AssemblyCrashed as error:
            if snapshot.attempts < _CRASH_RETRIES:  # it may have been something else
                return self._retry(snapshot, error, downstream=False)
            return self._dead_letter(
                snapshot, present, digest, "assembly-crashed", type(error), error, records
            )
        except AssemblyWorkerError as error:  # a bug of ours, in the assembly process
            logger.error(
                "unexpected error assembling a series",
                extra={"error": error.error_type, "traceback": error.remote_traceback},
            )
            return self._dead_letter(
                snapshot, present, digest, "assembly-error", type(error), error, records
            )
        except Exception as error:  # a bug of ours: dead-letter rather than loop forever
            logger.exception("unexpected error assembling a series")
            return self._dead_letter(
                snapshot, present, digest, "assembly-error", type(error), error, records
            )
        return self._publish(snapshot, present, digest, assembled)

    def _publish(
        self,
        snapshot: SeriesSnapshot,
        present: list[tuple[InstanceInfo, SpooledFile]],
        digest: str,
        assembled: AssembledSeries,
    ) -> SeriesOutcome:
        uid = snapshot.series_instance_uid
        received = [i.received_at for i, _ in present]
        first_at, last_at = min(received), max(received)
        assembled_at = utc_now()
        source = IngestSource(present[0][1].source)
        stack = assembled.stack
        try:
            events: list[Event] = []
            for phase in assembled.phases:
                ref = store_volume(self.blobs, phase.volume)
                events.append(
                    make_volume_ready(
                        producer=self.producer,
                        study_uid=snapshot.study_instance_uid,
                        series_uid=uid,
                        cardiac_phase=phase.cardiac_phase,
                        frame_keys=phase.frame_keys,
                        volume=ref,
                        shape=phase.volume.shape,  # type: ignore[arg-type]
                        affine=stack.affine,
                        pixel_spacing_mm=stack.pixel_spacing_mm,
                        slice_spacing_mm=stack.slice_spacing_mm,
                        slice_thickness_mm=stack.slice_thickness_mm,
                        trigger_time_ms=phase.trigger_time_ms,
                        instance_count=phase.instance_count,
                        source=source,
                        timestamps=PipelineTimestamps(
                            first_instance_received_at=first_at,
                            last_instance_received_at=last_at,
                            volume_assembled_at=assembled_at,
                        ),
                        phase_index=phase.index,
                    )
                )
            for event in events:
                self.publisher.publish(event)
        except Exception as error:  # blob store or broker down: transient, retry later
            return self._retry(snapshot, error)
        self.downstream_ok = True
        latency = (utc_now() - last_at).total_seconds()
        self.metrics.volume_latency.observe(max(latency, 0.0))
        self.metrics.series_assembled.inc()
        for phase in assembled.phases:
            self.metrics.volumes_published.labels(phase.cardiac_phase.value).inc()
        self.spool.remove_files(s.ref for _, s in present)
        self.spool.mark_completed(
            uid, [i.sop_instance_uid for i, _ in present], digest, "published"
        )
        logger.info(
            "series published",
            extra={
                "phases": [p.cardiac_phase.value for p in assembled.phases],
                "event_ids": [e.event_id for e in events],
                "slices": stack.n_slices,
                "phase_count": assembled.phase_count,
                "completion": snapshot.reason,
                "latency_s": round(latency, 4),
            },
        )
        return SeriesOutcome(uid, "published", snapshot.reason, events)

    def _dead_letter(
        self,
        snapshot: SeriesSnapshot,
        present: list[tuple[InstanceInfo, SpooledFile]],
        digest: str,
        reason: str,
        error_type: type[BaseException],
        error: BaseException,
        records: dict[Path | InstanceRef, InstanceRecord] | None = None,
    ) -> SeriesOutcome:
        uid = snapshot.series_instance_uid
        refs = [s.ref for _, s in present]
        try:
            _, _, identifiers = read_series(refs, records)
        except AssemblyError:
            identifiers = set()
        if isinstance(error, AssemblyError):
            message, details = error.message, dict(error.details)
        else:
            message, details = f"unexpected {error_type.__name__} while assembling", {}
        message = scrub(message, identifiers)
        details = {k: scrub(v, identifiers) for k, v in details.items()}
        details.update(
            {
                "instances": str(len(refs)),
                "completion": snapshot.reason,
                "instance_set_sha256": digest,
            }
        )
        event = make_dead_letter(
            producer=self.producer,
            study_uid=snapshot.study_instance_uid,
            series_uid=uid,
            reason=reason,
            error_type=error_type.__name__,
            message=message,
            digest=digest,
            details=details,
            first_failed_at=utc_now(),
        )
        try:
            self.publisher.publish(event)
        except Exception as publish_error:  # broker down: keep the series, retry later
            return self._retry(snapshot, publish_error)
        folder = self.spool.quarantine(
            uid, refs, {"reason": reason, "message": message, "details": details}
        )
        self.spool.mark_completed(
            uid, [i.sop_instance_uid for i, _ in present], digest, f"dead-lettered:{reason}"
        )
        details["quarantine"] = folder.name
        self.metrics.series_dead_lettered.labels(reason).inc()
        logger.warning(
            "series dead-lettered",
            extra={"reason": reason, "detail": message, "folder": folder.name},
        )
        return SeriesOutcome(uid, "dead-lettered", reason, [event])

    def _retry(
        self, snapshot: SeriesSnapshot, error: BaseException, *, downstream: bool = True
    ) -> SeriesOutcome:
        """Keep the series for another attempt; ``downstream``: the blob store or broker
        failed (readiness reports it until a series gets through)."""
        if downstream:
            self.downstream_ok = False
        self.metrics.assembly_retries.inc()
        logger.error(
            "blob store or broker failed; series kept for retry"
            if downstream
            else "assembly failed; series kept for one more attempt",
            extra={
                "error": type(error).__name__,
                "attempt": snapshot.attempts + 1,
                "retry_in_s": self.settings.assembly_retry_s,
            },
        )
        self.tracker.put_back(snapshot, self.settings.assembly_retry_s)
        return SeriesOutcome(snapshot.series_instance_uid, "retry", type(error).__name__)
