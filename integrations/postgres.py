"""PostgreSQL kit: an asyncpg pool with retried transactions, per-query metrics and migrations.

A ``Database`` owns one asyncpg pool. Every call takes a connection within
``acquire_timeout_s`` (else ``PoolExhaustedError``, which says what to change), runs, and is
retried whole, with exponential backoff and full jitter, when it failed for a transient reason
(server unreachable, connection lost, server shutting down or starting up, too many connections,
serialization failure, deadlock: see ``is_transient``); any other error is raised at once. A
transaction is rolled back on any error. What a failure means decides, not the transport's
exception: a server restarting is ``FileNotFoundError`` over a Unix socket (its socket file is
gone) and ``ConnectionRefusedError`` over TCP, and both are ``DatabaseUnavailableError`` here.

The DSN carries the password: it may be given as a ``SecretStr`` (anything with
``get_secret_value()``), is kept private, shows redacted in ``repr`` (``redact_dsn``), and an
error raised while connecting whose text would contain the password is replaced by one that
does not. A DSN whose user or password holds an unencoded ``@ / ? #`` is refused up front (the
URL would be split inside the password, which then ends up in the server's errors).

Values only ever travel as parameters (``$1``, ``$2``, ...), never inside the SQL text. asyncpg
prepares each parameterised statement once per connection and keeps it in its statement cache
(``statement_cache_size``, 100 by default), so a repeated query skips parsing and planning;
this kit relies on that and adds no cache of its own. (Behind PgBouncer in transaction mode
that needs PgBouncer 1.21+ with ``max_prepared_statements``.)

Retries and exactly-once: a transaction whose connection is lost before its COMMIT was rolled
back by the server and is retried; one lost *during* COMMIT may or may not have committed, so it
is not retried (``CommitOutcomeUnknownError``). A single statement (``execute``, ``fetch``, ...)
is its own commit: when its connection is lost it is retried, so a non-idempotent single
statement is applied at least once, not exactly once; use ``transaction()``, or make it
idempotent (``ON CONFLICT DO NOTHING``), where that matters.

Migrations are numbered plain ``.sql`` files applied by a short runner on the same pool
(``apply_migrations``), written by hand because alembic needs SQLAlchemy (its migrations run
synchronously, async drivers only through SQLAlchemy's adapter) and yoyo needs psycopg, while
the node already holds an asyncpg pool and the job takes a table, an advisory lock and a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Protocol, Self, TypeVar, cast
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Histogram

from integrations.support import (
    Backoff,
    DependencyUnavailableError,
    MetricsPerRegistry,
    call_with_retries,
)

T = TypeVar("T")

Isolation = Literal["read_committed", "repeatable_read", "serializable"]

MIGRATIONS_TABLE = "schema_migrations"
# The key of the session-level advisory lock taken while migrating ("onex_mig" in ASCII).
MIGRATION_LOCK_ID = 0x6F6E_6578_5F6D_6967

_MIGRATION_FILE = re.compile(r"(?P<version>[0-9]+)_(?P<name>[A-Za-z0-9_]+)\.sql")

# SQLSTATEs after which running the same work again can succeed. Class 08 (connection
# exception) is matched as a whole.
_TRANSIENT_SQLSTATES = frozenset(
    {
        "40001",  # serialization_failure: a concurrent transaction won; run it again
        "40P01",  # deadlock_detected: this transaction was chosen as the victim
        "57P01",  # admin_shutdown: server stopping, or pg_terminate_backend()
        "57P02",  # crash_shutdown: another backend crashed, the server is restarting
        "57P03",  # cannot_connect_now: the server is starting up or shutting down
        "53300",  # too_many_connections: others will disconnect
    }
)
_CONFLICT_SQLSTATES = frozenset({"40001", "40P01"})
# OS errors, raised while talking to the server, that say the network path or the server went
# away (the ConnectionError subclasses are counted too): another attempt may find it back.
_UNREACHABLE_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.EHOSTUNREACH,
        errno.EHOSTDOWN,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.ENETRESET,
    }
)
# DSN query parameters whose values are secrets (libpq's names, which asyncpg reads too).
_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})
_REDACTED = "***"

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class DatabaseError(Exception):
    """Base of this kit's errors."""


class PoolExhaustedError(DatabaseError, DependencyUnavailableError):
    """No pooled connection became free within ``acquire_timeout_s``. Not retried: waiting
    longer is what ``acquire_timeout_s`` is for."""

    def __init__(self, name: str, timeout_s: float, max_size: int) -> None:
        super().__init__(
            f"database {name!r}: no pooled connection became free within "
            f"acquire_timeout_s={timeout_s:g}s (pool max_size={max_size}); raise max_size "
            "(within the server's max_connections) or acquire_timeout_s, or hold connections "
            "for less time (no slow work inside transactions)"
        )
        self.name = name
        self.timeout_s = timeout_s
        self.max_size = max_size


class DatabaseUnavailableError(DatabaseError, DependencyUnavailableError):
    """No connection could be made: the server is down or restarting, or cannot be reached
    (refused, socket file gone, no route, name not resolved). Transient, so the call is
    retried. Its cause is what the connection attempt raised."""

    def __init__(self, name: str, query: str, cause: BaseException) -> None:
        super().__init__(
            f"database {name!r}: cannot reach the server for {query!r} "
            f"({type(cause).__name__}: {cause})"
        )
        self.name = name
        self.query = query


class ConnectionLostError(DatabaseError):
    """The connection died while a call was using it (killed backend, network, failover);
    transient, so the call is retried. Its cause is what asyncpg raised."""

    def __init__(self, name: str, query: str) -> None:
        super().__init__(f"database {name!r}: the connection was lost during {query!r}")
        self.name = name
        self.query = query


class CommitOutcomeUnknownError(DatabaseError):
    """The connection was lost while the transaction was committing: it may or may not have
    been applied, so it is not retried."""

    def __init__(self, name: str, query: str) -> None:
        super().__init__(
            f"database {name!r}: the connection was lost while {query!r} was committing, so "
            "it may or may not have been applied and was not retried; check before running "
            "it again, or make it idempotent"
        )
        self.name = name
        self.query = query


class MigrationError(DatabaseError):
    """A migration file is misnamed, unreadable, failed, or was changed after it was applied."""


def is_transient(exc: BaseException) -> bool:
    """Whether running the same work again may succeed, by what the failure means: the server
    cannot be reached (``DatabaseUnavailableError``, whatever the transport raised), the
    connection was lost, the server is shutting down or starting up, too many connections, a
    serialization failure or deadlock. Not errors in the statement or the data (syntax,
    constraints), timeouts (retrying slow work piles up load), or this kit's other errors."""
    if isinstance(exc, DatabaseError):
        return isinstance(exc, ConnectionLostError | DatabaseUnavailableError)
    if isinstance(exc, asyncpg.PostgresError):
        # Class 08 includes asyncpg's own ConnectionDoesNotExistError (08003).
        return exc.sqlstate in _TRANSIENT_SQLSTATES or exc.sqlstate.startswith("08")
    if isinstance(exc, TimeoutError):
        return False
    # Refused, reset, aborted connections, broken pipes, unreachable hosts while talking.
    return isinstance(exc, ConnectionError) or (
        isinstance(exc, OSError) and exc.errno in _UNREACHABLE_ERRNOS
    )


class SecretLike(Protocol):
    """What holds the DSN without showing it: pydantic's ``SecretStr``, for one."""

    def get_secret_value(self) -> str: ...


def redact_dsn(dsn: str) -> str:
    """``dsn`` with the password of its user info and the values of its ``password`` and
    ``sslpassword`` parameters replaced by ``***``: what may be shown in logs and errors."""
    try:
        parts = urlsplit(dsn)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hosts = netloc.rpartition("@")
            user, colon, _ = userinfo.partition(":")
            netloc = f"{user}{colon and ':' + _REDACTED}@{hosts}"
        query = "&".join(
            f"{key}={_REDACTED}" if unquote(key).lower() in _SECRET_PARAMETERS else field
            for field in parts.query.split("&")
            if field
            for key in [field.partition("=")[0]]
        )
        return urlunsplit(parts._replace(netloc=netloc, query=query, fragment=""))
    except ValueError:
        return "<a DSN that is not a valid URL>"


def _dsn_secrets(dsn: str) -> frozenset[str]:
    """The secrets ``dsn`` carries, as written and percent-decoded."""
    found: set[str] = set()
    with contextlib.suppress(ValueError):
        parts = urlsplit(dsn)
        userinfo = parts.netloc.rpartition("@")[0]
        if ":" in userinfo:
            found.add(userinfo.partition(":")[2])
        for key, values in parse_qs(parts.query).items():
            if key.lower() in _SECRET_PARAMETERS:
                found.update(values)
    found |= {unquote(secret) for secret in found}
    # Very short strings are everywhere; such a password is no secret anyway.
    return frozenset(secret for secret in found if len(secret) >= 3)


def _check_dsn(dsn: str) -> None:
    """Refuse a DSN whose user info holds an unencoded ``@``, ``/``, ``?`` or ``#``: the URL
    would be split inside the password, and the pieces (taken for a host, a port or a database
    name) end up in the server's and the driver's errors. The DSN itself is never echoed."""
    scheme, sep, rest = dsn.partition("://")
    if not sep:
        return  # not a URL: asyncpg says what it accepts (an empty DSN means the PG* variables)
    authority_end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:authority_end], rest[authority_end:]
    # An "@" after the authority when the authority has none: the user info was cut short.
    if authority.count("@") > 1 or "#" in rest or ("@" in tail and "@" not in authority):
        raise ValueError(
            f"dsn ({scheme}://...): the user or password holds an '@', '/', '?' or '#' that is "
            "not percent-encoded; encode them (urllib.parse.quote(password, safe='')), as in "
            "postgresql://user:p%40ss%2Fword@host:5432/database"
        )


def _without_secrets(exc: BaseException, secrets: frozenset[str], replacement: str) -> None:
    """Raise a plain ``DatabaseError`` instead of ``exc`` when the text of ``exc`` or of any
    exception it chains to contains one of ``secrets``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = " ".join([str(current), repr(current), *getattr(current, "__notes__", [])])
        if any(secret in text for secret in secrets):
            raise DatabaseError(
                f"{replacement}: {type(exc).__name__} (its message is withheld: it contained "
                "the password)"
            ) from None
        current = current.__cause__ or current.__context__


@dataclass(frozen=True)
class DatabaseMetrics:
    latency: Histogram
    errors: Counter
    retries: Counter


def _build_metrics(registry: CollectorRegistry) -> DatabaseMetrics:
    return DatabaseMetrics(
        latency=Histogram(
            "postgres_query_duration_seconds",
            "Calls by query name, in seconds: waiting for a connection, retries included.",
            ["database", "query"],
            registry=registry,
            buckets=_LATENCY_BUCKETS,
        ),
        errors=Counter(
            "postgres_query_errors_total",
            "Calls that raised (after any retries), by query name and exception class.",
            ["database", "query", "error_type"],
            registry=registry,
        ),
        retries=Counter(
            "postgres_query_retries_total",
            "Attempts that failed transiently and were retried, by exception class.",
            ["database", "query", "error_type"],
            registry=registry,
        ),
    )


# One set of metrics per registry, shared by the Databases that use it (told apart by their
# `database` label): prometheus-client refuses to register a metric name twice.
_METRICS = MetricsPerRegistry(_build_metrics)


class Database:
    """One PostgreSQL database through an asyncpg pool; ``async with Database(dsn) as db``.

    ``name`` labels the metrics, the errors and the pool's connections (``application_name``
    in ``pg_stat_activity``, unless the DSN sets one). Without a ``registry`` the metrics get a
    registry of their own, so that several instances never collide in the process-wide one.
    """

    def __init__(
        self,
        dsn: str | SecretLike,
        *,
        min_size: int = 10,
        max_size: int = 50,
        acquire_timeout_s: float = 5.0,
        command_timeout_s: float = 30.0,
        retry_attempts: int = 3,
        retry_initial_backoff_s: float = 0.05,
        retry_max_backoff_s: float = 1.0,
        name: str = "database",
        registry: CollectorRegistry | None = None,
    ) -> None:
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ValueError(
                f"need 0 <= min_size <= max_size and max_size >= 1, got {min_size}, {max_size}"
            )
        if min(acquire_timeout_s, command_timeout_s) <= 0:
            raise ValueError("acquire_timeout_s and command_timeout_s must be positive")
        if retry_attempts < 1:
            raise ValueError(f"retry_attempts must be at least 1, got {retry_attempts}")
        if min(retry_initial_backoff_s, retry_max_backoff_s) < 0:
            raise ValueError("retry backoffs must not be negative")
        dsn = dsn if isinstance(dsn, str) else dsn.get_secret_value()
        _check_dsn(dsn)
        self._dsn = dsn
        self._secrets = _dsn_secrets(dsn)
        self.name = name
        self.min_size = min_size
        self.max_size = max_size
        self.acquire_timeout_s = acquire_timeout_s
        self.command_timeout_s = command_timeout_s
        self.retry_attempts = retry_attempts
        self.retry_initial_backoff_s = retry_initial_backoff_s
        self.retry_max_backoff_s = retry_max_backoff_s
        # Full jitter (a random wait up to the exponential one), so that transactions which
        # conflicted once do not retry in step and conflict again.
        self._backoff = Backoff(retry_initial_backoff_s, retry_max_backoff_s, jitter=1.0)
        self._registry = registry if registry is not None else CollectorRegistry()
        self._metrics = _METRICS.get(self._registry)
        self._latency_by_query: dict[str, Histogram] = {}
        self._pool: asyncpg.Pool | None = None

    def __repr__(self) -> str:
        state = "open" if self._pool is not None else "closed"
        return f"<Database {self.name!r} {redact_dsn(self._dsn)} {state}>"

    @property
    def registry(self) -> CollectorRegistry:
        return self._registry

    @property
    def pool(self) -> asyncpg.Pool:
        """The asyncpg pool, for what this class does not cover (LISTEN, cursors, ...)."""
        if self._pool is None:
            raise DatabaseError(
                f"database {self.name!r} is not open: call `await db.open()` first, "
                "or use `async with Database(...) as db`"
            )
        return self._pool

    async def open(self) -> None:
        """Create the pool and its ``min_size`` connections; a no-op if already open."""
        if self._pool is not None:
            return
        settings = {}
        if "application_name" not in parse_qs(urlsplit(self._dsn).query):
            settings["application_name"] = self.name
        pool = asyncpg.create_pool(
            self._dsn,
            min_size=self.min_size,
            max_size=self.max_size,
            command_timeout=self.command_timeout_s,
            server_settings=settings,
        )
        try:
            await pool
        except BaseException as exc:
            with contextlib.suppress(Exception):
                pool.terminate()  # the connections made before the failure
            if isinstance(exc, Exception):
                self.refuse_secret_leak(exc, "opening the pool")
                exc.add_note(f"while opening the pool of database {self.name!r}")
            raise
        self._pool = pool

    async def close(self) -> None:
        """Wait up to ``command_timeout_s`` for connections in use to come back, then close
        the pool (terminating what is still out); a no-op if not open."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), self.command_timeout_s)
        except TimeoutError:
            pool.terminate()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def transaction(
        self,
        work: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        name: str = "transaction",
        isolation: Isolation = "read_committed",
    ) -> T:
        """Run ``work(connection)`` in a transaction and return its result.

        Rolled back on any error; run again from the start (a fresh connection, a fresh
        transaction) after a transient one, up to ``retry_attempts`` in all, so ``work`` must
        do nothing outside the database that it cannot do twice. Under ``serializable`` and
        ``repeatable_read`` a losing transaction fails with a serialization failure, which is
        retried like any transient error.

        Let database errors out of ``work``: PostgreSQL aborts the transaction on any error,
        and a COMMIT after an error that ``work`` caught silently rolls back (asyncpg does not
        report it). A statement that may fail goes in a savepoint instead:
        ``async with conn.transaction(): ...`` inside ``work``.
        """

        async def attempt() -> T:
            async with self._lease(name) as conn:
                tx = conn.transaction(isolation=isolation)
                await tx.start()
                try:
                    result = await work(conn)
                except BaseException:
                    # A failed rollback means the connection is gone, and the server dropped
                    # the transaction with it; the pool discards such a connection.
                    with contextlib.suppress(Exception):
                        await tx.rollback()
                    raise
                if _is_lost(conn):
                    # Lost before COMMIT was sent: the server rolled the transaction back, so
                    # the outcome is known and running it again is safe.
                    raise ConnectionLostError(self.name, name)
                try:
                    await tx.commit()
                except Exception as exc:
                    # A conflict reported at COMMIT is a clean failure, safe to retry; a lost
                    # connection leaves the outcome unknown.
                    lost = _is_lost(conn) or (is_transient(exc) and not _is_conflict(exc))
                    if lost:
                        raise CommitOutcomeUnknownError(self.name, name) from exc
                    raise
                return result

        return await self._run(name, attempt)

    async def execute(self, query: str, *args: object, name: str | None = None) -> str:
        """Run one statement; return its status (``"INSERT 0 1"``). Without ``args`` the text
        may hold several statements (sent unprepared, as a script)."""
        return await self._statement(name or "execute", lambda conn: conn.execute(query, *args))

    async def fetch(
        self, query: str, *args: object, name: str | None = None
    ) -> list[asyncpg.Record]:
        return await self._statement(name or "fetch", lambda conn: conn.fetch(query, *args))

    async def fetchrow(
        self, query: str, *args: object, name: str | None = None
    ) -> asyncpg.Record | None:
        return await self._statement(name or "fetchrow", lambda conn: conn.fetchrow(query, *args))

    async def fetchval(self, query: str, *args: object, name: str | None = None) -> object:
        """The first column of the first row, None when there is no row."""
        value: object = await self._statement(
            name or "fetchval", lambda conn: conn.fetchval(query, *args)
        )
        return value

    async def executemany(
        self, query: str, rows: Iterable[Sequence[object]], *, name: str | None = None
    ) -> None:
        """Run ``query`` once per row, all in one transaction: every row or none. The rows are
        read once, up front, so that a retry sends the same ones."""
        batch = [tuple(row) for row in rows]

        async def work(conn: asyncpg.Connection) -> None:
            await conn.executemany(query, batch)

        await self.transaction(work, name=name or "executemany")

    async def copy_records(
        self,
        table: str,
        records: Iterable[Sequence[object]],
        *,
        columns: Sequence[str],
        schema: str | None = None,
        name: str | None = None,
    ) -> int:
        """Bulk-insert with COPY, in one transaction (every record or none); return how many.

        ``table``, ``columns`` and ``schema`` are identifiers, which asyncpg quotes itself;
        the records travel as binary COPY data, never as SQL. Read once, up front, so that a
        retry sends the same records.
        """
        batch = [tuple(record) for record in records]

        async def work(conn: asyncpg.Connection) -> int:
            status = await conn.copy_records_to_table(
                table, records=batch, columns=list(columns), schema_name=schema
            )
            return int(status.rsplit(" ", 1)[-1])  # "COPY 42"

        return await self.transaction(work, name=name or "copy_records")

    async def ping(self, *, timeout_s: float = 1.0) -> bool:
        """Health check: ``SELECT 1`` within ``timeout_s``. False, never an exception, when the
        database is unreachable, the pool is not open, or no connection frees up in time."""
        pool = self._pool
        if pool is None:
            return False
        try:
            async with asyncio.timeout(timeout_s), pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
        except Exception:
            return False
        return True

    async def apply_migrations(self, directory: Path, *, timeout_s: float = 600.0) -> list[str]:
        """Apply the ``.sql`` files of ``directory`` not applied yet, in version order, each in
        its own transaction; return the versions this call applied.

        Files are named like ``0001_create_records.sql`` (the version is the number, ordered
        numerically). Each is applied once: the version, name, checksum and time are recorded
        in the ``schema_migrations`` table, in the same transaction as the file's statements. A
        file changed after it was applied raises ``MigrationError`` naming it. Replicas that
        start together take turns under a PostgreSQL advisory lock, so every file is applied
        once. ``timeout_s`` bounds the wait for that lock and each file's run. Statements
        that cannot run in a transaction (``CREATE INDEX CONCURRENTLY``) are not supported.
        Recorded versions whose file is gone are left alone.
        """
        # Written by hand because no asyncpg-based library does it: see the module docstring.
        migrations = _read_migrations(directory)
        applied: list[str] = []
        query = "apply_migrations"
        async with self._track(query), self._lease(query) as conn:
            try:
                await conn.execute(
                    "SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID, timeout=timeout_s
                )
            except TimeoutError:
                raise MigrationError(
                    f"database {self.name!r}: waited {timeout_s:g}s for the migration lock, "
                    "held by another instance that is still migrating (or stuck)"
                ) from None
            try:
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} ("
                    " version text PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
                rows = await conn.fetch(
                    f"SELECT version, checksum, applied_at FROM {MIGRATIONS_TABLE}"
                )
                recorded = {int(row["version"]): row for row in rows}
                pending = []
                for migration in migrations:
                    row = recorded.get(migration.number)
                    if row is None:
                        pending.append(migration)
                    elif row["checksum"] != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.path.name!r} was changed after it was "
                            f"applied (on {row['applied_at']:%Y-%m-%d %H:%M:%S%z}); applied "
                            "migrations must not change: restore it, and put the change in "
                            "a new migration"
                        )
                for migration in pending:
                    await self._apply(conn, migration, timeout_s)
                    applied.append(migration.version)
            finally:
                with contextlib.suppress(Exception):  # a lost connection released it anyway
                    await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
        return applied

    async def _apply(
        self, conn: asyncpg.Connection, migration: Migration, timeout_s: float
    ) -> None:
        try:
            async with conn.transaction():
                await conn.execute(migration.sql, timeout=timeout_s)
                await conn.execute(
                    f"INSERT INTO {MIGRATIONS_TABLE} (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
        except (asyncpg.PostgresError, TimeoutError) as exc:
            raise MigrationError(
                f"migration {migration.path.name!r} failed, nothing of it was applied: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    async def _statement(self, query: str, call: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        async def attempt() -> T:
            async with self._lease(query) as conn:
                return await call(conn)

        return await self._run(query, attempt)

    async def _run(self, query: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()`` under the retry policy, timed and counted as ``query``."""
        started = time.perf_counter()
        retries = self._metrics.retries

        def count_retry(_: int, error: BaseException) -> None:
            retries.labels(self.name, query, type(error).__name__).inc()

        try:
            return await call_with_retries(
                attempt,
                attempts=self.retry_attempts,
                retryable=is_transient,
                backoff=self._backoff,
                on_retry=count_retry,
            )
        except Exception as exc:
            # Only Exception: a cancelled call is not an error of the database.
            self._metrics.errors.labels(self.name, query, type(exc).__name__).inc()
            raise
        finally:
            self._latency(query).observe(time.perf_counter() - started)

    @contextlib.asynccontextmanager
    async def _track(self, query: str) -> AsyncIterator[None]:
        """Time and count ``query`` outside ``_run`` (the migrations)."""
        started = time.perf_counter()
        try:
            yield
        except Exception as exc:
            self._metrics.errors.labels(self.name, query, type(exc).__name__).inc()
            raise
        finally:
            self._latency(query).observe(time.perf_counter() - started)

    def _latency(self, query: str) -> Histogram:
        # prometheus-client's labels() takes a lock and builds a key on every call; the child
        # it returns is stable, so each query name looks it up once.
        child = self._latency_by_query.get(query)
        if child is None:
            child = self._latency_by_query[query] = self._metrics.latency.labels(self.name, query)
        return child

    def refuse_secret_leak(self, exc: BaseException, doing: str) -> None:
        """Raise a plain ``DatabaseError`` (naming this database and ``doing``) instead of
        ``exc`` when ``exc`` or an exception it chains to mentions the DSN's password."""
        _without_secrets(exc, self._secrets, f"database {self.name!r}: {doing}")

    def _lease(self, query: str) -> ConnectionLease:
        """A pooled connection for one attempt; errors caused by losing it mid-way (asyncpg
        reports those in several ways) come out as ``ConnectionLostError``."""
        return ConnectionLease(self, query)


class ConnectionLease:
    """The ``async with`` block of ``Database._lease``.

    A class rather than a ``contextlib.asynccontextmanager`` generator: every statement and
    every transaction takes one, and the generator machinery costs several times as much.
    """

    __slots__ = ("_database", "_pool", "_proxy", "_query")

    def __init__(self, database: Database, query: str) -> None:
        self._database = database
        self._query = query

    async def __aenter__(self) -> asyncpg.Connection:
        database = self._database
        pool = self._pool = database.pool
        try:
            # asyncio.timeout, not acquire(timeout=...): on Python 3.11 asyncpg implements that
            # with asyncio.wait_for, which runs the acquisition as a task of its own, an extra
            # task and loop round trip on every call.
            async with asyncio.timeout(database.acquire_timeout_s):
                self._proxy = await pool.acquire()
        except TimeoutError:
            raise PoolExhaustedError(
                database.name, database.acquire_timeout_s, database.max_size
            ) from None
        except Exception as exc:
            # The pool connects here when it holds no live connection to hand out.
            database.refuse_secret_leak(exc, "connecting")
            if isinstance(exc, OSError):
                # Whatever the transport calls it (no socket file, refused, no route, no
                # name), the server cannot be reached.
                raise DatabaseUnavailableError(database.name, self._query, exc) from exc
            raise
        # The pool hands out a proxy that forwards every Connection method and passes
        # isinstance(..., Connection); the stubs do not model that.
        return cast("asyncpg.Connection", self._proxy)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            # Written by hand because asyncpg reports a connection lost mid-use in several ways
            # (its own InterfaceErrors about a released or closed connection, whichever call
            # noticed first), none of them marked as retryable.
            if (
                isinstance(exc, Exception)
                and not isinstance(exc, DatabaseError)
                and not is_transient(exc)
                and _is_lost(cast("asyncpg.Connection", self._proxy))
            ):
                raise ConnectionLostError(self._database.name, self._query) from exc
        finally:
            # asyncpg resets a connection as it takes it back; on one that broke mid-operation
            # the reset fails ("cannot switch to state 15; another operation is in progress"),
            # and the pool terminates it and frees its slot. The call's own outcome, already
            # decided, is what the caller must see, not that.
            with contextlib.suppress(Exception):
                await self._pool.release(self._proxy)


def _is_lost(conn: asyncpg.Connection) -> bool:
    """Whether a connection we still hold has died."""
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:
        return True  # the pool already took the dead connection back from its proxy


def _is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.PostgresError) and exc.sqlstate in _CONFLICT_SQLSTATES


@dataclass(frozen=True)
class Migration:
    version: str  # as written in the file name ("0001")
    number: int  # what orders and identifies it (1)
    name: str
    path: Path
    sql: str
    checksum: str


def _read_migrations(directory: Path) -> list[Migration]:
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} does not exist")
    by_number: dict[int, Migration] = {}
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() != ".sql" or not path.is_file():
            continue
        match = _MIGRATION_FILE.fullmatch(path.name)
        if match is None:
            raise MigrationError(
                f"migration file {path.name!r} in {directory} is not named like "
                "0001_create_records.sql: a version number, an underscore, a name of letters, "
                "digits and underscores, and .sql"
            )
        number = int(match["version"])
        if number in by_number:
            raise MigrationError(
                f"migration files {by_number[number].path.name!r} and {path.name!r} in "
                f"{directory} have the same version number {number}"
            )
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise MigrationError(f"migration file {path} is not UTF-8: {exc}") from exc
        # Line endings normalised, so that a checkout with CRLF does not count as a change.
        sql = text.replace("\r\n", "\n")
        by_number[number] = Migration(
            version=match["version"],
            number=number,
            name=match["name"],
            path=path,
            sql=sql,
            checksum=hashlib.sha256(sql.encode("utf-8")).hexdigest(),
        )
    return [by_number[number] for number in sorted(by_number)]
