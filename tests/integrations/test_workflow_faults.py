"""Faults injected for real into the workflow kit, with runners in child processes against a
real PostgreSQL: two replicas running the same instances at once, and a runner SIGKILLed in
the middle of a compensation (issue 13, "Faults to inject for real: Workflow")."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from integrations.postgres import Database
from integrations.workflow import (
    Context,
    Step,
    WorkflowEngine,
    WorkflowFailedError,
    WorkflowStore,
)
from tests.integrations.test_workflow import unique, wait_until

ROOT = Path(__file__).resolve().parents[2]

# A replica: waits for "go" on stdin (so that both start together), then runs every instance
# once, in order; an instance another replica holds is left to it. Both go in the same
# order, so they contend for nearly every instance, and reach some after the other finished.
RUNNER = """
import asyncio
import sys

sys.path.insert(0, sys.argv[1])

from integrations.postgres import Database
from integrations.workflow import InstanceBusyError, Step, WorkflowEngine, WorkflowStore


async def main(dsn, schema, runner, count):
    ids = [f"order-{i}" for i in range(int(count))]
    async with (
        Database(dsn, min_size=1, max_size=2, name=runner) as db,
        Database(dsn, min_size=0, max_size=1, name=runner) as locks,
    ):
        def step(name):
            async def run(context):
                await db.execute(
                    f"INSERT INTO {schema}.executions (instance, step, runner) "
                    "VALUES ($1, $2, $3)",
                    context.instance_id,
                    name,
                    runner,
                )
                await asyncio.sleep(0.005)  # the step's work: gives the other replica a chance
                return name

            return run

        store = WorkflowStore(db, locks=locks, table=f"{schema}.instances")
        engine = WorkflowEngine("order", [Step(n, step(n)) for n in ("a", "b", "c")], store)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        busy = 0
        for instance_id in ids:
            try:
                await engine.run(instance_id, {})
            except InstanceBusyError:
                busy += 1
        print(f"busy {busy}", flush=True)


asyncio.run(main(*sys.argv[2:]))
"""

# A runner killed in the middle of compensating: b is undone, a's undo has done its effect
# (idempotently, keyed by instance and step) and is killed before the kit records it.
COMPENSATOR = """
import asyncio
import sys

sys.path.insert(0, sys.argv[1])

from integrations.postgres import Database
from integrations.workflow import Step, WorkflowEngine, WorkflowStore


async def main(dsn, schema, app, instance_id):
    async with (
        Database(dsn, min_size=1, max_size=2, name=app) as db,
        Database(dsn, min_size=0, max_size=1, name=app) as locks,
    ):
        async def done(context):
            return "done"

        async def declined(context):
            await db.execute(f"INSERT INTO {schema}.calls (what) VALUES ('charge')")
            raise RuntimeError("card declined")

        def undo(name, then_hang):
            async def run(context):
                await db.execute(f"INSERT INTO {schema}.calls (what) VALUES ($1)", "undo " + name)
                await db.execute(
                    f"INSERT INTO {schema}.undone (instance, step) VALUES ($1, $2) "
                    "ON CONFLICT DO NOTHING",
                    context.instance_id,
                    name,
                )
                if then_hang:
                    await db.execute("SELECT pg_notify($1, $2)", schema, name)
                    await asyncio.sleep(600)  # SIGKILLed here

            return run

        steps = [
            Step("a", done, compensate=undo("a", True)),
            Step("b", done, compensate=undo("b", False)),
            Step("charge", declined),
        ]
        store = WorkflowStore(db, locks=locks, table=f"{schema}.instances")
        await WorkflowEngine("order", steps, store).run(instance_id, {})


asyncio.run(main(*sys.argv[2:]))
"""


@pytest.fixture
async def side(postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(postgres_dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def schema(side: asyncpg.Connection) -> AsyncIterator[str]:
    name = unique("wffault")
    await side.execute(f"CREATE SCHEMA {name}")
    await side.execute(f"CREATE TABLE {name}.executions (instance text, step text, runner text)")
    await side.execute(f"CREATE TABLE {name}.calls (what text)")
    await side.execute(
        f"CREATE TABLE {name}.undone (instance text, step text, PRIMARY KEY (instance, step))"
    )
    yield name
    await side.execute(f"DROP SCHEMA {name} CASCADE")


@pytest.fixture
async def store(postgres_dsn: str, schema: str) -> AsyncIterator[WorkflowStore]:
    async with (
        Database(postgres_dsn, min_size=0, max_size=4, name="faults") as db,
        Database(postgres_dsn, min_size=0, max_size=2, name="faults-locks") as locks,
    ):
        workflow_store = WorkflowStore(db, locks=locks, table=f"{schema}.instances")
        await workflow_store.ensure_schema()
        yield workflow_store


async def spawn(script: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        str(ROOT),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


async def test_two_replicas_running_the_same_instances_run_each_step_once(
    postgres_dsn: str, store: WorkflowStore, schema: str, side: asyncpg.Connection, tmp_path: Path
) -> None:
    script = tmp_path / "runner.py"
    script.write_text(RUNNER, encoding="utf-8")
    count = 20
    replicas = [
        await spawn(script, postgres_dsn, schema, f"replica-{i}", str(count)) for i in (1, 2)
    ]
    try:
        async with asyncio.timeout(30):
            for replica in replicas:
                assert replica.stdout is not None
                assert await replica.stdout.readline() == b"ready\n"
            for replica in replicas:  # both are connected: start them together
                assert replica.stdin is not None
                replica.stdin.write(b"go\n")
                await replica.stdin.drain()
            outputs = [await replica.communicate() for replica in replicas]
    finally:
        for replica in replicas:
            if replica.returncode is None:
                replica.kill()
                await replica.wait()
    assert [replica.returncode for replica in replicas] == [0, 0], outputs

    executions = await side.fetch(
        f"SELECT instance, step, count(*) AS n FROM {schema}.executions GROUP BY instance, step"
    )
    assert len(executions) == 3 * count
    assert {row["n"] for row in executions} == {1}  # no step of any instance ran twice
    runners = await side.fetch(f"SELECT DISTINCT runner FROM {schema}.executions")
    assert {row["runner"] for row in runners} == {"replica-1", "replica-2"}
    # They did meet: some instance was turned away as held by the other replica.
    busy = sum(int(out.split()[-1]) for out, _ in outputs)
    assert busy > 0, outputs
    states = await side.fetch(f"SELECT state, completed FROM {schema}.instances")
    assert len(states) == count
    assert all((r["state"], r["completed"]) == ("completed", ["a", "b", "c"]) for r in states)


async def test_runner_killed_during_compensation_is_resumed_and_each_undo_lands_once(
    postgres_dsn: str, store: WorkflowStore, schema: str, side: asyncpg.Connection, tmp_path: Path
) -> None:
    script = tmp_path / "compensator.py"
    script.write_text(COMPENSATOR, encoding="utf-8")
    undoing_a = asyncio.Event()
    await side.add_listener(schema, lambda *_: undoing_a.set())
    app, instance_id = unique("comp"), "order-9"
    child = await spawn(script, postgres_dsn, schema, app, instance_id)
    try:
        async with asyncio.timeout(30):
            await undoing_a.wait()
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    assert child.returncode == -signal.SIGKILL
    # The server drops the dead process's sessions, and with them the instance's lock.
    await wait_until(
        side, "SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE application_name = $1)", app
    )
    left = await store.load(instance_id)
    assert left is not None
    assert (left.state, left.completed, left.compensated) == ("compensating", ["a", "b"], ["b"])

    calls: list[str] = []

    async def done(context: Context) -> str:
        calls.append("action")
        return "done"

    async def declined(context: Context) -> None:
        calls.append("charge")
        raise RuntimeError("card declined")

    def undo(name: str) -> Step:
        async def run(context: Context) -> None:
            calls.append(f"undo {name}")
            await store.database.execute(
                f"INSERT INTO {schema}.undone (instance, step) VALUES ($1, $2) "
                "ON CONFLICT DO NOTHING",
                context.instance_id,
                name,
            )

        return Step(name, done, compensate=run)

    engine = WorkflowEngine("order", [undo("a"), undo("b"), Step("charge", declined)], store)
    with pytest.raises(WorkflowFailedError, match="card declined") as caught:
        await asyncio.wait_for(engine.resume(instance_id), timeout=10)

    assert caught.value.state == "compensated"
    assert caught.value.compensated == ("b", "a")
    assert calls == ["undo a"]  # nothing else ran again: b's undo was recorded before the kill
    undone = await side.fetch(
        f"SELECT step FROM {schema}.undone WHERE instance = $1 ORDER BY step", instance_id
    )
    assert [row["step"] for row in undone] == ["a", "b"]  # each compensation's effect once
    attempted = await side.fetch(f"SELECT what FROM {schema}.calls ORDER BY what")
    # In the killed process: the charge once, each undo once (a's outcome was never recorded).
    assert [row["what"] for row in attempted] == ["charge", "undo a", "undo b"]
    assert await store.unfinished("order") == []
