"""The HTTP client's own rate limit: at most N requests in any window of length W.

One moving window across every request the client sends, whatever the host (one client
usually stands for one upstream and its quota); every attempt, retries included, takes a slot.
A moving window, not a fixed one, is what makes "at most N in *any* window of length W" hold.
A request holds its slot while in flight and enters the window only when it completes: the
upstream sees it arrive somewhere between the two, so stamping it at send time would let
connect latency (a cold pool, a TLS handshake) squeeze N + 1 arrivals into a window, while
this bound holds whatever the latency. The price: against a slow upstream slots turn over
every W + latency rather than every W.

``"wait"`` queues callers in FIFO order, and raises ``RateLimitedError`` at once when the wait
would exceed ``max_wait_s``; ``"reject"`` raises it immediately.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final, Literal

from limits import parse as parse_rate_limit
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from prometheus_client import Counter

from integrations.http.errors import (
    RateLimitedError,
)
from integrations.http.redaction import (
    redact_url,
)

__all__ = ["MovingWindowRateLimit"]

CLOCK_SLACK_S: Final = 0.005  # `limits` stamps with the wall clock, which may step slightly


class MovingWindowRateLimit:
    """``limit`` in `limits` syntax (``"100/second"``, ``"5 per 2 seconds"``), counted under
    ``key``. A caller takes a slot with ``acquire()`` before sending and gives it back with
    ``release()`` once the request completed (it then stays in the window for W), or with
    ``release_unsent()`` when nothing reached the upstream (it leaves no trace). ``waits`` and
    ``rejections`` count callers that queued and callers refused."""

    def __init__(
        self,
        limit: str,
        *,
        key: str,
        mode: Literal["wait", "reject"] = "wait",
        max_wait_s: float = 5.0,
        waits: Counter,
        rejections: Counter,
    ) -> None:
        if mode not in ("wait", "reject"):
            raise ValueError(f"rate_limit_mode must be 'wait' or 'reject', got {mode!r}")
        try:
            self._item = parse_rate_limit(limit)
        except ValueError as exc:
            raise ValueError(f"rate_limit {limit!r} is not in `limits` syntax") from exc
        self._storage = MemoryStorage()
        self._limiter = MovingWindowRateLimiter(self._storage)
        self._key = key
        self._mode = mode
        self._max_wait_s = max_wait_s
        self._waits = waits
        self._rejections = rejections
        self._queue = asyncio.Lock()
        self._slot_released = asyncio.Event()
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        """Slots held by requests not yet completed."""
        return self._in_flight

    def __str__(self) -> str:
        return str(self._item)

    async def acquire(self, method: str, url: str) -> None:
        """Take a slot for ``method url`` (the URL only names the request in an error), waiting
        in FIFO order in ``"wait"`` mode; raises ``RateLimitedError`` when refused."""
        item = self._item
        # Newcomers queue behind waiters (FIFO through the lock) rather than overtake them.
        if not self._queue.locked() and await self._try_admit():
            return
        if self._mode == "reject":
            self._rejections.inc()
            delay = await self._slot_free_in()
            retry_after = item.get_expiry() if delay is None else delay
            raise RateLimitedError(method, redact_url(url), str(item), retry_after)
        self._waits.inc()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait_s
        try:
            async with asyncio.timeout_at(deadline), self._queue:
                while not await self._try_admit():
                    delay = await self._slot_free_in()
                    # With every slot in flight, the first frees a window after one completes.
                    at_least = item.get_expiry() if delay is None else delay
                    if loop.time() + at_least > deadline:
                        raise RateLimitedError(method, redact_url(url), str(item), at_least)
                    if delay is None:
                        self._slot_released.clear()
                        await self._slot_released.wait()
                    else:
                        await asyncio.sleep(delay)
        except TimeoutError:
            self._rejections.inc()
            raise RateLimitedError(method, redact_url(url), str(item), self._max_wait_s) from None
        except RateLimitedError:
            self._rejections.inc()
            raise

    async def release(self) -> None:
        """Move a finished request from in flight into the window, stamped now."""
        try:
            # Cannot fail, the slot being held in flight; but it may wait for the storage's
            # lock, and until it has entered the window the request must still count.
            await self._limiter.hit(self._item, self._key)
        finally:
            self.release_unsent()

    def release_unsent(self) -> None:
        """Give back the slot of a request that never reached the upstream: it does not enter
        the window."""
        self._in_flight -= 1
        self._slot_released.set()

    def close(self) -> None:
        """Stop the storage's expiry task, which would outlive the event loop."""
        timer = self._storage.timer
        if timer is not None and not timer.done():
            timer.cancel()

    async def _try_admit(self) -> bool:
        """Take a slot if the window's entries plus the requests in flight leave one free."""
        # MemoryStorage never suspends here, so nothing runs between the test and the count.
        if await self._limiter.test(self._item, self._key, cost=self._in_flight + 1):
            self._in_flight += 1
            return True
        return False

    async def _slot_free_in(self) -> float | None:
        """Seconds until the oldest entry leaves the window (plus slack for clock steps);
        None when the window is empty, i.e. every slot is held by a request in flight."""
        stats = await self._limiter.get_window_stats(self._item, self._key)
        if stats.remaining >= self._item.amount:
            return None
        return max(0.0, stats.reset_time - time.time()) + CLOCK_SLACK_S
