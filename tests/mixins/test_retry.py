"""Retry attempts, which errors are retried, and the backoff, with an injected sleep."""

from __future__ import annotations

import dataclasses

import pytest

from mixins.retry import RetryPolicy
from tests.mixins.support import Flaky, Sleeps


async def test_stops_after_the_configured_attempts_and_re_raises_the_last_error() -> None:
    fn = Flaky(*(ConnectionError(f"attempt {n}") for n in range(1, 10)))
    sleeps = Sleeps()
    with pytest.raises(ConnectionError, match="attempt 4"):
        await RetryPolicy(attempts=4).run(fn, sleep=sleeps)
    assert fn.calls == 4
    assert len(sleeps.waits) == 3


async def test_non_retryable_errors_are_raised_at_once() -> None:
    fn = Flaky(ValueError("bad input"))
    sleeps = Sleeps()
    with pytest.raises(ValueError, match="bad input"):
        await RetryPolicy().run(fn, sleep=sleeps)
    assert fn.calls == 1
    assert sleeps.waits == []


async def test_succeeds_after_transient_failures_and_reports_each_retry() -> None:
    first, second = ConnectionResetError("reset"), TimeoutError("slow")
    fn = Flaky(first, second)
    retries: list[tuple[int, BaseException]] = []
    result = await RetryPolicy(attempts=3).run(
        fn, sleep=Sleeps(), on_retry=lambda n, exc: retries.append((n, exc))
    )
    assert result == "done"
    assert fn.calls == 3
    assert retries == [(1, first), (2, second)]


async def test_backoff_doubles_up_to_the_maximum() -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(attempts=6, initial_backoff_s=0.1, max_backoff_s=0.5, jitter_s=0)
    with pytest.raises(ConnectionError):
        await policy.run(Flaky(*(ConnectionError() for _ in range(6))), sleep=sleeps)
    assert sleeps.waits == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])


async def test_jitter_adds_at_most_jitter_s_also_at_the_maximum() -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(attempts=6, initial_backoff_s=1.0, max_backoff_s=4.0, jitter_s=0.5)
    with pytest.raises(TimeoutError):
        await policy.run(Flaky(*(TimeoutError() for _ in range(6))), sleep=sleeps)
    bases = [1.0, 2.0, 4.0, 4.0, 4.0]
    for wait, base in zip(sleeps.waits, bases, strict=True):
        assert base <= wait <= base + 0.5
    assert sleeps.waits != bases  # jitter was added


async def test_retry_on_is_configurable() -> None:
    fn = Flaky(KeyError("cold cache"))
    policy = RetryPolicy(retry_on=(KeyError,))
    assert await policy.run(fn, sleep=Sleeps()) == "done"
    assert fn.calls == 2
    with pytest.raises(ConnectionError):
        await policy.run(Flaky(ConnectionError()), sleep=Sleeps())


async def test_one_attempt_means_no_retry() -> None:
    fn = Flaky(ConnectionError("once"))
    with pytest.raises(ConnectionError, match="once"):
        await RetryPolicy(attempts=1).run(fn, sleep=Sleeps())
    assert fn.calls == 1


async def test_asyncio_sleep_is_the_default() -> None:
    fn = Flaky(ConnectionError())
    policy = RetryPolicy(initial_backoff_s=0, jitter_s=0)
    assert await policy.run(fn) == "done"
    assert fn.calls == 2


def test_policy_is_frozen_and_validated() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RetryPolicy().attempts = 5  # type: ignore[misc]
    with pytest.raises(ValueError, match="attempts must be at least 1, got 0"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="must not be negative"):
        RetryPolicy(jitter_s=-1)
