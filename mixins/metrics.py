"""Per-operation metrics (calls, errors, latency) with prometheus-client, and /metrics."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)


class OperationMetrics:
    """Call and error counters and a latency histogram, labelled by operation.

    Without a ``registry`` the metrics get a registry of their own, so that several instances
    (one per node, or per test) never collide in the process-wide default one.
    """

    def __init__(self, namespace: str, registry: CollectorRegistry | None = None) -> None:
        self._registry = registry if registry is not None else CollectorRegistry()
        self.calls = Counter(
            f"{namespace}_operation_calls_total",
            "Operation calls.",
            ["operation"],
            registry=self._registry,
        )
        self.errors = Counter(
            f"{namespace}_operation_errors_total",
            "Operation calls that raised, by exception class.",
            ["operation", "error_type"],
            registry=self._registry,
        )
        self.latency = Histogram(
            f"{namespace}_operation_latency_seconds",
            "Operation latency in seconds.",
            ["operation"],
            registry=self._registry,
        )
        self._series: dict[str, tuple[Counter, Histogram]] = {}

    @property
    def registry(self) -> CollectorRegistry:
        return self._registry

    def measure(self, operation: str) -> OperationTimer:
        """Count the call, time the ``with`` block, and count its error (by exception class)
        if it raises. Synchronous, so a node's hot path pays no coroutine for it."""
        series = self._series.get(operation)
        if series is None:
            # prometheus-client's labels() takes a lock and builds a key on every call; the
            # children it returns are stable, so each operation looks them up once.
            series = self._series[operation] = (
                self.calls.labels(operation),
                self.latency.labels(operation),
            )
        return OperationTimer(self, operation, *series)

    @contextlib.asynccontextmanager
    async def track(self, operation: str) -> AsyncIterator[None]:
        """``measure`` as an async context manager."""
        with self.measure(operation):
            yield

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self._registry)


class OperationTimer:
    """The ``with`` block of one measured call (see ``OperationMetrics.measure``).

    A class rather than a ``contextlib.contextmanager`` generator: it runs on every operation
    call, and a generator-based context manager costs several times as much.
    """

    __slots__ = ("_calls", "_latency", "_metrics", "_operation", "_started")

    def __init__(
        self, metrics: OperationMetrics, operation: str, calls: Counter, latency: Histogram
    ) -> None:
        self._metrics = metrics
        self._operation = operation
        self._calls = calls
        self._latency = latency
        self._started = 0.0

    def __enter__(self) -> None:
        self._calls.inc()
        self._started = time.perf_counter()

    def __exit__(self, exc_type: type[BaseException] | None, *_rest: object) -> None:
        self._latency.observe(time.perf_counter() - self._started)
        # Only Exception: a cancelled call is not an error of the operation.
        if exc_type is not None and issubclass(exc_type, Exception):
            self._metrics.errors.labels(self._operation, exc_type.__name__).inc()


class MetricsServer:
    """A running /metrics endpoint; ``close()`` stops it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        """The bound port (the actual one when started with port 0)."""
        return int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(
    port: int, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None
) -> MetricsServer:
    """Serve ``registry`` (prometheus-client's default one if None) at
    ``http://addr:port/metrics`` from a daemon thread; port 0 picks a free port."""
    server, thread = start_http_server(
        port, addr, registry=registry if registry is not None else REGISTRY
    )
    return MetricsServer(server, thread)
