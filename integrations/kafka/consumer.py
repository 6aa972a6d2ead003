"""An at-least-once asyncio Kafka consumer over librdkafka: commits after processing, a
dead-letter topic for records whose handler fails."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Self, cast

import confluent_kafka as ck
from prometheus_client import CollectorRegistry

from integrations.kafka.client_thread import (
    ClientThread,
)
from integrations.kafka.config import (
    CONNECTION_PREFIXES,
    CONSUMER_FIXED,
    checked_extra,
)
from integrations.kafka.errors import (
    HandlerError,
    KafkaError,
)
from integrations.kafka.futures import (
    consume_exception,
)
from integrations.kafka.metrics import (
    KafkaMetrics,
)
from integrations.kafka.producer import (
    Producer,
)
from integrations.kafka.records import (
    Record,
    dead_letter_headers,
    record_headers,
)
from integrations.kafka.redaction import (
    log,
    redacted,
    register_secrets,
)

__all__ = ["Consumer"]

# Commit failures meaning the partitions moved to another member: its records are redelivered
# there (at least once), so they are reported, not raised. By librdkafka's error names (the
# codes of its local errors are private names of confluent_kafka.KafkaError).
_REBALANCED = frozenset(
    {"REBALANCE_IN_PROGRESS", "ILLEGAL_GENERATION", "UNKNOWN_MEMBER_ID", "_NO_OFFSET"}
)


class Consumer:
    """An at-least-once asyncio consumer: offsets are committed only after records are
    processed.

    ``run()`` hands records to the handler one at a time, in partition order, and commits
    (synchronously, confirmed by the broker) after each fetched batch of up to ``max_batch``
    records. A crash or cancellation before that commit means the batch is delivered again,
    to this group, after a restart or rebalance: handlers must be idempotent. A handler that
    raises sends the record to ``dead_letter_topic`` (with ``dlq.*`` headers), or, without
    one, stops ``run()`` with HandlerError; nothing is ever skipped silently.

    The dead-letter producer is ``dead_letter_producer`` if given (started and stopped by its
    owner), otherwise one built from ``bootstrap_servers`` and the connection settings
    (``security.*``, ``sasl.*``, ``ssl.*``, ...) in ``extra``.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        group_id: str,
        topics: Sequence[str],
        *,
        dead_letter_topic: str | None = None,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        auto_offset_reset: str = "earliest",
        max_batch: int = 500,
        poll_timeout_s: float = 0.2,
        extra: Mapping[str, object] | None = None,
        name: str = "kafka",
        registry: CollectorRegistry | None = None,
        dead_letter_producer: Producer | None = None,
        resume_at: Callable[[], Mapping[tuple[str, int], int]] | None = None,
    ) -> None:
        """``resume_at``, called at every assignment (on the consumer's thread, between
        batches), maps (topic, partition) to the offset to read that partition from instead of
        the group's committed offset; partitions it does not name start at the group's. For a
        processor whose state, stored with its positions, is the record of what it has
        consumed (``TransactionalPipeline``'s ``checkpoint``): the group's offsets may lag it."""
        if not topics:
            raise ValueError("topics must not be empty")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        conf = checked_extra(extra, CONSUMER_FIXED)
        conf.update(
            {
                "bootstrap.servers": bootstrap_servers,
                "group.id": group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": auto_offset_reset,
                "session.timeout.ms": session_timeout_ms,
                "heartbeat.interval.ms": heartbeat_interval_ms,
            }
        )
        register_secrets(conf)
        self._conf = conf
        self._topics = list(topics)
        self._name = name
        self._max_batch = max_batch
        self._poll_timeout_s = poll_timeout_s
        self._earliest = auto_offset_reset in ("earliest", "smallest", "beginning")
        self._resume_at = resume_at
        # Incremental (cooperative) rebalancing: the classic protocol's cooperative-sticky
        # assignor, or the consumer group protocol of KIP-848.
        self._cooperative = (
            "cooperative" in str(conf.get("partition.assignment.strategy", ""))
            or str(conf.get("group.protocol", "")).lower() == "consumer"
        )
        self.dead_letter_topic = dead_letter_topic
        self.metrics = KafkaMetrics.get(name, registry)
        self._dlq_producer = dead_letter_producer
        self._owns_dlq_producer = False
        if dead_letter_topic is not None and dead_letter_producer is None:
            shared = {k: v for k, v in conf.items() if k.startswith(CONNECTION_PREFIXES)}
            self._dlq_producer = Producer(
                bootstrap_servers, linger_ms=0, extra=shared, name=name, registry=registry
            )
            self._owns_dlq_producer = True
        self._client: ck.Consumer | None = None
        self._worker = ClientThread(f"{name}-consumer")
        # Fetched, not yet processed; filled on the worker thread (never while the loop reads
        # it: the loop only touches it between awaited worker calls).
        self._buffer: deque[Record] = deque()
        self._assigned: frozenset[tuple[str, int]] = frozenset()
        self._rebalanced = False
        self._running = False
        self._fetching: asyncio.Future[None] | None = None

    @property
    def config(self) -> dict[str, object]:
        """The configuration handed to librdkafka (without callbacks), credentials redacted."""
        return redacted(self._conf)

    def __repr__(self) -> str:
        return (
            f"<Consumer {self._name} group.id={self._conf['group.id']!r} "
            f"bootstrap.servers={self._conf['bootstrap.servers']!r}>"
        )

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Create the client and subscribe; the group is joined by the first fetch."""
        if self._client is not None:
            return
        try:
            client = ck.Consumer({**self._conf, "error_cb": self._on_client_error, "logger": log})
        except ck.KafkaException as exc:
            raise KafkaError.wrap(f"{self._name}: invalid consumer configuration", exc) from exc
        self._worker.start(asyncio.get_running_loop())
        self._client = client
        try:
            await self._worker.call(
                client.subscribe,
                self._topics,
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_revoke,
            )
            if self._owns_dlq_producer and self._dlq_producer is not None:
                await self._dlq_producer.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Leave the group and close, committing nothing more: records fetched but not
        processed are delivered again to whoever gets their partitions."""
        client = self._client
        if client is None:
            return
        try:
            await self._worker.call(client.close)
        finally:
            await self._worker.stop()
            self._client = None
            self._buffer.clear()
            self._assigned = frozenset()
            if self._owns_dlq_producer and self._dlq_producer is not None:
                await self._dlq_producer.stop()

    def assignment(self) -> list[tuple[str, int]]:
        """The (topic, partition) pairs this member holds, as of its last fetch."""
        return sorted(self._assigned)

    async def wait_for_assignment(self, timeout_s: float = 30.0) -> list[tuple[str, int]]:
        """Fetch (buffering, not processing, what arrives) until the group gave this member
        partitions; raise KafkaError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self.exclusive_run():
            while not self._assigned:
                if time.monotonic() > deadline:
                    raise KafkaError(f"{self._name}: no partitions assigned after {timeout_s} s")
                await self._fetch_once()
        return self.assignment()

    async def run(
        self,
        handle: Callable[[Record], Awaitable[None]],
        *,
        stop: asyncio.Event | None = None,
        max_records: int | None = None,
        idle_timeout_s: float | None = None,
    ) -> int:
        """Process records until ``stop`` is set, ``max_records`` were processed, or none
        arrived for ``idle_timeout_s``; return how many were processed (dead-lettered ones
        included). Offsets are committed after each batch and before returning."""
        self._require_client()
        processed = 0
        idle_since = time.monotonic()
        with self.exclusive_run():
            while not (stop is not None and stop.is_set()) and (
                max_records is None or processed < max_records
            ):
                if not self._buffer:
                    await self._fetch_once()
                    if not self._buffer:
                        if (
                            idle_timeout_s is not None
                            and time.monotonic() - idle_since >= idle_timeout_s
                        ):
                            break
                        continue
                idle_since = time.monotonic()
                limit = None if max_records is None else max_records - processed
                processed += await self._process_batch(handle, limit, stop)
        return processed

    async def _process_batch(
        self,
        handle: Callable[[Record], Awaitable[None]],
        limit: int | None,
        stop: asyncio.Event | None,
    ) -> int:
        """Handle the buffered records (up to ``limit``), then commit what was processed.

        A handler exception without a dead-letter topic still commits the records before it.
        Cancellation (or any BaseException) commits nothing, like a crash would.
        """
        offsets: dict[tuple[str, int], int] = {}
        sizes: dict[str, list[int]] = {}
        done = 0
        try:
            while self._buffer and (limit is None or done < limit):
                if stop is not None and stop.is_set():
                    break
                record = self._buffer[0]
                try:
                    await handle(record)
                except Exception as exc:
                    self.metrics.errors.labels(record.topic, "handler").inc()
                    if self.dead_letter_topic is None:
                        raise HandlerError(record, exc) from exc
                    await self._dead_letter(record, exc)
                if self._buffer and self._buffer[0] is record:  # not dropped by a rebalance
                    self._buffer.popleft()
                offsets[(record.topic, record.partition)] = record.offset + 1
                size = sizes.setdefault(record.topic, [0, 0])
                size[0] += 1
                size[1] += len(record.value)
                done += 1
        except Exception:
            await self._commit(offsets)
            raise
        finally:
            for topic, (messages, nbytes) in sizes.items():
                self.metrics.consumed_messages.labels(topic).inc(messages)
                self.metrics.consumed_bytes.labels(topic).inc(nbytes)
        await self._commit(offsets)
        return done

    async def _dead_letter(self, record: Record, error: Exception) -> None:
        producer = self._dlq_producer
        assert producer is not None
        assert self.dead_letter_topic is not None
        try:
            await producer.send(
                self.dead_letter_topic,
                record.value,
                key=record.key,
                headers=dead_letter_headers(record, error),
            )
        except KafkaError as exc:
            raise KafkaError(
                f"{self._name}: could not dead-letter {record.topic}[{record.partition}]"
                f"@{record.offset} to {self.dead_letter_topic}: {exc}",
                code=exc.code,
                retriable=exc.retriable,
            ) from exc
        self.metrics.dead_lettered.labels(record.topic).inc()
        log.warning(
            "kafka consumer %s: dead-lettered %s[%d]@%d: %s: %s",
            self._name,
            record.topic,
            record.partition,
            record.offset,
            type(error).__name__,
            error,
        )

    async def _commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        if offsets:
            await self._worker.call(self._commit_sync, self._require_client(), dict(offsets))

    def _commit_sync(self, client: ck.Consumer, offsets: dict[tuple[str, int], int]) -> None:
        tps = [ck.TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            results = client.commit(offsets=tps, asynchronous=False)
        except ck.KafkaException as exc:
            self._commit_failed(tps, exc)
            return
        for tp in results:
            if tp.error is not None:
                self._commit_failed([tp], ck.KafkaException(tp.error))
            else:
                # Cached watermarks come with fetch responses: no request for the lag gauge.
                _, high = client.get_watermark_offsets(tp, cached=True)
                if high >= 0:
                    self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                        max(high - tp.offset, 0)
                    )

    def _commit_failed(self, tps: list[ck.TopicPartition], exc: ck.KafkaException) -> None:
        for tp in tps:
            self.metrics.errors.labels(tp.topic, "commit").inc()
        err = exc.args[0] if exc.args else None
        if isinstance(err, ck.KafkaError) and err.name() in _REBALANCED:
            log.warning(
                "kafka consumer %s: commit lost to a rebalance (records will be redelivered): %s",
                self._name,
                err,
            )
            return
        raise KafkaError.wrap(f"{self._name}: commit failed", exc) from exc

    async def lag(self) -> dict[tuple[str, int], int]:
        """Per assigned partition: high watermark minus the committed offset (or, with none
        committed yet, minus where consumption starts). Also sets the lag gauge.

        The high watermark is the one the latest fetch response carried, so lag is as fresh
        as the consumer's fetching (continuous while partitions are assigned)."""
        return await self._worker.call(self._lag_sync, self._require_client())

    def _lag_sync(self, client: ck.Consumer) -> dict[tuple[str, int], int]:
        tps = [ck.TopicPartition(t, p) for t, p in sorted(self._assigned)]
        if not tps:
            return {}
        try:
            committed = client.committed(tps, timeout=10)
            positions = client.position(tps)
            # Fetched but unprocessed records are backlog too (the position is past them).
            # list() copies the deque in one step, so the loop cannot change it meanwhile.
            buffered: dict[tuple[str, int], int] = {}
            for record in list(self._buffer):
                buffered.setdefault((record.topic, record.partition), record.offset)
            lags: dict[tuple[str, int], int] = {}
            for tp, done, pos in zip(tps, committed, positions, strict=True):
                # The high watermark of the latest fetch response (librdkafka keeps fetching
                # while partitions are assigned); asked of the broker only if none came yet.
                low, high = client.get_watermark_offsets(tp, cached=True)
                if high < 0:
                    low, high = client.get_watermark_offsets(tp, timeout=10, cached=False)
                if done.offset >= 0:
                    start = done.offset
                elif (tp.topic, tp.partition) in buffered:
                    start = buffered[(tp.topic, tp.partition)]
                elif pos.offset >= 0:
                    start = pos.offset
                else:
                    start = max(low, 0) if self._earliest else high
                lags[(tp.topic, tp.partition)] = max(high - start, 0)
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                    lags[(tp.topic, tp.partition)]
                )
        except ck.KafkaException as exc:
            raise KafkaError.wrap(f"{self._name}: could not read offsets", exc) from exc
        return lags

    async def committed(self) -> dict[tuple[str, int], int]:
        """The group's committed offset per assigned partition (-1001 if none)."""
        return await self._worker.call(self._committed_sync, self._require_client())

    def _committed_sync(self, client: ck.Consumer) -> dict[tuple[str, int], int]:
        tps = [ck.TopicPartition(t, p) for t, p in sorted(self._assigned)]
        if not tps:
            return {}
        return {(tp.topic, tp.partition): tp.offset for tp in client.committed(tps, timeout=10)}

    # Fetching and rebalancing (worker thread) ---------------------------------------------

    def _fetch(self, client: ck.Consumer) -> None:
        """Fetch up to ``max_batch`` records into the buffer (this also joins the group and
        runs rebalance callbacks)."""
        self._rebalanced = False
        messages = client.consume(self._max_batch, self._poll_timeout_s)
        records: list[Record] = []
        for msg in messages:
            err = msg.error()
            if err is not None:
                self.metrics.errors.labels(msg.topic() or "", "consume").inc()
                if err.fatal():
                    raise KafkaError.wrap(f"{self._name}: consumer failed", err)
                log.warning("kafka consumer %s: %s", self._name, err)
                continue
            topic = cast(str, msg.topic())
            partition = cast(int, msg.partition())
            # Fetched before a revocation in this same call: the new owner will process it.
            if self._rebalanced and (topic, partition) not in self._assigned:
                continue
            headers = msg.headers()
            records.append(
                Record(
                    topic,
                    partition,
                    cast(int, msg.offset()),
                    msg.key(),
                    msg.value() or b"",
                    record_headers(headers) if headers else (),
                )
            )
        self._buffer.extend(records)

    def _on_assign(self, client: ck.Consumer, partitions: list[ck.TopicPartition]) -> None:
        self._assigned = self._assigned | {(tp.topic, tp.partition) for tp in partitions}
        self._rebalanced = True
        log.info("kafka consumer %s: assigned %s", self._name, _describe(partitions))
        resume_at = self._resume_at() if self._resume_at is not None else {}
        moved = [tp for tp in partitions if (tp.topic, tp.partition) in resume_at]
        if moved:
            for tp in moved:
                tp.offset = resume_at[tp.topic, tp.partition]
            # Offsets take effect only through an explicit assign in this callback; without
            # one, librdkafka assigns the partitions as they came.
            if self._cooperative:
                client.incremental_assign(partitions)
            else:
                client.assign(partitions)
            log.info(
                "kafka consumer %s: resuming at %s",
                self._name,
                ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in moved),
            )

    def _on_revoke(self, client: ck.Consumer, partitions: list[ck.TopicPartition]) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        self._assigned = self._assigned - revoked
        self._rebalanced = True
        # Everything processed is committed before a fetch, so only unprocessed records of
        # the revoked partitions are buffered: their new owner gets them.
        kept = [r for r in list(self._buffer) if (r.topic, r.partition) not in revoked]
        self._buffer = deque(kept)
        for topic, partition in revoked:
            with contextlib.suppress(KeyError):  # no series yet
                self.metrics.consumer_lag.remove(topic, str(partition))
        log.info("kafka consumer %s: revoked %s", self._name, _describe(partitions))

    def _on_client_error(self, err: ck.KafkaError) -> None:
        self.metrics.errors.labels("", "client").inc()
        log.warning("kafka consumer %s: %s", self._name, err)

    # For a runner of its own (TransactionalPipeline) ------------------------------------

    @contextlib.contextmanager
    def exclusive_run(self) -> Iterator[None]:
        """Hold the consumer for one runner (``run()`` or another's loop over
        ``next_batch()``); KafkaError if one already holds it."""
        if self._running:
            raise KafkaError(f"{self._name}: the consumer is already running")
        self._running = True
        try:
            yield
        finally:
            self._running = False

    def _require_client(self) -> ck.Consumer:
        if self._client is None:
            raise KafkaError(f"{self._name}: consumer is not started")
        return self._client

    async def next_batch(self) -> list[Record]:
        """The buffered records, fetching once if there are none (may be empty). They stay
        buffered (and are fetched again by nothing) until ``mark_processed`` drops them."""
        if not self._buffer:
            await self._fetch_once()
        return list(self._buffer)

    async def _fetch_once(self) -> None:
        """Fetch into the buffer, or wait for the fetch already running.

        A fetch goes on on the worker thread when the run that started it is cancelled; the
        next run waits for that one (shielded, so cancelling waits no longer for it) instead
        of reading the buffer while the worker may still fill or filter it."""
        fetch = self._fetching
        if fetch is None or fetch.done():
            fetch = asyncio.ensure_future(self._worker.call(self._fetch, self._require_client()))
            fetch.add_done_callback(consume_exception)  # awaited below, or by the next run
            self._fetching = fetch
        await asyncio.shield(fetch)

    def mark_processed(self, count: int) -> None:
        """Drop the first ``count`` records of ``next_batch()`` from the buffer: processed (and
        their offsets committed by the caller)."""
        for _ in range(count):
            self._buffer.popleft()

    async def group_metadata(self) -> object:
        """The group's metadata, for ``Producer.send_offsets_to_transaction``."""
        client = self._require_client()
        return await self._worker.call(client.consumer_group_metadata)


def _describe(partitions: list[ck.TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"
