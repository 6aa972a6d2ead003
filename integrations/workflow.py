"""Workflow kit: durable sagas for an orchestrator node, persisted in PostgreSQL.

A ``WorkflowEngine`` runs a named list of steps (``Step``), some of them in parallel groups
(``Parallel``), for one *instance* at a time, identified by an id the caller chooses (an order
id, a request id). Everything an instance knows lives in one row of the store's table: its
state, its ``Context`` (the input, and each step's result under the step's name), which steps
completed, were skipped or were compensated, attempts per step, and the error. The row is
written after every state transition and every completed step, each write its own committed
statement, so a process killed at any point leaves a row that ``run()`` continues from: a step
recorded completed is never run again. The step that was running when the process died is run
again (its outcome was never recorded), so steps, and compensations, must be idempotent: key
their side effects by ``context.instance_id`` and the step name.

Failure API: ``run()`` returns a ``WorkflowResult`` only when the instance completed. When a
step fails for good (after its retries, with exponential backoff), the completed steps are
compensated in reverse order of completion, each recorded as it completes, and ``run()`` raises
``WorkflowFailedError``, whose ``result`` holds the final state: ``compensated``, or ``failed``
when a compensation itself failed (``failed_compensation`` names it; the ones after it are left
alone, since they may depend on it having run). Running a finished instance runs nothing: it
returns the recorded result, or raises the recorded failure again. Errors that are not a step's
(the database, a lost lock) propagate as they are and leave the row as last written, to resume.

The lifecycle is a python-statemachine ``StateMachine`` (``WorkflowLifecycle``). Its answers
are memoised per (state, event) by ``next_state``, because sending a machine an event (and
building one even more) costs far more than looking the answer up; that is exact because the
lifecycle has no guards and no actions, so the answer depends on those two alone.

Locking: one run per instance at a time, across replicas, through a session-level advisory lock
(``pg_try_advisory_lock`` on a 64-bit hash of the table and the id) held for the whole run by
a connection of its own, not through ``Database.transaction`` (which may run its work twice);
the loser of a race gets ``InstanceBusyError`` at once rather than queueing. ``SELECT ... FOR
UPDATE NOWAIT`` would need a transaction open for the whole run, holding back vacuum, with every
write inside it, so a crash would lose all the run's progress. A lock dies with its session, so
a killed process frees its instances as soon as PostgreSQL notices the closed socket. The run's
writes go over that same connection, each statement committing on its own: one round trip a
write, none to the pool, and no write can outlive the lock, since a write that finds the
connection dead fails with ``LeaseLostError`` instead of being retried elsewhere (the run
stops; running the instance again resumes it). Writes are fenced besides: each run bumps the
row's ``generation`` and every write requires it unchanged, so a write from an older run
(through ``WorkflowStore.save`` without the lease, say) cannot overwrite a newer run's row.

Pool sizing: the lock connections come from a ``Database`` of their own (``WorkflowStore``'s
``locks``), never from the pool the steps use. Sharing one pool let N runs hold all N
connections for their locks while their steps waited for one, timed out and were compensated
although nothing was wrong. ``locks.max_size`` is therefore the number of instances this process
runs at once; a run that finds none free within ``locks.acquire_timeout_s`` gets
``RunCapacityError`` before the instance is created or touched. A local shortage met by a step
(``PoolExhaustedError`` anywhere in its exception's cause chain, or any of the engine's
``local_errors``) is not the step's failure: it uses up no attempt, starts no compensation, and
the run stops with ``StepDeferredError``, leaving the instance resumable where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, cast

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from statemachine import State, StateMachine
from statemachine.exceptions import InvalidStateValue, TransitionNotAllowed

from integrations.postgres import (
    Database,
    PoolExhaustedError,
)
from integrations.support import (
    Backoff,
    MetricsPerRegistry,
)

__all__ = [
    "DEFAULT_TABLE",
    "FINAL_STATES",
    "SCHEMA_SQL",
    "STATES",
    "UNFINISHED_STATES",
    "Context",
    "InstanceBusyError",
    "InstanceLease",
    "InvalidTransitionError",
    "LeaseLostError",
    "Parallel",
    "RunCapacityError",
    "Step",
    "StepDeferredError",
    "StepMetrics",
    "WorkflowEngine",
    "WorkflowError",
    "WorkflowFailedError",
    "WorkflowInstance",
    "WorkflowLifecycle",
    "WorkflowResult",
    "WorkflowStore",
    "next_state",
    "schema_sql",
]

DEFAULT_TABLE = "workflow_instances"
# Taken, in its transaction, while creating the table: concurrent CREATE TABLE IF NOT EXISTS
# of one table can fail with a unique violation ("onex_wfs" in ASCII).
SCHEMA_LOCK_ID = 0x6F6E_6578_5F77_6673

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)


# --- errors --------------------------------------------------------------------------------------


class WorkflowError(Exception):
    """Base of this kit's errors."""


class InvalidTransitionError(WorkflowError):
    """The lifecycle does not allow ``event`` in ``state``; its cause is python-statemachine's
    ``TransitionNotAllowed``."""

    def __init__(self, instance_id: str, state: str, event: str, allowed: Sequence[str]) -> None:
        allowed_text = ", ".join(repr(e) for e in allowed) if allowed else "none, it is final"
        super().__init__(
            f"workflow instance {instance_id!r}: event {event!r} is not allowed in state "
            f"{state!r} (allowed there: {allowed_text})"
        )
        self.instance_id = instance_id
        self.state = state
        self.event = event


class WorkflowFailedError(WorkflowError):
    """A step failed for good; the completed steps were compensated (state ``compensated``) or
    a compensation failed too (state ``failed``). ``result`` is the instance as recorded."""

    def __init__(self, workflow: str, result: WorkflowResult) -> None:
        step = result.failed_step
        done = ", ".join(repr(name) for name in result.compensated) or "none"
        error = result.error or f"step {step!r} failed"
        message = (
            f"workflow {workflow!r} instance {result.instance_id!r} ended {result.state}: "
            f"{error}; compensated: {done}"
        )
        if result.failed_compensation is not None:
            message += (
                f"; compensating {result.failed_compensation!r} failed, so it and the steps "
                "before it are not compensated: needs a hand"
            )
        super().__init__(message)
        self.workflow = workflow
        self.result = result
        self.instance_id = result.instance_id
        self.step = step
        self.compensated = result.compensated
        self.failed_compensation = result.failed_compensation
        self.state = result.state


class InstanceBusyError(WorkflowError):
    """Another run (another replica, or another task here) holds the instance's lock."""

    def __init__(self, instance_id: str) -> None:
        super().__init__(
            f"workflow instance {instance_id!r} is being run elsewhere (its lock is held by "
            "another session); try again once that run ends"
        )
        self.instance_id = instance_id


class LeaseLostError(WorkflowError):
    """The run lost its lock (its connection closed) or another run took the instance over;
    it stopped without writing further. Running the instance again resumes it."""

    def __init__(self, instance_id: str, why: str) -> None:
        super().__init__(
            f"workflow instance {instance_id!r}: {why}; stopped without writing further, "
            "run it again to resume"
        )
        self.instance_id = instance_id


class RunCapacityError(WorkflowError):
    """Every lock connection is in use: this process already runs as many instances as its lock
    pool allows. Raised before the instance is created or changed."""

    def __init__(self, instance_id: str, locks: Database) -> None:
        super().__init__(
            f"workflow instance {instance_id!r} was not started or changed: no lock connection "
            f"of {locks.name!r} became free within {locks.acquire_timeout_s:g}s, since this "
            f"process already runs {locks.max_size} instances at once (the lock pool's "
            "max_size); run it again later, or raise the lock pool's max_size (each running "
            "instance holds one connection of it, besides what its steps use)"
        )
        self.instance_id = instance_id
        self.max_runs = locks.max_size


class StepDeferredError(WorkflowError):
    """A step (or a compensation) met a shortage of this process (no pooled connection free in
    time), not a failure of its own. No attempt was counted and nothing was compensated: the
    instance stays as last written (``running`` or ``compensating``); running it again
    resumes it. The cause is the shortage."""

    def __init__(self, instance_id: str, step: str, doing: str, cause: BaseException) -> None:
        super().__init__(
            f"workflow instance {instance_id!r}: {doing} {step!r} was deferred, not failed: "
            f"this process is short of a local resource ({type(cause).__name__}); the instance "
            "stays resumable, run it again once load drops (or size the pools for it)"
        )
        self.instance_id = instance_id
        self.step = step
        self.cause = cause


# --- lifecycle -----------------------------------------------------------------------------------


class WorkflowLifecycle(StateMachine):
    """The states of an instance and the events between them.

    No guards and no actions: ``next_state`` memoises the answers per (state, event), which is
    exact only while the answer depends on those two alone.
    """

    pending = State(initial=True)
    running = State()
    completed = State(final=True)
    compensating = State()
    compensated = State(final=True)
    failed = State(final=True)

    start = pending.to(running)
    succeed = running.to(completed)
    compensate = running.to(compensating)
    finish_compensation = compensating.to(compensated)
    fail = compensating.to(failed)


STATES = frozenset(str(state.value) for state in WorkflowLifecycle.states)
FINAL_STATES = frozenset(str(state.value) for state in WorkflowLifecycle.final_states)
UNFINISHED_STATES = tuple(sorted(STATES - FINAL_STATES))

# (state, event) -> the state after it, as python-statemachine answered; allowed pairs only.
_NEXT_STATE: dict[tuple[str, str], str] = {}


def next_state(state: str, event: str, *, instance_id: str = "") -> str:
    """The state ``event`` leads to from ``state``; ``InvalidTransitionError`` when the
    lifecycle does not allow it (naming ``instance_id``)."""
    known = _NEXT_STATE.get((state, event))
    if known is not None:
        return known
    try:
        machine = WorkflowLifecycle(start_value=state)
    except InvalidStateValue as exc:
        raise WorkflowError(
            f"workflow instance {instance_id!r} is in state {state!r}, which is not one of "
            f"{sorted(STATES)}"
        ) from exc
    try:
        machine.send(event)
    except TransitionNotAllowed as exc:
        allowed = [str(e.id) for e in machine.allowed_events]
        raise InvalidTransitionError(instance_id, state, event, allowed) from exc
    after = str(machine.current_state_value)
    _NEXT_STATE[(state, event)] = after
    return after


# --- definitions ---------------------------------------------------------------------------------


class Context(dict[str, Any]):
    """The JSON-able values the steps of an instance share: the input, and each step's result
    under the step's name. Saved with the instance, so it comes back as JSON does (tuples as
    lists, keys as strings). A step may also write to it; only JSON-able values, or the save
    fails. ``instance_id`` and ``workflow`` say whose it is (for idempotency keys)."""

    __slots__ = ("instance_id", "workflow")

    def __init__(
        self, values: Mapping[str, Any] | None = None, *, instance_id: str, workflow: str
    ) -> None:
        super().__init__(values or {})
        self.instance_id = instance_id
        self.workflow = workflow


@dataclass(frozen=True)
class Step:
    """One step: ``action(context)`` is awaited and its JSON-able result stored under ``name``.

    It is tried ``1 + retries`` times on any exception, waiting ``backoff_s``, then twice that,
    and so on between tries. ``compensate(context)`` undoes it when a later step fails for
    good (retried likewise). With ``when``, the step runs only if ``when(context)`` is true,
    and is recorded as skipped otherwise (and never reconsidered).
    """

    name: str
    action: Callable[[Context], Awaitable[Any]]
    compensate: Callable[[Context], Awaitable[None]] | None = None
    retries: int = 0
    backoff_s: float = 0.05
    when: Callable[[Context], bool] | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a step needs a name")
        if self.retries < 0:
            raise ValueError(f"step {self.name!r}: retries must be >= 0, got {self.retries}")
        if self.backoff_s < 0:
            raise ValueError(f"step {self.name!r}: backoff_s must be >= 0, got {self.backoff_s}")

    @property
    def backoff(self) -> Backoff:
        """The waits between tries: ``backoff_s``, doubling, without cap or jitter."""
        return Backoff(initial_s=self.backoff_s)


@dataclass(frozen=True)
class Parallel:
    """Steps run concurrently, at most ``limit`` at a time. When one fails for good, no other
    member starts, the running ones finish, and the completed ones are compensated with the
    rest (in reverse order of completion)."""

    name: str
    steps: tuple[Step, ...]
    limit: int = 4

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a parallel group needs a name")
        if not self.steps:
            raise ValueError(f"parallel group {self.name!r} has no steps")
        if self.limit < 1:
            raise ValueError(f"parallel group {self.name!r}: limit must be >= 1")


@dataclass(frozen=True)
class WorkflowResult:
    """An instance as recorded: ``completed``, ``skipped`` and ``compensated`` in the order
    they happened; ``error`` describes the failure, if any."""

    instance_id: str
    state: str
    context: dict[str, Any]
    completed: tuple[str, ...]
    compensated: tuple[str, ...]
    error: str | None
    skipped: tuple[str, ...] = ()
    attempts: Mapping[str, int] = field(default_factory=dict)
    failed_step: str | None = None
    failed_compensation: str | None = None


@dataclass
class WorkflowInstance:
    """One row of the store, as the engine works on it."""

    id: str
    workflow: str
    state: str
    context: Context
    completed: list[str]
    skipped: list[str]
    compensated: list[str]
    attempts: dict[str, int]
    failed_step: str | None
    failed_compensation: str | None
    error: str | None
    generation: int
    updated_at: datetime | None = None

    def to_result(self) -> WorkflowResult:
        return WorkflowResult(
            instance_id=self.id,
            state=self.state,
            context=dict(self.context),
            completed=tuple(self.completed),
            compensated=tuple(self.compensated),
            error=self.error,
            skipped=tuple(self.skipped),
            attempts=dict(self.attempts),
            failed_step=self.failed_step,
            failed_compensation=self.failed_compensation,
        )


# --- persistence ---------------------------------------------------------------------------------


def schema_sql(table: str = DEFAULT_TABLE) -> str:
    """The DDL of the store's table, for a node's migrations (or ``ensure_schema``)."""
    _check_identifier(table)
    bare = table.rsplit(".", 1)[-1]
    # Written without f-string braces: the array and jsonb defaults are spelled with braces.
    return (
        _SCHEMA_TEMPLATE.replace("<table>", table)
        .replace("<index>", f"{bare}_unfinished")
        .replace("<unfinished>", _sql_list(UNFINISHED_STATES))
    )


_SCHEMA_TEMPLATE = """\
CREATE TABLE IF NOT EXISTS <table> (
    id text PRIMARY KEY,
    workflow text NOT NULL,
    state text NOT NULL,
    context jsonb NOT NULL DEFAULT '{}',
    completed text[] NOT NULL DEFAULT '{}',
    skipped text[] NOT NULL DEFAULT '{}',
    compensated text[] NOT NULL DEFAULT '{}',
    attempts jsonb NOT NULL DEFAULT '{}',
    failed_step text,
    failed_compensation text,
    error text,
    generation bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS <index> ON <table> (workflow, updated_at)
    WHERE state IN (<unfinished>);
"""


def _sql_list(values: Sequence[str]) -> str:
    return ", ".join(f"'{value}'" for value in values)  # our own state names, never input


def _check_identifier(table: str) -> None:
    if not _IDENTIFIER.fullmatch(table):
        raise ValueError(
            f"table {table!r} must be an identifier, optionally schema-qualified "
            "(letters, digits, underscores)"
        )


SCHEMA_SQL = schema_sql()

_COLUMNS = (
    "id, workflow, state, context::text AS context, completed, skipped, compensated, "
    "attempts::text AS attempts, failed_step, failed_compensation, error, generation, updated_at"
)


class InstanceLease:
    """An instance's advisory lock, held by the session of ``connection`` (from
    ``WorkflowStore.lock``). A run writes over it: no pool round trip per write, and a write
    that finds it dead fails as ``LeaseLostError`` (the lock died with it)."""

    __slots__ = ("connection", "instance_id")

    def __init__(self, connection: asyncpg.Connection, instance_id: str) -> None:
        self.connection = connection
        self.instance_id = instance_id

    def check(self) -> None:
        """``LeaseLostError`` if the connection, and with it the lock, is gone."""
        if _is_closed(self.connection):
            raise LeaseLostError(self.instance_id, "the connection holding its lock closed")

    async def fetchrow(self, query: str, *args: object) -> asyncpg.Record | None:
        self.check()
        try:
            return await self.connection.fetchrow(query, *args)
        except Exception as exc:
            self._raise_if_lost(exc)
            raise

    async def execute(self, query: str, *args: object) -> str:
        self.check()
        try:
            return await self.connection.execute(query, *args)
        except Exception as exc:
            self._raise_if_lost(exc)
            raise

    def _raise_if_lost(self, exc: Exception) -> None:
        # Not retried on another connection: without its session the run holds no lock.
        if _is_closed(self.connection):
            raise LeaseLostError(
                self.instance_id, f"the connection holding its lock was lost ({exc})"
            ) from exc


def _is_closed(conn: asyncpg.Connection) -> bool:
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:
        return True  # the pool took the connection back from its proxy


class WorkflowStore:
    """The instances of any number of workflows, one row each, in ``table`` (optionally
    schema-qualified). Create the table with ``ensure_schema()``, or with ``schema_sql(table)``
    (``SCHEMA_SQL`` for the default name) in the node's migrations.

    ``database`` serves the reads and the steps; ``locks``, a ``Database`` of its own on the same
    PostgreSQL database, holds one connection per running instance (its lock, and the run's
    writes), so its ``max_size`` bounds the instances this process runs at once. Open and
    close both."""

    def __init__(self, database: Database, *, locks: Database, table: str = DEFAULT_TABLE) -> None:
        _check_identifier(table)
        if locks is database:
            raise ValueError(
                "locks must be a Database of its own, not the one the steps use: runs holding "
                "every connection of a shared pool for their locks leave none for their steps "
                "(size it for the instances run at once, e.g. min_size=0, max_size=10)"
            )
        self.database = database
        self.locks = locks
        self.table = table
        self.schema_sql = schema_sql(table)
        self._claim_sql = (
            f"INSERT INTO {table} AS w (id, workflow, state, context) "
            "VALUES ($1, $2, $3, $4::text::jsonb) "
            "ON CONFLICT (id) DO UPDATE SET generation = w.generation + 1 "
            f"RETURNING {_COLUMNS}"
        )
        self._load_sql = f"SELECT {_COLUMNS} FROM {table} WHERE id = $1"
        # Every write states the whole instance: idempotent, so Database may retry it.
        self._save_sql = (
            f"UPDATE {table} SET state = $3, context = $4::text::jsonb, completed = $5, "
            "skipped = $6, compensated = $7, attempts = $8::text::jsonb, failed_step = $9, "
            "failed_compensation = $10, error = $11, updated_at = now() "
            "WHERE id = $1 AND generation = $2"
        )
        self._unfinished_sql = (
            f"SELECT id FROM {table} WHERE workflow = $1 AND state IN "
            f"({_sql_list(UNFINISHED_STATES)}) ORDER BY updated_at LIMIT $2"
        )

    async def ensure_schema(self) -> None:
        """Create the table and its index if missing; safe for replicas starting together."""

        async def work(conn: asyncpg.Connection) -> None:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK_ID)
            await conn.execute(self.schema_sql)

        await self.database.transaction(work, name="workflow_ensure_schema")

    async def load(self, instance_id: str) -> WorkflowInstance | None:
        """The instance as last written, without locking it; None if there is none."""
        row = await self.database.fetchrow(self._load_sql, instance_id, name="workflow_load")
        return None if row is None else _instance(row)

    async def unfinished(self, workflow: str, *, limit: int = 100) -> list[str]:
        """Ids of ``workflow``'s instances not in a final state (left by a crash, or running
        now), least recently written first: what to ``resume`` after a restart."""
        rows = await self.database.fetch(
            self._unfinished_sql, workflow, limit, name="workflow_unfinished"
        )
        return [str(row["id"]) for row in rows]

    async def claim(
        self,
        instance_id: str,
        workflow: str,
        state: str,
        context: str,
        *,
        lease: InstanceLease | None = None,
    ) -> tuple[WorkflowInstance, bool]:
        """Create the instance (in ``state``, with ``context`` as JSON text) or take over the
        existing one, fencing off writes of earlier runs; whether it was created. Over
        ``lease``'s connection if given, else through the database (retried)."""
        args = (instance_id, workflow, state, context)
        if lease is not None:
            row = await lease.fetchrow(self._claim_sql, *args)
        else:
            row = await self.database.fetchrow(self._claim_sql, *args, name="workflow_claim")
        assert row is not None  # INSERT ... RETURNING returns the row either way
        instance = _instance(row)
        return instance, instance.generation == 0

    async def save(self, instance: WorkflowInstance, *, lease: InstanceLease | None = None) -> None:
        """Write the instance, over ``lease``'s connection if given, else through the
        database (retried: the write is idempotent); ``LeaseLostError`` if another run took
        the instance over since it was claimed."""
        args = (
            instance.id,
            instance.generation,
            instance.state,
            _encode(instance.context, f"the context of workflow instance {instance.id!r}"),
            instance.completed,
            instance.skipped,
            instance.compensated,
            json.dumps(instance.attempts),
            instance.failed_step,
            instance.failed_compensation,
            instance.error,
        )
        if lease is not None:
            status = await lease.execute(self._save_sql, *args)
        else:
            status = await self.database.execute(self._save_sql, *args, name="workflow_save")
        if status != "UPDATE 1":
            raise LeaseLostError(instance.id, "another run took the instance over (or it is gone)")

    @contextlib.asynccontextmanager
    async def lock(self, instance_id: str) -> AsyncIterator[InstanceLease]:
        """Hold the instance's advisory lock, on a connection of the lock pool, or raise
        ``InstanceBusyError`` at once (``RunCapacityError`` when no lock connection frees up
        within ``locks.acquire_timeout_s``)."""
        locks = self.locks
        pool = locks.pool
        try:
            # asyncio.timeout rather than acquire(timeout=...): see Database._lease.
            async with asyncio.timeout(locks.acquire_timeout_s):
                proxy = await pool.acquire()
        except TimeoutError:
            raise RunCapacityError(instance_id, locks) from None
        conn = cast("asyncpg.Connection", proxy)  # a proxy; see Database._lease
        key = self.lock_key(instance_id)
        try:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
                raise InstanceBusyError(instance_id)
            try:
                yield InstanceLease(conn, instance_id)
            finally:
                # A dead connection released it already; so does the pool's reset on release.
                with contextlib.suppress(Exception):
                    await conn.execute("SELECT pg_advisory_unlock($1)", key)
        finally:
            await pool.release(proxy)

    def lock_key(self, instance_id: str) -> int:
        """The advisory lock key of an instance: 64 bits of BLAKE2b of the table and id (a
        collision only makes two instances take turns)."""
        digest = hashlib.blake2b(f"{self.table}\0{instance_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)


def _instance(row: asyncpg.Record) -> WorkflowInstance:
    instance_id, workflow = str(row["id"]), str(row["workflow"])
    attempts = json.loads(row["attempts"])
    return WorkflowInstance(
        id=instance_id,
        workflow=workflow,
        state=str(row["state"]),
        context=Context(json.loads(row["context"]), instance_id=instance_id, workflow=workflow),
        completed=list(row["completed"]),
        skipped=list(row["skipped"]),
        compensated=list(row["compensated"]),
        attempts={str(k): int(v) for k, v in attempts.items()},
        failed_step=row["failed_step"],
        failed_compensation=row["failed_compensation"],
        error=row["error"],
        generation=int(row["generation"]),
        updated_at=row["updated_at"],
    )


def _encode(value: object, what: str) -> str:
    try:
        # allow_nan=False: jsonb has no NaN or Infinity.
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise WorkflowError(f"{what} is not JSON-able: {exc}") from exc


# --- metrics -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkflowMetrics:
    transitions: Counter
    running: Gauge
    step_seconds: Histogram
    retries: Counter
    compensations: Counter


def _build_metrics(registry: CollectorRegistry) -> WorkflowMetrics:
    return WorkflowMetrics(
        transitions=Counter(
            "workflow_transitions_total",
            "Lifecycle transitions taken, by event and the state entered.",
            ["workflow", "event", "state"],
            registry=registry,
        ),
        running=Gauge(
            "workflow_instances_running",
            "Instances this process is running now.",
            ["workflow"],
            registry=registry,
        ),
        step_seconds=Histogram(
            "workflow_step_duration_seconds",
            "Step attempts, in seconds, by step and outcome (ok, error).",
            ["workflow", "step", "outcome"],
            registry=registry,
            buckets=_LATENCY_BUCKETS,
        ),
        retries=Counter(
            "workflow_step_retries_total",
            "Step attempts that were retries of a failed one, by step.",
            ["workflow", "step"],
            registry=registry,
        ),
        compensations=Counter(
            "workflow_compensations_total",
            "Compensation attempts, by step and outcome (ok, error).",
            ["workflow", "step", "outcome"],
            registry=registry,
        ),
    )


# One set per registry, shared by the engines using it (told apart by their `workflow` label).
_METRICS = MetricsPerRegistry(_build_metrics)


# --- engine --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepMetrics:
    """One step's metric children, looked up once: labels() is too dear to call per attempt."""

    attempt_ok: Histogram
    attempt_error: Histogram
    retries: Counter
    compensated_ok: Counter
    compensated_error: Counter


class StepAttemptsFailedError(Exception):
    """A step's action (or compensation) failed for good; internal to a run."""

    def __init__(self, step: str, attempts: int, cause: BaseException) -> None:
        super().__init__(step)
        self.step = step
        self.attempts = attempts
        self.cause = cause

    def describe(self, doing: str) -> str:
        tries = f" after {self.attempts} attempts" if self.attempts > 1 else ""
        return f"{doing} {self.step!r} failed{tries}: {type(self.cause).__name__}: {self.cause}"


class WorkflowEngine:
    """Runs the instances of one workflow: ``await engine.run(instance_id, input)``.

    ``steps`` run in order; a ``Parallel`` group's members run concurrently. Names are unique
    across steps and groups. See the module docstring for resuming, failures and locking.
    """

    def __init__(
        self,
        name: str,
        steps: Sequence[Step | Parallel],
        store: WorkflowStore,
        *,
        registry: CollectorRegistry | None = None,
        local_errors: tuple[type[BaseException], ...] = (PoolExhaustedError,),
    ) -> None:
        """``local_errors``: exceptions that mean this process ran short of a resource of its
        own (a pool slot), never that a step failed; met anywhere in a step's exception chain,
        they defer the step (``StepDeferredError``) instead of failing it."""
        if not name:
            raise ValueError("a workflow needs a name")
        if not steps:
            raise ValueError(f"workflow {name!r} has no steps")
        self.name = name
        self.store = store
        self.local_errors = local_errors
        self.registry = registry if registry is not None else CollectorRegistry()
        self.plan: tuple[Step | Parallel, ...] = tuple(steps)
        by_name: dict[str, Step] = {}
        seen: set[str] = set()
        for item in self.plan:
            members = item.steps if isinstance(item, Parallel) else (item,)
            names = [item.name] if isinstance(item, Parallel) else []
            names += [member.name for member in members]
            for step_name in names:
                if step_name in seen:
                    raise ValueError(f"workflow {name!r}: the name {step_name!r} is used twice")
                seen.add(step_name)
            by_name.update((member.name, member) for member in members)
        # Every step by name, members of parallel groups included.
        self.steps: Mapping[str, Step] = MappingProxyType(by_name)
        metrics = _METRICS.get(self.registry)
        self._metrics = metrics
        self._running = metrics.running.labels(name)
        self.step_metrics: Mapping[str, StepMetrics] = MappingProxyType(
            {
                step: StepMetrics(
                    attempt_ok=metrics.step_seconds.labels(name, step, "ok"),
                    attempt_error=metrics.step_seconds.labels(name, step, "error"),
                    retries=metrics.retries.labels(name, step),
                    compensated_ok=metrics.compensations.labels(name, step, "ok"),
                    compensated_error=metrics.compensations.labels(name, step, "error"),
                )
                for step in by_name
            }
        )
        self._transitions: dict[tuple[str, str], Counter] = {}

    async def run(self, instance_id: str, input: Mapping[str, Any]) -> WorkflowResult:
        """Run the instance to its end, creating it with ``input`` as its context, or resuming
        it from its row (``input`` is then ignored). Returns the result when it completed;
        raises ``WorkflowFailedError`` when it ended compensated or failed (now or before),
        ``InstanceBusyError`` when another run holds it."""
        if not instance_id:
            raise ValueError("instance_id must not be empty")
        initial = _encode(dict(input), f"the input of workflow instance {instance_id!r}")
        started = next_state("pending", "start", instance_id=instance_id)
        async with self.store.lock(instance_id) as lease:
            instance, created = await self.store.claim(
                instance_id, self.name, started, initial, lease=lease
            )
            if instance.workflow != self.name:
                raise WorkflowError(
                    f"instance {instance_id!r} belongs to workflow {instance.workflow!r}, "
                    f"not {self.name!r}"
                )
            if instance.state not in STATES:
                raise WorkflowError(
                    f"workflow instance {instance_id!r} is in state {instance.state!r}, which "
                    f"is not one of {sorted(STATES)}"
                )
            if created:
                self.count_transition("start", started)
            self._running.inc()
            try:
                return await InstanceRun(self, instance, lease).drive()
            finally:
                self._running.dec()

    async def resume(self, instance_id: str) -> WorkflowResult:
        """``run`` an existing instance (one of ``store.unfinished``); ``WorkflowError`` if
        there is none."""
        if await self.store.load(instance_id) is None:
            raise WorkflowError(f"there is no workflow instance {instance_id!r} to resume")
        return await self.run(instance_id, {})

    def count_transition(self, event: str, state: str) -> None:
        """Count a lifecycle transition taken by ``event`` into ``state``."""
        counter = self._transitions.get((event, state))
        if counter is None:
            counter = self._metrics.transitions.labels(self.name, event, state)
            self._transitions[(event, state)] = counter
        counter.inc()


class InstanceRun:
    """One run of one instance: the instance in memory, its lock, and its writes."""

    def __init__(
        self, engine: WorkflowEngine, instance: WorkflowInstance, lease: InstanceLease
    ) -> None:
        self.engine = engine
        self.instance = instance
        self.lease = lease
        steps = engine.steps
        self.done = {n for n in (*instance.completed, *instance.skipped) if n in steps}
        # Parallel members complete concurrently; their writes must land in order.
        self.save_lock = asyncio.Lock()

    def fire(self, event: str) -> None:
        instance = self.instance
        instance.state = next_state(instance.state, event, instance_id=instance.id)
        self.engine.count_transition(event, instance.state)

    async def save(self) -> None:
        async with self.save_lock:
            await self.engine.store.save(self.instance, lease=self.lease)

    async def drive(self) -> WorkflowResult:
        instance = self.instance
        if instance.state == "pending":
            self.fire("start")
            await self.save()
        if instance.state == "running":
            try:
                await self.run_steps()
            except StepAttemptsFailedError as failure:
                instance.failed_step = failure.step
                instance.error = failure.describe("step")
                self.fire("compensate")
                await self.save()
            else:
                if instance.state == "running":  # resumed with every step already done
                    self.fire("succeed")
                    await self.save()
        if instance.state == "compensating":
            await self.compensate()
        result = instance.to_result()
        if instance.state == "completed":
            return result
        raise WorkflowFailedError(self.engine.name, result)

    async def run_steps(self) -> None:
        for item in self.engine.plan:
            if isinstance(item, Parallel):
                await self.run_group(item)
            else:
                await self.run_step(item)

    async def run_group(self, group: Parallel) -> None:
        todo = [step for step in group.steps if step.name not in self.done]
        gate = asyncio.Semaphore(group.limit)
        failures: list[StepAttemptsFailedError] = []
        errors: list[Exception] = []

        async def member(step: Step) -> None:
            async with gate:
                if failures or errors:
                    return  # one failed: start no more, finish (and so compensate) the rest
                try:
                    await self.run_step(step)
                except StepAttemptsFailedError as failure:
                    failures.append(failure)
                except Exception as exc:
                    errors.append(exc)

        async with asyncio.TaskGroup() as tasks:
            for step in todo:
                tasks.create_task(member(step))
        if errors:
            raise errors[0]
        if failures:
            raise failures[0]

    async def run_step(self, step: Step) -> None:
        if step.name in self.done:
            return
        instance = self.instance
        try:
            wanted = step.when is None or step.when(instance.context)
        except Exception as exc:
            raise StepAttemptsFailedError(step.name, 0, exc) from exc
        if wanted:
            result = await self.attempt(step)
            instance.context[step.name] = result
            instance.completed.append(step.name)
        else:
            instance.skipped.append(step.name)
        self.done.add(step.name)
        if len(self.done) == len(self.engine.steps):
            self.fire("succeed")  # written with the last step: one write fewer
        await self.save()

    async def attempt(self, step: Step) -> Any:
        """The step's result, after up to ``1 + retries`` attempts (else
        ``StepAttemptsFailedError``)."""
        engine, instance = self.engine, self.instance
        metrics = engine.step_metrics[step.name]
        attempts = instance.attempts.get(step.name, 0)
        for retry in range(step.retries + 1):
            if retry:
                metrics.retries.inc()
                await asyncio.sleep(step.backoff.delay(retry))
            self.lease.check()
            attempts += 1
            instance.attempts[step.name] = attempts
            started = time.perf_counter()
            try:
                result = await step.action(instance.context)
            except Exception as exc:
                metrics.attempt_error.observe(time.perf_counter() - started)
                shortage = _local_shortage(exc, engine.local_errors)
                if shortage is not None:
                    # Not the step's failure: counting it would end in compensating a run
                    # that only waited for this process's own pool.
                    instance.attempts[step.name] = attempts - 1
                    raise StepDeferredError(instance.id, step.name, "step", shortage) from exc
                if retry == step.retries:
                    raise StepAttemptsFailedError(step.name, attempts, exc) from exc
                continue
            metrics.attempt_ok.observe(time.perf_counter() - started)
            try:
                _encode(result, f"the result of step {step.name!r}")
            except WorkflowError as exc:  # running it again would return the same
                raise StepAttemptsFailedError(step.name, attempts, exc) from exc
            return result
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def compensate(self) -> None:
        """Undo the completed steps not undone yet, newest first, recording each."""
        instance, steps = self.instance, self.engine.steps
        undone = set(instance.compensated)
        todo = [
            name
            for name in reversed(instance.completed)
            if name not in undone and (name not in steps or steps[name].compensate is not None)
        ]
        for index, name in enumerate(todo):
            try:
                await self.undo(name)
            except StepAttemptsFailedError as failure:
                instance.failed_compensation = name
                instance.error = f"{instance.error}; then {failure.describe('compensating')}"
                self.fire("fail")
                await self.save()
                return
            instance.compensated.append(name)
            if index == len(todo) - 1:
                self.fire("finish_compensation")  # written with the last one
            await self.save()
        if not todo:
            self.fire("finish_compensation")
            await self.save()

    async def undo(self, name: str) -> None:
        engine, instance = self.engine, self.instance
        step = engine.steps.get(name)
        if step is None:  # completed under an older definition of the workflow
            missing = WorkflowError(f"workflow {engine.name!r} has no step {name!r} any more")
            raise StepAttemptsFailedError(name, 0, missing)
        compensate = step.compensate
        assert compensate is not None  # steps without one are not undone
        metrics = engine.step_metrics[name]
        for retry in range(step.retries + 1):
            if retry:
                await asyncio.sleep(step.backoff.delay(retry))
            self.lease.check()
            try:
                await compensate(instance.context)
            except Exception as exc:
                metrics.compensated_error.inc()
                shortage = _local_shortage(exc, engine.local_errors)
                if shortage is not None:
                    raise StepDeferredError(instance.id, name, "compensating", shortage) from exc
                if retry == step.retries:
                    raise StepAttemptsFailedError(name, retry + 1, exc) from exc
                continue
            metrics.compensated_ok.inc()
            return


def _local_shortage(
    exc: BaseException, local_errors: tuple[type[BaseException], ...]
) -> BaseException | None:
    """The first of ``local_errors`` in ``exc``'s cause/context chain (a step may wrap the
    pool's error in one of its own), or None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, local_errors):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
