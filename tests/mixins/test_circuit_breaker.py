"""Breaker states driven by a fake clock: open on a failure rate, fail fast, one probe."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mixins.circuit_breaker import CircuitBreaker, CircuitOpenError, CircuitState
from tests.mixins.support import wait_set


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def state(cb: CircuitBreaker) -> CircuitState:
    # A call, so that mypy does not narrow the property across the awaits in between.
    return cb.state


async def ok() -> str:
    return "ok"


async def fail() -> str:
    raise ConnectionError("down")


def breaker(clock: FakeClock, **kwargs: Any) -> CircuitBreaker:
    settings: dict[str, Any] = {
        "failure_rate_threshold": 0.5,
        "window_size": 4,
        "minimum_calls": 4,
        "reset_timeout_s": 30.0,
    }
    settings.update(kwargs)
    return CircuitBreaker("payments", clock=clock, **settings)


async def record(cb: CircuitBreaker, outcomes: str) -> None:
    """Run one call per character: 's' succeeds, 'f' fails."""
    for outcome in outcomes:
        if outcome == "s":
            await cb.call(ok)
        else:
            with pytest.raises(ConnectionError):
                await cb.call(fail)


async def open_breaker(clock: FakeClock) -> CircuitBreaker:
    cb = breaker(clock)
    await record(cb, "ffff")
    assert state(cb) is CircuitState.OPEN
    return cb


async def test_opens_when_the_failure_rate_reaches_the_threshold() -> None:
    cb = breaker(FakeClock())
    await record(cb, "ssf")
    assert state(cb) is CircuitState.CLOSED
    await record(cb, "f")  # 2 of 4 failed: 0.5
    assert state(cb) is CircuitState.OPEN
    assert cb.failure_rate == 0.5


async def test_stays_closed_below_minimum_calls_even_if_all_failed() -> None:
    cb = breaker(FakeClock(), window_size=10, minimum_calls=5)
    await record(cb, "ffff")
    assert state(cb) is CircuitState.CLOSED
    assert cb.failure_rate == 1.0
    await record(cb, "f")
    assert state(cb) is CircuitState.OPEN


async def test_the_window_slides_so_old_failures_roll_out() -> None:
    cb = breaker(FakeClock(), failure_rate_threshold=0.75)
    await record(cb, "ffss")
    await record(cb, "ssff")  # window now s s f f
    assert state(cb) is CircuitState.CLOSED
    assert cb.failure_rate == 0.5
    await record(cb, "f")  # s f f f; all eight calls together would be 5/9
    assert state(cb) is CircuitState.OPEN


async def test_fails_fast_while_open() -> None:
    clock = FakeClock()
    cb = await open_breaker(clock)
    clock.advance(10)
    called = False

    async def guarded() -> str:
        nonlocal called
        called = True
        return "ok"

    with pytest.raises(CircuitOpenError) as refused:
        await cb.call(guarded)
    assert not called
    assert refused.value.name == "payments"
    assert refused.value.retry_after == pytest.approx(20.0)
    assert "'payments' is open" in str(refused.value)
    assert "20.00s" in str(refused.value)


async def test_half_open_after_the_reset_timeout() -> None:
    clock = FakeClock()
    cb = await open_breaker(clock)
    clock.advance(29.9)
    assert state(cb) is CircuitState.OPEN
    clock.advance(0.1)
    assert state(cb) is CircuitState.HALF_OPEN


async def test_half_open_lets_exactly_one_probe_through() -> None:
    clock = FakeClock()
    cb = await open_breaker(clock)
    clock.advance(30)
    release, entered = asyncio.Event(), asyncio.Event()
    calls = 0

    async def probe() -> str:
        nonlocal calls
        calls += 1
        entered.set()
        await release.wait()
        return "probed"

    async def other() -> str:
        nonlocal calls
        calls += 1
        return "let through"

    probe_task = asyncio.create_task(cb.call(probe))
    await wait_set(entered)
    others = await asyncio.gather(*(cb.call(other) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(result, CircuitOpenError) for result in others)
    assert "probe call is still in flight" in str(others[0])
    assert calls == 1
    assert state(cb) is CircuitState.HALF_OPEN
    release.set()
    assert await probe_task == "probed"
    assert calls == 1


async def test_probe_success_closes_with_a_clear_window() -> None:
    clock = FakeClock()
    cb = await open_breaker(clock)
    clock.advance(30)
    assert await cb.call(ok) == "ok"
    assert state(cb) is CircuitState.CLOSED
    assert cb.failure_rate == 0.0
    await record(cb, "fff")  # below minimum_calls again: the old failures are gone
    assert state(cb) is CircuitState.CLOSED


async def test_probe_failure_reopens_with_a_fresh_timer() -> None:
    clock = FakeClock()
    cb = await open_breaker(clock)
    clock.advance(30)
    await record(cb, "f")
    assert state(cb) is CircuitState.OPEN
    clock.advance(29)
    with pytest.raises(CircuitOpenError) as refused:
        await cb.call(ok)
    assert refused.value.retry_after == pytest.approx(1.0)
    clock.advance(1)
    assert state(cb) is CircuitState.HALF_OPEN


async def test_a_cancelled_probe_decides_nothing_and_frees_the_probe_slot() -> None:
    clock = FakeClock()
    cb = await open_breaker(clock)
    clock.advance(30)
    entered = asyncio.Event()

    async def hang() -> str:
        entered.set()
        await asyncio.Event().wait()
        return "never"

    task = asyncio.create_task(cb.call(hang))
    await wait_set(entered)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert state(cb) is CircuitState.HALF_OPEN
    assert await cb.call(ok) == "ok"  # the next caller is the probe
    assert state(cb) is CircuitState.CLOSED


async def test_exceptions_that_are_not_failures_count_as_successes() -> None:
    cb = breaker(FakeClock(), is_failure=lambda exc: not isinstance(exc, ValueError))

    async def bad_input() -> str:
        raise ValueError("caller's fault")

    for _ in range(10):
        with pytest.raises(ValueError, match="caller's fault"):
            await cb.call(bad_input)
    assert state(cb) is CircuitState.CLOSED
    assert cb.failure_rate == 0.0


async def test_outcomes_of_calls_admitted_before_a_state_change_are_dropped() -> None:
    clock = FakeClock()
    cb = breaker(clock)
    release, entered = asyncio.Event(), asyncio.Event()

    async def slow_failure() -> str:
        entered.set()
        await release.wait()
        raise ConnectionError("late")

    straggler = asyncio.create_task(cb.call(slow_failure))
    await wait_set(entered)
    await record(cb, "ffff")
    clock.advance(30)
    await cb.call(ok)  # the probe closes the circuit
    release.set()
    with pytest.raises(ConnectionError, match="late"):
        await straggler
    assert state(cb) is CircuitState.CLOSED
    assert cb.failure_rate == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"failure_rate_threshold": 0.0}, "failure_rate_threshold must be in"),
        ({"failure_rate_threshold": 1.5}, "failure_rate_threshold must be in"),
        ({"window_size": 0, "minimum_calls": 1}, "window_size must be at least 1"),
        ({"minimum_calls": 0}, "minimum_calls must be between 1 and window_size"),
        ({"window_size": 4, "minimum_calls": 5}, r"window_size \(4\), got 5"),
        ({"reset_timeout_s": 0}, "reset_timeout_s must be positive"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CircuitBreaker("x", **kwargs)


@given(
    outcomes=st.lists(st.booleans(), max_size=40),
    window_size=st.integers(1, 8),
    minimum=st.integers(1, 8),
    threshold=st.sampled_from([0.1, 0.25, 0.5, 0.75, 1.0]),
)
def test_opens_exactly_when_a_reference_sliding_window_says_so(
    outcomes: list[bool], window_size: int, minimum: int, threshold: float
) -> None:
    minimum = min(minimum, window_size)
    window: deque[bool] = deque(maxlen=window_size)
    expected_open_at: int | None = None
    for i, failed in enumerate(outcomes):
        window.append(failed)
        if len(window) >= minimum and sum(window) / len(window) >= threshold:
            expected_open_at = i
            break

    async def run() -> int | None:
        cb = CircuitBreaker(
            "p",
            failure_rate_threshold=threshold,
            window_size=window_size,
            minimum_calls=minimum,
            clock=lambda: 0.0,
        )
        opened_at = None
        for i, failed in enumerate(outcomes):
            try:
                await cb.call(fail if failed else ok)
            except CircuitOpenError:
                assert opened_at is not None  # refused only after it opened
            except ConnectionError:
                pass
            if opened_at is None and state(cb) is CircuitState.OPEN:
                opened_at = i
        return opened_at

    assert asyncio.run(run()) == expected_open_at


def test_guard_is_call_as_a_with_block() -> None:
    clock = FakeClock()
    cb = breaker(clock)
    with cb.guard():
        pass  # a success
    for _ in range(3):
        with pytest.raises(ConnectionError), cb.guard():
            raise ConnectionError("down")
    assert cb.failure_rate == 0.75
    assert state(cb) is CircuitState.OPEN
    with pytest.raises(CircuitOpenError), cb.guard():
        pytest.fail("an open circuit must refuse the block")
    clock.advance(30.0)
    with pytest.raises(asyncio.CancelledError), cb.guard():
        raise asyncio.CancelledError  # the probe, cancelled: no verdict
    assert state(cb) is CircuitState.HALF_OPEN
    with cb.guard():
        pass  # the next probe succeeds
    assert state(cb) is CircuitState.CLOSED
    assert cb.failure_rate == 0.0
