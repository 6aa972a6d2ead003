"""The HTTP client's response cache: LRU + TTL, with concurrent identical misses coalesced.

One request goes upstream per key at a time: callers that miss while it is in flight await
its outcome (its errors included) instead of sending their own. ``Cache-Control`` is not
interpreted; the TTL is the caller's statement of how stale a response may be.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Generic, TypeVar

from cachetools import TTLCache
from prometheus_client import Counter

__all__ = ["CoalescingCache", "RequestKey", "request_key"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

RequestKey = tuple[str, str, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]


def request_key(
    method: str,
    url: str,
    params: Mapping[str, str] | None,
    headers: Mapping[str, str] | None,
) -> RequestKey:
    """What tells two requests apart for the cache: method, URL, sorted params and per-call
    headers."""
    return method, url, _frozen(params), _frozen(headers)


def _frozen(items: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(items.items())) if items else ()


class CoalescingCache(Generic[K, V]):
    """At most ``size`` values, each kept ``ttl_s`` seconds (monotonic clock) if ``keep``
    accepts it. ``hits`` counts calls answered without a fetch of their own (cached or
    coalesced), ``misses`` the fetches."""

    def __init__(
        self,
        *,
        size: int,
        ttl_s: float,
        keep: Callable[[V], bool],
        hits: Counter,
        misses: Counter,
    ) -> None:
        if ttl_s <= 0 or size < 1:
            raise ValueError("the cache needs a positive TTL and a size of at least 1")
        self._values: TTLCache[K, V] = TTLCache(maxsize=size, ttl=ttl_s, timer=time.monotonic)
        # Bounded by the callers in flight: an entry lives only while its fetch runs.
        self._inflight: dict[K, asyncio.Future[V]] = {}
        self._keep = keep
        self._hits = hits
        self._misses = misses

    def __len__(self) -> int:
        return len(self._values)

    async def get_or_fetch(self, key: K, fetch: Callable[[], Awaitable[V]]) -> V:
        """The value cached under ``key``, or the outcome of the fetch in flight for it, or
        else ``fetch()``'s (raised errors are shared with the callers waiting, not cached).
        A caller cancelled while waiting leaves the fetch running for the others; a fetching
        caller cancelled hands the fetch over to one of those waiting."""
        while True:
            try:
                value = self._values[key]
            except KeyError:  # absent or expired
                pass
            else:
                self._hits.inc()
                return value
            leader = self._inflight.get(key)
            if leader is None:
                break
            try:
                # Shielded: a follower's cancellation must not cancel the leader's request.
                value = await asyncio.shield(leader)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if leader.cancelled() and (task is None or not task.cancelling()):
                    continue  # the leader was cancelled, not us: look again, maybe lead
                raise
            self._hits.inc()
            return value
        self._misses.inc()
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await fetch()
        except Exception as exc:
            future.set_exception(exc)  # followers share the leader's outcome, errors included
            future.exception()  # retrieved: no "never retrieved" warning without followers
            raise
        except BaseException:
            future.cancel()  # cancelled: followers look again, and one of them leads
            raise
        finally:
            del self._inflight[key]
        if self._keep(value):
            self._values[key] = value
        future.set_result(value)
        return value
