"""Start and stop hooks, draining in-flight calls, and refusing calls while stopping."""

from __future__ import annotations

import asyncio

import pytest

from mixins.lifecycle import Lifecycle, LifecyclePhase, ShuttingDownError
from tests.mixins.support import wait_set


def phase(lifecycle: Lifecycle) -> LifecyclePhase:
    # A call, so that mypy does not narrow the attribute across the awaits in between.
    return lifecycle.phase


async def let_others_run() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def hold_call(lifecycle: Lifecycle, release: asyncio.Event, entered: asyncio.Event) -> str:
    async with lifecycle.track():
        entered.set()
        await release.wait()
    return "finished"


async def test_phases_and_readiness_through_start_and_stop() -> None:
    lifecycle = Lifecycle()
    assert phase(lifecycle) is LifecyclePhase.CREATED
    assert (lifecycle.is_live, lifecycle.is_ready) == (True, False)
    await lifecycle.start()
    assert phase(lifecycle) is LifecyclePhase.RUNNING
    assert (lifecycle.is_live, lifecycle.is_ready) == (True, True)
    assert await lifecycle.stop() is True
    assert phase(lifecycle) is LifecyclePhase.STOPPED
    assert (lifecycle.is_live, lifecycle.is_ready) == (False, False)


async def test_start_hooks_run_in_order_and_stop_hooks_in_reverse() -> None:
    lifecycle = Lifecycle()
    ran: list[str] = []
    for name in ("db", "cache", "consumer"):

        async def start(name: str = name) -> None:
            assert phase(lifecycle) is LifecyclePhase.STARTING
            ran.append(f"start {name}")

        async def stop(name: str = name) -> None:
            assert phase(lifecycle) is LifecyclePhase.STOPPING
            ran.append(f"stop {name}")

        lifecycle.on_start(start)
        lifecycle.on_stop(stop)
    await lifecycle.start()
    await lifecycle.stop()
    assert ran == [
        "start db",
        "start cache",
        "start consumer",
        "stop consumer",
        "stop cache",
        "stop db",
    ]


async def test_hooks_can_be_registered_as_decorators() -> None:
    lifecycle = Lifecycle()
    ran: list[str] = []

    @lifecycle.on_start
    async def connect() -> None:
        ran.append("connect")

    await lifecycle.start()
    await connect()
    assert ran == ["connect", "connect"]


async def test_graceful_stop_waits_for_an_in_flight_call() -> None:
    lifecycle = Lifecycle()
    await lifecycle.start()
    release, entered = asyncio.Event(), asyncio.Event()
    call = asyncio.create_task(hold_call(lifecycle, release, entered))
    await wait_set(entered)
    assert lifecycle.in_flight == 1
    stopping = asyncio.create_task(lifecycle.stop(timeout_s=5))
    await let_others_run()
    assert not stopping.done()
    assert phase(lifecycle) is LifecyclePhase.STOPPING
    assert not lifecycle.is_ready
    release.set()
    assert await call == "finished"
    assert await stopping is True
    assert lifecycle.in_flight == 0
    assert phase(lifecycle) is LifecyclePhase.STOPPED


async def test_stop_gives_up_after_its_timeout_but_still_stops() -> None:
    lifecycle = Lifecycle()
    stopped: list[bool] = []

    async def on_stop() -> None:
        stopped.append(True)

    lifecycle.on_stop(on_stop)
    await lifecycle.start()
    release, entered = asyncio.Event(), asyncio.Event()
    call = asyncio.create_task(hold_call(lifecycle, release, entered))
    await wait_set(entered)
    assert await lifecycle.stop(timeout_s=0.01) is False
    assert stopped == [True]
    assert phase(lifecycle) is LifecyclePhase.STOPPED
    assert lifecycle.in_flight == 1
    release.set()
    await call


async def test_new_calls_are_refused_while_stopping_and_once_stopped() -> None:
    lifecycle = Lifecycle()
    await lifecycle.start()
    release, entered = asyncio.Event(), asyncio.Event()
    call = asyncio.create_task(hold_call(lifecycle, release, entered))
    await wait_set(entered)
    stopping = asyncio.create_task(lifecycle.stop())
    await let_others_run()
    with pytest.raises(ShuttingDownError, match="the node is stopping and takes no new calls"):
        async with lifecycle.track():
            pass
    release.set()
    await call
    await stopping
    with pytest.raises(ShuttingDownError, match="stopped"):
        async with lifecycle.track():
            pass


async def test_calls_are_accepted_before_start() -> None:
    lifecycle = Lifecycle()
    async with lifecycle.track():
        assert lifecycle.in_flight == 1
    assert lifecycle.in_flight == 0


async def test_in_flight_counts_calls_that_raise() -> None:
    lifecycle = Lifecycle()
    with pytest.raises(RuntimeError, match="boom"):
        async with lifecycle.track():
            raise RuntimeError("boom")
    assert lifecycle.in_flight == 0
    assert await lifecycle.stop(timeout_s=0.01) is True


async def test_a_second_stop_waits_for_the_first_and_hooks_run_once() -> None:
    lifecycle = Lifecycle()
    stops = 0

    async def on_stop() -> None:
        nonlocal stops
        stops += 1

    lifecycle.on_stop(on_stop)
    await lifecycle.start()
    release, entered = asyncio.Event(), asyncio.Event()
    call = asyncio.create_task(hold_call(lifecycle, release, entered))
    await wait_set(entered)
    first = asyncio.create_task(lifecycle.stop())
    second = asyncio.create_task(lifecycle.stop())
    await let_others_run()
    assert not second.done()
    release.set()
    await call
    assert list(await asyncio.gather(first, second)) == [True, True]
    assert await lifecycle.stop() is True
    assert stops == 1


async def test_every_stop_hook_runs_even_if_one_fails() -> None:
    lifecycle = Lifecycle()
    ran: list[str] = []

    async def flush() -> None:
        ran.append("flush")

    async def broken() -> None:
        raise OSError("socket already closed")

    lifecycle.on_stop(flush)
    lifecycle.on_stop(broken)
    await lifecycle.start()
    with pytest.raises(ExceptionGroup) as failed:
        await lifecycle.stop()
    assert ran == ["flush"]
    assert [str(exc) for exc in failed.value.exceptions] == ["socket already closed"]
    assert phase(lifecycle) is LifecyclePhase.STOPPED


async def test_start_runs_only_once() -> None:
    lifecycle = Lifecycle()
    await lifecycle.start()
    with pytest.raises(RuntimeError, match="cannot start a lifecycle that is running"):
        await lifecycle.start()


async def test_admit_counts_a_call_for_a_plain_with_block_and_refuses_once_stopping() -> None:
    lifecycle = Lifecycle()
    await lifecycle.start()
    with lifecycle.admit():
        assert lifecycle.in_flight == 1
        stopping = asyncio.create_task(lifecycle.stop(timeout_s=5))
        await asyncio.sleep(0)
        assert not stopping.done()  # waits for the admitted call
        with pytest.raises(ShuttingDownError, match="stopping"), lifecycle.admit():
            pass
    assert lifecycle.in_flight == 0
    assert await stopping is True
