"""The transactional outbox against the embedded PostgreSQL and a real Kafka broker (Tansu, or
$KAFKA_BOOTSTRAP_SERVERS), with the faults injected for real: a relay process SIGKILLed between
the broker's acknowledgement and the mark, the broker stopped, two relays at once."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import asyncpg
import confluent_kafka as ck
import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # where the stubs declare it

from integrations.kafka import Producer
from integrations.local_kafka import LocalBroker, local_broker, local_kafka
from integrations.outbox import (
    EVENT_ID_HEADER,
    OUTBOX_DDL,
    OutboxError,
    OutboxEvent,
    OutboxFullError,
    OutboxPublishError,
    OutboxRelay,
    enqueue,
    ensure_schema,
    event_id_of,
)
from integrations.postgres import Database
from tests.integrations.test_kafka import create_topic, unique

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kafka_bootstrap() -> Iterator[str]:
    with local_kafka() as bootstrap:
        yield bootstrap


@pytest.fixture
async def database(postgres_dsn: str) -> AsyncIterator[Database]:
    async with Database(postgres_dsn, min_size=1, max_size=8, name="outbox") as db:
        yield db


@pytest.fixture
async def table(database: Database) -> str:
    name = f"outbox_{uuid.uuid4().hex[:10]}"
    await ensure_schema(database, name)
    return name


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[Producer]:
    async with Producer(kafka_bootstrap, linger_ms=1) as started:
        yield started


async def add(
    database: Database,
    table: str,
    topic: str,
    events: Sequence[tuple[bytes | None, bytes]],
) -> list[uuid.UUID]:
    """Enqueue each (key, value) in a committed transaction of its own; their event ids."""
    ids = []
    for key, value in events:

        async def work(
            conn: asyncpg.Connection, key: bytes | None = key, value: bytes = value
        ) -> uuid.UUID:
            return await enqueue(conn, topic=topic, key=key, value=value, table=table)

        ids.append(await database.transaction(work))
    return ids


async def pending(database: Database, table: str) -> int:
    count = await database.fetchval(f"SELECT count(*) FROM {table} WHERE sent_at IS NULL")
    assert isinstance(count, int)
    return count


def read_events(
    bootstrap: str, topic: str, count: int, *, timeout_s: float = 10.0, settle_s: float = 0.5
) -> list[ck.Message]:
    """Every message of ``topic`` in partition order: read until ``count`` came, then on until
    none came for ``settle_s`` (a duplicate or a stray event would show up by then)."""
    reader = ck.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique("reader"),
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        partitions = reader.list_topics(topic, timeout=10).topics[topic].partitions
        reader.assign([ck.TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in partitions])
        messages: list[ck.Message] = []
        deadline = time.monotonic() + timeout_s
        while len(messages) < count and time.monotonic() < deadline:
            messages += [m for m in reader.consume(count, 0.1) if m.error() is None]
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < settle_s:
            batch = [m for m in reader.consume(100, 0.1) if m.error() is None]
            if batch:
                messages += batch
                quiet_since = time.monotonic()
        return messages
    finally:
        reader.close()


def headers_of(message: ck.Message) -> list[tuple[str, str | bytes | None]]:
    headers = message.headers() or []
    assert isinstance(headers, list)  # a consumed message's headers are a list
    return headers


def ids_of(messages: Sequence[ck.Message]) -> list[uuid.UUID | None]:
    return [event_id_of(headers_of(m)) for m in messages]


def sample(relay: OutboxRelay, name: str, **labels: str) -> float:
    value = relay.registry.get_sample_value(name, {"outbox": relay.name, **labels})
    return 0.0 if value is None else value


class Published:
    """An ``after_publish`` hook that counts the events a relay published and wakes a waiter
    once ``target`` of them were."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.reached = asyncio.Event()

    async def __call__(self, events: Sequence[OutboxEvent]) -> None:
        self.count += len(events)
        if self.count >= self.target:
            self.reached.set()


# Writing ---------------------------------------------------------------------------------------


async def test_an_event_committed_with_its_change_is_published_with_its_id_and_marked_sent(
    database: Database, table: str, producer: Producer, kafka_bootstrap: str
) -> None:
    topic = create_topic(kafka_bootstrap)
    await database.execute(f"CREATE TABLE {table}_orders (id int PRIMARY KEY)")

    async def place_order(conn: asyncpg.Connection) -> uuid.UUID:
        await conn.execute(f"INSERT INTO {table}_orders VALUES (1)")
        return await enqueue(
            conn,
            topic=topic,
            key=b"order-1",
            value=b"placed",
            headers=[("trace", b"\x00\xff"), ("kind", b"order")],
            table=table,
        )

    event_id = await database.transaction(place_order)
    assert await pending(database, table) == 1

    relay = OutboxRelay(database, producer, table=table)
    assert await relay.relay_once() == 1
    assert await relay.relay_once() == 0  # nothing left
    assert await pending(database, table) == 0

    [message] = read_events(kafka_bootstrap, topic, 1)
    assert (message.key(), message.value()) == (b"order-1", b"placed")
    assert message.headers() == [
        (EVENT_ID_HEADER, str(event_id).encode()),
        ("trace", b"\x00\xff"),
        ("kind", b"order"),
    ]
    assert event_id_of(headers_of(message)) == event_id
    assert sample(relay, "outbox_published_events_total") == 1
    assert sample(relay, "outbox_pending_events") == 0
    assert sample(relay, "outbox_relay_lag_seconds") == 0


async def test_a_rolled_back_transaction_leaves_no_row_and_no_event(
    database: Database, table: str, producer: Producer, kafka_bootstrap: str
) -> None:
    topic = create_topic(kafka_bootstrap)
    await database.execute(f"CREATE TABLE {table}_orders (id int PRIMARY KEY)")

    class RefusedError(Exception):
        pass

    async def refused_order(conn: asyncpg.Connection) -> None:
        await conn.execute(f"INSERT INTO {table}_orders VALUES (1)")
        await enqueue(conn, topic=topic, key=b"order-1", value=b"never", table=table)
        raise RefusedError

    with pytest.raises(RefusedError):
        await database.transaction(refused_order)
    assert await database.fetchval(f"SELECT count(*) FROM {table}") == 0
    assert await database.fetchval(f"SELECT count(*) FROM {table}_orders") == 0

    relay = OutboxRelay(database, producer, table=table)
    assert await relay.relay_once() == 0
    # A committed event after it, so that the read below sees the topic's whole content.
    [kept] = await add(database, table, topic, [(b"order-2", b"placed")])
    assert await relay.relay_once() == 1
    messages = read_events(kafka_bootstrap, topic, 1)
    assert [m.value() for m in messages] == [b"placed"]
    assert ids_of(messages) == [kept]


async def test_enqueue_outside_a_transaction_is_refused(database: Database, table: str) -> None:
    async with database.pool.acquire() as conn:
        with pytest.raises(OutboxError, match="open transaction"):
            await enqueue(conn, topic="t", value=b"v", table=table)
    assert await database.fetchval(f"SELECT count(*) FROM {table}") == 0


async def test_enqueue_refuses_an_event_past_max_pending_and_the_transaction_fails(
    database: Database, table: str, producer: Producer, kafka_bootstrap: str
) -> None:
    topic = create_topic(kafka_bootstrap)

    async def work(conn: asyncpg.Connection) -> uuid.UUID:
        return await enqueue(conn, topic=topic, value=b"v", table=table, max_pending=2)

    await database.transaction(work)
    await database.transaction(work)
    with pytest.raises(OutboxFullError, match="2 or more events waiting"):
        await database.transaction(work)
    assert await database.fetchval(f"SELECT count(*) FROM {table}") == 2

    assert await OutboxRelay(database, producer, table=table).relay_once() == 2
    await database.transaction(work)  # room again
    assert await pending(database, table) == 1


async def test_transactions_enqueueing_for_one_key_commit_in_position_order(
    database: Database, table: str
) -> None:
    first = await database.pool.acquire()
    try:
        transaction = first.transaction()
        await transaction.start()
        await enqueue(first, topic="t", key=b"k", value=b"first", table=table)

        async def second(conn: asyncpg.Connection) -> uuid.UUID:
            return await enqueue(conn, topic="t", key=b"k", value=b"second", table=table)

        waiting = asyncio.ensure_future(database.transaction(second))
        # The second waits for the first's key lock (what keeps the key in commit order).
        while not await database.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory'"
        ):
            assert not waiting.done(), waiting
            await asyncio.sleep(0.01)
        await transaction.commit()
        await waiting
    finally:
        await database.pool.release(first)
    rows = await database.fetch(f"SELECT value FROM {table} ORDER BY position")
    assert [row["value"] for row in rows] == [b"first", b"second"]


async def test_ddl_is_idempotent_and_names_the_default_table(database: Database) -> None:
    assert "CREATE TABLE IF NOT EXISTS outbox (" in OUTBOX_DDL
    name = f"outbox_{uuid.uuid4().hex[:10]}"
    await ensure_schema(database, name)
    await ensure_schema(database, name)
    with pytest.raises(ValueError, match="lower-case identifier"):
        await ensure_schema(database, "outbox; DROP TABLE x")


# Relaying ---------------------------------------------------------------------------------------


async def test_relay_once_publishes_nothing_while_another_relay_holds_the_lock(
    database: Database, table: str, producer: Producer, kafka_bootstrap: str
) -> None:
    topic = create_topic(kafka_bootstrap)
    await add(database, table, topic, [(b"k", b"v")])
    relay = OutboxRelay(database, producer, table=table)
    async with database.pool.acquire() as other:
        await other.execute("SELECT pg_advisory_lock($1)", relay.lock_key)
        assert await relay.relay_once() == 0
        assert await pending(database, table) == 1
        await other.execute("SELECT pg_advisory_unlock($1)", relay.lock_key)
    assert await relay.relay_once() == 1


async def test_the_running_relay_wakes_on_notify_not_only_on_its_poll(
    database: Database, table: str, producer: Producer, kafka_bootstrap: str
) -> None:
    topic = create_topic(kafka_bootstrap)
    await add(database, table, topic, [(b"k", b"first")])
    published = Published(1)
    relay = OutboxRelay(
        database, producer, table=table, poll_interval_s=60, after_publish=published
    )
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))
    try:
        await asyncio.wait_for(published.reached.wait(), 10)
        published.target, published.reached = 2, asyncio.Event()
        await add(database, table, topic, [(b"k", b"second")])
        # Well inside the 60 s poll: only the NOTIFY can have woken it.
        await asyncio.wait_for(published.reached.wait(), 5)
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
    assert [m.value() for m in read_events(kafka_bootstrap, topic, 2)] == [b"first", b"second"]
    assert sample(relay, "outbox_relay_active") == 0


async def test_sent_events_are_pruned_after_the_retention_and_pending_ones_never(
    database: Database, table: str, producer: Producer, kafka_bootstrap: str
) -> None:
    topic = create_topic(kafka_bootstrap)
    await add(database, table, topic, [(b"k", b"1"), (b"k", b"2")])
    keeping = OutboxRelay(database, producer, table=table, retention_s=3600)
    assert await keeping.relay_once() == 2
    await add(database, table, topic, [(b"k", b"3")])
    assert await keeping.prune() == 0

    pruning = OutboxRelay(database, producer, table=table, retention_s=0, prune_batch=1)
    assert await pruning.prune() == 1  # a bounded batch
    assert await pruning.prune() == 1
    assert await pruning.prune() == 0
    rows = await database.fetch(f"SELECT value, sent_at FROM {table}")
    assert [(row["value"], row["sent_at"]) for row in rows] == [(b"3", None)]


# Faults, for real -------------------------------------------------------------------------------


async def test_a_relay_killed_between_publish_and_mark_is_followed_by_the_same_ids_again(
    database: Database, table: str, producer: Producer, kafka_bootstrap: str, postgres_dsn: str
) -> None:
    topic = create_topic(kafka_bootstrap)
    ids = await add(database, table, topic, [(b"a", b"1"), (b"b", b"2"), (b"a", b"3")])

    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integrations.outbox_relay_child",
        postgres_dsn,
        kafka_bootstrap,
        table,
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert child.stdout is not None
        line = (await asyncio.wait_for(child.stdout.readline(), 30)).decode().split()
        assert line == ["published", *map(str, ids)], line
    finally:
        child.send_signal(signal.SIGKILL)
        assert await child.wait() == -signal.SIGKILL
    # Acknowledged by the broker, never marked.
    assert await pending(database, table) == 3

    relay = OutboxRelay(database, producer, table=table)
    # The dead relay's session ends as PostgreSQL notices; its lock goes with it.
    async with database.pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", relay.lock_key)
        await conn.execute("SELECT pg_advisory_unlock($1)", relay.lock_key)
    assert await relay.relay_once() == 3
    assert await pending(database, table) == 0

    messages = read_events(kafka_bootstrap, topic, 6)
    assert ids_of(messages) == [*ids, *ids]  # republished, same ids, in order
    assert list(dict.fromkeys(ids_of(messages))) == ids  # deduped on the id: nothing lost


class OnLog(logging.Handler):
    """Sets ``seen`` when a record containing ``text`` is logged."""

    def __init__(self, text: str, seen: asyncio.Event) -> None:
        super().__init__()
        self.text, self.seen = text, seen

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


@pytest.fixture
def broker() -> Iterator[LocalBroker]:
    with local_broker() as running:
        yield running


async def test_while_the_broker_is_down_events_wait_and_are_published_when_it_returns(
    database: Database, table: str, broker: LocalBroker
) -> None:
    topic = create_topic(broker.bootstrap)
    async with Producer(broker.bootstrap, linger_ms=1, delivery_timeout_ms=1500) as producer:
        ids = await add(database, table, topic, [(b"a", b"1"), (b"b", b"2"), (b"a", b"3")])
        broker.stop()
        relay = OutboxRelay(database, producer, table=table)
        with pytest.raises(OutboxPublishError, match="3 of 3 event"):
            await relay.relay_once()
        assert await pending(database, table) == 3  # nothing marked
        assert sample(relay, "outbox_relay_errors_total", kind="publish") == 3
        assert sample(relay, "outbox_published_events_total") == 0

        published = Published(3)
        running_relay = OutboxRelay(
            database, producer, table=table, poll_interval_s=0.1, after_publish=published
        )
        stop = asyncio.Event()
        failed = OnLog("not published, left pending", asyncio.Event())
        logging.getLogger("integrations.outbox").addHandler(failed)
        running = asyncio.create_task(running_relay.run(stop))
        try:
            # The running relay fails too, and backs off, until the broker returns.
            await asyncio.wait_for(failed.seen.wait(), 10)
            broker.start()
            create_topic_named(broker.bootstrap, topic)  # the in-memory broker forgot it
            await asyncio.wait_for(published.reached.wait(), 20)
        finally:
            logging.getLogger("integrations.outbox").removeHandler(failed)
            stop.set()
            await asyncio.wait_for(running, 10)
    assert await pending(database, table) == 0
    messages = read_events(broker.bootstrap, topic, 3)
    assert list(dict.fromkeys(ids_of(messages))) == ids
    assert [m.value() for m in messages if m.key() == b"a"] == [b"1", b"3"]


def create_topic_named(bootstrap: str, name: str, partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        future.result(timeout=10)


async def test_two_relays_at_once_publish_every_event_once_and_keep_each_keys_order(
    postgres_dsn: str, database: Database, table: str, kafka_bootstrap: str
) -> None:
    topic = unique("topic")
    create_topic_named(kafka_bootstrap, topic, partitions=3)
    keys, per_key = [f"key-{i}".encode() for i in range(6)], 50
    total = len(keys) * per_key
    halfway = Published(total // 3)
    relays, stops, tasks = [], [], []
    async with (
        Database(postgres_dsn, min_size=1, max_size=3, name="relay_a") as db_a,
        Database(postgres_dsn, min_size=1, max_size=3, name="relay_b") as db_b,
        Producer(kafka_bootstrap, linger_ms=1) as producer_a,
        Producer(kafka_bootstrap, linger_ms=1) as producer_b,
    ):
        for db, producer, name in ((db_a, producer_a, "a"), (db_b, producer_b, "b")):
            relay = OutboxRelay(
                db,
                producer,
                table=table,
                batch_size=20,
                poll_interval_s=0.05,
                name=name,
                after_publish=halfway,
            )
            relays.append(relay)
            stops.append(asyncio.Event())
            tasks.append(asyncio.create_task(relay.run(stops[-1])))

        async def write(key: bytes) -> None:
            await add(database, table, topic, [(key, b"%d" % seq) for seq in range(per_key)])

        try:
            writers = asyncio.gather(*(write(key) for key in keys))
            await asyncio.wait_for(halfway.reached.wait(), 20)
            # Stop whichever is active: the one standing by takes over mid-stream.
            [active] = [i for i, r in enumerate(relays) if sample(r, "outbox_relay_active")]
            stops[active].set()
            await asyncio.wait_for(tasks[active], 10)
            await asyncio.wait_for(writers, 20)
            halfway.target, halfway.reached = total, asyncio.Event()
            if halfway.count < total:
                await asyncio.wait_for(halfway.reached.wait(), 20)
        finally:
            for stop in stops:
                stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)

    published = [sample(relay, "outbox_published_events_total") for relay in relays]
    assert sum(published) == total
    assert all(published), published  # both took part
    assert await pending(database, table) == 0
    messages = read_events(kafka_bootstrap, topic, total)
    ids = ids_of(messages)
    assert len(ids) == total
    assert len(set(ids)) == total  # each event once
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for message in messages:
        by_key[message.key() or b""].append(int(message.value() or b""))
    assert by_key == {key: list(range(per_key)) for key in keys}


async def test_a_relay_whose_session_is_terminated_takes_the_lock_again_and_goes_on(
    postgres_dsn: str, database: Database, table: str, producer: Producer, kafka_bootstrap: str
) -> None:
    topic = create_topic(kafka_bootstrap)
    application = unique("relay").replace("-", "_")
    seen: dict[uuid.UUID, asyncio.Event] = defaultdict(asyncio.Event)

    async def note(events: Sequence[OutboxEvent]) -> None:
        for event in events:
            seen[event.event_id].set()

    async with Database(postgres_dsn, min_size=1, max_size=2, name=application) as relay_db:
        relay = OutboxRelay(
            relay_db, producer, table=table, poll_interval_s=0.05, after_publish=note
        )
        stop = asyncio.Event()
        running = asyncio.create_task(relay.run(stop))
        try:
            first = await add(database, table, topic, [(b"k", b"1")])
            await asyncio.wait_for(seen[first[0]].wait(), 10)
            killed = await database.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1",
                application,
            )
            assert killed
            second = await add(database, table, topic, [(b"k", b"2")])
            await asyncio.wait_for(seen[second[0]].wait(), 10)
        finally:
            stop.set()
            await asyncio.wait_for(running, 10)
    assert sample(relay, "outbox_relay_errors_total", kind="database") >= 1  # the fault was met
    assert await pending(database, table) == 0
    # The first may have been published again (killed before its mark), with its id.
    assert list(dict.fromkeys(ids_of(read_events(kafka_bootstrap, topic, 2)))) == first + second
