"""Kafka for asyncio nodes: an idempotent producer, an at-least-once consumer with a dead-letter
topic, and exactly-once consume-transform-produce, over confluent-kafka (librdkafka).

The asyncio bridge is written here, not taken from ``confluent_kafka.aio``:

* ``AIOProducer.produce`` refuses message headers (it batches through ``produce_batch``,
  which has none), and the dead-letter records need them; it is a coroutine, so there is no
  enqueue-without-awaiting for hot loops; and its own buffer holds a lone message up to
  ``buffer_timeout`` (1 s) unless flushed. Measured on one 2-core machine (100,000 messages
  of 200 bytes, each acknowledged, lz4, linger 5 ms, idempotent, acks=all, local Tansu;
  medians of 7 runs): AIOProducer 53k msg/s; ``send_nowait`` + ``flush`` here 155k msg/s;
  the raw client with nothing but a future and a Delivery per message 177k msg/s. Per-message
  futures are the cost: the raw client reaches 437k msg/s with a bare delivery callback and
  692k msg/s without any.
* ``AIOConsumer`` runs every call on a thread pool (100 threads by default) and leaves
  committing after processing, dead-lettering and rebalance bookkeeping to the caller, which
  is what this module is for.

How the bridge works: ``produce()`` is called on the event loop (it only queues in
librdkafka's memory, never blocks), and delivery reports are served on the loop too, by
``poll(0)`` (never blocks) from a pump task every millisecond while messages are in flight,
every few hundred sends from a caller that does not yield, and by ``flush()``, which polls
on the loop the same way; so futures are settled directly, with no thread hand-off per
message. ``send_batch`` goes further: one future and one callback for a whole batch. Calls
that block on the network (commit, consume, transactions, close) run on one worker thread
per client; reports they serve are handed to the loop in batches with
``call_soon_threadsafe``. ``stop()`` joins that thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Any, Literal, NamedTuple, ParamSpec, Self, TypeVar, cast

import confluent_kafka as ck
from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = [
    "UNKNOWN_OFFSET",
    "BatchDelivery",
    "BatchDeliveryError",
    "Compression",
    "Consumer",
    "Delivery",
    "HandlerError",
    "KafkaError",
    "KafkaMetrics",
    "Producer",
    "ProducerFencedError",
    "ProducerQueueFullError",
    "Record",
    "TransactionalPipeline",
    "dead_letter_headers",
]

P = ParamSpec("P")
T = TypeVar("T")
_Job = tuple[Callable[[], object], "asyncio.Future[Any]"]
# Bound once: the send path and the delivery callback use them once per message.
_Future = asyncio.Future
_get_ident = threading.get_ident

Compression = Literal["none", "gzip", "lz4", "snappy", "zstd"]
Transform = Callable[["Record"], Awaitable[Sequence[tuple[str, bytes | None, bytes]]]]

_log = logging.getLogger(__name__)

UNKNOWN_OFFSET = -1

# Credentials of every client built here, scrubbed from each message this module logs or
# raises: librdkafka echoes parts of its configuration in some errors (an unparsable
# sasl.oauthbearer.config, for one). Grows only with distinct configured secrets.
_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()
REDACTED = "**redacted**"
# librdkafka settings that hold credentials, matched by these parts of their names.
_SECRET_MARKERS = ("password", "secret", "sasl.oauthbearer.config", "ssl.key.pem", "ssl_key")


def _is_secret(key: str) -> bool:
    return any(marker in key.lower() for marker in _SECRET_MARKERS)


def _redacted(conf: Mapping[str, object]) -> dict[str, object]:
    return {key: REDACTED if _is_secret(key) else value for key, value in conf.items()}


def _register_secrets(conf: Mapping[str, object]) -> None:
    found: set[str] = set()
    for key, value in conf.items():
        if not (_is_secret(key) and isinstance(value, str) and value):
            continue
        found.add(value)
        # "principal=admin secret=..." is echoed piecemeal: each value is a secret too.
        for part in value.split():
            found.add(part)
            found.add(part.partition("=")[2])
    found.discard("")
    if found:
        with _SECRETS_LOCK:
            _SECRETS.update(found)


def _scrub(text: str) -> str:
    if not _SECRETS:
        return text
    for secret in sorted(_SECRETS, key=len, reverse=True):  # longest first: no partial leftovers
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class SecretScrubber(logging.Filter):
    """Redact configured credentials from every record of this module's logger, librdkafka's
    own log lines (routed here) included."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _SECRETS:
            return True
        message = record.getMessage()
        scrubbed = _scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_info and not record.exc_text:
            record.exc_text = _scrub(logging.Formatter().formatException(record.exc_info))
        return True


_log.addFilter(SecretScrubber())

# Settings the delivery guarantees of this module rest on; `extra` may not override them.
_PRODUCER_FIXED = frozenset({"enable.idempotence", "acks", "request.required.acks"})
_CONSUMER_FIXED = frozenset({"enable.auto.commit", "enable.auto.offset.store", "group.id"})
# Connection settings a consumer's `extra` shares with the dead-letter producer it builds.
_CONNECTION_PREFIXES = ("security.", "sasl.", "ssl.", "socket.", "client.", "broker.")
# Commit failures meaning the partitions moved to another member: its records are redelivered
# there (at least once), so they are reported, not raised.
_REBALANCED = frozenset(
    {
        ck.KafkaError.REBALANCE_IN_PROGRESS,
        ck.KafkaError.ILLEGAL_GENERATION,
        ck.KafkaError.UNKNOWN_MEMBER_ID,
        ck.KafkaError._NO_OFFSET,
    }
)
# While messages are in flight, delivery reports are served this often (and every
# _POLL_EVERY sends by a caller enqueueing in a tight loop).
_PUMP_INTERVAL_S = 0.001
_POLL_EVERY = 256
# A batch polls less often: each report it serves costs little, each poll a GIL round trip.
_BATCH_POLL_EVERY = 1024


class KafkaError(Exception):
    """A Kafka operation failed. ``code`` is librdkafka's error name when it reported one;
    ``retriable`` says trying again may succeed, ``fatal`` that the client is unusable."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retriable: bool = False,
        fatal: bool = False,
        txn_requires_abort: bool = False,
    ) -> None:
        super().__init__(_scrub(message))
        self.code = code
        self.retriable = retriable
        self.fatal = fatal
        self.txn_requires_abort = txn_requires_abort

    @classmethod
    def wrap(cls, context: str, error: BaseException | ck.KafkaError) -> KafkaError:
        """Describe a librdkafka error (or the KafkaException carrying it) as ``context: why``."""
        err = error.args[0] if isinstance(error, ck.KafkaException) and error.args else error
        if isinstance(err, ck.KafkaError):
            # Fenced is for good, even where librdkafka first reports it as an abortable
            # transaction error (its local _FENCED, seen from send_offsets_to_transaction).
            fenced = err.name() in _FENCED
            kind = ProducerFencedError if fenced else cls
            why = "fenced by a newer producer with the same transactional_id: " if fenced else ""
            return kind(
                f"{context}: {why}{err.str()} ({err.name()})",
                code=err.name(),
                retriable=err.retriable() and not fenced,
                fatal=err.fatal() or fenced,
                txn_requires_abort=err.txn_requires_abort(),
            )
        return cls(f"{context}: {err}")


class ProducerFencedError(KafkaError):
    """A newer producer with the same ``transactional_id`` started: this one is fenced for
    good (``fatal``). Its open transaction is aborted by the broker; stop it."""


# librdkafka's names for "fenced by a newer instance".
_FENCED = frozenset({"_FENCED", "PRODUCER_FENCED", "INVALID_PRODUCER_EPOCH"})


class ProducerQueueFullError(KafkaError):
    """``send_nowait`` (or part of a ``send_batch``) found librdkafka's queue and the
    producer's own overflow full: the message was not queued. ``await send()`` waits for room
    instead; so does ``flush()`` before sending more."""


def _timed_out(name: str, topic: str, timeout_ms: int) -> KafkaError:
    # The same code librdkafka gives a message that outlived delivery.timeout.ms, so that a
    # caller handles both alike.
    return KafkaError(
        f"{name}: delivery to {topic} failed: message timed out after {timeout_ms} ms "
        "waiting for room in the local queue (_MSG_TIMED_OUT)",
        code="_MSG_TIMED_OUT",
        retriable=True,
    )


class HandlerError(KafkaError):
    """A handler raised for ``record`` and no dead-letter topic was configured; the offsets of
    the records before it are committed, the record itself is not."""

    def __init__(self, record: Record, error: BaseException) -> None:
        super().__init__(
            f"handler failed for {record.topic}[{record.partition}]@{record.offset} "
            f"and no dead-letter topic is configured: {type(error).__name__}: {error}"
        )
        self.record = record


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where the broker stored an acknowledged message. ``offset`` is UNKNOWN_OFFSET (-1)
    when the broker acknowledged a retried batch it already had (the first answer was lost
    on the way) without saying where: the message is stored, once."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class BatchDelivery:
    """A batch (``Producer.send_batch``) whose every message the broker acknowledged."""

    topic: str
    count: int


class BatchDeliveryError(KafkaError):
    """Some messages of a batch were not delivered. ``failed`` holds each one's key, value
    and error, in the order the reports came, so that the caller can send them again;
    ``delivered`` counts the others."""

    def __init__(
        self,
        topic: str,
        count: int,
        failed: Sequence[tuple[bytes | None, bytes, KafkaError]],
    ) -> None:
        first = failed[0][2]
        super().__init__(
            f"{len(failed)} of {count} message(s) to {topic} not delivered; first: {first}",
            code=first.code,
            retriable=all(error.retriable for _, _, error in failed),
            fatal=any(error.fatal for _, _, error in failed),
        )
        self.topic = topic
        self.delivered = count - len(failed)
        self.failed = list(failed)


@dataclass(frozen=True, slots=True)
class Record:
    """A consumed message. A tombstone (null value) arrives as ``b""``, a null header value
    as ``b""``."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


class KafkaMetrics:
    """Produced/consumed messages and bytes per topic, errors per topic and kind, dead-lettered
    records per source topic, and consumer lag per partition.

    One instance per (registry, name): a producer and a consumer given the same registry and
    name share these series instead of colliding. Bytes are value bytes. Error kinds:
    ``delivery``, ``produce``, ``consume``, ``handler``, ``commit``, ``transaction``,
    ``client``.
    """

    def __init__(self, name: str, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.produced_messages = Counter(
            f"{name}_produced_messages",
            "Messages acknowledged by the broker.",
            ["topic"],
            registry=registry,
        )
        self.produced_bytes = Counter(
            f"{name}_produced_bytes", "Value bytes acknowledged.", ["topic"], registry=registry
        )
        self.consumed_messages = Counter(
            f"{name}_consumed_messages",
            "Records processed (handled or dead-lettered).",
            ["topic"],
            registry=registry,
        )
        self.consumed_bytes = Counter(
            f"{name}_consumed_bytes", "Value bytes processed.", ["topic"], registry=registry
        )
        self.errors = Counter(
            f"{name}_errors", "Errors by topic and kind.", ["topic", "kind"], registry=registry
        )
        self.dead_lettered = Counter(
            f"{name}_dead_lettered",
            "Records sent to the dead-letter topic, by source topic.",
            ["topic"],
            registry=registry,
        )
        self.consumer_lag = Gauge(
            f"{name}_consumer_lag",
            "High watermark minus committed offset, per assigned partition.",
            ["topic", "partition"],
            registry=registry,
        )

    @classmethod
    def get(cls, name: str, registry: CollectorRegistry | None) -> KafkaMetrics:
        """The metrics for ``name`` in ``registry`` (a private registry if None)."""
        registry = registry if registry is not None else CollectorRegistry()
        with _METRICS_LOCK:
            by_name = _METRICS.setdefault(registry, {})
            if name not in by_name:
                by_name[name] = cls(name, registry)
            return by_name[name]


_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, KafkaMetrics]] = (
    weakref.WeakKeyDictionary()
)
_METRICS_LOCK = threading.Lock()


def _check_extra(extra: Mapping[str, object] | None, fixed: frozenset[str]) -> dict[str, object]:
    conf = dict(extra or {})
    overridden = sorted(fixed & conf.keys())
    if overridden:
        raise ValueError(f"extra may not set {', '.join(overridden)}: this client relies on it")
    return conf


def _settle(fut: asyncio.Future[Any], result: object, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


def _fail(fut: asyncio.Future[Any], error: BaseException) -> None:
    if not fut.done():
        fut.set_exception(error)


def _consume_exception(fut: asyncio.Future[Any]) -> None:
    """Mark a future's exception as seen: the failure is reported elsewhere."""
    if not fut.cancelled():
        fut.exception()


class ClientThread:
    """One thread running a client's blocking calls in order, off the event loop.

    One thread per client serialises the calls, which librdkafka's consumer needs anyway. It
    is owned (not the loop's default executor), so ``stop()`` joins it; the thread reports its
    exit to the loop, so that join never blocks the loop.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._exited: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._exited = loop.create_future()
        self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
        self._thread.start()

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` on the worker thread. Cancelling the caller does not stop a call that
        already runs; its result is dropped."""
        if self._thread is None or self._loop is None:
            raise KafkaError(f"{self._name} is not started")
        fut: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put((partial(fn, *args, **kwargs), fut))
        return await fut

    def _main(self) -> None:
        loop, exited = self._loop, self._exited
        assert loop is not None
        assert exited is not None
        try:
            while (job := self._jobs.get()) is not None:
                fn, fut = job
                result: object = None
                error: BaseException | None = None
                try:
                    result = fn()
                except BaseException as exc:  # handed to the awaiting coroutine
                    error = exc
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    loop.call_soon_threadsafe(_settle, fut, result, error)
        finally:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, exited, None, None)

    async def stop(self) -> None:
        """Let the calls already queued finish, then end and join the thread."""
        if self._thread is None or self._exited is None:
            return
        self._jobs.put(None)
        await asyncio.shield(self._exited)
        self._thread.join()
        self._thread = None


# A delivery callback as librdkafka calls it.
_Report = Callable[[ck.KafkaError | None, ck.Message], None]


class PendingDelivery(NamedTuple):
    """A message waiting in the producer's overflow for room in librdkafka's queue."""

    topic: str
    value: bytes
    key: bytes | None
    headers: Sequence[tuple[str, bytes]]
    report: _Report  # its delivery callback once produced
    abandoned: Callable[[], bool]  # the sender gave up on it: drop it unsent
    fail: Callable[[KafkaError], None]  # it can never be sent
    expires: float  # monotonic time after which it fails as timed out


class DeliveryBatch:
    """The one future and the one delivery callback of a ``send_batch``.

    Counts reports rather than holding a future per message: this is what makes a batch
    cheaper than as many ``send_nowait`` calls. The callback runs once per message, so it
    does as little as it can; the bookkeeping waits for the last report.
    """

    __slots__ = (
        "_failed",
        "_loop_thread",
        "_producer",
        "_size",
        "_unreported",
        "count",
        "future",
        "topic",
        "unsent",
    )

    def __init__(
        self,
        producer: Producer,
        topic: str,
        values: Sequence[bytes],
        future: asyncio.Future[BatchDelivery],
    ) -> None:
        self._producer = producer
        self._loop_thread = producer._loop_thread
        self.topic = topic
        self.count = len(values)
        self.future = future
        self._size = sum(map(len, values))
        self._unreported = self.count  # reports (or unsent failures) still to come
        self.unsent = 0  # messages that never reached librdkafka
        self._failed: list[tuple[bytes | None, bytes, KafkaError]] = []

    def report(self, err: ck.KafkaError | None, msg: ck.Message) -> None:
        """librdkafka's delivery callback, for every message of the batch."""
        if _get_ident() != self._loop_thread:
            self._producer._reports.append((self.report, err, msg))  # settled on the loop
            return
        if err is not None:
            self._producer._failed[self.topic] = self._producer._failed.get(self.topic, 0) + 1
            error = KafkaError.wrap(f"delivery to {self.topic} failed", err)
            self._failed.append((msg.key(), msg.value() or b"", error))
            self._size -= len(msg)
        self._unreported -= 1
        if not self._unreported:
            self._complete()

    def fail_unsent(self, key: bytes | None, value: bytes, error: KafkaError) -> None:
        """A message of the batch that never reached librdkafka."""
        self._failed.append((key, value, error))
        self._size -= len(value)
        self.unsent += 1
        self._unreported -= 1
        if not self._unreported:
            self._complete()

    def _complete(self) -> None:
        producer = self._producer
        producer._inflight -= self.count - self.unsent
        delivered = self.count - len(self._failed)
        if delivered:
            producer._count_acked(self.topic, delivered, self._size)
        if self.future.done():  # cancelled by the sender
            return
        if self._failed:
            self.future.set_exception(BatchDeliveryError(self.topic, self.count, self._failed))
        else:
            self.future.set_result(BatchDelivery(self.topic, self.count))


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
        if max_overflow_messages < 0:
            raise ValueError(
                f"max_overflow_messages must be 0 or more (0: no overflow), "
                f"got {max_overflow_messages}"
            )
        if max_overflow_bytes < 0:
            raise ValueError(
                f"max_overflow_bytes must be 0 or more (0: no overflow), got {max_overflow_bytes}"
            )
        conf = _check_extra(extra, _PRODUCER_FIXED)
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
        _register_secrets(conf)
        self._conf = conf
        self._name = name
        self.metrics = KafkaMetrics.get(name, registry)
        self._client: ck.Producer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._report = self._on_delivery  # bound once: one delivery callback per message
        self._worker = ClientThread(f"{name}-producer")
        self._pump_task: asyncio.Task[None] | None = None
        self._pump_wakeup = asyncio.Event()
        self._inflight = 0  # handed to librdkafka, delivery report not yet settled
        self._flushers = 0  # flush() calls in progress, each polling for reports
        self._since_poll = 0
        # Delivery reports served on the worker thread (during flush and commit), settled on
        # the loop; deque append/popleft are thread-safe.
        self._reports: deque[tuple[_Report, ck.KafkaError | None, ck.Message]] = deque()
        self._wake_scheduled = False
        # Messages librdkafka's queue had no room for, in send order, produced as room frees up;
        # bounded in count and bytes, each held at most delivery_timeout_ms.
        self._overflow: deque[PendingDelivery] = deque()
        self._overflow_bytes = 0
        self._max_overflow = max_overflow_messages
        self._max_overflow_bytes = max_overflow_bytes
        self._delivery_timeout_ms = delivery_timeout_ms
        self._room = asyncio.Event()  # set while the overflow has room
        self._room.set()
        # Acknowledged messages and bytes per topic, and failures, not yet added to the metrics
        # (added once per poll rather than per message: a labelled increment costs a lock).
        self._acked: dict[str, list[int]] = {}
        self._failed: dict[str, int] = {}
        self._fatal_logged = False

    @property
    def config(self) -> dict[str, object]:
        """The configuration handed to librdkafka (without callbacks), credentials redacted."""
        return _redacted(self._conf)

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
            client = ck.Producer({**self._conf, "error_cb": self._on_client_error, "logger": _log})
        except ck.KafkaException as exc:
            raise KafkaError.wrap(f"{self._name}: invalid producer configuration", exc) from exc
        self._client = client
        self._loop = loop
        self._loop_thread = threading.get_ident()
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
            _log.warning("kafka producer %s: stopping without delivering all: %s", self._name, exc)
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
            self._fail_overflow("producer stopped before the message was sent")

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
                if isinstance(err, ck.KafkaError) and err.code() == ck.KafkaError._TIMED_OUT:
                    _log.warning(
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
            _log.warning("kafka producer %s: closing: %s", self._name, warning.message)

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
            self._hold(topic, value, key, headers, report, fut.done, partial(_fail, fut))
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
            self._hold(topic, value, key, headers, report, fut.done, partial(_fail, fut))
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
        batch = DeliveryBatch(self, topic, values, _Future(loop=self._loop))
        if not values:
            batch.future.set_result(BatchDelivery(topic, 0))
            return batch.future
        # The loop below is the hot path of bulk sending, one iteration per message: no
        # per-message lookups beyond produce itself.
        report, produce, poll = batch.report, client.produce, client.poll
        keyed = keys if keys is not None else [None] * len(values)
        index = 0  # the first message not handed to librdkafka
        if not self._overflow:
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
            if self._has_room(len(value)):
                self._hold(topic, value, key, (), report, abandoned, partial(unsent, key, value))
            else:
                self.metrics.errors.labels(topic, "produce").inc()
                unsent(key, value, self._queue_full(topic))
        if index < len(values):
            self._pump_wakeup.set()
        return batch.future

    def _hold(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        report: _Report,
        abandoned: Callable[[], bool],
        fail: Callable[[KafkaError], None],
    ) -> None:
        """Keep a message librdkafka's queue has no room for, in order, until it has."""
        expires = time.monotonic() + self._delivery_timeout_ms / 1000
        self._overflow.append(
            PendingDelivery(topic, value, key, headers, report, abandoned, fail, expires)
        )
        self._overflow_bytes += len(value)
        if not self._has_room(0):
            self._room.clear()

    def _has_room(self, size: int) -> bool:
        return (
            len(self._overflow) < self._max_overflow
            and self._overflow_bytes + size <= self._max_overflow_bytes
        )

    def _queue_full(self, topic: str) -> ProducerQueueFullError:
        return ProducerQueueFullError(
            f"{self._name}: cannot queue a message to {topic}: librdkafka's queue and the "
            f"overflow (max_overflow_messages={self._max_overflow}, max_overflow_bytes="
            f"{self._max_overflow_bytes}) are full; await send() or flush() to wait for room",
            code="_QUEUE_FULL",
            retriable=True,
        )

    def _check_room(self, topic: str, value: bytes) -> None:
        if not self._has_room(len(value)):
            self.metrics.errors.labels(topic, "produce").inc()
            raise self._queue_full(topic)

    def _released(self, pending: PendingDelivery) -> None:
        """Book a message that left the overflow."""
        self._overflow_bytes -= len(pending.value)
        if not self._room.is_set() and self._has_room(0):
            self._room.set()

    def _sent(self, client: ck.Producer, count: int) -> None:
        """Count ``count`` messages handed to librdkafka."""
        if not self._inflight:
            self._pump_wakeup.set()
        self._inflight += count
        self._since_poll += count
        if self._since_poll >= _POLL_EVERY:
            # A caller enqueueing in a tight loop never yields to the pump: serve reports here.
            self._since_poll = 0
            client.poll(0)
            self._publish_counts()

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
        fut = await self._enqueue(topic, value, key=key, headers=headers)
        return await fut

    async def _enqueue(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> asyncio.Future[Delivery]:
        """``send_nowait``, waiting for room in the overflow (up to the delivery timeout)."""
        deadline = time.monotonic() + self._delivery_timeout_ms / 1000
        while True:
            try:
                return self.send_nowait(topic, value, key=key, headers=headers)
            except ProducerQueueFullError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _timed_out(self._name, topic, self._delivery_timeout_ms) from None
                self._room.clear()  # a larger message than the room freed so far: wait again
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), remaining)

    async def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every message sent so far is acknowledged or failed (each future says
        which); raise KafkaError if that takes longer than ``timeout_s``."""
        client = self._require_client()
        deadline = time.monotonic() + timeout_s
        self._flushers += 1  # the pump leaves the polling to us meanwhile
        try:
            while self._overflow or self._inflight:
                if time.monotonic() >= deadline:
                    raise KafkaError(
                        f"{self._name}: flush timed out after {timeout_s} s with "
                        f"{self._inflight + len(self._overflow)} message(s) undelivered",
                        retriable=True,
                    )
                # On the loop, not on the worker: flush(0) never blocks; it sends what lingers
                # at once and serves the reports here, so they settle directly instead of being
                # handed over from another thread one by one (a third of a bulk send's cost).
                client.flush(0)
                self._settle_reports()
                if self._overflow or self._inflight:
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
        self._fail_overflow("transaction aborted before the message was sent")
        await self._txn_call("abort_transaction", client.abort_transaction, timeout_s)

    async def _send_offsets_to_transaction(
        self, offsets: list[ck.TopicPartition], group_metadata: object, timeout_s: float
    ) -> None:
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
        while True:
            if not (self._inflight or self._overflow):
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
                        _log.error("kafka producer %s: %s", self._name, KafkaError.wrap("", exc))
                except Exception:  # a callback failed; the pump must go on regardless
                    _log.exception("kafka producer %s: serving delivery reports", self._name)
            await asyncio.sleep(_PUMP_INTERVAL_S)

    def _on_delivery(
        self, fut: asyncio.Future[Delivery], err: ck.KafkaError | None, msg: ck.Message
    ) -> None:
        if _get_ident() != self._loop_thread:
            # Served on the worker (flush, transactions): futures belong to the loop.
            self._reports.append((partial(self._report, fut), err, msg))
            return
        self._inflight -= 1
        topic: str = msg.topic()  # type: ignore[assignment]  # set on every delivery report
        if err is None:
            self._count_acked(topic, 1, len(msg))
            if not fut.done():  # a cancelled send()
                offset = msg.offset()
                fut.set_result(
                    Delivery(topic, msg.partition(), UNKNOWN_OFFSET if offset is None else offset)  # type: ignore[arg-type]
                )
        else:
            self._failed[topic] = self._failed.get(topic, 0) + 1
            if not fut.done():
                fut.set_exception(KafkaError.wrap(f"delivery to {topic} failed", err))

    def _count_acked(self, topic: str, messages: int, size: int) -> None:
        acked = self._acked.get(topic)
        if acked is None:
            acked = self._acked[topic] = [0, 0]
        acked[0] += messages
        acked[1] += size

    def _wake_loop(self) -> None:
        """(Worker thread) Have the loop settle the reports collected here: one wake-up per
        batch, not per message."""
        if self._reports and not self._wake_scheduled and self._loop is not None:
            self._wake_scheduled = True
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._loop.call_soon_threadsafe(self._settle_reports)

    def _settle_reports(self) -> None:
        """Settle the reports the worker collected, publish counts, refill from overflow."""
        self._wake_scheduled = False  # before draining: a report appended later wakes again
        reports = self._reports
        while reports:
            try:
                report, err, msg = reports.popleft()
            except IndexError:
                break
            report(err, msg)  # on the loop thread now: settles
        self._publish_counts()
        self._drain_overflow()

    def _publish_counts(self) -> None:
        if self._acked:
            for topic, (messages, size) in self._acked.items():
                self.metrics.produced_messages.labels(topic).inc(messages)
                self.metrics.produced_bytes.labels(topic).inc(size)
            self._acked.clear()
        if self._failed:
            for topic, count in self._failed.items():
                self.metrics.errors.labels(topic, "delivery").inc(count)
            self._failed.clear()

    def _drain_overflow(self) -> None:
        client = self._client
        overflow = self._overflow
        now = time.monotonic() if overflow else 0.0
        while overflow and client is not None:
            pending = overflow[0]
            if pending.abandoned():  # the caller gave up on it (cancelled): do not send it
                overflow.popleft()
                self._released(pending)
                pending.fail(KafkaError(f"{self._name}: cancelled before it was sent"))
                continue
            if pending.expires <= now:
                # Held in send order, so every expired message is at the head.
                overflow.popleft()
                self._released(pending)
                self._failed[pending.topic] = self._failed.get(pending.topic, 0) + 1
                pending.fail(_timed_out(self._name, pending.topic, self._delivery_timeout_ms))
                continue
            try:
                client.produce(
                    pending.topic,
                    pending.value,
                    pending.key,
                    on_delivery=pending.report,
                    headers=list(pending.headers) if pending.headers else None,
                )
            except BufferError:
                return
            except ck.KafkaException as exc:
                self.metrics.errors.labels(pending.topic, "produce").inc()
                error = KafkaError.wrap(f"{self._name}: cannot produce to {pending.topic}", exc)
                pending.fail(error)
            else:
                self._inflight += 1
            overflow.popleft()
            self._released(pending)

    def _fail_overflow(self, why: str) -> None:
        while self._overflow:
            pending = self._overflow.popleft()
            self._released(pending)
            pending.fail(KafkaError(f"{self._name}: {why}"))

    def _on_client_error(self, err: ck.KafkaError) -> None:
        self.metrics.errors.labels("", "client").inc()
        _log.warning("kafka producer %s: %s", self._name, err)


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
    ) -> None:
        if not topics:
            raise ValueError("topics must not be empty")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        conf = _check_extra(extra, _CONSUMER_FIXED)
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
        _register_secrets(conf)
        self._conf = conf
        self._topics = list(topics)
        self._name = name
        self._max_batch = max_batch
        self._poll_timeout_s = poll_timeout_s
        self._earliest = auto_offset_reset in ("earliest", "smallest", "beginning")
        self.dead_letter_topic = dead_letter_topic
        self.metrics = KafkaMetrics.get(name, registry)
        self._dlq_producer = dead_letter_producer
        self._owns_dlq_producer = False
        if dead_letter_topic is not None and dead_letter_producer is None:
            shared = {k: v for k, v in conf.items() if k.startswith(_CONNECTION_PREFIXES)}
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
        return _redacted(self._conf)

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
            client = ck.Consumer({**self._conf, "error_cb": self._on_client_error, "logger": _log})
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
        self._enter_run()
        try:
            while not self._assigned:
                if time.monotonic() > deadline:
                    raise KafkaError(f"{self._name}: no partitions assigned after {timeout_s} s")
                await self._fetch_once()
        finally:
            self._running = False
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
        self._enter_run()
        processed = 0
        idle_since = time.monotonic()
        try:
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
        finally:
            self._running = False
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
        _log.warning(
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
        if isinstance(err, ck.KafkaError) and err.code() in _REBALANCED:
            _log.warning(
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
                _log.warning("kafka consumer %s: %s", self._name, err)
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
                    _record_headers(headers) if headers else (),
                )
            )
        self._buffer.extend(records)

    def _on_assign(self, client: ck.Consumer, partitions: list[ck.TopicPartition]) -> None:
        self._assigned = self._assigned | {(tp.topic, tp.partition) for tp in partitions}
        self._rebalanced = True
        _log.info("kafka consumer %s: assigned %s", self._name, _describe(partitions))

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
        _log.info("kafka consumer %s: revoked %s", self._name, _describe(partitions))

    def _on_client_error(self, err: ck.KafkaError) -> None:
        self.metrics.errors.labels("", "client").inc()
        _log.warning("kafka consumer %s: %s", self._name, err)

    # For TransactionalPipeline -----------------------------------------------------------

    def _enter_run(self) -> None:
        if self._running:
            raise KafkaError(f"{self._name}: the consumer is already running")
        self._running = True

    def _require_client(self) -> ck.Consumer:
        if self._client is None:
            raise KafkaError(f"{self._name}: consumer is not started")
        return self._client

    async def _next_batch(self) -> list[Record]:
        """The buffered records, fetching once if there are none (may be empty)."""
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
            fetch.add_done_callback(_consume_exception)  # awaited below, or by the next run
            self._fetching = fetch
        await asyncio.shield(fetch)

    def _take(self, count: int) -> None:
        for _ in range(count):
            self._buffer.popleft()

    async def _group_metadata(self) -> object:
        client = self._require_client()
        return await self._worker.call(client.consumer_group_metadata)


def dead_letter_headers(record: Record, error: BaseException) -> list[tuple[str, bytes]]:
    """The record's own headers plus where it came from and why it failed."""
    return [
        *record.headers,
        ("dlq.error", f"{type(error).__name__}: {error}".encode()),
        ("dlq.topic", record.topic.encode()),
        ("dlq.partition", str(record.partition).encode()),
        ("dlq.offset", str(record.offset).encode()),
    ]


def _record_headers(
    headers: list[tuple[str, str | bytes | None]] | dict[str, str | bytes | None],
) -> tuple[tuple[str, bytes], ...]:
    items = headers.items() if isinstance(headers, dict) else headers
    return tuple(
        (name, b"" if value is None else value.encode() if isinstance(value, str) else value)
        for name, value in items
    )


def _describe(partitions: list[ck.TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"


class TransactionalPipeline:
    """Exactly-once consume-transform-produce: per fetched batch, one transaction holds the
    outputs of ``transform`` and the consumer's offsets, so either both become visible (to
    ``read_committed`` readers) or neither does.

    The consumer commits nothing itself here. A retriable failure of sending the offsets or
    of the commit (a timeout, a coordinator moving) is tried again, up to ``commit_attempts``
    times, in the same transaction. Any other failure aborts the transaction and ``run()``
    raises; the batch stays buffered, so calling ``run()`` again retries it (and a restart
    re-reads it from the last committed offsets). A producer fenced by a newer one with the
    same ``transactional_id`` raises ProducerFencedError (nothing to abort: the broker did).
    Cancelling ``run()`` during a commit waits for the commit's outcome (it runs on regardless)
    so that a committed batch is never processed again. A record whose ``transform`` raises
    goes, inside the same transaction, to the consumer's dead-letter topic if it has one;
    otherwise the transaction is aborted and HandlerError raised.
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
        consumer._enter_run()
        processed = 0
        idle_since = time.monotonic()
        try:
            while not (stop is not None and stop.is_set()) and (
                max_records is None or processed < max_records
            ):
                batch = await consumer._next_batch()
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
                consumer._take(len(batch))
                processed += len(batch)
                if cancelled:  # during a commit that went through: the batch is done
                    raise asyncio.CancelledError
        finally:
            consumer._running = False
        return processed

    async def _process(self, batch: list[Record], transform: Transform) -> bool:
        """Process and commit ``batch``; return whether the caller was cancelled during
        the commit (which then went through)."""
        consumer, producer = self._consumer, self._producer
        metrics = consumer.metrics
        await producer.begin_transaction()
        futures: list[asyncio.Future[Delivery]] = []
        dead_lettered: list[str] = []
        try:
            offsets: dict[tuple[str, int], int] = {}
            for record in batch:
                try:
                    outputs = await transform(record)
                except Exception as exc:
                    metrics.errors.labels(record.topic, "handler").inc()
                    if consumer.dead_letter_topic is None:
                        raise HandlerError(record, exc) from exc
                    # Waits for room in a full local queue rather than failing the batch.
                    futures.append(
                        await producer._enqueue(
                            consumer.dead_letter_topic,
                            record.value,
                            key=record.key,
                            headers=dead_letter_headers(record, exc),
                        )
                    )
                    dead_lettered.append(record.topic)
                else:
                    for topic, key, value in outputs:
                        futures.append(await producer._enqueue(topic, value, key=key))
                offsets[(record.topic, record.partition)] = record.offset + 1
            group = await consumer._group_metadata()
            tps = [ck.TopicPartition(t, p, o) for (t, p), o in offsets.items()]
            await self._retrying(
                "send_offsets_to_transaction",
                lambda: producer._send_offsets_to_transaction(tps, group, self._timeout_s),
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
                _log.warning(
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
            fut.add_done_callback(_consume_exception)
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
