"""The HTTP kit's Prometheus metrics (``http_client_*``, labelled by ``client=name``), one
set per registry, shared by the clients that report into it."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from integrations.support import (
    MetricsPerRegistry,
)

__all__ = ["HttpMetrics", "metrics_for"]


@dataclass(frozen=True)
class HttpMetrics:
    requests: Counter
    latency: Histogram
    retries: Counter
    breaker_rejections: Counter
    cache_hits: Counter
    cache_misses: Counter
    rate_limit_waits: Counter
    rate_limit_rejections: Counter
    pool_timeouts: Counter


def _build(registry: CollectorRegistry) -> HttpMetrics:
    def counter(name: str, documentation: str, *labels: str) -> Counter:
        return Counter(f"http_client_{name}", documentation, labels, registry=registry)

    return HttpMetrics(
        requests=counter(
            "requests_total",
            "Requests sent, each attempt counted; status 'error' when no response came back.",
            "client",
            "host",
            "method",
            "status",
        ),
        latency=Histogram(
            "http_client_request_duration_seconds",
            "Latency of each attempt, until the body was read or the attempt failed.",
            ["client", "host", "method"],
            registry=registry,
        ),
        retries=counter("retries_total", "Attempts after the first.", "client", "host", "method"),
        breaker_rejections=counter(
            "breaker_rejections_total",
            "Calls refused without being sent because the host's circuit was open.",
            "client",
            "host",
        ),
        cache_hits=counter(
            "cache_hits_total",
            "GET/HEAD calls answered without a request of their own (cached or coalesced).",
            "client",
        ),
        cache_misses=counter("cache_misses_total", "Cacheable calls that went upstream.", "client"),
        rate_limit_waits=counter(
            "rate_limit_waits_total", "Attempts that queued for a rate-limit slot.", "client"
        ),
        rate_limit_rejections=counter(
            "rate_limit_rejections_total", "Calls refused with RateLimitedError.", "client"
        ),
        pool_timeouts=counter(
            "pool_timeouts_total",
            "Calls refused with PoolTimeoutError: no pool slot came free in time.",
            "client",
        ),
    )


_METRICS = MetricsPerRegistry(_build)


def metrics_for(registry: CollectorRegistry) -> HttpMetrics:
    """The metrics in ``registry``, registered on first use (prometheus-client refuses to
    register a metric name twice, so clients sharing a registry share them)."""
    return _METRICS.get(registry)
