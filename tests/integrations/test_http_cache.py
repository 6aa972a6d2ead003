"""The HTTP kit's coalescing cache on its own: what it keeps, for how long, how many, and who
fetches when callers are cancelled."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, Counter

from integrations.http.cache import CoalescingCache, request_key


class Fetches:
    """A fetch that counts its calls and, while ``gate`` is clear, waits for it."""

    def __init__(self, value: str = "v", error: Exception | None = None) -> None:
        self.calls = 0
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()
        self.value = value
        self.error = error

    async def __call__(self) -> str:
        self.calls += 1
        self.started.set()
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        return f"{self.value}{self.calls}"


def new_cache(
    size: int = 8, ttl_s: float = 60.0, keep: bool = True
) -> tuple[CoalescingCache[str, str], CollectorRegistry]:
    registry = CollectorRegistry()
    cache: CoalescingCache[str, str] = CoalescingCache(
        size=size,
        ttl_s=ttl_s,
        keep=lambda _: keep,
        hits=Counter("hits", "", registry=registry),
        misses=Counter("misses", "", registry=registry),
    )
    return cache, registry


def count(registry: CollectorRegistry, name: str) -> float:
    value = registry.get_sample_value(f"{name}_total")
    assert value is not None
    return value


async def test_concurrent_misses_share_one_fetch() -> None:
    cache, registry = new_cache()
    fetch = Fetches()
    fetch.gate.clear()
    callers = [asyncio.create_task(cache.get_or_fetch("k", fetch)) for _ in range(5)]
    await fetch.started.wait()
    fetch.gate.set()
    assert await asyncio.gather(*callers) == ["v1"] * 5
    assert fetch.calls == 1
    assert await cache.get_or_fetch("k", fetch) == "v1"
    assert (count(registry, "hits"), count(registry, "misses")) == (5, 1)


async def test_an_error_reaches_every_waiting_caller_and_is_not_cached() -> None:
    cache, _ = new_cache()
    fetch = Fetches(error=RuntimeError("upstream down"))
    fetch.gate.clear()
    callers = [asyncio.create_task(cache.get_or_fetch("k", fetch)) for _ in range(3)]
    await fetch.started.wait()
    fetch.gate.set()
    outcomes = await asyncio.gather(*callers, return_exceptions=True)
    assert [str(o) for o in outcomes] == ["upstream down"] * 3
    assert fetch.calls == 1
    fetch.error = None
    assert await cache.get_or_fetch("k", fetch) == "v2"


async def test_values_keep_refuses_are_fetched_again() -> None:
    cache, _ = new_cache(keep=False)
    fetch = Fetches()
    assert await cache.get_or_fetch("k", fetch) == "v1"
    assert await cache.get_or_fetch("k", fetch) == "v2"
    assert len(cache) == 0


async def test_a_value_expires_after_its_ttl() -> None:
    cache, _ = new_cache(ttl_s=0.05)
    fetch = Fetches()
    assert await cache.get_or_fetch("k", fetch) == "v1"
    assert await cache.get_or_fetch("k", fetch) == "v1"
    await asyncio.sleep(0.06)  # the time that passes is what is under test
    assert await cache.get_or_fetch("k", fetch) == "v2"


async def test_the_cache_holds_at_most_size_values_least_recently_used_out_first() -> None:
    cache, _ = new_cache(size=2)
    fetches = {key: Fetches(key) for key in "abc"}
    for key in "ab":
        await cache.get_or_fetch(key, fetches[key])
    await cache.get_or_fetch("a", fetches["a"])  # "b" is now the least recently used
    await cache.get_or_fetch("c", fetches["c"])
    assert len(cache) == 2
    await cache.get_or_fetch("a", fetches["a"])
    await cache.get_or_fetch("b", fetches["b"])
    assert [fetches[k].calls for k in "abc"] == [1, 2, 1]


async def test_a_cancelled_fetcher_hands_the_fetch_to_a_waiting_caller() -> None:
    cache, _ = new_cache()
    fetch = Fetches()
    fetch.gate.clear()
    leader = asyncio.create_task(cache.get_or_fetch("k", fetch))
    await fetch.started.wait()
    follower = asyncio.create_task(cache.get_or_fetch("k", fetch))
    await asyncio.sleep(0)  # let the follower start waiting on the leader's fetch
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    fetch.gate.set()
    assert await follower == "v2"
    assert fetch.calls == 2


async def test_a_cancelled_waiting_caller_leaves_the_fetch_running() -> None:
    cache, _ = new_cache()
    fetch = Fetches()
    fetch.gate.clear()
    leader = asyncio.create_task(cache.get_or_fetch("k", fetch))
    await fetch.started.wait()
    follower = asyncio.create_task(cache.get_or_fetch("k", fetch))
    await asyncio.sleep(0)
    follower.cancel()
    with pytest.raises(asyncio.CancelledError):
        await follower
    fetch.gate.set()
    assert await leader == "v1"
    assert await cache.get_or_fetch("k", fetch) == "v1"
    assert fetch.calls == 1


def test_request_key_ignores_the_order_of_params_and_headers() -> None:
    assert request_key("GET", "u", {"a": "1", "b": "2"}, {"X": "1", "Y": "2"}) == request_key(
        "GET", "u", {"b": "2", "a": "1"}, {"Y": "2", "X": "1"}
    )
    assert request_key("GET", "u", {"a": "1"}, None) != request_key("GET", "u", {"a": "2"}, None)
    assert request_key("GET", "u", None, None) != request_key("HEAD", "u", None, None)


def test_a_cache_needs_a_positive_ttl_and_size() -> None:
    with pytest.raises(ValueError, match="TTL"):
        new_cache(ttl_s=0)
    with pytest.raises(ValueError, match="size"):
        new_cache(size=0)
