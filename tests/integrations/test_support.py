"""The kits' shared infrastructure: metrics per registry, the backoff policy, retrying."""

from __future__ import annotations

import ast
import asyncio
import gc
import math
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter

from integrations import support
from integrations.support import (
    Backoff,
    MetricsPerRegistry,
    MetricsPerRegistryAndName,
    call_with_retries,
)
from mixins.retry import RetryPolicy
from tests.mixins.support import Flaky, Sleeps

# --- metrics per registry ------------------------------------------------------------------------


@dataclass(frozen=True)
class CallMetrics:
    calls: Counter


def build_call_metrics(registry: CollectorRegistry) -> CallMetrics:
    # A real registration: building twice for one registry raises (duplicated timeseries).
    return CallMetrics(Counter("support_test_calls_total", "Calls.", registry=registry))


def test_one_metrics_object_per_registry() -> None:
    per_registry = MetricsPerRegistry(build_call_metrics)
    first, second = CollectorRegistry(), CollectorRegistry()
    assert per_registry.get(first) is per_registry.get(first)
    assert per_registry.get(second) is not per_registry.get(first)
    per_registry.get(first).calls.inc()
    assert first.get_sample_value("support_test_calls_total") == 1
    assert second.get_sample_value("support_test_calls_total") == 0


def test_named_metrics_are_one_per_registry_and_name() -> None:
    def build(registry: CollectorRegistry, name: str) -> CallMetrics:
        return CallMetrics(Counter(f"{name}_calls_total", "Calls.", registry=registry))

    per_name = MetricsPerRegistryAndName(build)
    registry = CollectorRegistry()
    orders, payments = per_name.get(registry, "orders"), per_name.get(registry, "payments")
    assert orders is per_name.get(registry, "orders")
    assert orders is not payments
    assert per_name.get(CollectorRegistry(), "orders") is not orders


def test_threads_asking_at_once_share_one_build() -> None:
    per_registry = MetricsPerRegistry(build_call_metrics)
    registry = CollectorRegistry()
    start = threading.Barrier(8)
    got: list[CallMetrics] = []
    errors: list[BaseException] = []

    def ask() -> None:
        start.wait()
        try:
            got.append(per_registry.get(registry))
        except BaseException as exc:  # a second registration would raise here
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(got) == 8
    assert all(metrics is got[0] for metrics in got)


def test_a_dropped_registry_releases_its_metrics() -> None:
    per_registry = MetricsPerRegistry(build_call_metrics)
    registry = CollectorRegistry()
    metrics = weakref.ref(per_registry.get(registry))
    gone = weakref.ref(registry)
    assert len(per_registry) == 1
    del registry
    gc.collect()
    assert gone() is None
    assert metrics() is None
    assert len(per_registry) == 0


# --- backoff -------------------------------------------------------------------------------------

backoffs = st.builds(
    Backoff,
    initial_s=st.floats(0, 10),
    max_s=st.floats(0, 100) | st.just(math.inf),
    multiplier=st.floats(1, 10),
    jitter=st.floats(0, 1),
    jitter_s=st.floats(0, 5),
)


@given(backoff=backoffs, retry=st.integers(1, 5000))
def test_every_delay_lies_between_the_jittered_floor_and_the_ceiling(
    backoff: Backoff, retry: int
) -> None:
    ceiling = backoff.ceiling(retry)
    assert 0 <= ceiling <= backoff.max_s
    delay = backoff.delay(retry)
    floor = ceiling * (1 - backoff.jitter) if backoff.jitter < 1 else 0.0  # inf * 0 is nan
    # Tolerances for float rounding only.
    assert floor * (1 - 1e-12) - 1e-12 <= delay <= (ceiling + backoff.jitter_s) * (1 + 1e-12)


@given(backoff=backoffs, retry=st.integers(1, 5000))
def test_the_ceiling_never_shrinks_from_one_retry_to_the_next(backoff: Backoff, retry: int) -> None:
    assert backoff.ceiling(retry) <= backoff.ceiling(retry + 1)


def test_without_jitter_the_delay_multiplies_up_to_the_maximum() -> None:
    backoff = Backoff(initial_s=0.1, max_s=0.5)
    assert [backoff.delay(n) for n in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5, 0.5])
    assert Backoff(initial_s=0.05).delay(10) == pytest.approx(0.05 * 2**9)  # no cap by default
    assert Backoff(initial_s=1, multiplier=3).delay(3) == pytest.approx(9)


@pytest.mark.parametrize(("jitter", "low_share"), [(1.0, 0.0), (0.5, 0.5)])
def test_jitter_spreads_the_delay_over_its_share(jitter: float, low_share: float) -> None:
    backoff = Backoff(initial_s=1.0, max_s=4.0, jitter=jitter)
    delays = [backoff.delay(5) for _ in range(400)]
    assert all(4.0 * low_share <= delay <= 4.0 for delay in delays)
    # Spread over the whole share, still random at the cap (400 draws: chance of failing ~0).
    assert min(delays) < 4.0 * (low_share + 0.1 * jitter)
    assert max(delays) > 4.0 * (1 - 0.1 * jitter)


def test_backoff_is_validated() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        Backoff(initial_s=-1)
    with pytest.raises(ValueError, match="multiplier must be at least 1"):
        Backoff(initial_s=1, multiplier=0.5)
    with pytest.raises(ValueError, match="jitter must be between 0 and 1"):
        Backoff(initial_s=1, jitter=1.5)
    with pytest.raises(ValueError, match="numbered from 1"):
        Backoff(initial_s=1).delay(0)


async def test_the_retry_mixin_waits_as_backoff_computes() -> None:
    # The mixin cannot import the kits' support module (a node may have no kit), so it keeps
    # tenacity's own exponential wait; both must spell the same policy.
    sleeps = Sleeps()
    policy = RetryPolicy(attempts=8, initial_backoff_s=0.1, max_backoff_s=1.5, jitter_s=0)
    with pytest.raises(ConnectionError):
        await policy.run(Flaky(*(ConnectionError() for _ in range(8))), sleep=sleeps)
    backoff = Backoff(initial_s=0.1, max_s=1.5)
    assert sleeps.waits == pytest.approx([backoff.delay(n) for n in range(1, 8)])

    jittered = Sleeps()
    policy = RetryPolicy(attempts=8, initial_backoff_s=0.1, max_backoff_s=1.5, jitter_s=0.3)
    with pytest.raises(ConnectionError):
        await policy.run(Flaky(*(ConnectionError() for _ in range(8))), sleep=jittered)
    backoff = Backoff(initial_s=0.1, max_s=1.5, jitter_s=0.3)
    for retry, wait in enumerate(jittered.waits, start=1):
        assert backoff.ceiling(retry) <= wait <= backoff.ceiling(retry) + backoff.jitter_s


# --- call_with_retries ---------------------------------------------------------------------------


def transient(error: BaseException) -> bool:
    return isinstance(error, ConnectionError)


async def test_a_first_attempt_that_succeeds_never_builds_tenacity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tenacity

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("tenacity was built for a call that needed no retry")

    monkeypatch.setattr(tenacity, "AsyncRetrying", refuse)
    fn, sleeps = Flaky(), Sleeps()
    result = await call_with_retries(
        fn, attempts=3, retryable=transient, backoff=Backoff(0.1), sleep=sleeps
    )
    assert (result, fn.calls, sleeps.waits) == ("done", 1, [])
    # And a first failure that is not retryable goes straight back to the caller.
    failing = Flaky(ValueError("bad input"))
    with pytest.raises(ValueError, match="bad input"):
        await call_with_retries(
            failing, attempts=3, retryable=transient, backoff=Backoff(0.1), sleep=sleeps
        )
    assert (failing.calls, sleeps.waits) == (1, [])


async def test_one_attempt_means_no_retry() -> None:
    fn, sleeps = Flaky(ConnectionError("once")), Sleeps()
    with pytest.raises(ConnectionError, match="once"):
        await call_with_retries(
            fn, attempts=1, retryable=transient, backoff=Backoff(0.1), sleep=sleeps
        )
    assert (fn.calls, sleeps.waits) == (1, [])
    with pytest.raises(ValueError, match="attempts must be at least 1"):
        await call_with_retries(fn, attempts=0, retryable=transient, backoff=Backoff(0.1))


async def test_transient_failures_are_retried_with_the_backoff_and_reported() -> None:
    first, second = ConnectionResetError("reset"), ConnectionRefusedError("refused")
    fn, sleeps = Flaky(first, second), Sleeps()
    retries: list[tuple[int, BaseException]] = []
    result = await call_with_retries(
        fn,
        attempts=3,
        retryable=transient,
        backoff=Backoff(initial_s=0.1, max_s=1.0),
        on_retry=lambda n, error: retries.append((n, error)),
        sleep=sleeps,
    )
    assert (result, fn.calls) == ("done", 3)
    assert retries == [(1, first), (2, second)]
    assert sleeps.waits == pytest.approx([0.1, 0.2])


async def test_the_last_error_is_re_raised_when_attempts_run_out() -> None:
    fn, sleeps = Flaky(*(ConnectionError(f"attempt {n}") for n in range(1, 10))), Sleeps()
    with pytest.raises(ConnectionError, match="attempt 4"):
        await call_with_retries(
            fn, attempts=4, retryable=transient, backoff=Backoff(0.01), sleep=sleeps
        )
    assert (fn.calls, len(sleeps.waits)) == (4, 3)


async def test_a_non_retryable_error_on_a_retry_ends_the_call() -> None:
    fn, sleeps = Flaky(ConnectionError(), KeyError("gone"), ConnectionError()), Sleeps()
    with pytest.raises(KeyError, match="gone"):
        await call_with_retries(
            fn, attempts=5, retryable=transient, backoff=Backoff(0.01), sleep=sleeps
        )
    assert (fn.calls, len(sleeps.waits)) == (2, 1)


async def test_a_cancellation_is_never_retried_even_if_the_predicate_says_so() -> None:
    fn, sleeps = Flaky(ConnectionError(), asyncio.CancelledError()), Sleeps()
    with pytest.raises(asyncio.CancelledError):
        await call_with_retries(
            fn, attempts=5, retryable=lambda _: True, backoff=Backoff(0.01), sleep=sleeps
        )
    assert fn.calls == 2


async def test_asyncio_sleep_is_the_default() -> None:
    fn = Flaky(ConnectionError())
    result = await call_with_retries(
        fn, attempts=2, retryable=transient, backoff=Backoff(initial_s=0)
    )
    assert (result, fn.calls) == ("done", 2)


def test_the_module_needs_no_third_party_library_at_import() -> None:
    # Every kit imports it, whatever libraries the kit itself depends on.
    tree = ast.parse(Path(support.__file__).read_text(encoding="utf-8"))
    imported = {
        (node.module or "").split(".")[0]
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.level == 0
    } | {
        alias.name.split(".")[0]
        for node in tree.body
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    standard = {"__future__", "asyncio", "collections", "dataclasses", "math", "random"}
    assert imported <= standard | {"threading", "typing", "weakref"}
