"""The HTTP kit's moving-window rate limit on its own: slots held in flight, slots given back
unsent, refusal, FIFO waiting and its bound."""

from __future__ import annotations

import asyncio
import time
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter

from integrations.http.errors import RateLimitedError
from integrations.http.rate_limit import MovingWindowRateLimit, SlidingLog

SECRET_URL = "http://user:hunter2@h/x?api_key=hunter2"


class Limit:
    def __init__(
        self, limit: str, mode: Literal["wait", "reject"] = "wait", max_wait_s: float = 5.0
    ) -> None:
        self.registry = CollectorRegistry()
        self.limit = MovingWindowRateLimit(
            limit,
            mode=mode,
            max_wait_s=max_wait_s,
            waits=Counter("waits", "", registry=self.registry),
            rejections=Counter("rejections", "", registry=self.registry),
        )

    def count(self, name: str) -> float:
        value = self.registry.get_sample_value(f"{name}_total")
        assert value is not None
        return value


def new(limit: str, mode: Literal["wait", "reject"] = "wait", max_wait_s: float = 5.0) -> Limit:
    return Limit(limit, mode, max_wait_s)


async def test_slots_in_flight_count_against_the_limit() -> None:
    made = new("2/second", "reject")
    await made.limit.acquire("GET", "u")
    await made.limit.acquire("GET", "u")
    assert made.limit.in_flight == 2
    with pytest.raises(RateLimitedError) as refused:
        await made.limit.acquire("GET", SECRET_URL)
    # Every slot is in flight: the first frees a whole window after one completes.
    assert refused.value.retry_after == pytest.approx(1.0)
    assert "hunter2" not in str(refused.value)
    assert "hunter2" not in refused.value.url
    assert made.count("rejections") == 1


async def test_a_slot_given_back_unsent_leaves_no_trace_in_the_window() -> None:
    made = new("1/second", "reject")
    await made.limit.acquire("GET", "u")
    made.limit.release_unsent()
    started = time.monotonic()
    await made.limit.acquire("GET", "u")  # at once: nothing entered the window
    assert time.monotonic() - started < 0.5
    assert made.count("rejections") == 0


async def test_a_completed_request_stays_in_the_window() -> None:
    made = new("1/second", "reject")
    await made.limit.acquire("GET", "u")
    made.limit.release()
    assert made.limit.in_flight == 0
    with pytest.raises(RateLimitedError) as refused:
        await made.limit.acquire("GET", "u")
    assert 0 < refused.value.retry_after <= 1.0 + 0.01


async def test_waiters_are_admitted_in_arrival_order_when_the_window_moves() -> None:
    made = new("2/second")
    for _ in range(2):
        await made.limit.acquire("GET", "u")
        made.limit.release()
    filled = time.monotonic()
    admitted: list[int] = []

    async def wait_for_slot(number: int) -> None:
        await made.limit.acquire("GET", "u")
        admitted.append(number)

    await asyncio.gather(*(wait_for_slot(n) for n in range(2)))
    assert admitted == [0, 1]
    assert time.monotonic() - filled >= 0.99
    assert made.count("waits") == 2


async def test_a_waiter_is_woken_when_a_slot_in_flight_is_given_back() -> None:
    made = new("1/second")
    await made.limit.acquire("GET", "u")
    waiter = asyncio.create_task(made.limit.acquire("GET", "u"))
    await asyncio.sleep(0)  # let it queue
    assert not waiter.done()
    started = time.monotonic()
    made.limit.release_unsent()
    await waiter
    assert time.monotonic() - started < 0.5


async def test_a_wait_longer_than_the_maximum_is_refused_at_once() -> None:
    made = new("1/second", "wait", 0.2)
    await made.limit.acquire("GET", "u")
    made.limit.release()
    started = time.monotonic()
    with pytest.raises(RateLimitedError):
        await made.limit.acquire("GET", "u")
    assert time.monotonic() - started < 0.15
    assert made.count("rejections") == 1


def test_a_bad_limit_or_mode_is_refused() -> None:
    registry = CollectorRegistry()
    waits = Counter("waits", "", registry=registry)
    rejections = Counter("rejections", "", registry=registry)
    with pytest.raises(ValueError, match="not in `limits` syntax"):
        MovingWindowRateLimit("often", waits=waits, rejections=rejections)
    with pytest.raises(ValueError, match="'wait' or 'reject'"):
        MovingWindowRateLimit(
            "1/second",
            mode="sometimes",  # type: ignore[arg-type]
            waits=waits,
            rejections=rejections,
        )


# The sliding log on its own, on a clock the test moves (steps exact in binary, so that no
# rounding blurs a window edge): what it admits is exactly what the promise allows, and the
# promise holds over every window.
Step = tuple[str, float]
steps = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.sampled_from([0.0, 0.125, 0.25, 0.5, 0.875, 1.0, 1.75])),
        st.tuples(st.just("admit"), st.just(0.0)),
        st.tuples(st.just("complete"), st.just(0.0)),
        st.tuples(st.just("give_back"), st.just(0.0)),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(
    amount=st.integers(min_value=1, max_value=4), window_s=st.sampled_from([0.5, 1.0]), ops=steps
)
def test_the_sliding_log_admits_exactly_what_keeps_every_window_within_the_limit(
    amount: int, window_s: float, ops: list[Step]
) -> None:
    log = SlidingLog(amount, window_s)
    now = 0.0
    completions: list[float] = []  # every completion, as the upstream saw them
    in_flight = 0
    for op, value in ops:
        if op == "advance":
            now += value
        elif op == "admit":
            recent = sum(1 for stamp in completions if stamp > now - window_s)
            allowed = recent + in_flight < amount
            assert log.try_admit(now) is allowed, (completions, in_flight, now)
            in_flight += allowed
        elif in_flight:
            if op == "complete":
                log.complete(now)
                completions.append(now)
            else:
                log.give_back()
            in_flight -= 1
        assert log.in_flight == in_flight
        free_in = log.free_in(now)
        if free_in is not None:
            assert 0.0 <= free_in <= window_s
    # The promise: no half-open window of length window_s holds more than amount completions
    # (the fullest such window starts at a completion).
    for start in completions:
        assert sum(1 for stamp in completions if start <= stamp < start + window_s) <= amount


def test_a_limit_needs_a_request_and_a_window() -> None:
    with pytest.raises(ValueError, match="at least 1 request"):
        SlidingLog(0, 1.0)
    with pytest.raises(ValueError, match="positive window"):
        SlidingLog(1, 0.0)
