"""A failure-rate circuit breaker for asyncio: closed, open, half-open with exactly one probe.

Written here rather than wrapped: no maintained asyncio library counts a failure *rate* over a
sliding window of calls and lets exactly one probe through while half-open.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import TypeVar

T = TypeVar("T")


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpenError(Exception):
    """The call was refused without being attempted: the circuit is open, or half-open with
    its one probe call still in flight."""

    def __init__(self, name: str, retry_after: float, *, probe_in_flight: bool = False) -> None:
        if probe_in_flight:
            message = (
                f"circuit {name!r} is half-open and its one probe call is still in flight; "
                "retry shortly"
            )
        else:
            message = (
                f"circuit {name!r} is open after too many failures; "
                f"calls fail fast for another {retry_after:.2f}s"
            )
        super().__init__(message)
        self.name = name
        self.retry_after = retry_after


def _always(_: BaseException) -> bool:
    return True


class CircuitBreaker:
    """Opens when the failure rate over the last ``window_size`` calls reaches
    ``failure_rate_threshold`` (once at least ``minimum_calls`` are recorded); after
    ``reset_timeout_s`` one probe call decides whether it closes again."""

    def __init__(
        self,
        name: str,
        *,
        failure_rate_threshold: float = 0.5,
        window_size: int = 20,
        minimum_calls: int = 5,
        reset_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        is_failure: Callable[[BaseException], bool] = _always,
    ) -> None:
        if not 0.0 < failure_rate_threshold <= 1.0:
            raise ValueError(
                f"failure_rate_threshold must be in (0, 1], got {failure_rate_threshold}"
            )
        if window_size < 1:
            raise ValueError(f"window_size must be at least 1, got {window_size}")
        if not 1 <= minimum_calls <= window_size:
            raise ValueError(
                f"minimum_calls must be between 1 and window_size ({window_size}), "
                f"got {minimum_calls}"
            )
        if reset_timeout_s <= 0:
            raise ValueError(f"reset_timeout_s must be positive, got {reset_timeout_s}")
        self.name = name
        self.failure_rate_threshold = failure_rate_threshold
        self.minimum_calls = minimum_calls
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._is_failure = is_failure
        self._outcomes: deque[bool] = deque(maxlen=window_size)  # True marks a failure
        self._failures = 0  # True entries in _outcomes, kept as they come and go
        self._state = CircuitState.CLOSED
        self._opened_at = 0.0
        self._probe_in_flight = False
        # Bumped on every open and close: a call that finishes after the circuit changed state
        # reports on a past state of the dependency, so its outcome is dropped.
        self._generation = 0

    @property
    def state(self) -> CircuitState:
        if (
            self._state is CircuitState.OPEN
            and self._clock() - self._opened_at >= self.reset_timeout_s
        ):
            return CircuitState.HALF_OPEN
        return self._state

    @property
    def failure_rate(self) -> float:
        """Failures over the calls in the window (0.0 when it is empty)."""
        return self._failures / len(self._outcomes) if self._outcomes else 0.0

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Await ``fn()`` unless the circuit refuses it (CircuitOpenError); record the outcome."""
        with self.guard():
            return await fn()

    def guard(self) -> BreakerGuard:
        """``call`` as a ``with`` block: refuses on entry (CircuitOpenError) and records the
        block's outcome on exit. Synchronous, so a hot path pays no coroutine for it."""
        return BreakerGuard(self)

    def _admit(self) -> tuple[int, bool]:
        """The caller's generation, and whether it is the half-open probe; or refuse."""
        state = self.state
        if state is CircuitState.CLOSED:
            return self._generation, False
        if state is CircuitState.HALF_OPEN:
            if self._probe_in_flight:
                raise CircuitOpenError(self.name, 0.0, probe_in_flight=True)
            self._state = CircuitState.HALF_OPEN
            self._probe_in_flight = True
            return self._generation, True
        remaining = self._opened_at + self.reset_timeout_s - self._clock()
        raise CircuitOpenError(self.name, max(0.0, remaining))

    def _settle(self, generation: int, *, probe: bool, failed: bool | None) -> None:
        if probe:
            self._probe_in_flight = False  # a cancelled probe lets the next caller probe
            if failed is True:
                self._open()
            elif failed is False:
                self._close()
            return
        if failed is None or generation != self._generation:
            return
        outcomes = self._outcomes
        if len(outcomes) == outcomes.maxlen and outcomes[0]:
            self._failures -= 1  # the oldest outcome, a failure, leaves the window
        outcomes.append(failed)
        self._failures += failed
        if (
            len(self._outcomes) >= self.minimum_calls
            and self.failure_rate >= self.failure_rate_threshold
        ):
            self._open()

    def _open(self) -> None:
        self._state = CircuitState.OPEN
        self._opened_at = self._clock()
        self._generation += 1

    def _close(self) -> None:
        self._state = CircuitState.CLOSED
        self._outcomes.clear()
        self._failures = 0
        self._generation += 1


class BreakerGuard:
    """The ``with`` block of one call through a breaker (see ``CircuitBreaker.guard``).

    A class rather than a ``contextlib.contextmanager`` generator: it runs on every call, and
    a generator-based context manager costs several times as much.
    """

    __slots__ = ("_breaker", "_generation", "_probe")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        self._generation = 0
        self._probe = False

    def __enter__(self) -> None:
        self._generation, self._probe = self._breaker._admit()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        failed: bool | None
        if exc is None:
            failed = False
        elif isinstance(exc, Exception):
            failed = self._breaker._is_failure(exc)
        else:
            failed = None  # cancelled: no verdict on the dependency
        self._breaker._settle(self._generation, probe=self._probe, failed=failed)
