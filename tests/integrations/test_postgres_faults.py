"""The PostgreSQL kit under faults injected for real on a server of its own: the server
stopped and started again (over its Unix socket and over TCP), a backend killed during COPY and
during a single statement, a real deadlock."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Iterator

import asyncpg
import pytest

from integrations.local_postgres import LocalPostgresServer, embedded_postgres
from integrations.postgres import (
    CommitOutcomeUnknownError,
    Database,
    DatabaseError,
)


@pytest.fixture(scope="module")
def server() -> Iterator[LocalPostgresServer]:
    """A server of this module's own (the restarts would break other tests' connections),
    listening on its Unix socket and on TCP."""
    with embedded_postgres(tcp=True) as started:
        yield started


@pytest.fixture(scope="module")
def database(server: LocalPostgresServer) -> str:
    return server.create_database()


def dsn_for(server: LocalPostgresServer, database: str, transport: str) -> str:
    return server.dsn(database, tcp=transport == "tcp")


def patient(dsn: str, *, max_size: int = 4) -> Database:
    """A Database whose retries outlast a restart: 60 attempts, 0.2 s apart at most."""
    return Database(
        dsn,
        min_size=1,
        max_size=max_size,
        retry_attempts=60,
        retry_initial_backoff_s=0.01,
        retry_max_backoff_s=0.2,
        name="faults",
    )


def retried(db: Database, query: str) -> float:
    return sum(
        s.value
        for metric in db.registry.collect()
        for s in metric.samples
        if s.name == "postgres_query_retries_total" and s.labels["query"] == query
    )


async def eventually(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    """Poll ``condition()`` until true (the retries counter has no event to await)."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                if condition():
                    return
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {timeout_s:g}s: {what}") from None


@pytest.fixture
async def side(server: LocalPostgresServer, database: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(server.dsn(database))
    yield conn
    await conn.close()


async def new_table(side: asyncpg.Connection, columns: str) -> str:
    name = f"t_{secrets.token_hex(5)}"
    await side.execute(f"CREATE TABLE {name} ({columns})")
    return name


@pytest.mark.parametrize("transport", ["socket", "tcp"])
async def test_server_restart_is_ridden_through(
    server: LocalPostgresServer, database: str, transport: str
) -> None:
    # Regression (issue 13, defect 3): over the Unix socket, a call made while the server is
    # down fails with FileNotFoundError (the socket file is gone), which was not retried.
    async with patient(dsn_for(server, database, transport)) as db:
        table = await db.fetchval(f"SELECT 't_{secrets.token_hex(5)}'")
        assert isinstance(table, str)
        await db.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
        in_transaction, resume = asyncio.Event(), asyncio.Event()
        attempts = 0

        async def in_flight(conn: asyncpg.Connection) -> None:
            nonlocal attempts
            attempts += 1
            await conn.execute(f"INSERT INTO {table} VALUES (1)")
            if attempts == 1:
                in_transaction.set()
                async with asyncio.timeout(10):
                    await resume.wait()
            await conn.execute(f"INSERT INTO {table} VALUES (2)")

        flying = asyncio.create_task(db.transaction(in_flight, name="in_flight"))
        async with asyncio.timeout(5):
            await in_transaction.wait()
        await asyncio.to_thread(server.stop)  # rolls the open transaction back
        resume.set()
        # Issued while the server is down: each fails to connect, and keeps retrying.
        during = [
            asyncio.create_task(db.execute(f"INSERT INTO {table} VALUES ($1)", i, name="during"))
            for i in range(10, 14)
        ]
        await eventually(lambda: retried(db, "during") >= 4, "every call retried once")
        await eventually(lambda: retried(db, "in_flight") >= 1, "the transaction retried")
        await asyncio.to_thread(server.start)
        async with asyncio.timeout(15):
            await flying
            await asyncio.gather(*during)
        assert attempts >= 2
        rows = await db.fetch(f"SELECT id FROM {table} ORDER BY id")
        assert [row["id"] for row in rows] == [1, 2, 10, 11, 12, 13]


async def test_restart_mid_load_commits_each_transaction_once_or_says_so(
    server: LocalPostgresServer, database: str
) -> None:
    side = await asyncpg.connect(server.dsn(database))
    # No unique key: a transaction applied twice would show as two rows.
    table = await new_table(side, "id int NOT NULL, attempt int NOT NULL")
    await side.close()
    calls = 120
    async with patient(server.dsn(database, tcp=True), max_size=8) as db:
        half_done = asyncio.Event()
        committed = 0

        def write(i: int) -> object:
            async def work(conn: asyncpg.Connection) -> int:
                await conn.execute(f"INSERT INTO {table} VALUES ($1, 0)", i)
                await conn.execute("SELECT pg_sleep(0.005)")
                return i

            return work

        async def call(i: int) -> int:
            nonlocal committed
            result = await db.transaction(write(i), name="load")  # type: ignore[arg-type]
            committed += 1
            if committed == calls // 4:
                half_done.set()
            return result

        tasks = [asyncio.create_task(call(i)) for i in range(calls)]
        async with asyncio.timeout(10):
            await half_done.wait()
        await asyncio.to_thread(server.restart)
        outcomes = await asyncio.wait_for(
            asyncio.gather(*tasks, return_exceptions=True), timeout=30
        )
    after = await asyncpg.connect(server.dsn(database))  # the restart closed `side`
    try:
        rows = await after.fetch(f"SELECT id, count(*) AS n FROM {table} GROUP BY id")
    finally:
        await after.close()
    counts = {row["id"]: row["n"] for row in rows}
    assert max(counts.values()) == 1  # nothing applied twice
    unknown = 0
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, CommitOutcomeUnknownError):
            unknown += 1  # said so: committed or not, the caller is told to check
            assert counts.get(i, 0) in (0, 1)
        else:
            assert outcome == i, f"call {i} failed: {outcome!r}"
            assert counts.get(i) == 1, f"call {i} returned but its row is missing"
    assert unknown <= 8  # at most one per pooled connection was committing
    assert retried(db, "load") >= 1  # the restart really hit transactions in flight


async def test_backend_killed_during_copy_is_retried_and_written_once(
    server: LocalPostgresServer, database: str, side: asyncpg.Connection
) -> None:
    table = await new_table(side, "id int PRIMARY KEY, note text NOT NULL")
    key = secrets.randbits(62)
    # Row 25,000 of the COPY waits for an advisory lock the test holds: the backend is killed
    # half-way through the data, with 24,999 rows already written in its transaction.
    await side.execute(
        f"CREATE FUNCTION {table}_gate() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN IF NEW.id = 25000 THEN PERFORM pg_advisory_xact_lock({key}); END IF; "
        "RETURN NEW; END $$; "
        f"CREATE TRIGGER {table}_gate BEFORE INSERT ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION {table}_gate()"
    )
    await side.execute("SELECT pg_advisory_lock($1)", key)
    records = [(i, f"note {i}") for i in range(50_000)]
    async with patient(server.dsn(database)) as db:
        copying = asyncio.create_task(
            db.copy_records(table, records, columns=["id", "note"], name="copy")
        )
        waiting = (
            "SELECT pid FROM pg_stat_activity WHERE query LIKE 'COPY%' "
            "AND wait_event_type = 'Lock' AND application_name = 'faults'"
        )
        backend = None
        async with asyncio.timeout(10):
            while backend is None:
                backend = await side.fetchval(waiting)
                await asyncio.sleep(0.01)
        assert await side.fetchval("SELECT pg_terminate_backend($1)", backend) is True
        assert await side.fetchval(f"SELECT count(*) FROM {table}") == 0  # nothing half-written
        await eventually(lambda: retried(db, "copy") >= 1, "the COPY retried")
        await side.execute("SELECT pg_advisory_unlock($1)", key)
        assert await asyncio.wait_for(copying, timeout=10) == 50_000
    assert await side.fetchval(f"SELECT count(*) FROM {table}") == 50_000
    assert await side.fetchval(f"SELECT count(DISTINCT id) FROM {table}") == 50_000


async def test_a_real_deadlock_is_retried_and_both_commit(
    server: LocalPostgresServer, database: str, side: asyncpg.Connection
) -> None:
    table = await new_table(side, "id int PRIMARY KEY, n int NOT NULL")
    await side.execute(f"INSERT INTO {table} VALUES (1, 0), (2, 0)")
    both_locked = asyncio.Barrier(2)
    attempts = {"a": 0, "b": 0}

    def lock_in_order(tag: str, first: int, second: int) -> object:
        async def work(conn: asyncpg.Connection) -> None:
            attempts[tag] += 1
            # Found within 50 ms instead of the default second (a superuser setting).
            await conn.execute("SET LOCAL deadlock_timeout = '50ms'")
            await conn.execute(f"UPDATE {table} SET n = n + 1 WHERE id = $1", first)
            if attempts[tag] == 1:
                async with asyncio.timeout(5):
                    await both_locked.wait()
            await conn.execute(f"UPDATE {table} SET n = n + 1 WHERE id = $1", second)

        return work

    async with patient(server.dsn(database)) as db:
        await asyncio.gather(
            db.transaction(lock_in_order("a", 1, 2), name="deadlock"),  # type: ignore[arg-type]
            db.transaction(lock_in_order("b", 2, 1), name="deadlock"),  # type: ignore[arg-type]
        )
        victims = {
            s.labels["error_type"]: s.value
            for metric in db.registry.collect()
            for s in metric.samples
            if s.name == "postgres_query_retries_total"
        }
    assert victims == {"DeadlockDetectedError": 1.0}  # the server chose one victim
    assert sorted(attempts.values()) == [1, 2]
    rows = await side.fetch(f"SELECT id, n FROM {table} ORDER BY id")
    assert [tuple(row) for row in rows] == [(1, 2), (2, 2)]  # both committed, once each


async def test_a_single_statement_killed_is_retried(
    server: LocalPostgresServer, database: str, side: asyncpg.Connection
) -> None:
    # As the README says: a single statement is its own transaction; killed before it
    # finished, it was rolled back, and it is run again (at least once, not exactly once).
    table = await new_table(side, "id int PRIMARY KEY")
    key = secrets.randbits(62)
    await side.execute("SELECT pg_advisory_lock($1)", key)
    async with patient(server.dsn(database)) as db:
        statement = asyncio.create_task(
            db.execute(
                f"INSERT INTO {table} SELECT 1 FROM (SELECT pg_advisory_xact_lock($1)) AS gate",
                key,
                name="single",
            )
        )
        backend = None
        async with asyncio.timeout(10):
            while backend is None:
                backend = await side.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE query LIKE 'INSERT%' "
                    "AND wait_event_type = 'Lock' AND application_name = 'faults'"
                )
                await asyncio.sleep(0.01)
        assert await side.fetchval("SELECT pg_terminate_backend($1)", backend) is True
        await eventually(lambda: retried(db, "single") >= 1, "the statement retried")
        assert await side.fetchval(f"SELECT count(*) FROM {table}") == 0
        await side.execute("SELECT pg_advisory_unlock($1)", key)
        assert await asyncio.wait_for(statement, timeout=10) == "INSERT 0 1"
    assert await side.fetchval(f"SELECT count(*) FROM {table}") == 1


async def test_a_single_statement_killed_fails_clearly_once_retries_run_out(
    server: LocalPostgresServer, database: str, side: asyncpg.Connection
) -> None:
    key = secrets.randbits(62)
    await side.execute("SELECT pg_advisory_lock($1)", key)
    try:
        async with Database(server.dsn(database), min_size=1, max_size=1, retry_attempts=1) as db:
            statement = asyncio.create_task(
                db.fetchval("SELECT pg_advisory_xact_lock($1)", key, name="once")
            )
            backend = None
            async with asyncio.timeout(10):
                while backend is None:
                    backend = await side.fetchval(
                        "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE '%pg_advisory_xact_lock%' AND pid <> pg_backend_pid()"
                    )
                    await asyncio.sleep(0.01)
            await side.fetchval("SELECT pg_terminate_backend($1)", backend)
            with pytest.raises((DatabaseError, asyncpg.PostgresError)) as caught:
                await asyncio.wait_for(statement, timeout=10)
            assert "terminat" in str(caught.value) or "lost" in str(caught.value)
    finally:
        await side.execute("SELECT pg_advisory_unlock($1)", key)
