"""api_heavy: a rendered api_heavy effect node's operation versus the raw aiohttp client, both
calling the same local aiohttp server.

Workload per round and side: 5,000 GETs at concurrency 50. The node side calls
``node.fetch_item(FetchItemInput(values=...))``: the runtime and the handler, which sends
``GET /fetch_item?values=...`` through the http kit (pool, per-host breaker, retry policy,
metrics; cache and rate limit off, as the settings default) and validates the JSON answer. The
raw side sends the same GET on an ``aiohttp.ClientSession`` with a pool of the same size and
parses the JSON. The server runs in this process, on the same event loop, so its cost per
request is in both sides' figures.
"""

from __future__ import annotations

import asyncio
import math
import socket
from typing import Any

import aiohttp
from aiohttp import web

from benchmarks.bench_common import (
    Run,
    interleaved,
    median,
    node_settings,
    paired_ratio,
    percentile,
    quiet_stdout,
    render_node,
    run_concurrently,
)

REQUESTS = 5_000
CONCURRENCY = 50
VALUES = [1.5, 2.5, 3.0]


async def _totals(request: web.Request) -> web.Response:
    values = [float(v) for v in request.query.get("values", "").split(",") if v]
    return web.json_response({"count": len(values), "total": math.fsum(values)})


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _measure(quick: bool) -> dict[str, float]:
    requests = 300 if quick else REQUESTS
    rounds = 1 if quick else 9
    rendered = render_node("api_heavy", "effect")
    models = rendered.module("models")
    app = web.Application()
    app.router.add_get("/{operation}", _totals)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = _free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        settings = node_settings(rendered, API_BASE_URL=base_url)
        node: Any = rendered.node_class(settings)
        await node.start()
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=settings.http_pool_limit, limit_per_host=settings.http_pool_limit_per_host
            ),
            timeout=aiohttp.ClientTimeout(
                total=settings.http_timeout_s, sock_connect=settings.http_connect_timeout_s
            ),
        )
        query = {"values": ",".join(repr(v) for v in VALUES)}
        url = f"{base_url}/fetch_item"
        try:

            async def node_call(i: int) -> None:
                await node.fetch_item(models.FetchItemInput(values=VALUES))

            async def raw_call(i: int) -> None:
                async with session.get(url, params=query) as response:
                    response.raise_for_status()
                    await response.json()

            async def node_round() -> Run:
                return await run_concurrently(requests, CONCURRENCY, node_call)

            async def raw_round() -> Run:
                return await run_concurrently(requests, CONCURRENCY, raw_call)

            # Warm-up: both pools open their connections.
            await run_concurrently(CONCURRENCY * 4, CONCURRENCY, node_call)
            await run_concurrently(CONCURRENCY * 4, CONCURRENCY, raw_call)
            node_runs, raw_runs = await interleaved(rounds, node_round, raw_round)
        finally:
            await session.close()
            await node.stop()
    finally:
        await runner.cleanup()
    node_s = median([run.seconds for run in node_runs])
    raw_s = median([run.seconds for run in raw_runs])
    return {
        "node_per_s": round(requests / node_s),
        "raw_per_s": round(requests / raw_s),
        "ratio": paired_ratio([r.seconds for r in node_runs], [r.seconds for r in raw_runs]),
        "p95_ms": round(median([percentile(r.latencies, 95) for r in node_runs]) * 1000, 2),
        "raw_p95_ms": round(median([percentile(r.latencies, 95) for r in raw_runs]) * 1000, 2),
    }


def bench_api(quick: bool) -> dict[str, float]:
    """Node operation versus raw aiohttp on 5,000 GETs at concurrency 50."""
    with quiet_stdout():
        return asyncio.run(_measure(quick))
