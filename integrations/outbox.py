"""Transactional outbox: events written with the data they describe, published to Kafka after.

A handler that changes rows and must tell others about it writes the event into an outbox table
in the same PostgreSQL transaction (``enqueue``): the event exists if and only if the change
committed. An ``OutboxRelay`` then publishes pending rows with the Kafka kit's idempotent
producer, waits until the broker acknowledged them, and marks them sent.

What it guarantees:

* **At least once, with a stable event id.** ``enqueue`` picks a UUID, stores it in the row and
  the relay sends it as the ``event_id`` header (``event_id_of`` reads it back). A relay that
  dies between the broker's acknowledgement and the mark leaves the rows pending, and the next
  relay publishes them again with the same ids: consumers dedupe on the id.
* **Per-key order.** Rows of one (topic, key) are published in the order they were enqueued,
  and an earlier row of a key is never published after a later one (a failed row holds back the
  later rows of its key). ``enqueue`` serialises the transactions that write the same
  (topic, key) with a transaction-scoped advisory lock taken before the row gets its position,
  so enqueue order is commit order and the relay never sees a later row of a key before an
  earlier one. Rows without a key have no order.
* **One publisher at a time.** A relay works only while it holds a PostgreSQL advisory lock
  (derived from the table name) on its own session, and reads and marks through that session;
  other relays (replicas) stand by and try for the lock every ``poll_interval_s``. The lock is
  released when the session ends, so a relay whose process dies hands over at once.
* **Bounds.** A batch holds at most ``batch_size`` rows; ``enqueue`` refuses a row
  (``OutboxFullError``) once ``max_pending`` rows wait; sent rows are deleted once older than
  ``retention_s`` (at most ``prune_batch`` a time), so the table stays bounded.

The relay wakes on ``NOTIFY`` (sent by ``enqueue`` on commit) and polls every
``poll_interval_s`` as well (a notification can be missed while the relay reconnects). While
the broker or the database fails it backs off (``integrations.support.Backoff``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from prometheus_client import CollectorRegistry, Counter, Gauge

from integrations.kafka import (
    Delivery,
    KafkaError,
    Producer,
    ProducerQueueFullError,
)
from integrations.postgres import (
    Database,
)
from integrations.support import (
    Backoff,
    MetricsPerRegistry,
)

__all__ = [
    "DEFAULT_MAX_PENDING",
    "DEFAULT_TABLE",
    "EVENT_ID_HEADER",
    "OUTBOX_DDL",
    "OutboxError",
    "OutboxEvent",
    "OutboxFullError",
    "OutboxMetrics",
    "OutboxPublishError",
    "OutboxRelay",
    "enqueue",
    "ensure_schema",
    "event_id_of",
    "outbox_ddl",
]

DEFAULT_TABLE = "outbox"
DEFAULT_MAX_PENDING = 100_000
EVENT_ID_HEADER = "event_id"

_log = logging.getLogger(__name__)

# An unquoted identifier, optionally schema-qualified; short enough that the index names and
# the NOTIFY channel derived from it fit PostgreSQL's 63-byte identifiers.
_TABLE_NAME = re.compile(r"(?:[a-z_][a-z0-9_]{0,29}\.)?[a-z_][a-z0-9_]{0,40}")


class OutboxError(Exception):
    """The outbox was used wrongly or could not do its job."""


class OutboxFullError(OutboxError):
    """``max_pending`` events already wait to be published (the relay is down or the broker
    unreachable): the caller's transaction must fail rather than grow the table without end."""


class OutboxPublishError(OutboxError):
    """Some events of a batch were not acknowledged by the broker; they stay pending and are
    tried again (after the ones that were, which are marked sent)."""

    def __init__(self, table: str, failed: int, batch: int, first: BaseException) -> None:
        super().__init__(
            f"outbox {table!r}: {failed} of {batch} event(s) not published, left pending; "
            f"first: {type(first).__name__}: {first}"
        )
        self.failed = failed
        self.retriable = not isinstance(first, KafkaError) or first.retriable


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """A row of the outbox. ``position`` orders the rows (enqueue order)."""

    position: int
    event_id: uuid.UUID
    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    created_at: datetime


def _check_table(table: str) -> str:
    if not _TABLE_NAME.fullmatch(table):
        raise ValueError(
            f"outbox table {table!r} must be a lower-case identifier (letters, digits, "
            "underscores; at most 41 characters), optionally prefixed by a schema and a dot"
        )
    return table


def _lock_id(*parts: str | bytes) -> int:
    """A signed 64-bit advisory lock key for ``parts``: the key space is shared with every
    other user of advisory locks in the database, so it is a hash wide enough not to meet them."""
    digest = hashlib.blake2b(digest_size=8, person=b"onex-outbox")
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(4, "big"))
        digest.update(data)
    return int.from_bytes(digest.digest(), "big", signed=True)


def _channel(table: str) -> str:
    return f"{table.replace('.', '__')}_events"


def outbox_ddl(table: str = DEFAULT_TABLE) -> str:
    """The outbox table and its indexes, idempotent (``IF NOT EXISTS``): for a migration file,
    or run by ``ensure_schema``."""
    table = _check_table(table)
    base = table.rpartition(".")[2]
    return f"""\
CREATE TABLE IF NOT EXISTS {table} (
    position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id uuid NOT NULL,
    topic text NOT NULL,
    key bytea,
    value bytea NOT NULL,
    header_names text[] NOT NULL DEFAULT ARRAY[]::text[],
    header_values bytea[] NOT NULL DEFAULT ARRAY[]::bytea[],
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at timestamptz
);
-- What the relay reads: the pending rows in order.
CREATE INDEX IF NOT EXISTS {base}_pending_idx ON {table} (position) WHERE sent_at IS NULL;
-- What pruning reads: the sent rows by age.
CREATE INDEX IF NOT EXISTS {base}_sent_idx ON {table} (sent_at) WHERE sent_at IS NOT NULL;
"""


OUTBOX_DDL = outbox_ddl()


async def ensure_schema(database: Database, table: str = DEFAULT_TABLE) -> None:
    """Create the outbox table if it is missing. Replicas starting together take turns (two
    concurrent ``CREATE TABLE IF NOT EXISTS`` can both try to create it)."""
    ddl = outbox_ddl(table)

    async def create(conn: asyncpg.Connection) -> None:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_id("schema", table))
        await conn.execute(ddl)

    await database.transaction(create, name="outbox_schema")


async def enqueue(
    connection: asyncpg.Connection | PoolConnectionProxy,
    *,
    topic: str,
    value: bytes,
    key: bytes | None = None,
    headers: Sequence[tuple[str, bytes]] | None = None,
    table: str = DEFAULT_TABLE,
    max_pending: int = DEFAULT_MAX_PENDING,
) -> uuid.UUID:
    """Add an event to the outbox within the caller's open transaction; return its event id.

    Call it from ``Database.transaction(work)`` with ``work``'s connection: the event is
    published if and only if that transaction commits. Call it after the writes that the event
    describes. Transactions that enqueue for the same (topic, key) wait for each other from
    here until they end, which is what keeps a key's events in commit order. (Two
    transactions enqueueing for the same keys in opposite orders deadlock; PostgreSQL fails one
    of them, and ``Database.transaction`` runs it again.)

    Raises ``OutboxFullError`` (let it fail the transaction) when ``max_pending`` events or
    more already wait.
    """
    table = _check_table(table)
    if not connection.is_in_transaction():
        raise OutboxError(
            "enqueue() needs the caller's open transaction (the connection that "
            "Database.transaction passes to its work): outside one the event would be "
            "committed apart from the change it describes"
        )
    if key is not None:
        await connection.execute(
            "SELECT pg_advisory_xact_lock($1)", _lock_id("key", table, topic, key)
        )
    names = [name for name, _ in headers or ()]
    values = [header for _, header in headers or ()]
    event_id = uuid.uuid4()
    # The backlog is measured as a span of positions: an upper bound of the pending rows, read
    # from the head of the pending index rather than by counting them.
    backlog = await connection.fetchval(
        f"""
        WITH added AS (
            INSERT INTO {table} (event_id, topic, key, value, header_names, header_values)
            VALUES ($1, $2, $3, $4, $5, $6)
            RETURNING position
        )
        SELECT added.position - coalesce(
            (SELECT min(position) FROM {table} WHERE sent_at IS NULL), added.position
        ), pg_notify($7, '')
        FROM added
        """,
        event_id,
        topic,
        key,
        value,
        names,
        values,
        _channel(table),
    )
    if isinstance(backlog, int) and backlog >= max_pending:
        raise OutboxFullError(
            f"outbox {table!r} holds {max_pending} or more events waiting to be published "
            "(is the relay running and the broker reachable?); this transaction must fail"
        )
    return event_id


def event_id_of(headers: Iterable[tuple[str, str | bytes | None]]) -> uuid.UUID | None:
    """The event id an outbox event carries in its headers (a ``Record``'s, or a raw
    confluent-kafka message's), for consumers that dedupe; None when it has none."""
    for name, header in headers:
        if name == EVENT_ID_HEADER and header is not None:
            try:
                text = header if isinstance(header, str) else header.decode("ascii")
                return uuid.UUID(text)
            except (UnicodeDecodeError, ValueError):
                return None
    return None


@dataclass(frozen=True)
class OutboxMetrics:
    published: Counter
    errors: Counter
    pending: Gauge
    lag: Gauge
    active: Gauge


def _build_metrics(registry: CollectorRegistry) -> OutboxMetrics:
    return OutboxMetrics(
        published=Counter(
            "outbox_published_events",
            "Outbox events acknowledged by the broker and marked sent.",
            ["outbox"],
            registry=registry,
        ),
        errors=Counter(
            "outbox_relay_errors",
            "Relay failures by kind: publish (events the broker did not acknowledge), "
            "database (reading, marking, the relay's session).",
            ["outbox", "kind"],
            registry=registry,
        ),
        pending=Gauge(
            "outbox_pending_events",
            "Events waiting to be published, as last seen by the active relay.",
            ["outbox"],
            registry=registry,
        ),
        lag=Gauge(
            "outbox_relay_lag_seconds",
            "Age of the oldest event waiting to be published (0 when none waits).",
            ["outbox"],
            registry=registry,
        ),
        active=Gauge(
            "outbox_relay_active",
            "1 while this process's relay holds the outbox's lock and publishes.",
            ["outbox"],
            registry=registry,
        ),
    )


_METRICS = MetricsPerRegistry(_build_metrics)

AfterPublish = Callable[[Sequence[OutboxEvent]], Awaitable[None]]


class OutboxRelay:
    """Publishes the outbox's pending events in order and marks them sent.

    ``relay_once()`` publishes one batch (a library call: from a scheduler, a test, a CLI);
    ``run(stop)`` is the loop a service runs until ``stop`` is set. Both take the outbox's lock
    first; ``relay_once()`` returns 0 when another relay holds it.

    ``after_publish(events)`` is called once the broker acknowledged a batch and before it is
    marked sent (a seam for tests that kill the relay there, or for tracing).
    """

    def __init__(
        self,
        database: Database,
        producer: Producer,
        *,
        table: str = DEFAULT_TABLE,
        batch_size: int = 500,
        poll_interval_s: float = 1.0,
        retention_s: float = 7 * 24 * 3600.0,
        prune_batch: int = 10_000,
        prune_interval_s: float = 60.0,
        backoff: Backoff | None = None,
        name: str = "outbox",
        registry: CollectorRegistry | None = None,
        after_publish: AfterPublish | None = None,
    ) -> None:
        if batch_size < 1 or prune_batch < 1:
            raise ValueError("batch_size and prune_batch must be at least 1")
        if min(poll_interval_s, prune_interval_s) <= 0 or retention_s < 0:
            raise ValueError("intervals must be positive and retention_s not negative")
        self._database = database
        self._producer = producer
        self.table = _check_table(table)
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.retention_s = retention_s
        self.prune_batch = prune_batch
        self.prune_interval_s = prune_interval_s
        self.backoff = backoff or Backoff(initial_s=0.1, max_s=10.0, jitter=0.5)
        self.name = name
        self._after_publish = after_publish
        self._registry = registry if registry is not None else CollectorRegistry()
        metrics = _METRICS.get(self._registry)
        self._published = metrics.published.labels(name)
        self._publish_errors = metrics.errors.labels(name, "publish")
        self._database_errors = metrics.errors.labels(name, "database")
        self._pending = metrics.pending.labels(name)
        self._lag = metrics.lag.labels(name)
        self._active = metrics.active.labels(name)
        # The advisory lock that makes this relay the active one (pg_locks shows who holds it).
        self.lock_key = _lock_id("relay", self.table)
        self._channel = _channel(self.table)
        # The session that holds the lock while run() is active; one operation at a time on it.
        self._session: asyncpg.Connection | None = None
        self._session_busy = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._last_prune = float("-inf")
        self._last_gauges = float("-inf")
        self._select = (
            f"SELECT position, event_id, topic, key, value, header_names, header_values, "
            f"created_at FROM {self.table} WHERE sent_at IS NULL ORDER BY position LIMIT $1"
        )

    def __repr__(self) -> str:
        return f"<OutboxRelay {self.name!r} table={self.table!r}>"

    @property
    def registry(self) -> CollectorRegistry:
        return self._registry

    async def relay_once(self) -> int:
        """Publish one batch of pending events (at most ``batch_size``) in order, wait until
        the broker acknowledged them, mark them sent; return how many were.

        Returns 0 when nothing waits or another relay holds the outbox's lock. Raises
        ``OutboxPublishError`` when some events were not acknowledged (those stay pending;
        the acknowledged ones before them are marked sent).
        """
        try:
            return await self._relay_once()
        except OutboxPublishError:
            raise
        except Exception:
            self._database_errors.inc()
            raise

    async def _relay_once(self) -> int:
        if self._session is not None:
            async with self._session_busy:
                return await self._relay_batch(self._session)
        async with self._connection() as conn:
            if not await self._try_lock(conn):
                return 0
            try:
                return await self._relay_batch(conn)
            finally:
                with contextlib.suppress(Exception):  # a lost session released it anyway
                    await conn.execute("SELECT pg_advisory_unlock($1)", self.lock_key)

    async def prune(self) -> int:
        """Delete up to ``prune_batch`` sent events older than ``retention_s``; return how
        many. Pending events are never deleted."""
        status = await self._database.execute(
            f"DELETE FROM {self.table} WHERE position IN ("
            f" SELECT position FROM {self.table}"
            f" WHERE sent_at IS NOT NULL AND sent_at < now() - make_interval(secs => $1)"
            f" ORDER BY sent_at LIMIT $2)",
            self.retention_s,
            self.prune_batch,
            name="outbox_prune",
        )
        return int(status.rsplit(" ", 1)[-1])  # "DELETE 42"

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set: take the outbox's lock (standing by while another relay
        holds it), then publish batch after batch, waking on NOTIFY or every
        ``poll_interval_s``, and prune sent events every ``prune_interval_s``. Failures of the
        broker or the database are logged and counted, and retried after a backoff; a lost
        session gives up the lock and takes it again. ``stop`` is obeyed between batches: a
        batch in flight ends first (bounded by the producer's ``delivery_timeout_ms``) so that
        what the broker acknowledged is marked sent."""
        failures = 0
        while not stop.is_set():
            try:
                async with self._active_session(stop) as session:
                    if session is None:
                        return  # stopped while standing by
                    failures = await self._relay_while_active(stop, failures)
            except Exception as exc:
                self._database_errors.inc()
                failures += 1
                _log.warning(
                    "outbox relay %s: %s: %s; retrying", self.name, type(exc).__name__, exc
                )
                await _wait_any(stop, None, self.backoff.delay(failures))

    async def _relay_while_active(self, stop: asyncio.Event, failures: int) -> int:
        while not stop.is_set():
            self._wakeup.clear()
            try:
                sent = await self._relay_once()
            except OutboxPublishError as exc:
                failures += 1
                _log.warning("outbox relay %s: %s", self.name, exc)
                await _wait_any(stop, None, self.backoff.delay(failures))
                continue
            failures = 0
            if time.monotonic() - self._last_prune >= self.prune_interval_s:
                self._last_prune = time.monotonic()
                await self.prune()
            if sent < self.batch_size:
                await _wait_any(stop, self._wakeup, self.poll_interval_s)
        return failures

    @contextlib.asynccontextmanager
    async def _active_session(
        self, stop: asyncio.Event
    ) -> AsyncIterator[asyncpg.Connection | None]:
        """A session holding the outbox's lock and listening for new events, kept as
        ``self._session`` meanwhile; None if ``stop`` was set while standing by."""
        while True:
            async with self._connection() as conn:
                if await self._try_lock(conn):
                    await conn.add_listener(self._channel, self._notified)
                    self._session = conn
                    self._active.set(1)
                    try:
                        yield conn
                    finally:
                        self._session = None
                        self._active.set(0)
                        with contextlib.suppress(Exception):
                            await conn.remove_listener(self._channel, self._notified)
                    # Handing the session back to the pool resets it (asyncpg runs UNLISTEN *
                    # and pg_advisory_unlock_all()), or closes it if it broke: either way the
                    # lock is given up.
                    return
            if await _wait_any(stop, None, self.poll_interval_s):
                yield None
                return

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A session of the pool, taken within the database's ``acquire_timeout_s``."""
        pool = self._database.pool
        async with asyncio.timeout(self._database.acquire_timeout_s):
            conn = await pool.acquire()
        try:
            yield cast("asyncpg.Connection", conn)
        finally:
            # A broken session fails its reset; the pool closes it all the same.
            with contextlib.suppress(Exception):
                await pool.release(conn)

    def _notified(self, *_: object) -> None:
        self._wakeup.set()

    async def _try_lock(self, conn: asyncpg.Connection) -> bool:
        return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.lock_key))

    async def _relay_batch(self, conn: asyncpg.Connection) -> int:
        rows = await conn.fetch(self._select, self.batch_size)
        events = [_event(row) for row in rows]
        if not events:
            await self._refresh_gauges(conn, force=True)
            return 0
        outcomes = await self._publish(events)
        failed = [outcome for outcome in outcomes if not isinstance(outcome, Delivery)]
        published = _publishable_prefix(events, outcomes)
        if published and self._after_publish is not None:
            await self._after_publish(published)
        if published:
            await conn.execute(
                f"UPDATE {self.table} SET sent_at = now() WHERE position = ANY($1::bigint[])",
                [event.position for event in published],
            )
            self._published.inc(len(published))
        await self._refresh_gauges(conn, force=len(events) < self.batch_size)
        if failed:
            self._publish_errors.inc(len(failed))
            first = failed[0]
            raise OutboxPublishError(self.table, len(failed), len(events), first)
        return len(published)

    async def _publish(self, events: Sequence[OutboxEvent]) -> list[Delivery | BaseException]:
        """Hand the batch to the producer in order and wait for every acknowledgement. An
        event the producer refuses gets the error, and so does every later event of its key
        (not handed over, so that it cannot overtake); a full producer queue stops the batch
        there."""
        outcomes: list[asyncio.Future[Delivery] | BaseException] = []
        refused: dict[tuple[str, bytes | None], BaseException] = {}
        for index, event in enumerate(events):
            stream = (event.topic, event.key)
            if event.key is not None and stream in refused:
                outcomes.append(refused[stream])
                continue
            headers = [(EVENT_ID_HEADER, str(event.event_id).encode("ascii")), *event.headers]
            try:
                outcomes.append(
                    self._producer.send_nowait(
                        event.topic, event.value, key=event.key, headers=headers
                    )
                )
            except ProducerQueueFullError as exc:
                outcomes += [exc] * (len(events) - index)
                break
            except KafkaError as exc:
                refused[stream] = exc
                outcomes.append(exc)
        futures = [outcome for outcome in outcomes if isinstance(outcome, asyncio.Future)]
        await asyncio.gather(*futures, return_exceptions=True)
        return [_outcome(outcome) for outcome in outcomes]

    async def _refresh_gauges(self, conn: asyncpg.Connection, *, force: bool) -> None:
        """Pending count and lag, read at most once a second while busy (a count walks the
        pending rows), and whenever the relay caught up (then there are few)."""
        now = time.monotonic()
        if not force and now - self._last_gauges < 1.0:
            return
        self._last_gauges = now
        row = await conn.fetchrow(
            f"SELECT count(*) AS pending, extract(epoch FROM now() - min(created_at)) AS lag "
            f"FROM {self.table} WHERE sent_at IS NULL"
        )
        if row is not None:
            self._pending.set(row["pending"])
            self._lag.set(float(row["lag"] or 0.0))


def _event(row: asyncpg.Record) -> OutboxEvent:
    return OutboxEvent(
        position=row["position"],
        event_id=row["event_id"],
        topic=row["topic"],
        key=row["key"],
        value=row["value"],
        headers=tuple(zip(row["header_names"], row["header_values"], strict=True)),
        created_at=row["created_at"],
    )


def _outcome(outcome: asyncio.Future[Delivery] | BaseException) -> Delivery | BaseException:
    if isinstance(outcome, BaseException):
        return outcome
    error = outcome.exception()
    return outcome.result() if error is None else error


def _publishable_prefix(
    events: Sequence[OutboxEvent], outcomes: Sequence[Delivery | BaseException]
) -> list[OutboxEvent]:
    """The acknowledged events that may be marked sent: per (topic, key), those before its
    first failure. A later event of a key whose earlier event failed stays pending too, so
    that it is published again after that one (consumers dedupe on the event id)."""
    held_back: set[tuple[str, bytes]] = set()
    marked: list[OutboxEvent] = []
    for event, outcome in zip(events, outcomes, strict=True):
        if event.key is None:
            if isinstance(outcome, Delivery):
                marked.append(event)
            continue
        stream = (event.topic, event.key)
        if stream in held_back:
            continue
        if isinstance(outcome, Delivery):
            marked.append(event)
        else:
            held_back.add(stream)
    return marked


async def _wait_any(stop: asyncio.Event, wakeup: asyncio.Event | None, timeout_s: float) -> bool:
    """Wait until ``stop`` or ``wakeup`` is set, or ``timeout_s`` passed; return whether
    ``stop`` is set."""
    waiters = [asyncio.ensure_future(stop.wait())]
    if wakeup is not None:
        waiters.append(asyncio.ensure_future(wakeup.wait()))
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return stop.is_set()
