"""The workflow kit's connection budget against a real PostgreSQL: the lock connections come
from a pool of their own, so runs never starve their steps (issue 13, defect 5), and a real
local pool shortage defers a step or a compensation instead of failing it and compensating."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from integrations.postgres import Database, PoolExhaustedError
from integrations.workflow import (
    Context,
    RunCapacityError,
    Step,
    StepDeferredError,
    WorkflowEngine,
    WorkflowFailedError,
    WorkflowStore,
)
from tests.integrations.test_workflow import unique


@pytest.fixture
async def side(postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(postgres_dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def schema(side: asyncpg.Connection) -> AsyncIterator[str]:
    name = unique("wfpool")
    await side.execute(f"CREATE SCHEMA {name}")
    await side.execute(f"CREATE TABLE {name}.effects (instance text, step text)")
    yield name
    await side.execute(f"DROP SCHEMA {name} CASCADE")


def small_pool(dsn: str, size: int, name: str) -> Database:
    # A short acquire timeout: a starved step fails fast, as it would under load.
    return Database(dsn, min_size=0, max_size=size, acquire_timeout_s=0.3, name=name)


async def test_as_many_runs_as_pooled_connections_all_complete_and_none_compensates(
    postgres_dsn: str, schema: str, side: asyncpg.Connection
) -> None:
    runs = 4
    async with (
        small_pool(postgres_dsn, runs, "steps") as steps_db,
        small_pool(postgres_dsn, runs, "locks") as locks,
    ):
        store = WorkflowStore(steps_db, locks=locks, table=f"{schema}.instances")
        await store.ensure_schema()
        undone: list[str] = []
        # Every run is inside its first step before any goes on: all hold their locks at once.
        all_inside = asyncio.Barrier(runs)

        async def record(context: Context, step: str) -> None:
            await steps_db.execute(
                f"INSERT INTO {schema}.effects (instance, step) VALUES ($1, $2)",
                context.instance_id,
                step,
            )

        async def reserve(context: Context) -> str:
            await record(context, "reserve")
            async with asyncio.timeout(5):
                await all_inside.wait()
            return "reserved"

        async def charge(context: Context) -> str:
            await record(context, "charge")
            return "charged"

        async def undo(context: Context) -> None:
            undone.append(context.instance_id)

        steps = [
            Step("reserve", reserve, compensate=undo, retries=1, backoff_s=0.01),
            Step("charge", charge, compensate=undo, retries=1, backoff_s=0.01),
        ]
        engine = WorkflowEngine("pay", steps, store)
        results = await asyncio.wait_for(
            asyncio.gather(*(engine.run(f"pay-{i}", {}) for i in range(runs))), timeout=20
        )

    assert [result.state for result in results] == ["completed"] * runs
    assert undone == []
    count = await side.fetchval(f"SELECT count(*) FROM {schema}.effects")
    assert count == 2 * runs


async def test_a_step_short_of_pooled_connections_is_deferred_then_resumed(
    postgres_dsn: str, schema: str
) -> None:
    async with (
        small_pool(postgres_dsn, 1, "tiny") as tiny,
        small_pool(postgres_dsn, 2, "locks") as locks,
    ):
        store = WorkflowStore(tiny, locks=locks, table=f"{schema}.instances")
        await store.ensure_schema()
        calls: list[str] = []
        undone: list[str] = []

        async def reserve(context: Context) -> str:
            calls.append("reserve")
            return "reserved"

        async def charge(context: Context) -> str:
            calls.append("charge")
            try:
                await tiny.execute("SELECT 1")
            except PoolExhaustedError as exc:
                # Wrapped, as step code often does: the shortage is still found in the chain.
                raise RuntimeError("payment client unavailable") from exc
            return "charged"

        async def undo(context: Context) -> None:
            undone.append("reserve")

        steps = [
            Step("reserve", reserve, compensate=undo),
            Step("charge", charge, retries=2, backoff_s=0.01),
        ]
        engine = WorkflowEngine("pay", steps, store)
        held = await tiny.pool.acquire()  # someone else holds the step pool's only connection
        try:
            with pytest.raises(StepDeferredError, match="'charge' was deferred") as caught:
                await engine.run("short-1", {})
        finally:
            await tiny.pool.release(held)
        assert isinstance(caught.value.cause, PoolExhaustedError)
        assert calls == ["reserve", "charge"]  # not retried into the ground either
        assert undone == []
        row = await store.load("short-1")
        assert row is not None
        assert (row.state, row.completed, row.attempts) == ("running", ["reserve"], {"reserve": 1})

        result = await engine.run("short-1", {})
        assert result.state == "completed"
        assert calls == ["reserve", "charge", "charge"]
        assert result.attempts == {"reserve": 1, "charge": 1}
        assert undone == []


async def test_a_compensation_short_of_pooled_connections_is_deferred_then_resumed(
    postgres_dsn: str, schema: str
) -> None:
    async with (
        small_pool(postgres_dsn, 1, "tiny") as tiny,
        small_pool(postgres_dsn, 2, "locks") as locks,
    ):
        store = WorkflowStore(tiny, locks=locks, table=f"{schema}.instances")
        await store.ensure_schema()
        undone: list[str] = []

        async def reserve(context: Context) -> str:
            return "reserved"

        async def release_stock(context: Context) -> None:
            await tiny.execute("SELECT 1")
            undone.append("reserve")

        async def declined(context: Context) -> None:
            raise RuntimeError("card declined")

        steps = [Step("reserve", reserve, compensate=release_stock), Step("charge", declined)]
        engine = WorkflowEngine("pay", steps, store)
        held = await tiny.pool.acquire()
        try:
            with pytest.raises(StepDeferredError, match="compensating 'reserve' was deferred"):
                await engine.run("short-2", {})
        finally:
            await tiny.pool.release(held)
        row = await store.load("short-2")
        assert row is not None
        assert (row.state, row.compensated, row.failed_compensation) == ("compensating", [], None)

        with pytest.raises(WorkflowFailedError, match="card declined") as caught:
            await engine.run("short-2", {})
        assert caught.value.state == "compensated"
        assert undone == ["reserve"]


async def test_a_run_beyond_the_lock_pool_is_refused_before_it_touches_the_instance(
    postgres_dsn: str, schema: str
) -> None:
    async with (
        small_pool(postgres_dsn, 2, "steps") as steps_db,
        small_pool(postgres_dsn, 1, "locks") as locks,
    ):
        store = WorkflowStore(steps_db, locks=locks, table=f"{schema}.instances")
        await store.ensure_schema()
        inside, release = asyncio.Event(), asyncio.Event()

        async def hold(context: Context) -> str:
            inside.set()
            async with asyncio.timeout(5):
                await release.wait()
            return "held"

        engine = WorkflowEngine("cap", [Step("hold", hold)], store)
        first = asyncio.create_task(engine.run("cap-1", {}))
        async with asyncio.timeout(5):
            await inside.wait()
        with pytest.raises(RunCapacityError, match=r"'cap-2' was not started.*max_size"):
            await engine.run("cap-2", {})
        assert await store.load("cap-2") is None
        release.set()
        assert (await first).state == "completed"
        assert (await engine.run("cap-2", {})).state == "completed"


async def test_a_store_refuses_the_step_pool_as_its_lock_pool() -> None:
    database = Database("postgresql://unused")
    with pytest.raises(ValueError, match="locks must be a Database of its own"):
        WorkflowStore(database, locks=database)
