"""The HTTP kit's moving-window rate limit on its own: slots held in flight, slots given back
unsent, refusal, FIFO waiting and its bound."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Literal

import pytest
from prometheus_client import CollectorRegistry, Counter

from integrations.http.errors import RateLimitedError
from integrations.http.rate_limit import MovingWindowRateLimit

SECRET_URL = "http://user:hunter2@h/x?api_key=hunter2"


class Limit:
    def __init__(
        self, limit: str, mode: Literal["wait", "reject"] = "wait", max_wait_s: float = 5.0
    ) -> None:
        self.registry = CollectorRegistry()
        self.limit = MovingWindowRateLimit(
            limit,
            key="test",
            mode=mode,
            max_wait_s=max_wait_s,
            waits=Counter("waits", "", registry=self.registry),
            rejections=Counter("rejections", "", registry=self.registry),
        )

    def count(self, name: str) -> float:
        value = self.registry.get_sample_value(f"{name}_total")
        assert value is not None
        return value


@pytest.fixture
async def limits() -> AsyncIterator[list[Limit]]:
    made: list[Limit] = []
    yield made
    for made_limit in made:
        made_limit.limit.close()


def new(
    limits: list[Limit],
    limit: str,
    mode: Literal["wait", "reject"] = "wait",
    max_wait_s: float = 5.0,
) -> Limit:
    made = Limit(limit, mode, max_wait_s)
    limits.append(made)
    return made


async def test_slots_in_flight_count_against_the_limit(limits: list[Limit]) -> None:
    made = new(limits, "2/second", "reject")
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


async def test_a_slot_given_back_unsent_leaves_no_trace_in_the_window(
    limits: list[Limit],
) -> None:
    made = new(limits, "1/second", "reject")
    await made.limit.acquire("GET", "u")
    made.limit.release_unsent()
    started = time.monotonic()
    await made.limit.acquire("GET", "u")  # at once: nothing entered the window
    assert time.monotonic() - started < 0.5
    assert made.count("rejections") == 0


async def test_a_completed_request_stays_in_the_window(limits: list[Limit]) -> None:
    made = new(limits, "1/second", "reject")
    await made.limit.acquire("GET", "u")
    await made.limit.release()
    assert made.limit.in_flight == 0
    with pytest.raises(RateLimitedError) as refused:
        await made.limit.acquire("GET", "u")
    assert 0 < refused.value.retry_after <= 1.0 + 0.01


async def test_waiters_are_admitted_in_arrival_order_when_the_window_moves(
    limits: list[Limit],
) -> None:
    made = new(limits, "2/second")
    for _ in range(2):
        await made.limit.acquire("GET", "u")
        await made.limit.release()
    filled = time.monotonic()
    admitted: list[int] = []

    async def wait_for_slot(number: int) -> None:
        await made.limit.acquire("GET", "u")
        admitted.append(number)

    await asyncio.gather(*(wait_for_slot(n) for n in range(2)))
    assert admitted == [0, 1]
    assert time.monotonic() - filled >= 0.99
    assert made.count("waits") == 2


async def test_a_waiter_is_woken_when_a_slot_in_flight_is_given_back(
    limits: list[Limit],
) -> None:
    made = new(limits, "1/second")
    await made.limit.acquire("GET", "u")
    waiter = asyncio.create_task(made.limit.acquire("GET", "u"))
    await asyncio.sleep(0)  # let it queue
    assert not waiter.done()
    started = time.monotonic()
    made.limit.release_unsent()
    await waiter
    assert time.monotonic() - started < 0.5


async def test_a_wait_longer_than_the_maximum_is_refused_at_once(limits: list[Limit]) -> None:
    made = new(limits, "1/second", "wait", 0.2)
    await made.limit.acquire("GET", "u")
    await made.limit.release()
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
        MovingWindowRateLimit("often", key="k", waits=waits, rejections=rejections)
    with pytest.raises(ValueError, match="'wait' or 'reject'"):
        MovingWindowRateLimit(
            "1/second",
            key="k",
            mode="sometimes",  # type: ignore[arg-type]
            waits=waits,
            rejections=rejections,
        )
