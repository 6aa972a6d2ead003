"""An idempotent asyncio Kafka producer over librdkafka, optionally transactional."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from types import TracebackType
from typing import Self, cast

import confluent_kafka as ck
from prometheus_client import CollectorRegistry

from integrations.kafka.client_thread import (
    ClientThread,
)
from integrations.kafka.config import (
    PRODUCER_FIXED,
    Compression,
    checked_extra,
)
from integrations.kafka.delivery import (
    DeliveryBatch,
    DeliveryLedger,
)
from integrations.kafka.errors import (
    KafkaError,
    ProducerQueueFullError,
    message_timed_out,
)
from integrations.kafka.futures import (
    fail,
)
from integrations.kafka.metrics import (
    KafkaMetrics,
)
from integrations.kafka.overflow import (
    Overflow,
    PendingDelivery,
)
from integrations.kafka.records import (
    UNKNOWN_OFFSET,
    BatchDelivery,
    Delivery,
)
from integrations.kafka.redaction import (
    log,
    redacted,
    register_secrets,
)

__all__ = ["Producer"]

# Bound once: the send path and the delivery callback use them once per message.
_Future = asyncio.Future
_get_ident = threading.get_ident

# While messages are in flight, delivery reports are served this often (and every
# _POLL_EVERY sends by a caller enqueueing in a tight loop).
_PUMP_INTERVAL_S = 0.001
_POLL_EVERY = 256
# A batch polls less often: each report it serves costs little, each poll a GIL round trip.
_BATCH_POLL_EVERY = 1024


class Producer:
    """An idempotent (``enable.idempotence``, ``acks=all``) asyncio Kafka producer.

    ``batch_size`` is librdkafka's ``batch.size``: the most bytes sent to one partition in one
    request (``batch.num.messages``, 10,000 by default, caps the count; set it via ``extra``).
    ``delivery_timeout_ms`` bounds how long a message may take to be acknowledged, retries
    included; a message waiting for room in librdkafka's queue (below) fails with the same
    ``_MSG_TIMED_OUT`` error once it has waited that long, so a send fails at most about
    twice ``delivery_timeout_ms`` after it was made, however many wait.

    What librdkafka's queue (``queue.buffering.max.messages``/``.kbytes``, via ``extra``) has
    no room for waits, in order, in an overflow bounded by ``max_overflow_messages`` and
    ``max_overflow_bytes``: when it is full, ``send()`` waits for room (up to
    ``delivery_timeout_ms``), ``send_nowait`` raises ProducerQueueFullError, and
    ``send_batch`` fails the messages that do not fit (named in its BatchDeliveryError).

    ``config`` and every message and log line show credentials (``sasl.password``,
    ``ssl.key.password``, ``sasl.oauthbearer.client.secret``, ...) as ``**redacted**``.

    With ``transactional_id`` the producer is transactional: ``start()`` registers it
    (fencing older instances with the same id) and messages may only be sent inside
    ``begin_transaction()`` / ``commit_transaction()``.

    How it meets asyncio: ``produce()`` is called on the event loop (it only queues in
    librdkafka's memory, never blocks), and delivery reports are served on the loop too, by
    ``poll(0)`` (never blocks) from a pump task every millisecond while messages are in
    flight, every few hundred sends from a caller that does not yield, and by ``flush()``,
    which polls on the loop the same way; so futures are settled directly, with no thread
    hand-off per message. ``send_batch`` goes further: one future and one callback for a
    whole batch. Calls that block on the network (transactions, close) run on the producer's
    own ClientThread; reports they serve are handed to the loop in batches with
    ``call_soon_threadsafe``. ``stop()`` joins that thread.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        linger_ms: float = 5.0,
        batch_size: int = 1_000_000,
        compression: Compression = "lz4",
        transactional_id: str | None = None,
        delivery_timeout_ms: int = 30_000,
        max_overflow_messages: int = 10_000,
        max_overflow_bytes: int = 64 * 1024 * 1024,
        extra: Mapping[str, object] | None = None,
        name: str = "kafka",
        registry: CollectorRegistry | None = None,
    ) -> None:
        if delivery_timeout_ms < 1:
            raise ValueError(f"delivery_timeout_ms must be at least 1, got {delivery_timeout_ms}")
        self._overflow = Overflow(
            name, max_overflow_messages, max_overflow_bytes, delivery_timeout_ms
        )
        conf = checked_extra(extra, PRODUCER_FIXED)
        conf.update(
            {
                "bootstrap.servers": bootstrap_servers,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": linger_ms,
                "batch.size": batch_size,
                "compression.type": compression,
                "delivery.timeout.ms": delivery_timeout_ms,
            }
        )
        if transactional_id is not None:
            conf["transactional.id"] = transactional_id
        register_secrets(conf)
        self._conf = conf
        self._name = name
        self.metrics = KafkaMetrics.get(name, registry)
        self._ledger = DeliveryLedger(self.metrics)
        self._client: ck.Producer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._report = self._on_delivery  # bound once: one delivery callback per message
        self._worker = ClientThread(f"{name}-producer")
        self._pump_task: asyncio.Task[None] | None = None
        self._pump_wakeup = asyncio.Event()
        self._flushers = 0  # flush() calls in progress, each polling for reports
        self._since_poll = 0
        self._wake_scheduled = False
        self._delivery_timeout_ms = delivery_timeout_ms
        self._fatal_logged = False

    @property
    def config(self) -> dict[str, object]:
        """The configuration handed to librdkafka (without callbacks), credentials redacted."""
        return redacted(self._conf)

    def __repr__(self) -> str:
        return f"<Producer {self._name} bootstrap.servers={self._conf['bootstrap.servers']!r}>"

    @property
    def transactional_id(self) -> str | None:
        return cast("str | None", self._conf.get("transactional.id"))

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

    async def start(self, timeout_s: float = 30.0) -> None:
        """Create the client, its worker thread and report pump; register the transactional
        id if there is one."""
        if self._client is not None:
            return
        loop = asyncio.get_running_loop()
        try:
            client = ck.Producer({**self._conf, "error_cb": self._on_client_error, "logger": log})
        except ck.KafkaException as exc:
            raise KafkaError.wrap(f"{self._name}: invalid producer configuration", exc) from exc
        self._client = client
        self._loop = loop
        self._ledger.loop_thread = threading.get_ident()
        self._worker.start(loop)
        self._pump_wakeup = asyncio.Event()
        self._pump_task = loop.create_task(self._pump(client), name=f"{self._name}-producer-pump")
        if self.transactional_id is not None:
            try:
                await self._txn_call("init_transactions", client.init_transactions, timeout_s)
            except BaseException:
                await self._shutdown(0)
                raise

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Flush (up to ``timeout_s``), then stop the worker thread and close the client.

        Messages still undelivered then are purged: their futures fail with KafkaError (and
        are counted and logged), but stop() itself does not raise for them, so that shutting
        down goes on to close everything else.
        """
        if self._client is None:
            return
        try:
            await self.flush(timeout_s)
        except KafkaError as exc:
            log.warning("kafka producer %s: stopping without delivering all: %s", self._name, exc)
        finally:
            await self._shutdown(timeout_s)

    async def _shutdown(self, timeout_s: float) -> None:
        client = self._client
        assert client is not None
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump_task
            self._pump_task = None
        try:
            await self._worker.call(self._close_client, client, timeout_s)
        finally:
            await self._worker.stop()
            self._client = None
            self._settle_reports()
            self._overflow.fail_all("producer stopped before the message was sent")

    def _close_client(self, client: ck.Producer, timeout_s: float) -> None:
        # Purged messages get a failed delivery report, served (for the loop) by this poll.
        client.purge(in_queue=True, in_flight=True, blocking=False)
        deadline = time.monotonic() + max(timeout_s, 1.0)
        while len(client) and time.monotonic() < deadline:
            client.poll(0.05)
        client.poll(0)
        if self.transactional_id is not None:
            # close() aborts an open transaction without a time limit, and a broker that does
            # not answer (a fenced producer's abort, say) would hang it for ever: abort here,
            # bounded, and if that times out leave the client to be destroyed when dropped
            # (no abort, no flush); the broker aborts the transaction when its timeout passes.
            try:
                client.abort_transaction(max(timeout_s, 1.0))
            except ck.KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if isinstance(err, ck.KafkaError) and err.name() == "_TIMED_OUT":
                    log.warning(
                        "kafka producer %s: its open transaction could not be aborted in "
                        "%s s; closing without it",
                        self._name,
                        max(timeout_s, 1.0),
                    )
                    return
        # A fenced or broken transactional producer warns that close() could not abort; the
        # failure was already reported to whoever ran the transaction: log it, no more.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            client.close()
        for warning in caught:
            log.warning("kafka producer %s: closing: %s", self._name, warning.message)

    def send_nowait(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> asyncio.Future[Delivery]:
        """Queue a message and return a future resolved with its Delivery once the broker has
        acknowledged it, or failed with KafkaError.

        Never blocks: when librdkafka's queue is full the message waits here, in order, until
        there is room (at most ``delivery_timeout_ms``); when that overflow is full too it
        raises ProducerQueueFullError. Keep the futures (or ``flush()``) to learn about
        failures.
        """
        client = self._client
        if client is None or self._loop is None:
            raise KafkaError(f"{self._name}: producer is not started")
        if self._overflow:
            self._check_room(topic, value)
            fut: asyncio.Future[Delivery] = _Future(loop=self._loop)
            report = partial(self._report, fut)
            failed, expires = partial(fail, fut), self._overflow.expiry()
            self._overflow.hold(
                PendingDelivery(topic, value, key, headers, report, fut.done, failed, expires)
            )
            return fut
        fut = _Future(loop=self._loop)
        report = partial(self._report, fut)
        try:
            if headers:
                client.produce(topic, value, key, on_delivery=report, headers=list(headers))
            else:  # positionally (partition, callback): no keyword dict on the hot path
                client.produce(topic, value, key, -1, report)
        except BufferError:
            self._check_room(topic, value)
            failed, expires = partial(fail, fut), self._overflow.expiry()
            self._overflow.hold(
                PendingDelivery(topic, value, key, headers, report, fut.done, failed, expires)
            )
            self._pump_wakeup.set()
            return fut
        except ck.KafkaException as exc:
            self.metrics.errors.labels(topic, "produce").inc()
            raise KafkaError.wrap(f"{self._name}: cannot produce to {topic}", exc) from exc
        self._sent(client, 1)
        return fut

    def send_batch(
        self,
        topic: str,
        values: Sequence[bytes],
        *,
        keys: Sequence[bytes | None] | None = None,
    ) -> asyncio.Future[BatchDelivery]:
        """Queue ``values`` (with ``keys``, one per value, if given) and return one future for
        all of them: resolved once the broker acknowledged every message, or failed with
        ``BatchDeliveryError`` naming those it did not.

        For bulk sends: one future and one delivery callback for the whole batch instead of
        one per message, which is most of what ``send_nowait`` costs per message. Never
        blocks; like ``send_nowait``, what librdkafka's queue has no room for waits here.
        """
        client = self._client
        if client is None or self._loop is None:
            raise KafkaError(f"{self._name}: producer is not started")
        if keys is not None and len(keys) != len(values):
            raise ValueError(f"keys has {len(keys)} entries for {len(values)} values")
        batch = DeliveryBatch(self._ledger, topic, values, _Future(loop=self._loop))
        if not values:
            batch.future.set_result(BatchDelivery(topic, 0))
            return batch.future
        # The loop below is the hot path of bulk sending, one iteration per message: no
        # per-message lookups beyond produce itself.
        report, produce, poll = batch.report, client.produce, client.poll
        keyed = keys if keys is not None else [None] * len(values)
        index = 0  # the first message not handed to librdkafka
        overflow = self._overflow
        if not overflow:
            for value, key in zip(values, keyed, strict=True):
                try:
                    produce(topic, value, key, -1, report)
                except BufferError:
                    break
                except ck.KafkaException as exc:
                    self.metrics.errors.labels(topic, "produce").inc()
                    error = KafkaError.wrap(f"{self._name}: cannot produce to {topic}", exc)
                    batch.fail_unsent(key, value, error)
                index += 1
                if not index % _BATCH_POLL_EVERY:
                    poll(0)  # serve reports, making room in librdkafka's queue
            # No report can complete the batch before this: its last message was produced
            # after the last poll above.
            self._sent(client, index - batch.unsent)
        # What librdkafka had no room for waits, in order, for the pump to produce it; what the
        # overflow has no room for either fails at once (the caller may send it again).
        abandoned, unsent = batch.future.done, batch.fail_unsent
        for value, key in zip(values[index:], keyed[index:], strict=True):
            if overflow.has_room(len(value)):
                expires = overflow.expiry()
                fails = partial(unsent, key, value)
                overflow.hold(
                    PendingDelivery(topic, value, key, (), report, abandoned, fails, expires)
                )
            else:
                self.metrics.errors.labels(topic, "produce").inc()
                unsent(key, value, overflow.full(topic))
        if index < len(values):
            self._pump_wakeup.set()
        return batch.future

    def _check_room(self, topic: str, value: bytes) -> None:
        if not self._overflow.has_room(len(value)):
            self.metrics.errors.labels(topic, "produce").inc()
            raise self._overflow.full(topic)

    def _sent(self, client: ck.Producer, count: int) -> None:
        """Count ``count`` messages handed to librdkafka."""
        ledger = self._ledger
        if not ledger.inflight:
            self._pump_wakeup.set()
        ledger.inflight += count
        self._since_poll += count
        if self._since_poll >= _POLL_EVERY:
            # A caller enqueueing in a tight loop never yields to the pump: serve reports here.
            self._since_poll = 0
            client.poll(0)
            ledger.publish()

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> Delivery:
        """Send a message and wait until the broker acknowledged it (or raise KafkaError).
        When the local queue and the overflow are full, wait for room first (up to
        ``delivery_timeout_ms``, then fail with ``_MSG_TIMED_OUT``)."""
        fut = await self.enqueue(topic, value, key=key, headers=headers)
        return await fut

    async def enqueue(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> asyncio.Future[Delivery]:
        """``send_nowait``, waiting for room in the overflow first (up to
        ``delivery_timeout_ms``, then failing with ``_MSG_TIMED_OUT``): the message is queued
        when this returns, its future settled once the broker answered."""
        deadline = time.monotonic() + self._delivery_timeout_ms / 1000
        while True:
            try:
                return self.send_nowait(topic, value, key=key, headers=headers)
            except ProducerQueueFullError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise message_timed_out(self._name, topic, self._delivery_timeout_ms) from None
                await self._overflow.wait_for_room(remaining)

    async def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every message sent so far is acknowledged or failed (each future says
        which); raise KafkaError if that takes longer than ``timeout_s``."""
        client = self._require_client()
        deadline = time.monotonic() + timeout_s
        ledger, overflow = self._ledger, self._overflow
        self._flushers += 1  # the pump leaves the polling to us meanwhile
        try:
            while overflow or ledger.inflight:
                if time.monotonic() >= deadline:
                    raise KafkaError(
                        f"{self._name}: flush timed out after {timeout_s} s with "
                        f"{ledger.inflight + len(overflow)} message(s) undelivered",
                        retriable=True,
                    )
                # On the loop, not on the worker: flush(0) never blocks; it sends what lingers
                # at once and serves the reports here, so they settle directly instead of being
                # handed over from another thread one by one, a hand-off bulk sends pay dearly for.
                client.flush(0)
                self._settle_reports()
                if overflow or ledger.inflight:
                    await asyncio.sleep(_PUMP_INTERVAL_S)
        finally:
            self._flushers -= 1

    # Transactions -------------------------------------------------------------------------

    async def begin_transaction(self) -> None:
        client = self._require_client()
        await self._txn_call("begin_transaction", client.begin_transaction)

    async def commit_transaction(self, timeout_s: float = 30.0) -> None:
        """Flush the transaction's messages, then commit it (and any offsets sent to it)."""
        client = self._require_client()
        await self.flush(timeout_s)
        await self._txn_call("commit_transaction", client.commit_transaction, timeout_s)

    async def abort_transaction(self, timeout_s: float = 30.0) -> None:
        """Abort the open transaction; its queued messages' futures fail with KafkaError."""
        client = self._require_client()
        self._overflow.fail_all("transaction aborted before the message was sent")
        await self._txn_call("abort_transaction", client.abort_transaction, timeout_s)

    async def send_offsets_to_transaction(
        self, offsets: list[ck.TopicPartition], group_metadata: object, timeout_s: float = 30.0
    ) -> None:
        """Add a consumer group's ``offsets`` (with its ``Consumer.group_metadata()``) to the
        open transaction: they are committed with it, or not at all."""
        client = self._require_client()
        await self._txn_call(
            "send_offsets_to_transaction",
            client.send_offsets_to_transaction,
            offsets,
            group_metadata,
            timeout_s,
        )

    async def _txn_call(self, what: str, fn: Callable[..., None], *args: object) -> None:
        try:
            await self._worker.call(self._call_and_wake, fn, *args)
        except ck.KafkaException as exc:
            self.metrics.errors.labels("", "transaction").inc()
            raise KafkaError.wrap(f"{self._name}: {what} failed", exc) from exc
        finally:
            self._settle_reports()

    def _call_and_wake(self, fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        finally:
            self._wake_loop()  # commit and abort serve delivery reports on this thread

    def _require_client(self) -> ck.Producer:
        if self._client is None:
            raise KafkaError(f"{self._name}: producer is not started")
        return self._client

    # Delivery reports ---------------------------------------------------------------------

    async def _pump(self, client: ck.Producer) -> None:
        """Serve delivery reports on the loop while messages are in flight (poll(0) never
        blocks); sleep on an event while none are."""
        ledger, overflow = self._ledger, self._overflow
        while True:
            if not (ledger.inflight or overflow):
                self._pump_wakeup.clear()
                await self._pump_wakeup.wait()
                continue
            if not self._flushers:  # a flush polls on its own meanwhile
                try:
                    client.poll(0)
                    self._settle_reports()
                except ck.KafkaException as exc:
                    # A fatal client error (fenced, say) is raised by every poll: report it
                    # once; the calls that fail because of it say so to their callers.
                    if not self._fatal_logged:
                        self._fatal_logged = True
                        log.error("kafka producer %s: %s", self._name, KafkaError.wrap("", exc))
                except Exception:  # a callback failed; the pump must go on regardless
                    log.exception("kafka producer %s: serving delivery reports", self._name)
            await asyncio.sleep(_PUMP_INTERVAL_S)

    def _on_delivery(
        self, fut: asyncio.Future[Delivery], err: ck.KafkaError | None, msg: ck.Message
    ) -> None:
        ledger = self._ledger
        if _get_ident() != ledger.loop_thread:
            # Served on the worker (flush, transactions): futures belong to the loop.
            ledger.defer(partial(self._report, fut), err, msg)
            return
        ledger.inflight -= 1
        topic: str = msg.topic()  # type: ignore[assignment]  # set on every delivery report
        if err is None:
            ledger.acked(topic, 1, len(msg))
            if not fut.done():  # a cancelled send()
                offset = msg.offset()
                fut.set_result(
                    Delivery(topic, msg.partition(), UNKNOWN_OFFSET if offset is None else offset)  # type: ignore[arg-type]
                )
        else:
            ledger.failed(topic)
            if not fut.done():
                fut.set_exception(KafkaError.wrap(f"delivery to {topic} failed", err))

    def _wake_loop(self) -> None:
        """(Worker thread) Have the loop settle the reports collected here: one wake-up per
        batch, not per message."""
        if self._ledger.has_deferred() and not self._wake_scheduled and self._loop is not None:
            self._wake_scheduled = True
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._loop.call_soon_threadsafe(self._settle_reports)

    def _settle_reports(self) -> None:
        """Settle the reports the worker collected, publish counts, refill from overflow."""
        self._wake_scheduled = False  # before draining: a report appended later wakes again
        self._ledger.settle_deferred()
        self._ledger.publish()
        if self._client is not None:
            self._overflow.drain(self._produce_held, self._expired)

    def _produce_held(self, pending: PendingDelivery) -> bool:
        """Hand a message from the overflow to librdkafka; False if its queue is still full."""
        client = self._client
        assert client is not None
        try:
            client.produce(
                pending.topic,
                pending.value,
                pending.key,
                on_delivery=pending.report,
                headers=list(pending.headers) if pending.headers else None,
            )
        except BufferError:
            return False
        except ck.KafkaException as exc:
            self.metrics.errors.labels(pending.topic, "produce").inc()
            pending.fail(KafkaError.wrap(f"{self._name}: cannot produce to {pending.topic}", exc))
        else:
            self._ledger.inflight += 1
        return True

    def _expired(self, pending: PendingDelivery) -> None:
        self._ledger.failed(pending.topic)

    def _on_client_error(self, err: ck.KafkaError) -> None:
        self.metrics.errors.labels("", "client").inc()
        log.warning("kafka producer %s: %s", self._name, err)
