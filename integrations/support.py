"""What every kit shares: metrics per Prometheus registry, the backoff policy, and retrying.

- ``MetricsPerRegistry`` / ``MetricsPerRegistryAndName``: one metrics object per registry (or
  per registry and name), built on first use. prometheus-client refuses to register a metric
  name twice in a registry, so every client of a kind that reports into the same registry must
  share one set of metrics (told apart by labels). Registries are held weakly: a dropped
  registry releases its metrics.
- ``Backoff``: the wait before each retry, exponential up to a cap with optional jitter; every
  retrying kit computes its waits with it, and ``Backoff.tenacity_wait()`` hands it to tenacity.
- ``call_with_retries``: the first attempt runs as a plain await; only a retryable failure
  builds tenacity's retry machinery, which then takes that failure as its own first attempt
  (tenacity is needed only by kits that call it).
- ``DependencyUnavailableError`` / ``DependencyTimeoutError``: bases a kit gives its errors
  that mean "not now, retry later" and "did not answer in time", so that a node answers them
  as such (503 and 504 from its service) without knowing each kit's classes.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    # Annotations only: this module needs no third-party library at import, so that every kit
    # can use it whatever it depends on; tenacity is imported by the retry path alone.
    from prometheus_client import CollectorRegistry
    from tenacity import RetryCallState

M = TypeVar("M")
T = TypeVar("T")

__all__ = [
    "Backoff",
    "DependencyTimeoutError",
    "DependencyUnavailableError",
    "MetricsPerRegistry",
    "MetricsPerRegistryAndName",
    "call_with_retries",
]


class DependencyUnavailableError(Exception):
    """A base of the kits' errors that mean "not now": nothing was done, because the
    dependency's breaker is open or the kit's own bound (rate limit, pool, queue) refused the
    call. The same call may succeed later."""


class DependencyTimeoutError(Exception):
    """A base of the kits' errors that mean the dependency did not answer in time. Not a
    ``TimeoutError``: a node's retry policy retries those, and only the kit knows whether the
    call may run twice (a POST that timed out may have been applied)."""


class MetricsPerRegistryAndName(Generic[M]):
    """One ``build(registry, name)`` per (registry, name), built once, shared by every caller.

    Thread-safe: two threads asking for the same pair at once get the same object (building
    it twice would fail, the second registration of the metric names being refused).
    """

    def __init__(self, build: Callable[[CollectorRegistry, str], M]) -> None:
        self._build = build
        self._by_registry: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, M]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def get(self, registry: CollectorRegistry, name: str) -> M:
        with self._lock:
            by_name = self._by_registry.get(registry)
            if by_name is None:
                by_name = self._by_registry[registry] = {}
            metrics = by_name.get(name)
            if metrics is None:
                metrics = by_name[name] = self._build(registry, name)
            return metrics

    def __len__(self) -> int:
        """The number of live registries that have metrics here."""
        with self._lock:
            return len(self._by_registry)


class MetricsPerRegistry(Generic[M]):
    """One ``build(registry)`` per registry, built once, shared by every caller; thread-safe."""

    def __init__(self, build: Callable[[CollectorRegistry], M]) -> None:
        self._named = MetricsPerRegistryAndName[M](lambda registry, _: build(registry))

    def get(self, registry: CollectorRegistry) -> M:
        return self._named.get(registry, "")

    def __len__(self) -> int:
        """The number of live registries that have metrics here."""
        return len(self._named)


@dataclass(frozen=True)
class Backoff:
    """The wait before the n-th retry (n = 1, 2, ...).

    The exponential part is ``min(max_s, initial_s * multiplier**(n-1))``. ``jitter`` is the
    share of it drawn at random: 0 none, 0.5 "equal jitter" (uniform in [half, whole]), 1 "full
    jitter" (uniform in [0, whole]); jitter keeps clients that failed together from retrying in
    step. ``jitter_s`` adds a random 0..jitter_s on top, which stays random once the cap is
    reached.
    """

    initial_s: float
    max_s: float = math.inf
    multiplier: float = 2.0
    jitter: float = 0.0
    jitter_s: float = 0.0

    def __post_init__(self) -> None:
        if min(self.initial_s, self.max_s, self.jitter_s) < 0:
            raise ValueError("backoff times must not be negative")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be at least 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter}")

    def ceiling(self, retry: int) -> float:
        """The exponential part of the wait before retry ``retry``, without jitter."""
        if retry < 1:
            raise ValueError(f"retries are numbered from 1, got {retry}")
        if self.initial_s == 0:
            return 0.0
        try:
            growth = self.multiplier ** (retry - 1)
        except OverflowError:  # far past any cap
            growth = math.inf
        return min(self.max_s, self.initial_s * growth)

    def delay(self, retry: int) -> float:
        """The wait, in seconds, before retry ``retry``."""
        ceiling = self.ceiling(retry)
        # A product rather than a difference, so that an infinite ceiling stays infinite.
        wait = ceiling * (1 - self.jitter * random.random()) if self.jitter else ceiling
        if self.jitter_s:
            wait += self.jitter_s * random.random()
        return wait

    def tenacity_wait(self) -> Callable[[RetryCallState], float]:
        """This backoff as a tenacity ``wait=`` strategy."""

        def wait(retry_state: RetryCallState) -> float:
            # tenacity asks after attempt n failed: the wait before retry n.
            return self.delay(retry_state.attempt_number)

        return wait


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    retryable: Callable[[BaseException], bool],
    backoff: Backoff,
    on_retry: Callable[[int, BaseException], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> T:
    """``await attempt()``, tried up to ``attempts`` times while it raises an exception for
    which ``retryable`` is true, waiting ``backoff.delay(n)`` before retry n; the last error is
    re-raised as is. ``on_retry(n, error)`` is called before each wait, after attempt n failed.

    Only ``Exception`` is retried: a cancellation always propagates at once.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    # The first attempt runs outside tenacity: most calls succeed at once, and a tenacity
    # retryer is costly to build and drive on a hot path.
    try:
        return await attempt()
    except Exception as error:
        if attempts == 1 or not retryable(error):
            raise
        first_error: Exception | None = error
    from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            error = state.outcome.exception()
            if error is not None:
                on_retry(state.attempt_number, error)

    retrying = AsyncRetrying(
        stop=stop_after_attempt(attempts),
        wait=backoff.tenacity_wait(),
        retry=retry_if_exception(lambda error: isinstance(error, Exception) and retryable(error)),
        reraise=True,
        sleep=sleep or asyncio.sleep,
        before_sleep=before_sleep,
    )

    async def again() -> T:
        # A coroutine function, so tenacity awaits each attempt; the first "attempt" replays
        # the failure already met, so tenacity counts it and waits before the real retry.
        nonlocal first_error
        if first_error is not None:
            replayed, first_error = first_error, None
            raise replayed
        return await attempt()

    return await retrying(again)
