"""The bus runner: poll a batch, handle it, produce outputs, commit input offsets.

Processing guarantees:
* ``exactly-once`` (default): outputs and input offsets are committed in one Kafka
  transaction (``send_offsets_to_transaction`` with the consumer's group metadata, KIP-447),
  consumers read ``read_committed``. A crash at any point either commits the whole batch or
  none of it; the restarted instance (same transactional id, derived from the stable
  instance id) fences its predecessor and aborts whatever it left open.
* ``at-least-once``: outputs are flushed and acknowledged (acks=all, idempotent producer)
  before the input offsets are committed. A crash can repeat outputs; they carry the same
  deterministic event id, so consumers de-duplicate by id.

A record whose handler keeps failing is retried with exponential backoff and then published
to the dead-letter topic with its original coordinates, the error and the attempt count, in
the same transaction as the offsets; the partition keeps flowing. A record that does not
parse as the input event type is dead-lettered at once.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError, ProducerFencedError
from kafka.structs import OffsetAndMetadata, TopicPartition
from pydantic import ValidationError

from cmrqc_shared.bus.errors import (
    ErrorAction,
    ErrorPolicy,
    failure_reason,
    retry_then_dead_letter,
)
from cmrqc_shared.bus.observability import Heartbeat, ObservabilityServer, RunnerMetrics
from cmrqc_shared.bus.signals import stop_on_signals
from cmrqc_shared.events import DeadLetter, Event, ProducerInfo, utc_now
from cmrqc_shared.logs import correlation
from cmrqc_shared.settings import KafkaSettings, RunnerSettings
from cmrqc_shared.topics import TOPIC_BY_NAME, TOPICS, TopicSpec, ensure_topics

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)

#: Original bytes kept in a dead-letter record; beyond this the value is truncated (flagged).
DEAD_LETTER_VALUE_LIMIT = 256 * 1024
FATAL_PRODUCER_ERRORS: tuple[type[BaseException], ...] = (ProducerFencedError,)


@dataclass(frozen=True)
class Produce:
    """An output to a topic other than the event type's own (``topic`` is a declared name)."""

    event: Event
    topic: str


Output = Event | Produce


@dataclass(frozen=True)
class RecordContext:
    """Where an input record came from, and which attempt this is."""

    topic: str
    partition: int
    offset: int
    key: str | None
    timestamp_ms: int
    attempt: int = 1


Handler = Callable[[E, RecordContext], Iterable[Output]]
"""Handles one input event; returns the events to publish (possibly none)."""

BatchHandler = Callable[[Sequence[tuple[E, RecordContext]]], Sequence[Iterable[Output]]]
"""Handles a micro-batch at once (e.g. on a GPU); returns one output list per input.

If it raises, the runner falls back to the per-record handler for that batch, so one bad
record cannot poison its neighbours.
"""


@dataclass
class RunStats:
    """What a ``run`` did."""

    records_in: int = 0
    records_out: int = 0
    dead_lettered: int = 0
    batches: int = 0
    aborted_batches: int = 0
    elapsed_s: float = 0.0
    stopped_because: str = ""


@dataclass
class _PendingOutput:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class StreamRunner(Generic[E]):
    """Runs one handler over one input topic with a chosen processing guarantee.

    Args:
        service: the producing service's name and version (stamped on every output).
        input_type: the event type of the input topic.
        handler: called once per input event (after retries, dead-letters).
        kafka: cluster connection settings.
        settings: runner settings (group, guarantee, retries, health port).
        input_topic: declared input topic name; defaults to ``input_type.TOPIC``.
        batch_handler: optional micro-batch handler (see ``BatchHandler``).
        error_policy: what to do with handler errors; default retry-then-dead-letter.
        extra_topics: topics to create at start-up beyond the declared system topics.
        serve_observability: start the /healthz /readyz /metrics server.
    """

    def __init__(
        self,
        *,
        service: ProducerInfo,
        input_type: type[E],
        handler: Handler[E],
        kafka: KafkaSettings,
        settings: RunnerSettings,
        input_topic: str | None = None,
        batch_handler: BatchHandler[E] | None = None,
        error_policy: ErrorPolicy | None = None,
        extra_topics: Sequence[TopicSpec] = (),
        serve_observability: bool = True,
    ) -> None:
        self.service = service
        self.input_type = input_type
        self.handler = handler
        self.batch_handler = batch_handler
        self.kafka = kafka
        self.settings = settings
        self.input_topic = kafka.topic(input_topic or input_type.TOPIC)
        self.group_id = settings.group_id or kafka.consumer_group(service.service)
        self.exactly_once = settings.processing_guarantee == "exactly-once"
        self.transactional_id = f"{self.group_id}-{settings.instance_id}"
        self.error_policy = error_policy or retry_then_dead_letter(settings.max_attempts)
        self.metrics = RunnerMetrics()
        self._records_in = self.metrics.records_in.labels(self.input_topic)
        self.heartbeat = Heartbeat(stale_after_s=settings.max_poll_interval_ms / 1000)
        self._extra_topics = list(extra_topics)
        self._serve_observability = serve_observability
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self.observability: ObservabilityServer | None = None
        self._last_lag_update = 0.0

    # -- lifecycle -------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish its current batch, commit, and return."""
        self._stop.set()

    @property
    def ready(self) -> bool:
        """Connected, producer initialised, first poll done."""
        return self._ready.is_set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT drain and commit (call from the main thread)."""
        stop_on_signals(self.stop)

    def run(
        self,
        *,
        max_records: int | None = None,
        timeout_s: float | None = None,
        idle_timeout_s: float | None = None,
    ) -> RunStats:
        """Process until stopped or a stop condition holds; always commits what it handled.

        Args:
            max_records: stop after this many input records have been committed.
            timeout_s: stop after this many seconds.
            idle_timeout_s: stop after this many seconds without any input record.
        """
        stats = RunStats()
        started = time.monotonic()
        last_record_at = started
        self._start()
        try:
            while not self._stop.is_set():
                remaining = None if max_records is None else max_records - stats.records_in
                if remaining is not None and remaining <= 0:
                    stats.stopped_because = "max_records"
                    break
                now = time.monotonic()
                if timeout_s is not None and now - started >= timeout_s:
                    stats.stopped_because = "timeout"
                    break
                if idle_timeout_s is not None and now - last_record_at >= idle_timeout_s:
                    stats.stopped_because = "idle"
                    break
                polled = self._poll(remaining)
                self.heartbeat.beat()
                self._ready.set()
                self._update_lag()
                if not polled:
                    continue
                last_record_at = time.monotonic()
                self._process_batch(polled, stats)
            else:
                stats.stopped_because = "stopped"
        finally:
            stats.elapsed_s = time.monotonic() - started
            self._close()
        logger.info(
            "runner stopped",
            extra={
                "stopped_because": stats.stopped_because,
                "records_in": stats.records_in,
                "records_out": stats.records_out,
                "dead_lettered": stats.dead_lettered,
            },
        )
        return stats

    def _start(self) -> None:
        client = self.kafka.client_config()
        admin = KafkaAdminClient(client_id=f"{self.service.service}-admin", **client)
        try:
            specs = [
                TopicSpec(**{**spec.__dict__, "name": self.kafka.topic(spec.name)})
                for spec in TOPICS
            ]
            declared = {s.name for s in specs}
            if self.input_topic not in declared:
                specs.append(TopicSpec(self.input_topic, partitions=6))
            specs.extend(
                TopicSpec(**{**s.__dict__, "name": self.kafka.topic(s.name)})
                for s in self._extra_topics
            )
            ensure_topics(admin, specs)
        finally:
            admin.close()
        self._consumer = KafkaConsumer(
            self.input_topic,
            group_id=self.group_id,
            client_id=f"{self.service.service}-{self.settings.instance_id}",
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset=self.settings.auto_offset_reset,
            max_poll_records=self.settings.max_poll_records,
            max_poll_interval_ms=self.settings.max_poll_interval_ms,
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
            session_timeout_ms=self.settings.session_timeout_ms,
            group_instance_id=(
                self.settings.instance_id if self.settings.static_membership else None
            ),
            # A group assignment computed before the topic's metadata arrived is only redone
            # when metadata refreshes: keep that bounded (default is 5 minutes).
            metadata_max_age_ms=30_000,
            **client,
        )
        self._await_partitions(self.input_topic)
        producer_config = dict(
            client_id=f"{self.service.service}-{self.settings.instance_id}",
            acks="all",
            enable_idempotence=True,
            linger_ms=2,
            # After a commit, the next AddPartitionsToTxn can meet CONCURRENT_TRANSACTIONS
            # while the markers are written; a short retry backoff keeps p99 hop latency low.
            retry_backoff_ms=10,
            **client,
        )
        if self.exactly_once:
            producer_config["transactional_id"] = self.transactional_id
            producer_config["transaction_timeout_ms"] = self.settings.transaction_timeout_ms
        self._producer = KafkaProducer(**producer_config)
        if self.exactly_once:
            # Fences any earlier instance with this id and aborts what it left open.
            self._producer.init_transactions()
        if self._serve_observability and self.observability is None:
            self.observability = ObservabilityServer(
                self.metrics.registry,
                is_live=self.heartbeat.is_fresh,
                is_ready=lambda: self.ready and not self._stop.is_set(),
                host=self.settings.health_host,
                port=self.settings.health_port,
            )
            self.observability.start()
        logger.info(
            "runner started",
            extra={
                "input_topic": self.input_topic,
                "group_id": self.group_id,
                "guarantee": self.settings.processing_guarantee,
            },
        )

    def _await_partitions(self, topic: str, timeout_s: float = 30.0) -> None:
        """Fetch the input topic's metadata before the first poll joins the group.

        Without it the group leader may assign nothing for a just-created topic.
        """
        assert self._consumer is not None
        deadline = time.monotonic() + timeout_s
        while not self._consumer.partitions_for_topic(topic):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no partition metadata for {topic} after {timeout_s:.0f} s")
            time.sleep(0.1)

    def _close(self) -> None:
        self._ready.clear()
        if self._producer is not None:
            self._producer.close(timeout=10)
            self._producer = None
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
            self._consumer = None
        if self.observability is not None:
            self.observability.stop()
            self.observability = None

    # -- the batch -------------------------------------------------------------------------

    def _poll(self, remaining: int | None) -> dict[TopicPartition, list[object]]:
        assert self._consumer is not None
        max_records = self.settings.max_poll_records
        if remaining is not None:
            max_records = max(1, min(max_records, remaining))
        return self._consumer.poll(  # type: ignore[no-any-return]
            timeout_ms=self.settings.poll_timeout_ms, max_records=max_records
        )

    def _process_batch(self, polled: dict[TopicPartition, list[object]], stats: RunStats) -> None:
        batch_started = time.monotonic()
        records = [record for tp in polled for record in polled[tp]]
        outputs, dead_lettered = self._handle_records(records)
        offsets = {
            tp: OffsetAndMetadata(recs[-1].offset + 1, "", -1)  # type: ignore[attr-defined]
            for tp, recs in polled.items()
        }
        try:
            self._commit(outputs, offsets)
        except FATAL_PRODUCER_ERRORS:
            logger.error("producer fenced: another instance took over; stopping")
            raise
        except KafkaError as error:
            # Nothing of this batch is visible (transaction aborted) or its offsets are not
            # committed (at-least-once): rewind and process it again.
            logger.warning("batch commit failed, reprocessing", extra={"error": repr(error)})
            self.metrics.transactions_aborted.inc()
            stats.aborted_batches += 1
            self._abort_and_rewind(polled)
            return
        stats.batches += 1
        stats.records_in += len(records)
        stats.records_out += len(outputs) - dead_lettered
        stats.dead_lettered += dead_lettered
        for topic, count in Counter(output.topic for output in outputs).items():
            self.metrics.records_out.labels(topic).inc(count)
        self.metrics.batch_latency.observe(time.monotonic() - batch_started)

    def _handle_records(self, records: list[object]) -> tuple[list[_PendingOutput], int]:
        parsed: list[tuple[object, E | None, BaseException | None]] = []
        self._records_in.inc(len(records))
        for record in records:
            try:
                parsed.append((record, self.input_type.from_bytes(record.value), None))  # type: ignore[attr-defined]
            except (ValidationError, ValueError, TypeError) as error:
                parsed.append((record, None, error))

        outputs: list[_PendingOutput] = []
        dead_lettered = 0
        batch_results = self._try_batch_handler(parsed)
        for index, (record, event, parse_error) in enumerate(parsed):
            if event is None:
                assert parse_error is not None
                outputs.append(self._dead_letter(record, None, parse_error, attempts=0))
                dead_lettered += 1
                continue
            if batch_results is not None:
                outputs.extend(self._serialise(batch_results[index], event))
                continue
            produced, failed = self._handle_one(record, event)
            outputs.extend(produced)
            dead_lettered += failed
        return outputs, dead_lettered

    def _try_batch_handler(
        self, parsed: list[tuple[object, E | None, BaseException | None]]
    ) -> dict[int, list[Output]] | None:
        if self.batch_handler is None:
            return None
        items = [
            (index, event, self._context(record, 1))
            for index, (record, event, _) in enumerate(parsed)
            if event is not None
        ]
        if not items:
            return None
        started = time.perf_counter()
        try:
            results = self.batch_handler([(event, ctx) for _, event, ctx in items])
            if len(results) != len(items):
                raise ValueError(f"batch handler returned {len(results)} for {len(items)} inputs")
            by_index = {
                index: list(result) for (index, _, _), result in zip(items, results, strict=True)
            }
        except Exception:
            logger.warning("batch handler failed; handling records one by one", exc_info=True)
            return None
        per_record = (time.perf_counter() - started) / len(items)
        for _ in items:
            self.metrics.handler_latency.observe(per_record)
        return by_index

    def _handle_one(self, record: object, event: E) -> tuple[list[_PendingOutput], int]:
        attempt = 0
        with correlation(
            study_instance_uid=event.study_instance_uid,
            series_instance_uid=event.series_instance_uid,
            event_id=event.event_id,
        ):
            while True:
                attempt += 1
                started = time.perf_counter()
                try:
                    results = list(self.handler(event, self._context(record, attempt)))
                    outputs = self._serialise(results, event)
                except Exception as error:
                    action = self.error_policy(error, attempt)
                    if action is ErrorAction.RAISE:
                        raise
                    if action is ErrorAction.RETRY:
                        self.metrics.retries.inc()
                        delay = self._backoff_s(attempt)
                        logger.warning(
                            "handler failed, retrying",
                            extra={"attempt": attempt, "delay_s": delay, "error": repr(error)},
                        )
                        time.sleep(delay)
                        continue
                    logger.error(
                        "handler failed, dead-lettering",
                        extra={"attempt": attempt, "error": repr(error)},
                    )
                    return [self._dead_letter(record, event, error, attempts=attempt)], 1
                self.metrics.handler_latency.observe(time.perf_counter() - started)
                return outputs, 0

    def _backoff_s(self, attempt: int) -> float:
        initial = self.settings.retry_backoff_initial_ms / 1000
        ceiling = self.settings.retry_backoff_max_ms / 1000
        return float(min(ceiling, initial * 2 ** (attempt - 1)))

    def _context(self, record: object, attempt: int) -> RecordContext:
        key = record.key  # type: ignore[attr-defined]
        return RecordContext(
            topic=record.topic,  # type: ignore[attr-defined]
            partition=record.partition,  # type: ignore[attr-defined]
            offset=record.offset,  # type: ignore[attr-defined]
            key=key.decode("utf-8", "replace") if key is not None else None,
            timestamp_ms=record.timestamp,  # type: ignore[attr-defined]
            attempt=attempt,
        )

    def _serialise(self, results: Iterable[Output], cause: Event) -> list[_PendingOutput]:
        outputs = []
        for result in results:
            event, topic = (
                (result.event, result.topic) if isinstance(result, Produce) else (result, None)
            )
            outputs.append(
                _PendingOutput(
                    topic=self.kafka.topic(topic or event.TOPIC),
                    key=event.key.encode("utf-8"),
                    value=event.to_bytes(),
                    headers=[
                        ("cmrqc-schema", event.SCHEMA_NAME.encode()),
                        ("cmrqc-event-id", event.event_id.encode()),
                        ("cmrqc-causation-id", cause.event_id.encode()),
                    ],
                )
            )
        return outputs

    def _dead_letter(
        self, record: object, event: Event | None, error: BaseException, *, attempts: int
    ) -> _PendingOutput:
        reason = "invalid-record" if event is None else failure_reason(error)
        self.metrics.records_failed.labels(reason).inc()
        value: bytes = record.value or b""  # type: ignore[attr-defined]
        ctx = self._context(record, attempts)
        letter = DeadLetter.create(
            derived_from=(ctx.topic, str(ctx.partition), str(ctx.offset), self.group_id),
            producer=self.service,
            study_instance_uid=event.study_instance_uid if event else None,
            series_instance_uid=event.series_instance_uid if event else None,
            causation_id=event.event_id if event else None,
            failed_service=self.service.service,
            reason=reason,
            error_type=type(error).__name__,
            error_message=str(error)[:4000],
            attempts=attempts,
            original_topic=ctx.topic,
            original_partition=ctx.partition,
            original_offset=ctx.offset,
            original_key=ctx.key,
            original_value_b64=base64.b64encode(value[:DEAD_LETTER_VALUE_LIMIT]).decode(),
            original_value_truncated=len(value) > DEAD_LETTER_VALUE_LIMIT,
            first_failed_at=utc_now(),
        )
        return _PendingOutput(
            topic=self.kafka.topic(DeadLetter.TOPIC),
            key=letter.key.encode("utf-8"),
            value=letter.to_bytes(),
            headers=[("cmrqc-schema", DeadLetter.SCHEMA_NAME.encode())],
        )

    # -- committing ------------------------------------------------------------------------

    def _commit(
        self, outputs: list[_PendingOutput], offsets: dict[TopicPartition, OffsetAndMetadata]
    ) -> None:
        producer, consumer = self._producer, self._consumer
        assert producer is not None and consumer is not None
        if self.exactly_once:
            producer.begin_transaction()
            for output in outputs:
                producer.send(
                    output.topic, value=output.value, key=output.key, headers=output.headers
                )
            producer.send_offsets_to_transaction(offsets, consumer.group_metadata())
            producer.commit_transaction()
            return
        futures = [
            producer.send(output.topic, value=output.value, key=output.key, headers=output.headers)
            for output in outputs
        ]
        producer.flush()
        for future in futures:
            future.get(timeout=30)  # raises the send error, if any
        consumer.commit(offsets)

    def _abort_and_rewind(self, polled: dict[TopicPartition, list[object]]) -> None:
        producer, consumer = self._producer, self._consumer
        assert producer is not None and consumer is not None
        if self.exactly_once:
            try:
                producer.abort_transaction()
            except KafkaError:
                logger.exception("abort failed: restarting the producer is needed; stopping")
                raise
        assigned = consumer.assignment()
        for tp, records in polled.items():
            if tp in assigned:
                consumer.seek(tp, records[0].offset)  # type: ignore[attr-defined]

    def _update_lag(self) -> None:
        now = time.monotonic()
        if now - self._last_lag_update < 5 or self._consumer is None:
            return
        self._last_lag_update = now
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                continue
            try:
                position = self._consumer.position(tp, timeout_ms=1000)
            except KafkaError:
                continue
            if position is not None:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                    max(0, highwater - position)
                )


__all__ = [
    "TOPIC_BY_NAME",
    "BatchHandler",
    "Handler",
    "Output",
    "Produce",
    "RecordContext",
    "RunStats",
    "StreamRunner",
]
