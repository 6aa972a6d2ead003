"""The HTTP client kit against a real local aiohttp server whose routes misbehave on demand."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import email.utils
import logging
import socket
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import BasicAuth, web
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from integrations.http import (
    HttpClient,
    HttpError,
    HttpResponse,
    PoolTimeoutError,
    RateLimitedError,
    ResponseTooLargeError,
    UpstreamConnectionError,
    UpstreamStatusError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)


class Upstream:
    """A local server and what it saw. Routes (first path segment):

    ``/ok``, ``/echo`` 200 with the hit count; ``/flaky/N`` 500 until the N-th hit, then 200;
    ``/status/C`` status C; ``/toggle`` 500 until ``healthy``; ``/slow`` hangs until the test
    ends; ``/retry-after/V`` 429 with ``Retry-After: V`` on the first hit, then 200 (V ``date``
    gives an HTTP date an hour ahead); ``/hold`` 200 after 50 ms, tracking concurrency;
    ``/gate`` waits for ``gate`` (set at first), then answers like ``/toggle``; ``/leak`` 500
    and ``/leak-text`` 200 (not JSON) echo the request's URL and Authorization header, as a
    careless upstream's error page might; ``/redirect/P`` answers 303 to port P; ``/big/N``
    and ``/big-chunked/N`` answer N bytes, with and without a Content-Length.
    """

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.arrivals: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.healthy = False
        self.release = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()
        self.arrived = asyncio.Event()  # set by every request's arrival
        self.url = ""
        self.host = ""
        self.port = 0
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        self.arrivals.append(time.monotonic())
        self.arrived.set()
        count = self.hits[request.path]
        route, _, arg = request.path.strip("/").partition("/")
        if route in ("ok", "echo"):
            return web.json_response({"hits": count, "query": dict(request.query)})
        if route == "flaky":
            if count < int(arg):
                return web.Response(status=500, text="boom")
            return web.json_response({"ok": True})
        if route == "status":
            return web.Response(status=int(arg), text="nope")
        if route == "toggle":
            return web.json_response({"ok": True}, status=200 if self.healthy else 500)
        if route == "gate":
            await self.gate.wait()
            return web.json_response({"ok": True}, status=200 if self.healthy else 500)
        if route in ("leak", "leak-text"):
            auth = request.headers.get("Authorization")
            login = BasicAuth.decode(auth) if auth else None
            echo = f"{request.url} {login.login}:{login.password}" if login else str(request.url)
            return web.Response(status=500 if route == "leak" else 200, text=echo)
        if route == "big":
            return web.Response(body=b"x" * int(arg))
        if route == "big-chunked":
            streamed = web.StreamResponse()
            streamed.enable_chunked_encoding()
            await streamed.prepare(request)
            for _ in range(int(arg) // 1000):
                await streamed.write(b"x" * 1000)
            await streamed.write_eof()
            return streamed
        if route == "redirect":
            raise web.HTTPSeeOther(f"http://127.0.0.1:{arg}/ok?token=s3cr3t")
        if route == "slow":
            await self.release.wait()
            return web.json_response({"late": True})
        if route == "retry-after":
            if count == 1:
                value = arg
                if arg == "date":
                    value = email.utils.formatdate(time.time() + 3600, usegmt=True)
                return web.Response(status=429, headers={"Retry-After": value})
            return web.json_response({"ok": True})
        if route == "hold":
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await asyncio.sleep(0.05)
            finally:
                self.in_flight -= 1
            return web.json_response({"held": True})
        return web.Response(status=404)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    runner = web.AppRunner(up.app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    up.port = port = runner.addresses[0][1]
    up.host = f"127.0.0.1:{port}"
    up.url = f"http://{up.host}"
    yield up
    up.release.set()
    await runner.cleanup()


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A port bound but not listening: connecting to it is refused, and nothing else takes it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def slow_to_connect(target_port: int, delay_s: float) -> AsyncIterator[str]:
    """A TCP proxy to ``target_port`` that holds each new connection ``delay_s`` before
    forwarding anything, like a far-away upstream or a TLS handshake; yields its base URL."""

    async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        finally:
            sink.close()

    async def handle(client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        await asyncio.sleep(delay_s)
        reader, writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(
            pipe(client_reader, writer), pipe(reader, client), return_exceptions=True
        )

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


def client_for(url: str, **overrides: Any) -> HttpClient:
    settings: dict[str, Any] = {
        "retry_initial_backoff_s": 0.01,
        "retry_max_backoff_s": 0.05,
        "timeout_s": 2.0,
    }
    settings.update(overrides)
    return HttpClient(url, **settings)


def sample(client: HttpClient, name: str, **labels: str) -> float:
    value = client.registry.get_sample_value(
        f"http_client_{name}", {"client": client.name, **labels}
    )
    return 0.0 if value is None else value


def max_in_any_window(times: list[float], window_s: float) -> int:
    """The most arrivals in any closed interval of ``window_s`` (each starts at an arrival)."""
    ordered = sorted(times)
    return max(bisect.bisect_right(ordered, t + window_s) - i for i, t in enumerate(ordered))


async def test_5xx_is_retried_until_success(upstream: Upstream) -> None:
    async with client_for(upstream.url, retry_attempts=4) as client:
        assert await client.get_json("/flaky/4") == {"ok": True}
        assert sample(client, "retries_total", host=upstream.host, method="GET") == 3
    assert upstream.hits["/flaky/4"] == 4


async def test_post_is_not_retried_on_5xx(upstream: Upstream) -> None:
    async with client_for(upstream.url, retry_attempts=4) as client:
        with pytest.raises(UpstreamStatusError) as caught:
            await client.post_json("/flaky/2", {"x": 1})
    assert caught.value.status == 500
    assert upstream.hits["/flaky/2"] == 1


async def test_a_post_that_ran_is_sent_once_whatever_its_redirect_leads_to(
    upstream: Upstream, dead_port: int
) -> None:
    # Followed, the redirect's refused connection would read as "nothing was sent".
    async with client_for(upstream.url, retry_attempts=3) as client:
        with pytest.raises(HttpError, match="redirects are not followed") as caught:
            await client.post_json(f"/redirect/{dead_port}", {"order": 1})
        response = await client.request("POST", f"/redirect/{dead_port}", json={"order": 2})
    assert upstream.hits[f"/redirect/{dead_port}"] == 2
    assert "s3cr3t" not in str(caught.value)
    assert response.status == 303
    assert response.headers["Location"].startswith(f"http://127.0.0.1:{dead_port}/")


async def test_a_body_longer_than_max_body_bytes_is_refused_declared_or_chunked(
    upstream: Upstream,
) -> None:
    async with client_for(upstream.url, max_body_bytes=10_000) as client:
        assert len((await client.request("GET", "/big/10000")).body) == 10_000
        assert len((await client.request("GET", "/big-chunked/10000")).body) == 10_000
        for path in ("/big/10001", "/big-chunked/50000"):
            with pytest.raises(ResponseTooLargeError, match="max_body_bytes=10000"):
                await client.request("GET", path)
            assert upstream.hits[path] == 1  # not retried
        assert (await client.get_json("/ok"))["hits"] == 1  # the client goes on


async def test_permanent_5xx_opens_the_breaker_which_fails_fast_then_closes_on_a_probe(
    upstream: Upstream,
) -> None:
    client = client_for(
        upstream.url,
        retry_attempts=2,
        breaker_window=4,
        breaker_minimum_calls=4,
        breaker_failure_rate=0.5,
        breaker_reset_timeout_s=0.3,
    )
    async with client:
        with pytest.raises(UpstreamStatusError) as caught:
            await client.get_json("/toggle")
        assert caught.value.status == 500
        assert caught.value.host == upstream.host
        assert caught.value.attempts == 2
        assert b"ok" in caught.value.body
        assert upstream.hits["/toggle"] == 2
        assert client.breaker_state(upstream.host) == "closed"

        with pytest.raises(UpstreamStatusError):
            await client.get_json("/toggle")  # failures 3 and 4 of 4: the breaker opens
        assert upstream.hits["/toggle"] == 4
        assert client.breaker_state(upstream.host) == "open"

        started = time.monotonic()
        with pytest.raises(UpstreamUnavailableError) as unavailable:
            await client.get_json("/toggle")
        assert time.monotonic() - started < 0.1
        assert 0 < unavailable.value.retry_after <= 0.3
        assert upstream.host in str(unavailable.value)
        assert upstream.hits["/toggle"] == 4  # nothing was sent
        assert sample(client, "breaker_rejections_total", host=upstream.host) == 1

        upstream.healthy = True
        await asyncio.sleep(0.35)
        assert client.breaker_state(upstream.url) == "half_open"
        assert await client.get_json("/toggle") == {"ok": True}
        assert client.breaker_state(upstream.host) == "closed"
        assert upstream.hits["/toggle"] == 5


async def test_breakers_are_per_host(upstream: Upstream, dead_port: int) -> None:
    dead = f"http://127.0.0.1:{dead_port}/x"
    async with client_for(upstream.url, retry_attempts=1, breaker_minimum_calls=2) as client:
        for _ in range(2):
            with pytest.raises(UpstreamConnectionError):
                await client.request("GET", dead)
        assert client.breaker_state(dead) == "open"
        with pytest.raises(UpstreamUnavailableError):
            await client.request("GET", dead)
        assert client.breaker_state(upstream.host) == "closed"
        assert (await client.get_json("/ok"))["hits"] == 1


async def test_404_is_not_retried_and_is_not_a_breaker_failure(upstream: Upstream) -> None:
    # A breaker that opens on a single failure: a 404 counted as one would open it.
    client = client_for(
        upstream.url, breaker_window=1, breaker_minimum_calls=1, breaker_failure_rate=1.0
    )
    async with client:
        with pytest.raises(UpstreamStatusError) as caught:
            await client.get_json("/status/404")
        assert caught.value.status == 404
        assert caught.value.body == b"nope"
        assert "GET" in str(caught.value)
        assert "/status/404" in str(caught.value)
        assert upstream.hits["/status/404"] == 1
        assert client.breaker_state(upstream.host) == "closed"
        response = await client.request("GET", "/status/404", raise_for_status=False)
        assert response.status == 404
        assert response.text() == "nope"
    assert upstream.hits["/status/404"] == 2


async def test_a_slow_response_times_out_promptly_and_only_gets_are_retried(
    upstream: Upstream,
) -> None:
    async with client_for(upstream.url, timeout_s=0.2, retry_attempts=2) as client:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeoutError) as caught:
            async with asyncio.timeout(3):  # /slow never answers: a regression fails, not hangs
                await client.get_json("/slow")
        assert time.monotonic() - started < 1.0
        assert "timed out" in str(caught.value)
        assert upstream.hits["/slow"] == 2  # a GET is retried after a timeout
    async with client_for(upstream.url, timeout_s=5.0, retry_attempts=2) as client:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeoutError):
            async with asyncio.timeout(3):
                await client.request("POST", "/slow", json={}, timeout_s=0.2)
        assert time.monotonic() - started < 1.0
        assert upstream.hits["/slow"] == 3  # a POST is not: it may have been processed


async def test_429_waits_for_retry_after_then_succeeds(upstream: Upstream) -> None:
    async with client_for(upstream.url, retry_max_backoff_s=0.01) as client:
        started = time.monotonic()
        assert await client.get_json("/retry-after/0.3") == {"ok": True}
        assert time.monotonic() - started >= 0.3
        assert upstream.hits["/retry-after/0.3"] == 2
        # A 429 means the request was refused, so even a POST is sent again.
        assert await client.post_json("/retry-after/0.05", {}) == {"ok": True}
        assert upstream.hits["/retry-after/0.05"] == 2


@pytest.mark.parametrize("value", ["120", "date"])
async def test_a_retry_after_beyond_the_cap_raises_without_waiting(
    upstream: Upstream, value: str
) -> None:
    async with client_for(upstream.url, retry_after_max_s=1.0) as client:
        started = time.monotonic()
        # The outer timeout turns a regression that waits (an hour, for the date) into a failure.
        with pytest.raises(UpstreamStatusError) as caught:
            async with asyncio.timeout(2):
                await client.get_json(f"/retry-after/{value}")
        assert time.monotonic() - started < 0.5
    assert caught.value.status == 429
    assert caught.value.retry_after is not None
    assert caught.value.retry_after > 100
    assert "Retry-After" in str(caught.value)
    assert upstream.hits[f"/retry-after/{value}"] == 1


async def test_wait_mode_never_exceeds_the_limit_in_any_window(upstream: Upstream) -> None:
    async with client_for(upstream.url, rate_limit="10/second") as client:
        started = time.monotonic()
        results = await asyncio.gather(*(client.get_json("/echo") for _ in range(30)))
        elapsed = time.monotonic() - started
        assert sample(client, "rate_limit_waits_total") >= 20
    assert len(results) == 30
    assert upstream.hits["/echo"] == 30
    assert max_in_any_window(upstream.arrivals, 1.0) <= 10
    assert elapsed >= 2.0  # 30 requests at 10 per second: three windows


async def test_slow_connection_set_up_cannot_squeeze_more_into_a_window(
    upstream: Upstream,
) -> None:
    # The first ten requests arrive 0.1 s after being let through, on new connections; the next
    # ten reuse those and arrive at once. Were slots stamped when let through, the second ten
    # would arrive a second after the first ten were let through: within a second of them.
    async with slow_to_connect(upstream.port, 0.1) as url:
        client = client_for(url, rate_limit="10/second")
        async with client:
            await asyncio.gather(*(client.get_json("/echo") for _ in range(20)))
    assert upstream.hits["/echo"] == 20
    assert max_in_any_window(upstream.arrivals, 1.0) <= 10


async def test_the_window_moves_rather_than_resets(upstream: Upstream) -> None:
    # Half a window in, half the limit is spent: a window that reset after a second would let
    # a full limit through at t=1, ten arrivals after the five at t=0.5.
    async with client_for(upstream.url, rate_limit="10/second") as client:
        for _ in range(5):
            await client.get_json("/echo")
        await asyncio.sleep(0.5)
        await asyncio.gather(*(client.get_json("/echo") for _ in range(15)))
    assert upstream.hits["/echo"] == 20
    assert max_in_any_window(upstream.arrivals, 1.0) <= 10


async def test_reject_mode_refuses_the_excess_immediately(upstream: Upstream) -> None:
    async with client_for(upstream.url, rate_limit="10/second", rate_limit_mode="reject") as c:
        started = time.monotonic()
        results = await asyncio.gather(
            *(c.get_json("/echo") for _ in range(15)), return_exceptions=True
        )
        assert time.monotonic() - started < 0.5
        rejected = [r for r in results if isinstance(r, RateLimitedError)]
        assert len(rejected) == 5
        assert all(0 < r.retry_after <= 1.0 for r in rejected)
        assert sample(c, "rate_limit_rejections_total") == 5
    assert upstream.hits["/echo"] == 10


async def test_wait_mode_raises_when_the_wait_would_exceed_the_maximum(
    upstream: Upstream,
) -> None:
    async with client_for(upstream.url, rate_limit="2/second", rate_limit_max_wait_s=0.2) as c:
        await c.get_json("/echo")
        await c.get_json("/echo")
        started = time.monotonic()
        with pytest.raises(RateLimitedError):
            await c.get_json("/echo")
        assert time.monotonic() - started < 0.15
    assert upstream.hits["/echo"] == 2


async def test_get_is_cached_until_the_ttl_expires(upstream: Upstream) -> None:
    async with client_for(upstream.url, cache_ttl_s=0.3) as client:
        first = await client.get_json("/echo", params={"a": "1", "b": "2"})
        again = await client.get_json("/echo", params={"b": "2", "a": "1"})
        assert first == again == {"hits": 1, "query": {"a": "1", "b": "2"}}
        assert upstream.hits["/echo"] == 1
        assert sample(client, "cache_hits_total") == 1
        assert sample(client, "cache_misses_total") == 1
        await client.get_json("/echo", params={"a": "other"})  # other params, other entry
        assert upstream.hits["/echo"] == 2
        await asyncio.sleep(0.35)
        refetched = await client.get_json("/echo", params={"a": "1", "b": "2"})
        assert refetched["hits"] == 3
        for _ in range(2):  # errors are not cached
            with pytest.raises(UpstreamStatusError):
                await client.get_json("/status/404")
        assert upstream.hits["/status/404"] == 2


async def test_post_is_never_cached_and_ttl_0_turns_the_cache_off(upstream: Upstream) -> None:
    async with client_for(upstream.url, cache_ttl_s=60.0) as client:
        assert (await client.post_json("/echo", {}))["hits"] == 1
        assert (await client.post_json("/echo", {}))["hits"] == 2
    async with client_for(upstream.url, cache_ttl_s=0.0) as client:
        assert (await client.get_json("/echo"))["hits"] == 3
        assert (await client.get_json("/echo"))["hits"] == 4


async def test_concurrent_identical_misses_are_coalesced(upstream: Upstream) -> None:
    async with client_for(upstream.url, cache_ttl_s=60.0) as client:
        results = await asyncio.gather(*(client.get_json("/hold") for _ in range(10)))
    assert results == [{"held": True}] * 10
    assert upstream.hits["/hold"] == 1


async def test_connection_refused_is_retried_then_raised(dead_port: int) -> None:
    host = f"127.0.0.1:{dead_port}"
    # A breaker that stays closed: the POST below must reach the connection attempt too.
    client = client_for(f"http://{host}", retry_attempts=3, breaker_minimum_calls=20)
    async with client:
        with pytest.raises(UpstreamConnectionError) as caught:
            await client.get_json("/ok")
        assert isinstance(caught.value, HttpError)
        assert "GET" in str(caught.value)
        assert host in str(caught.value)
        assert sample(client, "retries_total", host=host, method="GET") == 2
        assert sample(client, "requests_total", host=host, method="GET", status="error") == 3
        # Nothing was sent, so even a POST is retried.
        with pytest.raises(UpstreamConnectionError):
            await client.post_json("/ok", {})
        assert sample(client, "retries_total", host=host, method="POST") == 2


async def test_metrics_are_labelled_by_client_host_method_and_status(upstream: Upstream) -> None:
    registry = CollectorRegistry()
    # Two clients on one registry (as in a node with two upstreams) share the metric families.
    billing = client_for(upstream.url, name="billing", registry=registry)
    other = client_for(upstream.url, name="other", registry=registry)
    async with billing, other:
        await billing.get_json("/ok")
        await billing.get_json("/ok")
        with pytest.raises(UpstreamStatusError):
            await billing.get_json("/status/404")
        await billing.post_json("/echo", {})
        await other.get_json("/ok")
    assert billing.registry is registry

    def value(name: str, client: str = "billing", **labels: str) -> float | None:
        labels.update(client=client, host=upstream.host)
        return registry.get_sample_value(f"http_client_{name}", labels)

    assert value("requests_total", method="GET", status="200") == 2
    assert value("requests_total", method="GET", status="404") == 1
    assert value("requests_total", method="POST", status="200") == 1
    assert value("requests_total", "other", method="GET", status="200") == 1
    assert value("request_duration_seconds_count", method="GET") == 3
    assert value("request_duration_seconds_count", method="POST") == 1


async def test_the_pool_limit_bounds_requests_in_flight(upstream: Upstream) -> None:
    async with client_for(upstream.url, pool_limit=3) as client:
        await asyncio.gather(*(client.get_json("/hold") for _ in range(12)))
    assert upstream.hits["/hold"] == 12
    assert upstream.max_in_flight == 3


async def test_a_client_that_is_not_open_says_so(upstream: Upstream) -> None:
    client = client_for(upstream.url)
    with pytest.raises(HttpError, match="not open"):
        await client.get_json("/ok")
    assert upstream.hits["/ok"] == 0


# --- Faults and defects of issue 13 ------------------------------------------------------------

PASSWORD = "Sup3rSecretPw"
QUERY_SECRETS = ("QueryK3yValue", "QueryT0kenValue", "ParamS3cretValue")
SECRETS = (PASSWORD, *QUERY_SECRETS)
SECRET_QUERY = f"?api_key={QUERY_SECRETS[0]}&Access_Token={QUERY_SECRETS[1]}&page=2"
SECRET_PARAMS = {"client_secret": QUERY_SECRETS[2]}


def with_credentials(url: str) -> str:
    return url.replace("http://", f"http://svc-user:{PASSWORD}@", 1)


def everything_said_about(error: BaseException) -> str:
    """What a log line or a caller could see of ``error``: str and repr of it and of every
    exception chained to it (suppressed contexts included), the formatted traceback, and its
    attributes (``url``, ``response``)."""
    seen: list[str] = ["".join(traceback.format_exception(error))]
    todo: list[BaseException | None] = [error]
    visited: set[int] = set()
    while todo:
        exc = todo.pop()
        if exc is None or id(exc) in visited:
            continue
        visited.add(id(exc))
        # `body` is what the upstream said, kept for the caller to read; it is in no message.
        attributes = [repr(v) for k, v in vars(exc).items() if k != "body"]
        seen += [str(exc), repr(exc), *attributes]
        todo += [exc.__cause__, exc.__context__]
    return "\n".join(seen)


def assert_no_secret(text: str) -> None:
    leaked = [secret for secret in SECRETS if secret in text]
    assert not leaked, f"{leaked} leaked in: {text}"


class DroppingServer:
    """A raw HTTP/1.1 server that drops the connection of the first ``drops`` requests: after
    the status line, the headers and half the body (``mode="mid-body"``), or before a byte of
    the response (``mode="before-status"``). Later requests are answered in full."""

    def __init__(self, drops: int, mode: str = "mid-body") -> None:
        self.drops = drops
        self.mode = mode
        self.hits = 0
        self.idempotency_keys: list[str | None] = []
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> DroppingServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in head.split("\r\n")[1:])
            }
            await reader.readexactly(int(headers.get("content-length", "0")))
            self.hits += 1
            self.idempotency_keys.append(headers.get("idempotency-key"))
            body = b'{"ok": true, "padding": "' + b"x" * 200 + b'"}'
            status = (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
            )
            if self.hits > self.drops:
                writer.write(status + body)
            elif self.mode == "mid-body":
                writer.write(status + body[: len(body) // 2])
            await writer.drain()
        finally:
            writer.close()  # with a body still owed, or none at all: the connection drops


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A listening port whose accept queue is full, so that connecting to it hangs (as to a
    host that drops SYNs) until the client's connect timeout."""
    with socket.socket() as listener, contextlib.ExitStack() as stack:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        for _ in range(3):
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        yield port


async def test_credentials_in_the_url_never_reach_errors_reprs_or_logs(
    upstream: Upstream, dead_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    said: list[str] = []

    async def failing(client: HttpClient, method: str, path: str) -> HttpError:
        try:
            async with asyncio.timeout(5):
                if method == "GET_JSON":
                    await client.get_json(path, params=SECRET_PARAMS)
                else:
                    await client.request(method, path, params=SECRET_PARAMS)
        except HttpError as exc:
            said.append(everything_said_about(exc))
            return exc
        raise AssertionError(f"{method} {path} did not fail")

    # A 5xx whose body echoes the credentials; then the breaker it opens.
    base = with_credentials(upstream.url)
    client = client_for(base, retry_attempts=2, breaker_window=2, breaker_minimum_calls=2)
    async with client:
        said.append(repr(client))
        status_error = await failing(client, "GET", "/leak" + SECRET_QUERY)
        assert isinstance(status_error, UpstreamStatusError)
        assert PASSWORD.encode() in status_error.body  # the echo really carried it
        assert status_error.status == 500
        assert "/leak" in str(status_error)
        assert isinstance(await failing(client, "GET", "/leak"), UpstreamUnavailableError)
        said.append(repr(status_error.response))
    async with client_for(base) as client:
        said.append(repr(await client.request("GET", "/leak", raise_for_status=False)))
    # A 200 that is not JSON, and echoes the credentials.
    async with client_for(base) as client:
        await failing(client, "GET_JSON", "/leak-text" + SECRET_QUERY)
    # A timeout, for a POST (not retried) and a GET (retried).
    async with client_for(base, timeout_s=0.2, retry_attempts=2) as client:
        assert isinstance(await failing(client, "POST", "/slow" + SECRET_QUERY), HttpError)
        assert isinstance(await failing(client, "GET", "/slow" + SECRET_QUERY), HttpError)
    # Connection refused.
    refused = with_credentials(f"http://127.0.0.1:{dead_port}")
    async with client_for(refused, retry_attempts=2) as client:
        error = await failing(client, "GET", "/x" + SECRET_QUERY)
        assert isinstance(error, UpstreamConnectionError)
        assert f"127.0.0.1:{dead_port}" in str(error)  # still says where it failed
    # A connect timeout: aiohttp's own message holds the whole URL.
    with unanswered_port() as port:
        url = with_credentials(f"http://127.0.0.1:{port}")
        async with client_for(url, connect_timeout_s=0.2, retry_attempts=1) as client:
            assert isinstance(await failing(client, "GET", "/x" + SECRET_QUERY), HttpError)
    # A connection dropped mid-response.
    async with (
        DroppingServer(drops=5) as dropping,
        client_for(with_credentials(dropping.url), retry_attempts=1) as client,
    ):
        await failing(client, "GET", "/x" + SECRET_QUERY)
    # Absolute URLs with credentials, and a client that is not open.
    client = client_for(base)
    await failing(client, "GET", with_credentials(upstream.url) + "/ok" + SECRET_QUERY)
    with pytest.raises(ValueError, match="base_url") as bad:
        HttpClient(f"ftp://svc-user:{PASSWORD}@host/{SECRET_QUERY}")
    said.append(everything_said_about(bad.value))
    # URLs that do not parse (the port): aiohttp's error for one is the whole URL.
    unparseable = f"http://svc-user:{PASSWORD}@127.0.0.1:4430443/x{SECRET_QUERY}"
    with pytest.raises(ValueError, match="not a valid URL") as bad:
        HttpClient(unparseable)
    said.append(everything_said_about(bad.value))
    async with client_for(base, retry_attempts=1) as client:
        error = await failing(client, "GET", unparseable)
        assert isinstance(error, UpstreamConnectionError)
        assert "InvalidUrlClientError" in str(error)

    assert len(said) >= 14
    assert_no_secret("\n".join(said))
    assert_no_secret(caplog.text)


async def test_a_secret_base_url_is_used_but_never_shown(upstream: Upstream) -> None:
    client = HttpClient(SecretStr(with_credentials(upstream.url)))
    assert PASSWORD not in repr(client)
    assert "***@127.0.0.1" in repr(client)
    async with client:
        with pytest.raises(UpstreamStatusError) as caught:
            await client.get_json("/leak")
    assert f"svc-user:{PASSWORD}".encode() in caught.value.body  # sent as basic auth
    assert_no_secret(everything_said_about(caught.value))


async def test_error_bodies_are_shown_only_when_asked_for(upstream: Upstream) -> None:
    async with client_for(upstream.url, retry_attempts=1) as client:
        with pytest.raises(UpstreamStatusError) as hidden:
            await client.get_json("/status/500")
    assert "nope" not in str(hidden.value)
    assert "4 byte body not shown" in str(hidden.value)
    assert hidden.value.body == b"nope"
    async with client_for(upstream.url, retry_attempts=1, error_body_bytes=3) as client:
        with pytest.raises(UpstreamStatusError) as shown:
            await client.get_json("/status/500")
    assert str(shown.value).endswith(": b'nop'")
    assert repr(HttpResponse(200, {"Set-Cookie": "s=1"}, b"abc")) == (
        "HttpResponse(status=200, body=<3 bytes>)"
    )


@pytest.mark.parametrize("limit", ["pool_limit", "pool_limit_per_host"])
async def test_waiting_for_a_pool_slot_is_not_an_upstream_failure(
    upstream: Upstream, limit: str
) -> None:
    # A breaker that would open on one failure. Two calls hold the pool's two slots at the
    # upstream; three more wait for a slot longer than pool_timeout_s. The rate limit has room
    # for the three that are sent, provided the unsent do not count.
    client = client_for(
        upstream.url,
        **{limit: 2},
        pool_timeout_s=0.1,
        rate_limit="5/second",
        rate_limit_mode="reject",
        breaker_window=1,
        breaker_minimum_calls=1,
        breaker_failure_rate=1.0,
    )
    async with client:
        upstream.gate.clear()
        holders = [asyncio.create_task(client.get_json(f"/gate?n={i}")) for i in range(2)]
        while upstream.hits["/gate"] < 2:
            upstream.arrived.clear()
            await upstream.arrived.wait()
        started = time.monotonic()
        waiters = await asyncio.gather(
            *(client.get_json("/gate") for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(w, PoolTimeoutError) for w in waiters), waiters
        assert 0.1 <= time.monotonic() - started < 1.0
        assert "pool_timeout_s=0.1" in str(waiters[0])
        assert upstream.hits["/gate"] == 2  # nothing of theirs was sent
        assert client.breaker_state(upstream.host) == "closed"
        assert sample(client, "pool_timeouts_total") == 3
        assert sample(client, "retries_total", host=upstream.host, method="GET") == 0
        upstream.healthy = True
        upstream.gate.set()
        assert await asyncio.gather(*holders) == [{"ok": True}] * 2
        assert await client.get_json("/gate") == {"ok": True}
    assert upstream.hits["/gate"] == 3


async def test_a_small_pool_under_a_burst_serves_everything_and_keeps_the_breaker_closed(
    upstream: Upstream,
) -> None:
    # Ten calls through two slots to an upstream that takes 50 ms: the last wait ~200 ms for a
    # slot, longer than timeout_s. The wait is not the upstream's time, so all are served.
    client = client_for(
        upstream.url,
        pool_limit=2,
        timeout_s=0.15,
        retry_attempts=1,
        breaker_window=2,
        breaker_minimum_calls=1,
    )
    async with client:
        results = await asyncio.gather(
            *(client.get_json("/hold") for _ in range(10)), return_exceptions=True
        )
        assert results == [{"held": True}] * 10
        assert client.breaker_state(upstream.host) == "closed"
        assert (
            sample(client, "requests_total", host=upstream.host, method="GET", status="error") == 0
        )
    assert upstream.hits["/hold"] == 10
    assert upstream.max_in_flight == 2


@pytest.mark.parametrize("mode", ["mid-body", "before-status"])
async def test_a_dropped_connection_is_retried_for_idempotent_requests_only(mode: str) -> None:
    async with (
        DroppingServer(drops=1, mode=mode) as server,
        client_for(server.url, retry_attempts=3) as client,
    ):
        assert (await client.get_json("/get"))["ok"] is True
        assert server.hits == 2
        # Before any response byte, aiohttp itself resends an idempotent request once (RFC
        # 9112 9.3.1), so the kit sees no failure; mid-body, the kit's retry does it.
        retries = sample(client, "retries_total", host=server.url[7:], method="GET")
        assert retries == (1 if mode == "mid-body" else 0)

    # A POST may have been applied before the drop: not sent again.
    async with (
        DroppingServer(drops=1, mode=mode) as server,
        client_for(server.url, retry_attempts=3) as client,
    ):
        with pytest.raises(UpstreamConnectionError) as caught:
            await client.post_json("/post", {"n": 1})
        assert server.hits == 1
    assert "failed after 1 attempt(s)" in str(caught.value)

    # With an idempotency key the upstream applies it once, so it is sent again, same key.
    async with DroppingServer(drops=2, mode=mode) as server:
        async with client_for(server.url, retry_attempts=3) as client:
            answer = await client.post_json("/post", {"n": 1}, idempotency_key="order-42")
            assert answer["ok"] is True
        assert server.hits == 3
        assert server.idempotency_keys == ["order-42"] * 3


async def test_a_failing_half_open_probe_reopens_the_breaker_and_a_later_one_closes_it(
    upstream: Upstream,
) -> None:
    client = client_for(
        upstream.url,
        retry_attempts=1,
        breaker_window=2,
        breaker_minimum_calls=2,
        breaker_failure_rate=0.5,
        breaker_reset_timeout_s=0.3,
    )
    async with client:
        for _ in range(2):
            with pytest.raises(UpstreamStatusError):
                await client.get_json("/gate")
        assert client.breaker_state(upstream.host) == "open"

        await asyncio.sleep(0.35)  # the reset timeout is the behaviour under test
        assert client.breaker_state(upstream.host) == "half_open"
        upstream.gate.clear()
        upstream.arrived.clear()
        probe = asyncio.create_task(client.get_json("/gate"))
        await upstream.arrived.wait()
        for _ in range(3):  # while the probe is in flight, the others are refused unsent
            with pytest.raises(UpstreamUnavailableError, match="probe"):
                await client.get_json("/gate")
        assert upstream.hits["/gate"] == 3

        upstream.gate.set()  # the upstream still fails: the probe reopens the breaker
        with pytest.raises(UpstreamStatusError):
            await probe
        assert client.breaker_state(upstream.host) == "open"
        with pytest.raises(UpstreamUnavailableError) as refused:
            await client.get_json("/gate")
        assert refused.value.retry_after > 0.2  # a fresh reset timeout
        assert upstream.hits["/gate"] == 3

        upstream.healthy = True
        await asyncio.sleep(0.35)
        assert await client.get_json("/gate") == {"ok": True}  # the probe closes it
        assert client.breaker_state(upstream.host) == "closed"
        assert await client.get_json("/gate") == {"ok": True}
    assert upstream.hits["/gate"] == 5
