"""The errors the HTTP kit's client raises. Every URL they hold or print is redacted
(``redact_url``), and no message holds a credential of the request."""

from __future__ import annotations

from typing import Final

from integrations.http.response import (
    HttpResponse,
)
from integrations.support import (
    DependencyTimeoutError,
    DependencyUnavailableError,
)

__all__ = [
    "HttpError",
    "PoolTimeoutError",
    "RateLimitedError",
    "ResponseTooLargeError",
    "UpstreamConnectionError",
    "UpstreamStatusError",
    "UpstreamTimeoutError",
    "UpstreamUnavailableError",
]

BODY_IN_ERRORS: Final = 1024  # bytes of the upstream's body kept on UpstreamStatusError.body


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
        body = response.body[:BODY_IN_ERRORS]
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


class UpstreamTimeoutError(HttpError, DependencyTimeoutError):
    """An attempt took longer than its timeout (the last one, when retried)."""


class UpstreamConnectionError(HttpError):
    """No usable response came back: refused, reset, disconnected, DNS or TLS failure (or an
    aiohttp-level refusal such as an invalid URL or a redirect loop)."""


class ResponseTooLargeError(HttpError):
    """The upstream's body is longer than ``max_body_bytes``: reading stopped there, and the
    connection was closed rather than drained. Not retried (the same request would get the
    same body)."""

    def __init__(self, method: str, url: str, host: str, max_body_bytes: int) -> None:
        super().__init__(
            f"{method} {url}: the response body is over max_body_bytes={max_body_bytes}",
            method=method,
            url=url,
            host=host,
        )
        self.max_body_bytes = max_body_bytes


class PoolTimeoutError(HttpError, DependencyUnavailableError):
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


class UpstreamUnavailableError(HttpError, DependencyUnavailableError):
    """The host's circuit is open (or its half-open probe is in flight); nothing was sent."""

    def __init__(self, method: str, url: str, host: str, retry_after: float, reason: str) -> None:
        super().__init__(f"{method} {url} not sent: {reason}", method=method, url=url, host=host)
        self.retry_after = retry_after


class RateLimitedError(HttpError, DependencyUnavailableError):
    """The client's own rate limit refused the request (reject mode, or too long a wait)."""

    def __init__(self, method: str, url: str, limit: str, retry_after: float) -> None:
        super().__init__(
            f"{method} {url} not sent: client rate limit {limit} reached; "
            f"a slot frees in {retry_after:.2f}s",
            method=method,
            url=url,
        )
        self.retry_after = retry_after
