"""Retry with exponential backoff and jitter, wrapping tenacity."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a call that failed with a transient error.

    The n-th wait is ``min(initial_backoff_s * 2**(n-1), max_backoff_s)`` plus a random
    ``0..jitter_s``: the policy the kits compute with ``integrations.support.Backoff`` (a test
    holds the two equal), spelled with tenacity here because a node may carry this mixin
    without any kit.
    """

    attempts: int = 3
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    jitter_s: float = 0.1
    retry_on: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if min(self.initial_backoff_s, self.max_backoff_s, self.jitter_s) < 0:
            raise ValueError("backoff and jitter must not be negative")

    async def run(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        on_retry: Callable[[int, BaseException], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> T:
        """Call ``fn`` until it succeeds, a non-retryable error occurs, or attempts run out;
        then re-raise the last error."""
        # The first attempt runs outside tenacity: most calls succeed at once, and a tenacity
        # retryer is costly to build and drive. Only a retryable failure pays for it, and
        # tenacity then sees that failure as its own first attempt.
        try:
            return await fn()
        except self.retry_on as error:
            if self.attempts == 1:
                raise
            first_error: BaseException | None = error

        def before_sleep(state: RetryCallState) -> None:
            if on_retry is not None and state.outcome is not None:
                error = state.outcome.exception()
                if error is not None:
                    on_retry(state.attempt_number, error)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            # Not wait_exponential_jitter: its `initial` is deprecated in recent tenacity while its
            # replacement `multiplier` is missing from older releases, and its jitter vanishes
            # once the wait reaches the maximum, so retries from many callers line up again.
            wait=wait_exponential(multiplier=self.initial_backoff_s, max=self.max_backoff_s)
            + wait_random(0, self.jitter_s),
            retry=retry_if_exception_type(self.retry_on),
            reraise=True,
            sleep=sleep or asyncio.sleep,
            before_sleep=before_sleep,
        )

        async def attempt() -> T:
            # A coroutine function, so tenacity awaits each attempt (a lambda returning an
            # awaitable would be taken for a synchronous call).
            nonlocal first_error
            if first_error is not None:
                replayed, first_error = first_error, None
                raise replayed
            return await fn()

        return await retrying(attempt)
