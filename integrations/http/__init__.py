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

A response body is read whole, up to ``max_body_bytes`` (10 MiB by default); a longer one raises
``ResponseTooLargeError`` and its connection is closed. Final statuses >= 400 raise
``UpstreamStatusError`` (``request(raise_for_status=False)`` returns them instead). Redirects
are not followed: a 3xx is the response (``get_json`` and ``post_json`` raise on it), so that
everything the upstream receives went through the steps above as a request of its own; a
redirect followed after a POST had run would otherwise be retried as if nothing had been sent.

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

Modules: ``client`` (``HttpClient``: the order above, retries, pool slots), ``cache`` (the
coalescing LRU + TTL cache), ``rate_limit`` (the moving window), ``upstream`` (per-host breaker,
slots and metric children), ``errors``, ``response``, ``redaction`` and ``metrics``. Import
from the package: the names below are its interface.
"""

from integrations.http.client import (
    HttpClient,
    SecretLike,
)
from integrations.http.errors import (
    HttpError,
    PoolTimeoutError,
    RateLimitedError,
    ResponseTooLargeError,
    UpstreamConnectionError,
    UpstreamStatusError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from integrations.http.redaction import (
    SENSITIVE_QUERY_KEY_PARTS,
    SENSITIVE_QUERY_KEYS,
    redact_url,
)
from integrations.http.response import (
    HttpResponse,
)

__all__ = [
    "SENSITIVE_QUERY_KEYS",
    "SENSITIVE_QUERY_KEY_PARTS",
    "HttpClient",
    "HttpError",
    "HttpResponse",
    "PoolTimeoutError",
    "RateLimitedError",
    "ResponseTooLargeError",
    "SecretLike",
    "UpstreamConnectionError",
    "UpstreamStatusError",
    "UpstreamTimeoutError",
    "UpstreamUnavailableError",
    "redact_url",
]
