"""The HTTP kit's client: per request, cache, rate limit, circuit breaker, pool slot and retries,
in that order (the package docstring says what each does)."""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
from collections.abc import Mapping
from datetime import UTC
from types import TracebackType
from typing import Any, Final, Literal, Protocol
from urllib.parse import urlsplit

import aiohttp
import yarl
from prometheus_client import CollectorRegistry

from integrations.http.cache import (
    CoalescingCache,
    RequestKey,
    request_key,
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
from integrations.http.metrics import (
    metrics_for,
)
from integrations.http.rate_limit import (
    MovingWindowRateLimit,
)
from integrations.http.redaction import (
    redact_url,
    scrub,
    secrets_in,
)
from integrations.http.response import (
    HttpResponse,
)
from integrations.http.upstream import (
    UpstreamHost,
)
from integrations.support import (
    Backoff,
)
from mixins.circuit_breaker import (
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
)

__all__ = ["HttpClient", "SecretLike"]

_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_CACHEABLE: Final = frozenset({"GET", "HEAD"})

_IDEMPOTENCY_HEADER: Final = "Idempotency-Key"

# Transport errors worth retrying and counting against the upstream; TLS and fingerprint
# failures are configuration problems that a retry or an open breaker would not fix.
_TRANSIENT: Final = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)
_PERMANENT: Final = (aiohttp.ClientSSLError, aiohttp.ServerFingerprintMismatch)


class SecretLike(Protocol):
    """pydantic's ``SecretStr``, or anything else that hides a string until asked."""

    def get_secret_value(self) -> str: ...


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


def _parses(url: str) -> bool:
    try:
        parsed = yarl.URL(url)
        return bool(parsed.host) and parsed.port is not None
    except (TypeError, ValueError):
        return False


def _host_of(url: str) -> str:
    return urlsplit(url).netloc.rpartition("@")[2].lower()


class RequestNotSent(BaseException):
    """Carries a RateLimitedError or PoolTimeoutError out through the breaker. A BaseException,
    like a cancellation, so that the breaker records no verdict: the upstream was never called."""

    def __init__(self, error: RateLimitedError | PoolTimeoutError) -> None:
        super().__init__(str(error))
        self.error = error


class HttpClient:
    """See the package docstring. Use ``async with HttpClient(...) as client`` or open()/close().

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
        max_body_bytes: int = 10 * 1024 * 1024,
    ) -> None:
        if not isinstance(base_url, str):
            base_url = base_url.get_secret_value()
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"base_url must be an http:// or https:// URL, got {redact_url(base_url)!r}"
            )
        if not _parses(base_url):
            # Caught here, not at the first request: aiohttp's error for a URL it cannot
            # parse is the whole URL, credentials included.
            raise ValueError(
                "base_url is not a valid URL (a port out of 0-65535, an unclosed IPv6 "
                "bracket, no host?); it is not shown, since it may hold credentials"
            )
        if pool_limit < 0 or pool_limit_per_host < 0:
            raise ValueError("pool_limit and pool_limit_per_host must not be negative")
        if timeout_s <= 0 or connect_timeout_s <= 0 or pool_timeout_s <= 0:
            raise ValueError("timeout_s, connect_timeout_s and pool_timeout_s must be positive")
        if error_body_bytes < 0:
            raise ValueError(f"error_body_bytes must not be negative, got {error_body_bytes}")
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be at least 1, got {max_body_bytes}")
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
        self._max_body_bytes = max_body_bytes
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self._attempts = retry_attempts
        # Equal jitter: the n-th wait is uniform in [b/2, b], spread out yet never ~0.
        self._backoff = Backoff(
            initial_s=retry_initial_backoff_s, max_s=retry_max_backoff_s, jitter=0.5
        )
        self._retry_after_max_s = retry_after_max_s
        self._breaker_settings: dict[str, Any] = {
            "failure_rate_threshold": breaker_failure_rate,
            "window_size": breaker_window,
            "minimum_calls": breaker_minimum_calls,
            "reset_timeout_s": breaker_reset_timeout_s,
        }
        self._default_headers = dict(default_headers or {})
        self._session: aiohttp.ClientSession | None = None

        self._registry = registry if registry is not None else CollectorRegistry()
        self._metrics = metrics_for(self._registry)
        self._m_pool_timeouts = self._metrics.pool_timeouts.labels(name)
        self._rate_limit: MovingWindowRateLimit | None = None
        if rate_limit is not None:
            self._rate_limit = MovingWindowRateLimit(
                rate_limit,
                mode=rate_limit_mode,
                max_wait_s=rate_limit_max_wait_s,
                waits=self._metrics.rate_limit_waits.labels(name),
                rejections=self._metrics.rate_limit_rejections.labels(name),
            )
        self._cache: CoalescingCache[RequestKey, HttpResponse] | None = None
        if cache_ttl_s > 0:
            self._cache = CoalescingCache(
                size=cache_size,
                ttl_s=cache_ttl_s,
                keep=lambda response: 200 <= response.status < 300,
                hits=self._metrics.cache_hits.labels(name),
                misses=self._metrics.cache_misses.labels(name),
            )
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
        """GET and parse the JSON body (None for an empty one); >= 400 and 3xx raise."""
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
        """Send a request through cache, rate limit, breaker and retries (package docstring).

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
                return await self._cache.get_or_fetch(
                    request_key(method, url, params, headers),
                    lambda: self._send(method, url, host, params, None, headers, timeout_s),
                )
            return await self._send(method, url, host, params, json, headers, timeout_s)
        except UpstreamStatusError as exc:
            if raise_for_status:
                raise
            return exc.response

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
        send = self._attempt if self._rate_limit is None else self._limited_attempt
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
                    await self._pause(upstream, method, self._backoff.delay(attempt))
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
                    await self._pause(upstream, method, self._backoff.delay(attempt))
                    continue
                if isinstance(exc, aiohttp.InvalidURL):
                    # Its text is the URL, and one that does not parse hides where its
                    # secrets are: only the class is safe to show.
                    cause = type(exc).__name__
                else:
                    cause = scrub(f"{type(exc).__name__}: {exc}", secrets_in(url, params))
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
                delay = retry_after if retry_after is not None else self._backoff.delay(attempt)
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
        assert self._rate_limit is not None
        try:
            await self._rate_limit.acquire(method, url)
        except RateLimitedError as exc:
            raise RequestNotSent(exc) from None
        try:
            response = await self._attempt(
                session, upstream, method, url, params, json, headers, client_timeout
            )
        except RequestNotSent:
            # No pool slot came free: nothing reached the upstream, so nothing enters the window.
            self._rate_limit.release_unsent()
            raise
        except BaseException:
            self._rate_limit.release()
            raise
        self._rate_limit.release()
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
        if (per_host is not None and per_host.locked()) or (pool is not None and pool.locked()):
            await self._wait_for_slots(per_host, pool, method, url, upstream.host)
        else:
            # A free slot is taken without suspending, so no deadline is armed for it: the
            # deadline's timer was most of what the pool cost a request that does not wait.
            if per_host is not None:
                await per_host.acquire()
            if pool is not None:
                await pool.acquire()
        started = time.perf_counter()
        try:
            # Not following redirects: each hop would reach an upstream without its own
            # attempt, so a POST whose redirect failed would be sent again, and the rate
            # limit and the breaker would count one request for several.
            async with session.request(
                method,
                url,
                params=params,
                json=json,
                headers=headers,
                timeout=client_timeout,
                allow_redirects=False,
            ) as resp:
                length = resp.content_length
                if length is not None and length <= self._max_body_bytes:
                    body = await resp.read()  # aiohttp reads no more than the declared length
                else:
                    body = await self._read_capped(resp, method, url, upstream.host)
                response = HttpResponse(resp.status, resp.headers, body)
        except (TimeoutError, aiohttp.ClientError):
            upstream.observe(method, "error", time.perf_counter() - started)
            raise
        finally:
            if pool is not None:
                pool.release()
            if per_host is not None:
                per_host.release()
        upstream.observe(method, response.status, time.perf_counter() - started)
        if response.status >= 500:
            raise ServerError(response)
        return response

    async def _read_capped(
        self, resp: aiohttp.ClientResponse, method: str, url: str, host: str
    ) -> bytes:
        """A body whose declared length is over ``max_body_bytes`` (ResponseTooLargeError), or
        that declares none (chunked, or until the connection closes): counted as it comes."""
        limit = self._max_body_bytes
        if resp.content_length is None:
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_any():
                size += len(chunk)
                if size > limit:
                    break
                chunks.append(chunk)
            else:
                return b"".join(chunks)
        raise ResponseTooLargeError(method, redact_url(url), host, limit)

    async def _wait_for_slots(
        self,
        per_host: asyncio.Semaphore | None,
        pool: asyncio.Semaphore | None,
        method: str,
        url: str,
        host: str,
    ) -> None:
        """Take a slot per host, then one of the pool, within ``pool_timeout_s``."""
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
            error = PoolTimeoutError(method, redact_url(url), host, self._pool_timeout_s)
            raise RequestNotSent(error) from None

    async def _pause(self, upstream: UpstreamHost, method: str, delay: float) -> None:
        upstream.retried(method)
        await asyncio.sleep(delay)

    @staticmethod
    def _decode(method: str, path: str, response: HttpResponse) -> Any:
        if 300 <= response.status < 400:
            location = response.headers.get("Location")
            raise HttpError(
                f"{method} {redact_url(path)} -> HTTP {response.status}: redirects are not "
                f"followed (Location: {redact_url(location) if location else 'none'}); call "
                "the URL it names instead",
                method=method,
                url=redact_url(path),
            )
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
