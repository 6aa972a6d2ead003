"""What the HTTP client keeps per upstream host: its circuit breaker, its pool slots and its
metric children."""

from __future__ import annotations

import asyncio

from prometheus_client import Counter, Histogram

from integrations.http.metrics import (
    HttpMetrics,
)
from mixins.circuit_breaker import (
    CircuitBreaker,
)

__all__ = ["UpstreamHost"]


class UpstreamHost:
    """Per-host state: its breaker, and its metric children looked up once rather than per
    request (``labels()`` takes a lock and builds a tuple each time)."""

    __slots__ = (
        "_client",
        "_latency",
        "_metrics",
        "_requests",
        "_retries",
        "breaker",
        "host",
        "rejections",
        "slots",
    )

    def __init__(
        self,
        client: str,
        host: str,
        breaker: CircuitBreaker,
        metrics: HttpMetrics,
        slots: asyncio.Semaphore | None = None,
    ) -> None:
        self.host = host
        self.breaker = breaker
        self.slots = slots  # pool_limit_per_host slots, None when unlimited
        self.rejections = metrics.breaker_rejections.labels(client, host)
        self._client = client
        self._metrics = metrics
        self._requests: dict[tuple[str, int | str], Counter] = {}
        self._latency: dict[str, Histogram] = {}
        self._retries: dict[str, Counter] = {}

    def observe(self, method: str, status: int | str, seconds: float) -> None:
        """Count one attempt and its latency; ``status`` is ``"error"`` when no response came."""
        counter = self._requests.get((method, status))
        if counter is None:
            counter = self._metrics.requests.labels(self._client, self.host, method, str(status))
            self._requests[(method, status)] = counter
        counter.inc()
        histogram = self._latency.get(method)
        if histogram is None:
            histogram = self._metrics.latency.labels(self._client, self.host, method)
            self._latency[method] = histogram
        histogram.observe(seconds)

    def retried(self, method: str) -> None:
        counter = self._retries.get(method)
        if counter is None:
            counter = self._metrics.retries.labels(self._client, self.host, method)
            self._retries[method] = counter
        counter.inc()
