"""Operation counters, error counts, latency histogram and the /metrics endpoint."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from mixins.metrics import OperationMetrics, start_metrics_server
from tests.mixins.support import wait_set


def sample(metrics: OperationMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def test_successful_calls_are_counted_and_timed() -> None:
    metrics = OperationMetrics("svc")
    for _ in range(3):
        async with metrics.track("fetch"):
            pass
    async with metrics.track("store"):
        pass
    assert sample(metrics, "svc_operation_calls_total", operation="fetch") == 3
    assert sample(metrics, "svc_operation_calls_total", operation="store") == 1
    assert sample(metrics, "svc_operation_latency_seconds_count", operation="fetch") == 3
    latency_sum = sample(metrics, "svc_operation_latency_seconds_sum", operation="fetch")
    assert latency_sum is not None
    assert latency_sum >= 0
    assert sample(metrics, "svc_operation_errors_total", operation="fetch", error_type="x") is None


async def test_errors_are_counted_by_exception_class_and_re_raised() -> None:
    metrics = OperationMetrics("svc")
    with pytest.raises(KeyError):
        async with metrics.track("fetch"):
            raise KeyError("missing")
    for _ in range(2):
        with pytest.raises(ConnectionError):
            async with metrics.track("fetch"):
                raise ConnectionResetError("reset")
    errors = "svc_operation_errors_total"
    assert sample(metrics, errors, operation="fetch", error_type="KeyError") == 1
    assert sample(metrics, errors, operation="fetch", error_type="ConnectionResetError") == 2
    assert sample(metrics, "svc_operation_calls_total", operation="fetch") == 3
    assert sample(metrics, "svc_operation_latency_seconds_count", operation="fetch") == 3


async def test_a_cancelled_call_is_timed_but_not_an_error() -> None:
    metrics = OperationMetrics("svc")
    entered = asyncio.Event()

    async def hang() -> None:
        async with metrics.track("slow"):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(hang())
    await wait_set(entered)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sample(metrics, "svc_operation_calls_total", operation="slow") == 1
    assert sample(metrics, "svc_operation_latency_seconds_count", operation="slow") == 1
    assert "svc_operation_errors_total{" not in metrics.render().decode()


def test_instances_have_their_own_registry_unless_given_one() -> None:
    first, second = OperationMetrics("svc"), OperationMetrics("svc")  # no duplicate error
    assert first.registry is not second.registry
    shared = CollectorRegistry()
    assert OperationMetrics("svc", registry=shared).registry is shared


async def test_render_is_prometheus_text() -> None:
    metrics = OperationMetrics("svc")
    async with metrics.track("fetch"):
        pass
    text = metrics.render().decode()
    assert "# TYPE svc_operation_calls_total counter" in text
    assert 'svc_operation_calls_total{operation="fetch"} 1.0' in text
    assert "# TYPE svc_operation_latency_seconds histogram" in text


def test_metrics_server_serves_the_registry_until_closed() -> None:
    metrics = OperationMetrics("svc")
    metrics.calls.labels("fetch").inc()
    server = start_metrics_server(0, registry=metrics.registry)
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        assert server.port > 0
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
            body = response.read().decode()
    finally:
        server.close()
    assert 'svc_operation_calls_total{operation="fetch"} 1.0' in body
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)


def test_measure_counts_each_call_and_errors_by_class_in_a_plain_with_block() -> None:
    metrics = OperationMetrics("orders")
    for _ in range(3):
        with metrics.measure("fetch"):
            pass
    with pytest.raises(KeyError), metrics.measure("fetch"):
        raise KeyError("missing")
    text = metrics.render().decode()
    assert 'orders_operation_calls_total{operation="fetch"} 4.0' in text
    assert 'orders_operation_latency_seconds_count{operation="fetch"} 4.0' in text
    assert 'orders_operation_errors_total{error_type="KeyError",operation="fetch"} 1.0' in text
