"""Exactly-once consume-transform-produce: a consumer's records and what they produce
committed in one Kafka transaction."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

import confluent_kafka as ck

from integrations.kafka.consumer import (
    Consumer,
)
from integrations.kafka.errors import (
    HandlerError,
    KafkaError,
)
from integrations.kafka.futures import (
    consume_exception,
)
from integrations.kafka.producer import (
    Producer,
)
from integrations.kafka.records import (
    Delivery,
    Record,
    dead_letter_headers,
)
from integrations.kafka.redaction import (
    log,
)

__all__ = ["Checkpoint", "TransactionalPipeline", "Transform"]

# What a record becomes: (topic, key, value) of each message to produce.
Transform = Callable[[Record], Awaitable[Sequence[tuple[str, bytes | None, bytes]]]]
# The last messages of a batch's transaction, given the offset each partition the batch read
# resumes at (only those partitions: the callee merges them into what it kept): a snapshot of
# the state the transforms built, with those positions in it.
Checkpoint = Callable[[Mapping[tuple[str, int], int]], Sequence[tuple[str, bytes | None, bytes]]]


class TransactionalPipeline:
    """Exactly-once consume-transform-produce: per fetched batch, one transaction holds the
    outputs of ``transform`` and the consumer's offsets, so either both become visible (to
    ``read_committed`` readers) or neither does.

    The consumer commits nothing itself here. A retriable failure of sending the offsets or
    of the commit (a timeout, a coordinator moving) is tried again, up to ``commit_attempts``
    times, in the same transaction. Any other failure aborts the transaction and ``run()``
    raises; the batch stays buffered, so calling ``run()`` again retries it (and a restart
    re-reads it from the last committed offsets, or the last snapshot's positions). A
    producer fenced by a newer one with the same ``transactional_id`` raises
    ProducerFencedError (nothing to abort: the broker did).
    Cancelling ``run()`` during a commit waits for the commit's outcome (it runs on regardless)
    so that a committed batch is never processed again. A record whose ``transform`` raises
    goes, inside the same transaction, to the consumer's dead-letter topic if it has one;
    otherwise the transaction is aborted and HandlerError raised. An exception of a type in
    ``processor_errors`` is the processor's failure, not the record's (its state cannot be
    read, it is stopping): the transaction is aborted and ``run()`` raises it, nothing is
    dead-lettered, and the batch is read again by the next run.

    A ``checkpoint`` adds, at the end of each batch's transaction, a snapshot of the state the
    transforms built, holding the offsets the batch resumes at. A processor whose consumer
    resumes at the positions of the last snapshot (``Consumer``'s ``resume_at``) goes on
    exactly where that state stands, whatever the group's offsets say: state and
    positions are one message, so they cannot disagree, even on a broker that lets
    ``read_committed`` readers see an aborted transaction's messages (Tansu 0.6 does).
    """

    def __init__(
        self,
        consumer: Consumer,
        producer: Producer,
        *,
        transaction_timeout_s: float = 30.0,
        lock: asyncio.Lock | None = None,
        on_abort: Callable[[], Awaitable[None]] | None = None,
        commit_attempts: int = 3,
        checkpoint: Checkpoint | None = None,
        processor_errors: tuple[type[Exception], ...] = (),
    ) -> None:
        """``lock`` is held from the start of each batch's transaction to its end: a producer
        runs one transaction at a time, so another writer on ``producer`` (say, a call that
        commits state outside the consumer loop) holds it around its own transactions.
        ``on_abort`` runs, still under the lock, after a batch's transaction failed: the place
        to roll back what ``transform`` changed in memory. ``commit_attempts`` bounds the
        tries of a commit (or of sending the offsets) that fails with a retriable error."""
        if producer.transactional_id is None:
            raise ValueError("the producer needs a transactional_id")
        if commit_attempts < 1:
            raise ValueError(f"commit_attempts must be at least 1, got {commit_attempts}")
        self._attempts = commit_attempts
        self._consumer = consumer
        self._producer = producer
        self._timeout_s = transaction_timeout_s
        self.lock = lock or asyncio.Lock()
        self._on_abort = on_abort
        self._checkpoint = checkpoint
        self._processor_errors = processor_errors

    async def run(
        self,
        transform: Transform,
        *,
        stop: asyncio.Event | None = None,
        max_records: int | None = None,
        idle_timeout_s: float | None = None,
    ) -> int:
        """Like Consumer.run: process until stopped, ``max_records`` committed, or idle for
        ``idle_timeout_s``; return the number of input records committed."""
        consumer = self._consumer
        processed = 0
        idle_since = time.monotonic()
        with consumer.exclusive_run():
            while not (stop is not None and stop.is_set()) and (
                max_records is None or processed < max_records
            ):
                batch = await consumer.next_batch()
                if not batch:
                    if idle_timeout_s is not None and time.monotonic() - idle_since >= (
                        idle_timeout_s
                    ):
                        break
                    continue
                idle_since = time.monotonic()
                if max_records is not None:
                    batch = batch[: max_records - processed]
                async with self.lock:
                    try:
                        cancelled = await self._process(batch, transform)
                    except BaseException:
                        if self._on_abort is not None:
                            await self._on_abort()
                        raise
                consumer.mark_processed(len(batch))
                processed += len(batch)
                if cancelled:  # during a commit that went through: the batch is done
                    raise asyncio.CancelledError
        return processed

    async def _process(self, batch: list[Record], transform: Transform) -> bool:
        """Process and commit ``batch``; return whether the caller was cancelled during
        the commit (which then went through)."""
        consumer, producer = self._consumer, self._producer
        metrics = consumer.metrics
        futures: list[asyncio.Future[Delivery]] = []
        dead_lettered: list[str] = []
        try:
            # Inside the try: cancelled while the client thread begins it, the transaction
            # is open all the same, and only an abort lets the producer begin another.
            await producer.begin_transaction()
            offsets: dict[tuple[str, int], int] = {}
            for record in batch:
                try:
                    outputs = await transform(record)
                except self._processor_errors:
                    raise
                except Exception as exc:
                    metrics.errors.labels(record.topic, "handler").inc()
                    if consumer.dead_letter_topic is None:
                        raise HandlerError(record, exc) from exc
                    # Waits for room in a full local queue rather than failing the batch.
                    futures.append(
                        await producer.enqueue(
                            consumer.dead_letter_topic,
                            record.value,
                            key=record.key,
                            headers=dead_letter_headers(record, exc),
                        )
                    )
                    dead_lettered.append(record.topic)
                else:
                    for topic, key, value in outputs:
                        futures.append(await producer.enqueue(topic, value, key=key))
                offsets[(record.topic, record.partition)] = record.offset + 1
            if self._checkpoint is not None:
                for topic, key, value in self._checkpoint(offsets):
                    futures.append(await producer.enqueue(topic, value, key=key))
            group = await consumer.group_metadata()
            tps = [ck.TopicPartition(t, p, o) for (t, p), o in offsets.items()]
            await self._retrying(
                "send_offsets_to_transaction",
                lambda: producer.send_offsets_to_transaction(tps, group, self._timeout_s),
            )
        except BaseException as exc:
            await self._abort(batch, futures, exc)
            raise
        # Once begun, a commit goes on on the producer's thread whatever happens here, and its
        # outcome decides whether the batch is done: wait for it even when cancelled.
        commit = asyncio.ensure_future(
            self._retrying(
                "commit_transaction", lambda: producer.commit_transaction(self._timeout_s)
            )
        )
        try:
            cancelled = await _outcome(commit)
        except BaseException as exc:
            await self._abort(batch, futures, exc)
            raise
        for fut in futures:  # commit flushed them all; a failed one would have failed it
            fut.result()
        self._count(batch, dead_lettered)
        return cancelled

    async def _retrying(self, what: str, call: Callable[[], Awaitable[None]]) -> None:
        for attempt in range(1, self._attempts + 1):
            try:
                await call()
                return
            except KafkaError as exc:
                if (
                    not exc.retriable
                    or exc.fatal
                    or exc.txn_requires_abort
                    or attempt == self._attempts
                ):
                    raise
                log.warning(
                    "kafka transactional pipeline: %s failed (attempt %d of %d), trying again: %s",
                    what,
                    attempt,
                    self._attempts,
                    exc,
                )

    async def _abort(
        self, batch: list[Record], futures: list[asyncio.Future[Delivery]], exc: BaseException
    ) -> None:
        for fut in futures:
            fut.add_done_callback(consume_exception)
        self._consumer.metrics.errors.labels(batch[0].topic, "transaction").inc()
        if isinstance(exc, KafkaError) and exc.fatal:
            return  # fenced or broken: the broker aborts the transaction, this client cannot
        try:
            await self._producer.abort_transaction(self._timeout_s)
        except KafkaError as abort_error:
            exc.add_note(f"aborting the transaction failed too: {abort_error}")

    def _count(self, batch: list[Record], dead_lettered: list[str]) -> None:
        metrics = self._consumer.metrics
        for topic in dead_lettered:
            metrics.dead_lettered.labels(topic).inc()
        sizes: dict[str, list[int]] = {}
        for record in batch:
            size = sizes.setdefault(record.topic, [0, 0])
            size[0] += 1
            size[1] += len(record.value)
        for topic, (messages, nbytes) in sizes.items():
            metrics.consumed_messages.labels(topic).inc(messages)
            metrics.consumed_bytes.labels(topic).inc(nbytes)


async def _outcome(fut: asyncio.Future[None]) -> bool:
    """Wait for ``fut`` to finish even if the caller is cancelled meanwhile; raise what it
    raised; return whether the caller was cancelled (for it to raise CancelledError then)."""
    cancelled = False
    while not fut.done():
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            if fut.cancelled():
                raise
            cancelled = True
    fut.result()
    return cancelled
