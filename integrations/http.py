"""An HTTP client for calling upstream services: pooled, retrying, circuit-broken, rate-limited,
cached and measured, so that nodes do not each grow their own half of these around aiohttp.

One ``aiohttp.ClientSession`` per client (open it once, share it; a session per request throws
away the connection pool). Per request, in this order:

1. **Cache** (GET/HEAD only, off unless ``cache_ttl_s > 0``): an LRU + TTL cache of 2xx responses
   keyed by method, URL, sorted params and per-call headers. Concurrent identical misses are
   coalesced: one request goes upstream and the others await its outcome. ``Cache-Control`` is
   not interpreted; the TTL is the caller's statement of how stale a response may be.
2. **Rate limit** (off unless ``rate_limit``, e.g. ``"100/second"``): one moving window
   across every request the client sends, whatever the host (one client usually stands for one
   upstream and its quota); every attempt, retries included, takes a slot. A moving window, not
   a fixed one, is what makes "at most N in *any* window of length W" hold. A request holds its
   slot while in flight and enters the window only when it completes: the upstream sees it
   arrive somewhere between the two, so stamping it at send time would let connect latency
   (a cold pool, a TLS handshake) squeeze N + 1 arrivals into a window, while this bound holds
   whatever the latency. The price: against a slow upstream slots turn over every W + latency
   rather than every W. ``"wait"`` queues callers in FIFO order, and raises
   ``RateLimitedError`` at once when the wait would exceed ``rate_limit_max_wait_s``;
   ``"reject"`` raises it immediately.
3. **Circuit breaker** per upstream host (``host:port``): 5xx, timeouts and connection errors
   are failures, 4xx (429 included: a throttling upstream is answering, not failing) are not.
   Each attempt passes the breaker, so retries stop as soon as it opens; while open, calls fail
   fast with ``UpstreamUnavailableError`` and nothing is sent. After ``breaker_reset_timeout_s``
   exactly one call probes the host (others are refused meanwhile); its outcome closes the
   breaker or opens it for another reset timeout.
4. **Pool slot**: at most ``pool_limit`` requests in flight (``pool_limit_per_host`` per host).
   Waiting for a slot is bounded by ``pool_timeout_s`` and is *not* an upstream failure: the
   upstream has not been asked anything, so the wait is outside ``timeout_s``, the breaker
   records no verdict, nothing is retried, and the call fails with ``PoolTimeoutError``.
5. **Retry** with exponential backoff and equal jitter (the n-th wait is uniform in
   ``[b/2, b]`` with ``b = min(initial * 2**(n-1), max)``: spread out, yet never ~0).
   Idempotent methods (GET, HEAD, PUT, DELETE, OPTIONS), and any request sent with an
   ``idempotency_key`` (an ``Idempotency-Key`` header the upstream uses to apply it once), are
   retried on 5xx, 429, timeouts and connection errors, a connection dropped mid-response
   included. Others (POST, PATCH) only when the request surely did not run: on 429 (refused)
   and when no connection could be established (refused, DNS, connect timeout: nothing was
   sent); not on 5xx, a timeout or a dropped connection, after which a retry could run it
   twice. Other 4xx are never retried.

   A 429 or 503 carrying ``Retry-After`` (seconds, fractions accepted, or an HTTP date) waits
   that long instead of the backoff; one above ``retry_after_max_s`` raises at once rather than
   hold the caller. ``timeout_s`` bounds each attempt, so a GET may take up to
   ``retry_attempts * timeout_s`` plus waits: a timeout is retried because a GET is safe to
   repeat and the breaker stops the retries once the upstream is really down.

Final statuses >= 400 raise ``UpstreamStatusError`` (``request(raise_for_status=False)`` returns
them instead).

**Redaction.** A URL may carry credentials (``https://user:password@host``, ``?api_key=...``).
No URL reaches an error message, an error attribute or a repr unredacted: ``redact_url``
replaces the userinfo with ``***``, the values of query keys that look sensitive (see
``SENSITIVE_QUERY_KEY_PARTS``) with ``***`` and drops the fragment. Transport errors are not
chained (``__cause__``/``__context__``), since aiohttp's own messages contain the URL; their
type and their message, with every secret of the request scrubbed, are in ours. Response
bodies are not put in messages (``error_body_bytes`` opts in; a body may echo anything).
The base URL may be given as a ``SecretStr`` (anything with ``get_secret_value()``).

Metrics (``http_client_*``, labelled by ``client=name``) go to a private registry unless one is
passed; clients sharing a registry share the metrics.
"""

from __future__ import annotations

import asyncio
import email.utils
import json as jsonlib
import math
import random
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from types import TracebackType
from typing import Any, Final, Literal, Protocol
from urllib.parse import quote, quote_plus, urlsplit

import aiohttp
import yarl
from cachetools import TTLCache
from limits import RateLimitItem
from limits import parse as parse_rate_limit
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from prometheus_client import CollectorRegistry, Counter, Histogram

from mixins.circuit_breaker import (
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
)

__all__ = [
    "SENSITIVE_QUERY_KEYS",
    "SENSITIVE_QUERY_KEY_PARTS",
    "HttpClient",
    "HttpError",
    "HttpResponse",
    "PoolTimeoutError",
    "RateLimitedError",
    "UpstreamConnectionError",
    "UpstreamStatusError",
    "UpstreamTimeoutError",
    "UpstreamUnavailableError",
    "redact_url",
]

_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_CACHEABLE: Final = frozenset({"GET", "HEAD"})
_BODY_IN_ERRORS: Final = 1024  # bytes of the upstream's body kept on UpstreamStatusError.body
_REDACTED: Final = "***"
# A query key is sensitive when, lower-cased, it contains one of these (``api_key``,
# ``X-Amz-Signature``, ``access_token``, ``client_secret``, ``password``, ``oauth_...``) or
# equals one of SENSITIVE_QUERY_KEYS (short names too common as parts of harmless keys).
# Redacting a harmless value costs a little debugging; leaking a credential costs more.
SENSITIVE_QUERY_KEY_PARTS: Final = (
    "key",
    "token",
    "secret",
    "passw",
    "pwd",
    "auth",
    "signature",
    "credential",
    "session",
    "cookie",
    "jwt",
    "private",
)
SENSITIVE_QUERY_KEYS: Final = frozenset({"sig", "code", "pass", "sas", "otp", "nonce"})
_IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
_CLOCK_SLACK_S: Final = 0.005  # `limits` stamps with the wall clock, which may step slightly
# Transport errors worth retrying and counting against the upstream; TLS and fingerprint
# failures are configuration problems that a retry or an open breaker would not fix.
_TRANSIENT: Final = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)
_PERMANENT: Final = (aiohttp.ClientSSLError, aiohttp.ServerFingerprintMismatch)


class SecretLike(Protocol):
    """pydantic's ``SecretStr``, or anything else that hides a string until asked."""

    def get_secret_value(self) -> str: ...


def _sensitive_key(key: str) -> bool:
    lowered = key.lower()
    return lowered in SENSITIVE_QUERY_KEYS or any(p in lowered for p in SENSITIVE_QUERY_KEY_PARTS)


def redact_url(url: str | yarl.URL) -> str:
    """``url`` fit for a log line, an error or a repr: userinfo and the values of sensitive
    query keys become ``***``, the fragment is dropped. A URL that does not parse is
    replaced whole, since where its secrets are cannot be told."""
    try:
        parsed = url if isinstance(url, yarl.URL) else yarl.URL(url)
        if parsed.raw_user is not None or parsed.raw_password is not None:
            parsed = parsed.with_user(_REDACTED).with_password(None)
        if any(_sensitive_key(key) for key in parsed.query):
            parsed = parsed.with_query(
                [(k, _REDACTED if _sensitive_key(k) else v) for k, v in parsed.query.items()]
            )
        return str(parsed.with_fragment(None))
    except (TypeError, ValueError):
        return "<unparseable URL, redacted>"


def _secrets_in(url: str, params: Mapping[str, str] | None) -> list[str]:
    """Every credential this request's URL and params carry, in each form it may be printed
    in (as given, decoded, percent- or plus-encoded), longest first."""
    found: set[str] = set()
    try:
        parsed = yarl.URL(url)
        values = [parsed.user, parsed.password, parsed.raw_user, parsed.raw_password]
        values += [v for k, v in parsed.query.items() if _sensitive_key(k)]
        query = parsed.raw_query_string
    except (TypeError, ValueError):
        values, query = [], ""
    for pair in query.split("&"):
        key, _, raw = pair.partition("=")
        if _sensitive_key(key):
            values.append(raw)
    values += [v for k, v in (params or {}).items() if _sensitive_key(str(k))]
    for value in values:
        if value:
            found.update({value, quote(value, safe=""), quote_plus(value, safe="")})
    found.discard("")
    return sorted(found, key=len, reverse=True)


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, _REDACTED)
    return text


class HttpError(Exception):
    """Base of every error this client raises: catch it to handle any failed call. ``url``
    is redacted (``redact_url``); the message never holds a credential of the request."""

    def __init__(self, message: str, *, method: str = "", url: str = "", host: str = "") -> None:
        super().__init__(message)
        self.method = method
        self.url = url
        self.host = host


class UpstreamStatusError(HttpError):
    """The upstream answered >= 400 and retrying could not (or may not) change that."""

    def __init__(
        self,
        method: str,
        url: str,
        host: str,
        response: HttpResponse,
        *,
        attempts: int,
        retry_after: float | None = None,
        detail: str = "",
        body_in_message: int = 0,
    ) -> None:
        body = response.body[:_BODY_IN_ERRORS]
        message = f"{method} {url} -> HTTP {response.status} after {attempts} attempt(s)"
        if detail:
            message += f" ({detail})"
        # The body is not in the message unless asked for: an upstream's error page may echo
        # the request, its credentials included, and messages end up in logs.
        if body and body_in_message > 0:
            message += f": {body[:body_in_message]!r}"
        elif body:
            message += f" ({len(response.body)} byte body not shown)"
        super().__init__(message, method=method, url=url, host=host)
        self.status = response.status
        self.body = body
        self.response = response
        self.attempts = attempts
        self.retry_after = retry_after


class UpstreamTimeoutError(HttpError):
    """An attempt took longer than its timeout (the last one, when retried)."""


class UpstreamConnectionError(HttpError):
    """No usable response came back: refused, reset, disconnected, DNS or TLS failure (or an
    aiohttp-level refusal such as an invalid URL or a redirect loop)."""


class PoolTimeoutError(HttpError):
    """No slot of the client's own connection pool came free within ``pool_timeout_s``.
    Nothing was sent, and the upstream is not blamed (its breaker records nothing): the pool
    is too small for the load, or the calls holding it are slow."""

    def __init__(self, method: str, url: str, host: str, pool_timeout_s: float) -> None:
        super().__init__(
            f"{method} {url} not sent: no connection of the client's pool came free within "
            f"pool_timeout_s={pool_timeout_s:g}s",
            method=method,
            url=url,
            host=host,
        )
        self.pool_timeout_s = pool_timeout_s


class UpstreamUnavailableError(HttpError):
    """The host's circuit is open (or its half-open probe is in flight); nothing was sent."""

    def __init__(self, method: str, url: str, host: str, retry_after: float, reason: str) -> None:
        super().__init__(f"{method} {url} not sent: {reason}", method=method, url=url, host=host)
        self.retry_after = retry_after


class RateLimitedError(HttpError):
    """The client's own rate limit refused the request (reject mode, or too long a wait)."""

    def __init__(self, method: str, url: str, limit: str, retry_after: float) -> None:
        super().__init__(
            f"{method} {url} not sent: client rate limit {limit} reached; "
            f"a slot frees in {retry_after:.2f}s",
            method=method,
            url=url,
        )
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True, repr=False)
class HttpResponse:
    """A fully read response: the connection is back in the pool before the caller sees it."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def __repr__(self) -> str:
        # Headers (Set-Cookie) and body may hold secrets; a repr ends up in logs.
        return f"HttpResponse(status={self.status}, body=<{len(self.body)} bytes>)"

    def json(self) -> Any:
        return jsonlib.loads(self.body)

    def text(self) -> str:
        content_type = self.headers.get("Content-Type", "")
        _, found, charset = content_type.partition("charset=")
        encoding = charset.split(";")[0].strip().strip('"') if found else "utf-8"
        try:
            return self.body.decode(encoding, errors="replace")
        except LookupError:  # an unknown charset name
            return self.body.decode("utf-8", errors="replace")


class ServerError(Exception):
    """A 5xx, raised inside the breaker so that it counts as a failure; never escapes."""

    def __init__(self, response: HttpResponse) -> None:
        super().__init__(response.status)
        self.response = response


def _is_upstream_failure(exc: BaseException) -> bool:
    if isinstance(exc, ServerError | TimeoutError):
        return True
    return isinstance(exc, _TRANSIENT) and not isinstance(exc, _PERMANENT)


def _retry_after_s(value: str | None) -> float | None:
    """``Retry-After`` in seconds from now (delta-seconds or HTTP date); None if absent/invalid."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _host_of(url: str) -> str:
    return urlsplit(url).netloc.rpartition("@")[2].lower()


def _frozen(items: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(items.items())) if items else ()


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


# One set of metrics per registry, shared by the clients that use it (told apart by their
# `client` label): prometheus-client refuses to register a metric name twice.
_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, HttpMetrics] = weakref.WeakKeyDictionary()


def _metrics_for(registry: CollectorRegistry) -> HttpMetrics:
    metrics = _METRICS.get(registry)
    if metrics is None:

        def counter(name: str, documentation: str, *labels: str) -> Counter:
            return Counter(f"http_client_{name}", documentation, labels, registry=registry)

        metrics = HttpMetrics(
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
            retries=counter(
                "retries_total", "Attempts after the first.", "client", "host", "method"
            ),
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
            cache_misses=counter(
                "cache_misses_total", "Cacheable calls that went upstream.", "client"
            ),
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
        _METRICS[registry] = metrics
    return metrics


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


class RequestNotSent(BaseException):
    """Carries a RateLimitedError or PoolTimeoutError out through the breaker. A BaseException,
    like a cancellation, so that the breaker records no verdict: the upstream was never called."""

    def __init__(self, error: RateLimitedError | PoolTimeoutError) -> None:
        super().__init__(str(error))
        self.error = error


_CacheKey = tuple[str, str, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]


class HttpClient:
    """See the module docstring. Use ``async with HttpClient(...) as client`` or open()/close().

    ``path_or_url`` is appended to ``base_url`` (``base_url="http://h/api"`` and ``"/users"``
    give ``http://h/api/users``); an absolute ``http(s)://`` URL is used as is. ``base_url``
    may be a ``SecretStr``; credentials in its userinfo are sent as basic auth. ``pool_limit``
    and ``pool_limit_per_host`` of 0 mean unlimited (aiohttp's convention).
    ``pool_timeout_s`` bounds waiting for a pool slot (``PoolTimeoutError``),
    ``connect_timeout_s`` establishing a TCP connection, and ``timeout_s`` each attempt once it
    holds a slot (a busy pool is not a sign of a failing upstream). ``error_body_bytes`` puts
    that many bytes of an error response's body in ``UpstreamStatusError``'s message (default
    0: none). ``default_headers`` go with every request (an API key, say).
    Every host called gets a breaker and metric labels of its own: this is a client for a
    handful of known upstreams, not a crawler.
    """

    def __init__(
        self,
        base_url: str | SecretLike,
        *,
        pool_limit: int = 100,
        pool_limit_per_host: int = 0,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 3.0,
        pool_timeout_s: float = 10.0,
        retry_attempts: int = 3,
        retry_initial_backoff_s: float = 0.1,
        retry_max_backoff_s: float = 5.0,
        retry_after_max_s: float = 30.0,
        breaker_failure_rate: float = 0.5,
        breaker_window: int = 20,
        breaker_minimum_calls: int = 5,
        breaker_reset_timeout_s: float = 30.0,
        rate_limit: str | None = None,
        rate_limit_mode: Literal["wait", "reject"] = "wait",
        rate_limit_max_wait_s: float = 5.0,
        cache_size: int = 1024,
        cache_ttl_s: float = 0.0,
        name: str = "http",
        registry: CollectorRegistry | None = None,
        default_headers: Mapping[str, str] | None = None,
        error_body_bytes: int = 0,
    ) -> None:
        if not isinstance(base_url, str):
            base_url = base_url.get_secret_value()
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"base_url must be an http:// or https:// URL, got {redact_url(base_url)!r}"
            )
        if pool_limit < 0 or pool_limit_per_host < 0:
            raise ValueError("pool_limit and pool_limit_per_host must not be negative")
        if timeout_s <= 0 or connect_timeout_s <= 0 or pool_timeout_s <= 0:
            raise ValueError("timeout_s, connect_timeout_s and pool_timeout_s must be positive")
        if error_body_bytes < 0:
            raise ValueError(f"error_body_bytes must not be negative, got {error_body_bytes}")
        if retry_attempts < 1:
            raise ValueError(f"retry_attempts must be at least 1, got {retry_attempts}")
        if min(retry_initial_backoff_s, retry_max_backoff_s, retry_after_max_s) < 0:
            raise ValueError("retry backoffs and retry_after_max_s must not be negative")
        if rate_limit_mode not in ("wait", "reject"):
            raise ValueError(f"rate_limit_mode must be 'wait' or 'reject', got {rate_limit_mode!r}")
        if cache_ttl_s < 0 or cache_size < 1:
            raise ValueError("cache_ttl_s must not be negative and cache_size must be at least 1")
        self.name = name
        self._base = base_url.rstrip("/")
        self._base_host = _host_of(self._base)
        self._pool_limit = pool_limit
        self._pool_limit_per_host = pool_limit_per_host
        # The pool's slots, taken before a request reaches aiohttp, so that waiting for one is
        # told apart from an upstream that is slow to connect or answer. The connector has the
        # same limits and never makes a request wait.
        self._pool_slots = asyncio.Semaphore(pool_limit) if pool_limit else None
        self._pool_timeout_s = pool_timeout_s
        self._error_body_bytes = error_body_bytes
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self._attempts = retry_attempts
        self._initial_backoff_s = retry_initial_backoff_s
        self._max_backoff_s = retry_max_backoff_s
        self._retry_after_max_s = retry_after_max_s
        self._breaker_settings: dict[str, Any] = {
            "failure_rate_threshold": breaker_failure_rate,
            "window_size": breaker_window,
            "minimum_calls": breaker_minimum_calls,
            "reset_timeout_s": breaker_reset_timeout_s,
        }
        self._default_headers = dict(default_headers or {})
        self._session: aiohttp.ClientSession | None = None

        self._limiter: tuple[MovingWindowRateLimiter, RateLimitItem] | None = None
        self._limiter_storage: MemoryStorage | None = None
        self._limit_queue = asyncio.Lock()
        self._slot_released = asyncio.Event()
        self._in_flight = 0
        self._rate_limit_mode = rate_limit_mode
        self._rate_limit_max_wait_s = rate_limit_max_wait_s
        if rate_limit is not None:
            try:
                item = parse_rate_limit(rate_limit)
            except ValueError as exc:
                raise ValueError(f"rate_limit {rate_limit!r} is not in `limits` syntax") from exc
            self._limiter_storage = MemoryStorage()
            self._limiter = (MovingWindowRateLimiter(self._limiter_storage), item)

        self._cache: TTLCache[_CacheKey, HttpResponse] | None = None
        if cache_ttl_s > 0:
            self._cache = TTLCache(maxsize=cache_size, ttl=cache_ttl_s, timer=time.monotonic)
        self._inflight: dict[_CacheKey, asyncio.Future[HttpResponse]] = {}

        self._registry = registry if registry is not None else CollectorRegistry()
        self._metrics = _metrics_for(self._registry)
        self._m_cache_hits = self._metrics.cache_hits.labels(name)
        self._m_cache_misses = self._metrics.cache_misses.labels(name)
        self._m_rate_limit_waits = self._metrics.rate_limit_waits.labels(name)
        self._m_rate_limit_rejections = self._metrics.rate_limit_rejections.labels(name)
        self._m_pool_timeouts = self._metrics.pool_timeouts.labels(name)
        # Built now so that bad breaker settings fail here, not on the first request.
        self._upstreams = {self._base_host: self._new_upstream(self._base_host)}

    @property
    def registry(self) -> CollectorRegistry:
        return self._registry

    def __repr__(self) -> str:
        return f"HttpClient(name={self.name!r}, base_url={redact_url(self._base)!r})"

    def _new_upstream(self, host: str) -> UpstreamHost:
        breaker = CircuitBreaker(
            f"{self.name}:{host}", is_failure=_is_upstream_failure, **self._breaker_settings
        )
        per_host = self._pool_limit_per_host
        slots = asyncio.Semaphore(per_host) if per_host else None
        return UpstreamHost(self.name, host, breaker, self._metrics, slots)

    async def open(self) -> None:
        """Create the session and its pool (idempotent); needs a running event loop."""
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._pool_limit, limit_per_host=self._pool_limit_per_host
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, headers=self._default_headers
            )

    async def close(self) -> None:
        """Close the pool (idempotent); in-flight requests fail."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        timer = self._limiter_storage.timer if self._limiter_storage is not None else None
        if timer is not None and not timer.done():
            timer.cancel()  # the storage's expiry task, which would outlive the event loop

    async def __aenter__(self) -> HttpClient:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def breaker_state(self, host: str) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"`` for ``host`` (``host:port`` as in the
        URL, or a URL); a host never called is ``"closed"``."""
        if "://" in host:
            host = _host_of(host)
        upstream = self._upstreams.get(host.lower())
        return str(upstream.breaker.state) if upstream is not None else str(CircuitState.CLOSED)

    async def get_json(self, path: str, *, params: Mapping[str, str] | None = None) -> Any:
        """GET and parse the JSON body (None for an empty one); >= 400 raises."""
        return self._decode("GET", path, await self.request("GET", path, params=params))

    async def post_json(
        self, path: str, payload: Any, *, idempotency_key: str | None = None
    ) -> Any:
        """POST ``payload`` as JSON and parse the JSON reply (None for an empty one). With an
        ``idempotency_key`` it is retried like a GET (see ``request``)."""
        response = await self.request("POST", path, json=payload, idempotency_key=idempotency_key)
        return self._decode("POST", path, response)

    async def request(
        self,
        method: str,
        path_or_url: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        raise_for_status: bool = True,
        idempotency_key: str | None = None,
    ) -> HttpResponse:
        """Send a request through cache, rate limit, breaker and retries (module docstring).

        Raises an ``HttpError`` subclass; with ``raise_for_status=False`` a final status >= 400
        is returned instead of raised as ``UpstreamStatusError``. ``idempotency_key`` is sent as
        the ``Idempotency-Key`` header (so is one passed in ``headers``) and makes a POST or
        PATCH retryable like a GET: every attempt carries the same key, and an upstream that
        honours it applies the request once however many attempts reach it.
        """
        method = method.upper()
        if idempotency_key is not None:
            if not idempotency_key:
                raise ValueError("idempotency_key must not be empty")
            headers = {**(headers or {}), _IDEMPOTENCY_HEADER: idempotency_key}
        if path_or_url.startswith(("http://", "https://")):
            url, host = path_or_url, _host_of(path_or_url)
        else:
            slash = "" if path_or_url.startswith("/") or not path_or_url else "/"
            url, host = self._base + slash + path_or_url, self._base_host
        try:
            if self._cache is not None and json is None and method in _CACHEABLE:
                return await self._cached(method, url, host, params, headers, timeout_s)
            return await self._send(method, url, host, params, json, headers, timeout_s)
        except UpstreamStatusError as exc:
            if raise_for_status:
                raise
            return exc.response

    async def _cached(
        self,
        method: str,
        url: str,
        host: str,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        timeout_s: float | None,
    ) -> HttpResponse:
        assert self._cache is not None
        key: _CacheKey = (method, url, _frozen(params), _frozen(headers))
        while True:
            response = self._cache.get(key)
            if response is not None:
                self._m_cache_hits.inc()
                return response
            leader = self._inflight.get(key)
            if leader is None:
                break
            try:
                # Shielded: a follower's cancellation must not cancel the leader's request.
                response = await asyncio.shield(leader)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if leader.cancelled() and (task is None or not task.cancelling()):
                    continue  # the leader was cancelled, not us: look again, maybe lead
                raise
            self._m_cache_hits.inc()
            return response
        self._m_cache_misses.inc()
        future: asyncio.Future[HttpResponse] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            response = await self._send(method, url, host, params, None, headers, timeout_s)
        except Exception as exc:
            future.set_exception(exc)  # followers share the leader's outcome, errors included
            future.exception()  # retrieved: no "never retrieved" warning without followers
            raise
        except BaseException:
            future.cancel()  # cancelled: followers look again, and one of them leads
            raise
        finally:
            del self._inflight[key]
        if 200 <= response.status < 300:
            self._cache[key] = response
        future.set_result(response)
        return response

    async def _send(
        self,
        method: str,
        url: str,
        host: str,
        params: Mapping[str, str] | None,
        json: Any,
        headers: Mapping[str, str] | None,
        timeout_s: float | None,
    ) -> HttpResponse:
        session = self._session
        if session is None:
            raise HttpError(
                f"{method} {redact_url(url)} not sent: HttpClient {self.name!r} is not open "
                "(use `async with` or await open() first)",
                method=method,
                url=redact_url(url),
                host=host,
            )
        upstream = self._upstreams.get(host)
        if upstream is None:
            upstream = self._upstreams[host] = self._new_upstream(host)
        breaker = upstream.breaker
        timeout = self._timeout
        if timeout_s is not None:
            timeout = aiohttp.ClientTimeout(
                total=timeout_s, sock_connect=min(timeout_s, self._connect_timeout_s)
            )
        idempotent = method in _IDEMPOTENT or (
            headers is not None and any(k.lower() == "idempotency-key" for k in headers)
        )
        # The rate limit is taken inside the breaker, so that a call bound to fail fast does
        # not spend (or wait for) a slot.
        send = self._attempt if self._limiter is None else self._limited_attempt
        attempt = 0
        while True:
            attempt += 1
            # Errors are raised after the `except` blocks, not in them: raised there, they
            # would chain aiohttp's exception, whose message holds the URL and its secrets.
            error: HttpError | None = None
            try:
                with breaker.guard():
                    response = await send(
                        session, upstream, method, url, params, json, headers, timeout
                    )
            except CircuitOpenError as exc:
                upstream.rejections.inc()
                error = UpstreamUnavailableError(
                    method, redact_url(url), host, exc.retry_after, str(exc)
                )
            except RequestNotSent as exc:
                error = exc.error
            except ServerError as exc:
                response = exc.response
            except TimeoutError as exc:
                # Connection timeouts mean nothing was sent: safe to retry for any method.
                unsent = isinstance(exc, aiohttp.ConnectionTimeoutError)
                if attempt < self._attempts and (idempotent or unsent):
                    await self._pause(upstream, method, self._backoff_s(attempt))
                    continue
                limit = timeout.total if timeout.total is not None else self._timeout_s
                error = UpstreamTimeoutError(
                    f"{method} {redact_url(url)} timed out "
                    f"{'connecting' if unsent else f'after {limit:g}s'} "
                    f"(attempt {attempt} of {self._attempts})",
                    method=method,
                    url=redact_url(url),
                    host=host,
                )
            except aiohttp.ClientError as exc:
                transient = isinstance(exc, _TRANSIENT) and not isinstance(exc, _PERMANENT)
                unsent = isinstance(exc, aiohttp.ClientConnectorError)
                if transient and attempt < self._attempts and (idempotent or unsent):
                    await self._pause(upstream, method, self._backoff_s(attempt))
                    continue
                cause = _scrub(f"{type(exc).__name__}: {exc}", _secrets_in(url, params))
                error = UpstreamConnectionError(
                    f"{method} {redact_url(url)} failed after {attempt} attempt(s): {cause}",
                    method=method,
                    url=redact_url(url),
                    host=host,
                )
            if error is not None:
                raise error

            status = response.status
            if status < 400:
                return response
            retry_after = (
                _retry_after_s(response.headers.get("Retry-After"))
                if status in (429, 503)
                else None
            )
            # 5xx may be retried only if running the request twice is harmless; 429 always.
            retry = (status == 429 or (status >= 500 and idempotent)) and attempt < self._attempts
            detail = ""
            if retry and retry_after is not None and retry_after > self._retry_after_max_s:
                retry = False
                detail = (
                    f"Retry-After asks for {retry_after:.1f}s, more than "
                    f"retry_after_max_s={self._retry_after_max_s:g}"
                )
            if retry:
                delay = retry_after if retry_after is not None else self._backoff_s(attempt)
                await self._pause(upstream, method, delay)
                continue
            raise UpstreamStatusError(
                method,
                redact_url(url),
                host,
                response,
                attempts=attempt,
                retry_after=retry_after,
                detail=detail,
                body_in_message=self._error_body_bytes,
            )

    async def _limited_attempt(
        self,
        session: aiohttp.ClientSession,
        upstream: UpstreamHost,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        json: Any,
        headers: Mapping[str, str] | None,
        client_timeout: aiohttp.ClientTimeout,
    ) -> HttpResponse:
        try:
            await self._acquire_slot(method, url)
        except RateLimitedError as exc:
            raise RequestNotSent(exc) from None
        try:
            response = await self._attempt(
                session, upstream, method, url, params, json, headers, client_timeout
            )
        except RequestNotSent:
            # No pool slot came free: nothing reached the upstream, so nothing enters the window.
            self._in_flight -= 1
            self._slot_released.set()
            raise
        except BaseException:
            await self._release_slot()
            raise
        await self._release_slot()
        return response

    async def _attempt(
        self,
        session: aiohttp.ClientSession,
        upstream: UpstreamHost,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        json: Any,
        headers: Mapping[str, str] | None,
        client_timeout: aiohttp.ClientTimeout,
    ) -> HttpResponse:
        pool, per_host = self._pool_slots, upstream.slots
        if pool is not None or per_host is not None:
            try:
                async with asyncio.timeout(self._pool_timeout_s):
                    if per_host is not None:
                        await per_host.acquire()
                    try:
                        if pool is not None:
                            await pool.acquire()
                    except BaseException:
                        if per_host is not None:
                            per_host.release()
                        raise
            except TimeoutError:
                self._m_pool_timeouts.inc()
                error = PoolTimeoutError(
                    method, redact_url(url), upstream.host, self._pool_timeout_s
                )
                raise RequestNotSent(error) from None
        try:
            return await self._send_once(
                session, upstream, method, url, params, json, headers, client_timeout
            )
        finally:
            if pool is not None:
                pool.release()
            if per_host is not None:
                per_host.release()

    async def _send_once(
        self,
        session: aiohttp.ClientSession,
        upstream: UpstreamHost,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        json: Any,
        headers: Mapping[str, str] | None,
        client_timeout: aiohttp.ClientTimeout,
    ) -> HttpResponse:
        started = time.perf_counter()
        try:
            async with session.request(
                method, url, params=params, json=json, headers=headers, timeout=client_timeout
            ) as resp:
                response = HttpResponse(resp.status, resp.headers, await resp.read())
        except (TimeoutError, aiohttp.ClientError):
            upstream.observe(method, "error", time.perf_counter() - started)
            raise
        upstream.observe(method, response.status, time.perf_counter() - started)
        if response.status >= 500:
            raise ServerError(response)
        return response

    async def _pause(self, upstream: UpstreamHost, method: str, delay: float) -> None:
        upstream.retried(method)
        await asyncio.sleep(delay)

    def _backoff_s(self, retry: int) -> float:
        ceiling = min(self._max_backoff_s, self._initial_backoff_s * 2.0 ** min(retry - 1, 60))
        return ceiling / 2 + random.random() * ceiling / 2

    async def _acquire_slot(self, method: str, url: str) -> None:
        assert self._limiter is not None
        item = self._limiter[1]
        # Newcomers queue behind waiters (FIFO through the lock) rather than overtake them.
        if not self._limit_queue.locked() and await self._try_admit():
            return
        if self._rate_limit_mode == "reject":
            self._m_rate_limit_rejections.inc()
            delay = await self._slot_free_in()
            retry_after = item.get_expiry() if delay is None else delay
            raise RateLimitedError(method, redact_url(url), str(item), retry_after)
        self._m_rate_limit_waits.inc()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._rate_limit_max_wait_s
        try:
            async with asyncio.timeout_at(deadline), self._limit_queue:
                while not await self._try_admit():
                    delay = await self._slot_free_in()
                    # With every slot in flight, the first frees a window after one completes.
                    at_least = item.get_expiry() if delay is None else delay
                    if loop.time() + at_least > deadline:
                        raise RateLimitedError(method, redact_url(url), str(item), at_least)
                    if delay is None:
                        self._slot_released.clear()
                        await self._slot_released.wait()
                    else:
                        await asyncio.sleep(delay)
        except TimeoutError:
            self._m_rate_limit_rejections.inc()
            raise RateLimitedError(
                method, redact_url(url), str(item), self._rate_limit_max_wait_s
            ) from None
        except RateLimitedError:
            self._m_rate_limit_rejections.inc()
            raise

    async def _try_admit(self) -> bool:
        """Take a slot if the window's entries plus the requests in flight leave one free."""
        assert self._limiter is not None
        limiter, item = self._limiter
        # MemoryStorage never suspends here, so nothing runs between the test and the count.
        if await limiter.test(item, self.name, cost=self._in_flight + 1):
            self._in_flight += 1
            return True
        return False

    async def _release_slot(self) -> None:
        """Move a finished request from in flight into the window, stamped now."""
        assert self._limiter is not None
        limiter, item = self._limiter
        try:
            # Cannot fail, the slot being held in flight; but it may wait for the storage's
            # lock, and until it has entered the window the request must still count.
            await limiter.hit(item, self.name)
        finally:
            self._in_flight -= 1
            self._slot_released.set()

    async def _slot_free_in(self) -> float | None:
        """Seconds until the oldest entry leaves the window (plus slack for clock steps);
        None when the window is empty, i.e. every slot is held by a request in flight."""
        assert self._limiter is not None
        limiter, item = self._limiter
        stats = await limiter.get_window_stats(item, self.name)
        if stats.remaining >= item.amount:
            return None
        return max(0.0, stats.reset_time - time.time()) + _CLOCK_SLACK_S

    @staticmethod
    def _decode(method: str, path: str, response: HttpResponse) -> Any:
        if not response.body:
            return None
        try:
            return response.json()
        except ValueError as exc:
            # Not the body itself, nor the decoder's error (which holds it as `doc`): a body
            # may echo the request's credentials.
            reason = f"{type(exc).__name__} at {getattr(exc, 'pos', '?')}"
        url = redact_url(path)
        raise HttpError(
            f"{method} {url} -> HTTP {response.status} with a body that is not JSON "
            f"({len(response.body)} bytes; {reason})",
            method=method,
            url=url,
        )
