"""The workflow kit against a real PostgreSQL (embedded, or DATABASE_URL): steps in order, in
parallel and skipped, retries, saga compensation, a run killed mid-step and resumed, two runs
racing for one instance, the lifecycle's rules, and the metrics."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry
from statemachine.exceptions import TransitionNotAllowed

from integrations.postgres import (
    Database,
)
from integrations.workflow import (
    DEFAULT_TABLE,
    SCHEMA_SQL,
    STATES,
    Context,
    InstanceBusyError,
    InvalidTransitionError,
    LeaseLostError,
    Parallel,
    Step,
    WorkflowEngine,
    WorkflowError,
    WorkflowFailedError,
    WorkflowLifecycle,
    WorkflowStore,
    next_state,
)

ROOT = Path(__file__).resolve().parents[2]


def unique(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(5)}"


async def wait_until(side: asyncpg.Connection, query: str, *args: object) -> None:
    """Poll ``query`` on the side connection until it returns true (20 s at most)."""
    for _ in range(2000):
        if await side.fetchval(query, *args):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never true: {query}")


@pytest.fixture
async def db(postgres_dsn: str) -> AsyncIterator[Database]:
    database = Database(
        postgres_dsn,
        min_size=1,
        max_size=8,
        retry_initial_backoff_s=0.01,
        retry_max_backoff_s=0.05,
        name="workflow-tests",
    )
    async with database:
        yield database


@pytest.fixture
async def locks(postgres_dsn: str) -> AsyncIterator[Database]:
    """The lock pool: one connection per running instance, apart from the steps' pool."""
    database = Database(postgres_dsn, min_size=0, max_size=8, name="workflow-tests-locks")
    async with database:
        yield database


@pytest.fixture
async def side(postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own, outside the kit's pool."""
    conn = await asyncpg.connect(postgres_dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def schema(side: asyncpg.Connection) -> AsyncIterator[str]:
    """A fresh schema, dropped afterwards: the store's table and the steps' effects go in it."""
    name = unique("wf")
    await side.execute(f"CREATE SCHEMA {name}")
    await side.execute(
        f"CREATE TABLE {name}.effects (instance text, step text, PRIMARY KEY (instance, step))"
    )
    yield name
    await side.execute(f"DROP SCHEMA {name} CASCADE")


@pytest.fixture
async def store(db: Database, locks: Database, schema: str) -> WorkflowStore:
    workflow_store = WorkflowStore(db, locks=locks, table=f"{schema}.instances")
    await workflow_store.ensure_schema()
    return workflow_store


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def action(
    calls: list[str], name: str, result: object = None
) -> Callable[[Context], Awaitable[object]]:
    """A step action that records its call and returns ``result``."""

    async def run(context: Context) -> object:
        calls.append(name)
        return result

    return run


def undo(undone: list[str], name: str) -> Callable[[Context], Awaitable[None]]:
    async def run(context: Context) -> None:
        undone.append(name)

    return run


async def boom(context: Context) -> None:
    raise RuntimeError("card declined")


def sample(registry: CollectorRegistry, metric: str, **labels: str) -> float:
    return registry.get_sample_value(metric, labels) or 0.0


# --- sequence, parallel, conditions, retries -----------------------------------------------------


async def test_steps_run_in_order_and_a_finished_instance_runs_nothing(
    store: WorkflowStore, side: asyncpg.Connection
) -> None:
    calls: list[str] = []
    seen: dict[str, Any] = {}

    async def total(context: Context) -> int:
        calls.append("total")
        seen.update(context)
        return int(context["reserve"]["qty"]) * int(context["price"])

    steps = [
        Step("reserve", action(calls, "reserve", {"qty": 3})),
        Step("price", action(calls, "price", 7)),
        Step("total", total),
    ]
    engine = WorkflowEngine("order", steps, store)
    result = await engine.run("order-1", {"customer": "c-9"})

    assert calls == ["reserve", "price", "total"]
    assert seen == {"customer": "c-9", "reserve": {"qty": 3}, "price": 7}
    assert result.state == "completed"
    assert result.completed == ("reserve", "price", "total")
    assert result.context == {"customer": "c-9", "reserve": {"qty": 3}, "price": 7, "total": 21}
    assert result.error is None
    row = await side.fetchrow(
        f"SELECT state, completed, context->>'total' AS total FROM {store.table} WHERE id = $1",
        "order-1",
    )
    assert row is not None
    assert (row["state"], row["completed"], row["total"]) == (
        "completed",
        ["reserve", "price", "total"],
        "21",
    )

    again = await WorkflowEngine("order", steps, store).run("order-1", {"customer": "other"})
    assert calls == ["reserve", "price", "total"]  # nothing ran again
    assert again == result


async def test_parallel_members_run_concurrently_within_the_limit(store: WorkflowStore) -> None:
    running = peak = 0

    def member(name: str) -> Step:
        async def run(context: Context) -> str:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.05)
            running -= 1
            return f"{name}-done"

        return Step(name, run)

    group = Parallel("fan_out", tuple(member(f"m{i}") for i in range(5)), limit=3)
    calls: list[str] = []
    engine = WorkflowEngine("fan", [Step("first", action(calls, "first", 1)), group], store)
    result = await engine.run("fan-1", {})

    assert 1 < peak <= 3
    assert result.state == "completed"
    assert {f"m{i}": f"m{i}-done" for i in range(5)}.items() <= result.context.items()
    assert sorted(result.completed) == ["first", "m0", "m1", "m2", "m3", "m4"]
    loaded = await store.load("fan-1")
    assert loaded is not None
    assert sorted(loaded.completed) == sorted(result.completed)  # every member's write landed


async def test_failed_parallel_member_compensates_the_completed_members(
    store: WorkflowStore,
) -> None:
    calls: list[str] = []
    undone: list[str] = []
    slow_started = asyncio.Event()

    async def slow(context: Context) -> str:
        calls.append("slow")
        slow_started.set()
        await asyncio.sleep(0.05)
        return "slow"

    async def broken(context: Context) -> None:
        async with asyncio.timeout(5):
            await slow_started.wait()
        raise RuntimeError("card declined")

    group = Parallel(
        "charge_all",
        (
            Step("broken", broken, compensate=undo(undone, "broken")),
            Step("slow", slow, compensate=undo(undone, "slow")),
            Step("late", action(calls, "late"), compensate=undo(undone, "late")),
        ),
        limit=2,
    )
    opening = Step("open", action(calls, "open"), compensate=undo(undone, "open"))
    steps: list[Step | Parallel] = [opening, group]
    with pytest.raises(WorkflowFailedError) as caught:
        await WorkflowEngine("charges", steps, store).run("charges-1", {})

    assert caught.value.step == "broken"
    # The member in flight finished, so it is undone too; the failed one never completed, and
    # the one still waiting for a slot never started.
    assert calls == ["open", "slow"]
    assert undone == ["slow", "open"]
    assert caught.value.compensated == ("slow", "open")
    assert caught.value.state == "compensated"


async def test_step_is_skipped_when_its_condition_is_false(store: WorkflowStore) -> None:
    calls: list[str] = []
    steps = [
        Step("check", action(calls, "check", {"vip": False})),
        Step("upgrade", action(calls, "upgrade"), when=lambda c: bool(c["check"]["vip"])),
        Step("ship", action(calls, "ship")),
    ]
    result = await WorkflowEngine("ship", steps, store).run("ship-1", {})

    assert calls == ["check", "ship"]
    assert result.skipped == ("upgrade",)
    assert result.completed == ("check", "ship")
    assert "upgrade" not in result.context
    loaded = await store.load("ship-1")
    assert loaded is not None
    assert loaded.skipped == ["upgrade"]


async def test_failing_step_is_retried_with_backoff_and_completes(store: WorkflowStore) -> None:
    attempts = 0

    async def flaky(context: Context) -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionResetError("upstream hung up")
        return "ok"

    engine = WorkflowEngine("flaky", [Step("call", flaky, retries=2, backoff_s=0.05)], store)
    started = time.monotonic()
    result = await engine.run("flaky-1", {})
    elapsed = time.monotonic() - started

    assert result.state == "completed"
    assert result.context["call"] == "ok"
    assert attempts == 3
    assert elapsed >= 0.05 + 0.10
    loaded = await store.load("flaky-1")
    assert loaded is not None
    assert loaded.attempts == {"call": 3}


def test_step_waits_double_from_backoff_s_without_cap_or_jitter() -> None:
    async def noop(context: Context) -> None:
        return None

    step = Step("call", noop, retries=20, backoff_s=0.05)
    assert [step.backoff.delay(n) for n in (1, 2, 3, 12)] == pytest.approx(
        [0.05, 0.1, 0.2, 0.05 * 2**11]
    )
    assert Step("now", noop, retries=3, backoff_s=0).backoff.delay(3) == 0


def test_engine_exposes_its_plan_steps_and_step_metrics_read_only() -> None:
    # No server: the engine only reads its store when it runs.
    unused = "postgresql://postgres@127.0.0.1:1/postgres"
    store = WorkflowStore(Database(unused), locks=Database(unused))
    first = Step("first", action([], "first"))
    left, right = Step("left", action([], "left")), Step("right", action([], "right"))
    registry = CollectorRegistry()
    engine = WorkflowEngine(
        "shape", [first, Parallel("both", (left, right))], store, registry=registry
    )
    assert engine.plan == (first, Parallel("both", (left, right)))
    assert dict(engine.steps) == {"first": first, "left": left, "right": right}
    assert set(engine.step_metrics) == {"first", "left", "right"}
    with pytest.raises(TypeError):
        engine.steps["other"] = first  # type: ignore[index]
    engine.step_metrics["left"].retries.inc()
    engine.count_transition("start", "running")
    assert sample(registry, "workflow_step_retries_total", workflow="shape", step="left") == 1
    labels = {"workflow": "shape", "event": "start", "state": "running"}
    assert sample(registry, "workflow_transitions_total", **labels) == 1


# --- saga ----------------------------------------------------------------------------------------


async def test_step_failing_for_good_compensates_completed_steps_newest_first(
    store: WorkflowStore, side: asyncpg.Connection
) -> None:
    calls: list[str] = []
    undone: list[str] = []
    steps = [
        Step("step1", action(calls, "step1", 1), compensate=undo(undone, "step1")),
        Step("step2", action(calls, "step2", 2), compensate=undo(undone, "step2")),
        Step("step3", boom, compensate=undo(undone, "step3"), retries=1, backoff_s=0.0),
        Step("step4", action(calls, "step4")),
    ]
    engine = WorkflowEngine("saga", steps, store)
    with pytest.raises(WorkflowFailedError) as caught:
        await engine.run("saga-1", {})

    failure = caught.value
    assert undone == ["step2", "step1"]
    assert failure.compensated == ("step2", "step1")
    assert (failure.instance_id, failure.step, failure.state) == ("saga-1", "step3", "compensated")
    assert failure.failed_compensation is None
    assert "card declined" in str(failure)
    assert calls == ["step1", "step2"]
    row = await side.fetchrow(
        f"SELECT state, compensated, failed_step, error FROM {store.table} WHERE id = $1",
        "saga-1",
    )
    assert row is not None
    assert (row["state"], row["compensated"], row["failed_step"]) == (
        "compensated",
        ["step2", "step1"],
        "step3",
    )
    assert "2 attempts" in row["error"]

    # A finished failure is reported again, without running or compensating anything.
    with pytest.raises(WorkflowFailedError) as again:
        await engine.run("saga-1", {})
    assert again.value.compensated == ("step2", "step1")
    assert (calls, undone) == (["step1", "step2"], ["step2", "step1"])


async def test_failing_compensation_ends_failed_and_names_it(store: WorkflowStore) -> None:
    calls: list[str] = []
    undone: list[str] = []
    steps = [
        Step("step1", action(calls, "step1"), compensate=undo(undone, "step1")),
        Step("step2", action(calls, "step2"), compensate=boom),
        Step("step3", boom),
    ]
    with pytest.raises(WorkflowFailedError) as caught:
        await WorkflowEngine("stuck", steps, store).run("stuck-1", {})

    assert caught.value.state == "failed"
    assert caught.value.failed_compensation == "step2"
    assert caught.value.compensated == ()
    assert undone == []  # not past the one that failed
    loaded = await store.load("stuck-1")
    assert loaded is not None
    assert (loaded.state, loaded.failed_compensation) == ("failed", "step2")


# --- crash and resume ----------------------------------------------------------------------------

CHILD = """
import asyncio
import sys

sys.path.insert(0, sys.argv[1])

from integrations.postgres import Database
from integrations.workflow import Step, WorkflowEngine, WorkflowStore


async def main(dsn, schema, app, instance_id):
    async with (
        Database(dsn, min_size=1, max_size=4, name=app) as db,
        Database(dsn, min_size=0, max_size=2, name=app) as locks,
    ):

        def effect(name):
            async def run(context):
                await db.execute(
                    f"INSERT INTO {schema}.effects (instance, step) VALUES ($1, $2)",
                    context.instance_id,
                    name,
                )
                return name

            return run

        async def step2(context):
            await db.execute(
                f"INSERT INTO {schema}.started (instance, step) VALUES ($1, 'step2')",
                context.instance_id,
            )
            await asyncio.sleep(600)  # killed here

        steps = [Step("step1", effect("step1")), Step("step2", step2)]
        steps.append(Step("step3", effect("step3")))
        store = WorkflowStore(db, locks=locks, table=f"{schema}.instances")
        engine = WorkflowEngine("crashy", steps, store)
        await engine.run(instance_id, {"order": 7})


asyncio.run(main(*sys.argv[2:]))
"""


@pytest.fixture
def child_script(tmp_path: Path) -> Path:
    path = tmp_path / "child.py"
    path.write_text(CHILD, encoding="utf-8")
    return path


async def test_run_killed_mid_step_resumes_after_the_last_completed_step(
    postgres_dsn: str,
    store: WorkflowStore,
    schema: str,
    side: asyncpg.Connection,
    child_script: Path,
) -> None:
    await side.execute(f"CREATE TABLE {schema}.started (instance text, step text)")
    app, instance_id = unique("child"), "crash-1"
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(child_script),
        str(ROOT),
        postgres_dsn,
        schema,
        app,
        instance_id,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        await wait_until(side, f"SELECT EXISTS (SELECT FROM {schema}.started)")
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    assert child.returncode == -signal.SIGKILL
    # The server drops the dead client's sessions, and with them its advisory lock.
    await wait_until(
        side, "SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE application_name = $1)", app
    )
    before = await store.load(instance_id)
    assert before is not None
    assert (before.state, before.completed) == ("running", ["step1"])
    assert await store.unfinished("crashy") == [instance_id]

    calls: list[str] = []

    def effect(name: str) -> Callable[[Context], Awaitable[str]]:
        async def run(context: Context) -> str:
            calls.append(name)
            await store.database.execute(
                f"INSERT INTO {schema}.effects (instance, step) VALUES ($1, $2)",
                context.instance_id,
                name,
            )
            return name

        return run

    steps = [Step("step1", effect("step1")), Step("step2", effect("step2"))]
    steps.append(Step("step3", effect("step3")))
    engine = WorkflowEngine("crashy", steps, store)
    result = await asyncio.wait_for(engine.resume(instance_id), timeout=10)

    assert calls == ["step2", "step3"]
    assert result.state == "completed"
    assert result.completed == ("step1", "step2", "step3")
    assert result.context == {"order": 7, "step1": "step1", "step2": "step2", "step3": "step3"}
    effects = await side.fetch(
        f"SELECT step FROM {schema}.effects WHERE instance = $1 ORDER BY step", instance_id
    )
    assert [row["step"] for row in effects] == ["step1", "step2", "step3"]  # each exactly once
    assert await store.unfinished("crashy") == []
    with pytest.raises(WorkflowError, match="no workflow instance 'crash-2'"):
        await engine.resume("crash-2")


async def test_run_that_loses_its_lock_connection_stops_and_resumes_later(
    store: WorkflowStore, side: asyncpg.Connection
) -> None:
    key = store.lock_key("lost-1")
    calls: list[str] = []

    async def step2(context: Context) -> str:
        calls.append("step2")
        if calls.count("step2") == 1:
            # The session holding the lock dies (failover, idle timeout, an operator).
            holder = await side.fetchval(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = $1 "
                "AND objid = $2 AND objsubid = 1",
                (key >> 32) & 0xFFFFFFFF,
                key & 0xFFFFFFFF,
            )
            assert await side.fetchval("SELECT pg_terminate_backend($1)", holder) is True
            await wait_until(
                side, "SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1)", holder
            )
        return "two"

    steps = [Step("step1", action(calls, "step1", 1)), Step("step2", step2)]
    steps.append(Step("step3", action(calls, "step3", 3)))
    engine = WorkflowEngine("lossy", steps, store)
    with pytest.raises(LeaseLostError, match="lost-1"):
        await asyncio.wait_for(engine.run("lost-1", {}), timeout=10)
    row = await store.load("lost-1")
    assert row is not None
    assert (row.state, row.completed) == ("running", ["step1"])  # step2's outcome not written

    result = await asyncio.wait_for(engine.run("lost-1", {}), timeout=10)
    assert result.state == "completed"
    assert calls == ["step1", "step2", "step2", "step3"]  # the interrupted step ran again


# --- locking -------------------------------------------------------------------------------------


async def test_two_engines_racing_for_one_instance_one_runs_it_the_other_is_busy(
    store: WorkflowStore,
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    calls = 0

    async def hold(context: Context) -> str:
        nonlocal calls
        calls += 1
        entered.set()
        async with asyncio.timeout(5):
            await release.wait()
        return "held"

    engines = [WorkflowEngine("race", [Step("hold", hold)], store) for _ in range(2)]
    runs = [asyncio.create_task(engine.run("race-1", {})) for engine in engines]
    done, _ = await asyncio.wait(runs, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    async with asyncio.timeout(5):
        await entered.wait()
    assert len(done) == 1  # the loser is turned away while the winner is inside its step
    loser = done.pop()
    with pytest.raises(InstanceBusyError, match="race-1"):
        loser.result()
    release.set()
    winner = next(run for run in runs if run is not loser)
    result = await asyncio.wait_for(winner, timeout=5)
    assert result.state == "completed"
    assert calls == 1
    # The lock went with the run: the instance can be run (here: its result read) again.
    assert (await engines[0].run("race-1", {})).context["hold"] == "held"


async def test_write_of_a_run_that_was_taken_over_is_refused(store: WorkflowStore) -> None:
    stale, created = await store.claim("fenced-1", "wf", "running", "{}")
    assert created
    current, created = await store.claim("fenced-1", "wf", "running", "{}")
    assert not created
    current.completed.append("a")
    await store.save(current)
    stale.completed.append("b")
    with pytest.raises(LeaseLostError, match="took the instance over"):
        await store.save(stale)
    loaded = await store.load("fenced-1")
    assert loaded is not None
    assert loaded.completed == ["a"]


async def test_schema_sql_creates_the_default_table(side: asyncpg.Connection, schema: str) -> None:
    await side.execute(f"SET search_path TO {schema}")
    await side.execute(SCHEMA_SQL)
    await side.execute("RESET search_path")
    assert await side.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.{DEFAULT_TABLE}")
    with pytest.raises(ValueError, match="identifier"):
        WorkflowStore(
            Database("postgresql://unused"),
            locks=Database("postgresql://unused"),
            table="x; DROP TABLE y",
        )


# --- lifecycle and metrics -----------------------------------------------------------------------


def test_invalid_transition_is_refused_naming_instance_state_and_event() -> None:
    with pytest.raises(InvalidTransitionError) as caught:
        next_state("pending", "succeed", instance_id="order-9")
    error = caught.value
    assert (error.instance_id, error.state, error.event) == ("order-9", "pending", "succeed")
    assert "'order-9'" in str(error)
    assert "'succeed' is not allowed in state 'pending'" in str(error)
    assert "'start'" in str(error)  # what is allowed there
    assert isinstance(error.__cause__, TransitionNotAllowed)
    with pytest.raises(InvalidTransitionError, match="final"):
        next_state("completed", "start")
    with pytest.raises(WorkflowError, match="not one of"):
        next_state("bogus", "start")


def test_next_state_answers_as_the_state_machine_does() -> None:
    events = [str(event.id) for event in WorkflowLifecycle().events]
    assert set(events) >= {"start", "succeed", "compensate", "finish_compensation", "fail"}
    for state in sorted(STATES):
        for event in events:
            machine = WorkflowLifecycle(start_value=state)
            try:
                machine.send(event)
            except TransitionNotAllowed:
                with pytest.raises(InvalidTransitionError):
                    next_state(state, event)
                continue
            for _ in range(2):  # the memoised answer too
                assert next_state(state, event) == machine.current_state_value


async def test_metrics_move(store: WorkflowStore, registry: CollectorRegistry) -> None:
    flaked = False

    async def flaky(context: Context) -> int:
        nonlocal flaked
        if not flaked:
            flaked = True
            raise TimeoutError("slow upstream")
        return 1

    undone: list[str] = []
    ok = WorkflowEngine(
        "m_ok", [Step("a", flaky, retries=1, backoff_s=0.0)], store, registry=registry
    )
    bad = WorkflowEngine(
        "m_bad",
        [Step("a", action([], "a"), compensate=undo(undone, "a")), Step("b", boom)],
        store,
        registry=registry,
    )
    await ok.run("m-1", {})
    with pytest.raises(WorkflowFailedError):
        await bad.run("m-2", {})

    def transitions(workflow: str, event: str, state: str) -> float:
        labels = {"workflow": workflow, "event": event, "state": state}
        return sample(registry, "workflow_transitions_total", **labels)

    assert transitions("m_ok", "start", "running") == 1
    assert transitions("m_ok", "succeed", "completed") == 1
    assert transitions("m_bad", "compensate", "compensating") == 1
    assert transitions("m_bad", "finish_compensation", "compensated") == 1
    duration = "workflow_step_duration_seconds_count"
    assert sample(registry, duration, workflow="m_ok", step="a", outcome="error") == 1
    assert sample(registry, duration, workflow="m_ok", step="a", outcome="ok") == 1
    assert sample(registry, "workflow_step_retries_total", workflow="m_ok", step="a") == 1
    compensations = "workflow_compensations_total"
    assert sample(registry, compensations, workflow="m_bad", step="a", outcome="ok") == 1
    assert sample(registry, "workflow_instances_running", workflow="m_ok") == 0
