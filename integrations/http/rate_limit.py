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
from collections import deque
from typing import Literal

from limits import parse as parse_rate_limit
from prometheus_client import Counter

from integrations.http.errors import (
    RateLimitedError,
)
from integrations.http.redaction import (
    redact_url,
)

__all__ = ["MovingWindowRateLimit", "SlidingLog"]


class SlidingLog:
    """The bookkeeping of a limit of ``amount`` per ``window_s``: when the requests of the
    last window completed, and how many are in flight. Exact: a request is admitted only while
    the completions of the last window plus those in flight leave a slot, so no window of
    length ``window_s`` (half-open) ever holds more than ``amount`` completions.

    Written here, not taken from ``limits``: its moving window inserts each hit at the front of
    a list (linear in the limit), stamps with the wall clock, and keeps an expiry task, which
    made it cost more per request than the rest of the HTTP client together. This log is a
    deque of at most ``amount`` monotonic stamps, oldest first: constant time per request.
    """

    __slots__ = ("_amount", "_stamps", "_window_s", "in_flight")

    def __init__(self, amount: int, window_s: float) -> None:
        if amount < 1 or window_s <= 0:
            raise ValueError("a rate limit needs at least 1 request per a positive window")
        self._amount = amount
        self._window_s = window_s
        # Never longer than amount: completions plus requests in flight never exceed it.
        self._stamps: deque[float] = deque(maxlen=amount)
        self.in_flight = 0

    def try_admit(self, now: float) -> bool:
        """Take a slot if the last window's completions and those in flight leave one."""
        stamps, edge = self._stamps, now - self._window_s
        while stamps and stamps[0] <= edge:
            stamps.popleft()
        if len(stamps) + self.in_flight < self._amount:
            self.in_flight += 1
            return True
        return False

    def complete(self, now: float) -> None:
        """A request in flight completed at ``now``: it holds its slot for one window more."""
        self.in_flight -= 1
        self._stamps.append(now)

    def give_back(self) -> None:
        """A request in flight never reached the upstream: its slot is free at once."""
        self.in_flight -= 1

    def free_in(self, now: float) -> float | None:
        """Seconds until the oldest completion leaves the window; None when the window holds
        none, i.e. every slot is held by a request in flight."""
        stamps = self._stamps
        if not stamps:
            return None
        return max(0.0, stamps[0] + self._window_s - now)


class MovingWindowRateLimit:
    """``limit`` in `limits` syntax (``"100/second"``, ``"5 per 2 seconds"``). A caller takes
    a slot with ``acquire()`` before sending and gives it back with ``release()`` once the
    request completed (it then stays in the window for W), or with ``release_unsent()`` when
    nothing reached the upstream (it leaves no trace). ``waits`` and ``rejections`` count
    callers that queued and callers refused."""

    def __init__(
        self,
        limit: str,
        *,
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
        self._window_s = float(self._item.get_expiry())
        self._log = SlidingLog(self._item.amount, self._window_s)
        self._mode = mode
        self._max_wait_s = max_wait_s
        self._waits = waits
        self._rejections = rejections
        self._queue = asyncio.Lock()
        self._slot_released = asyncio.Event()

    @property
    def in_flight(self) -> int:
        """Slots held by requests not yet completed."""
        return self._log.in_flight

    def __str__(self) -> str:
        return str(self._item)

    async def acquire(self, method: str, url: str) -> None:
        """Take a slot for ``method url`` (the URL only names the request in an error), waiting
        in FIFO order in ``"wait"`` mode; raises ``RateLimitedError`` when refused."""
        log = self._log
        # Newcomers queue behind waiters (FIFO through the lock) rather than overtake them.
        if not self._queue.locked() and log.try_admit(time.monotonic()):
            return
        if self._mode == "reject":
            self._rejections.inc()
            delay = log.free_in(time.monotonic())
            retry_after = self._window_s if delay is None else delay
            raise RateLimitedError(method, redact_url(url), str(self._item), retry_after)
        self._waits.inc()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait_s
        try:
            async with asyncio.timeout_at(deadline), self._queue:
                while not log.try_admit(time.monotonic()):
                    delay = log.free_in(time.monotonic())
                    # With every slot in flight, the first frees a window after one completes.
                    at_least = self._window_s if delay is None else delay
                    if loop.time() + at_least > deadline:
                        raise RateLimitedError(method, redact_url(url), str(self._item), at_least)
                    if delay is None:
                        self._slot_released.clear()
                        await self._slot_released.wait()
                    else:
                        await asyncio.sleep(delay)
        except TimeoutError:
            self._rejections.inc()
            raise RateLimitedError(
                method, redact_url(url), str(self._item), self._max_wait_s
            ) from None
        except RateLimitedError:
            self._rejections.inc()
            raise

    def release(self) -> None:
        """Move a finished request from in flight into the window, stamped now."""
        self._log.complete(time.monotonic())
        self._slot_released.set()

    def release_unsent(self) -> None:
        """Give back the slot of a request that never reached the upstream: it does not enter
        the window."""
        self._log.give_back()
        self._slot_released.set()
