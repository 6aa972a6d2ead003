"""service: a rendered node's `POST /operations/<op>` versus a bare route on the same server
library calling the same handler, in one server process.

The server process (a subprocess, as in production) runs two uvicorn servers on one event loop:
the node's service app (body limit, intake gate, error mapping, response metrics, the node's
runtime and mixins around the handler) and a plain FastAPI app whose one route takes the same
input model and awaits the same handler with the node's resources. A standard effect node is
used: its handler does no I/O, so the figure is the service's own cost. The load comes from
this process: 2,000 POSTs per round, 15 rounds interleaved, at concurrency 16 on a keep-alive
aiohttp pool.

Client and server share two cores, so throughput is bound by whichever process is busier, and
a cheap server hides part of its cost behind the client. ``node_cpu_us`` and ``raw_cpu_us`` are
the server process's own CPU time per request (user plus system, from ``/proc``, summed over
the rounds), and ``cpu_ratio`` is raw over node: the service layer's cost however the load is
bound.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from typing import Any

import aiohttp

from benchmarks.bench_common import (
    Run,
    interleaved,
    median,
    paired_ratio,
    percentile,
    render_node,
    run_concurrently,
)

REQUESTS = 2_000
CONCURRENCY = 16
BODY = {"values": [1.5, 2.5, 3.0]}

SERVER = """
import asyncio
import sys

import uvicorn
from fastapi import FastAPI

from {package} import handlers, models
from {package}.service import NodeApi

api = NodeApi()
bare = FastAPI()


@bare.post("/bare/fetch_item")
async def fetch_item(request: models.FetchItemInput) -> models.FetchItemOutput:
    return await handlers.fetch_item(request, api.node.resources)


async def main() -> None:
    node_port, bare_port = int(sys.argv[1]), int(sys.argv[2])
    servers = [
        uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", access_log=False))
        for app, port in ((api.app, node_port), (bare, bare_port))
    ]
    await asyncio.gather(*(server.serve() for server in servers))


asyncio.run(main())
"""


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as stat:
        # Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_until_up(session: aiohttp.ClientSession, url: str, server: Any) -> None:
    deadline = time.monotonic() + 60
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the benchmark server exited: {server.stdout.read()}")
        try:
            async with session.get(url) as response:
                if response.status < 500:
                    return
        except aiohttp.ClientConnectionError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


async def _measure(quick: bool, server: Any, node_port: int, bare_port: int) -> dict[str, float]:
    requests = 300 if quick else REQUESTS
    rounds = 1 if quick else 15
    node_url = f"http://127.0.0.1:{node_port}/operations/fetch_item"
    bare_url = f"http://127.0.0.1:{bare_port}/bare/fetch_item"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
        await _wait_until_up(session, f"http://127.0.0.1:{node_port}/health/live", server)
        await _wait_until_up(session, bare_url, server)

        def caller(url: str) -> Any:
            async def call(i: int) -> None:
                async with session.post(url, json=BODY) as response:
                    assert response.status == 200, await response.text()
                    await response.read()

            return call

        node_call, bare_call = caller(node_url), caller(bare_url)
        server_cpu = {"node": 0.0, "bare": 0.0}

        async def timed_round(side: str, call: Any) -> Run:
            cpu = _cpu_seconds(server.pid)
            run = await run_concurrently(requests, CONCURRENCY, call)
            server_cpu[side] += _cpu_seconds(server.pid) - cpu
            return run

        async def node_round() -> Run:
            return await timed_round("node", node_call)

        async def bare_round() -> Run:
            return await timed_round("bare", bare_call)

        await run_concurrently(CONCURRENCY * 20, CONCURRENCY, node_call)
        await run_concurrently(CONCURRENCY * 20, CONCURRENCY, bare_call)
        node_runs, bare_runs = await interleaved(rounds, node_round, bare_round)
    node_s = median([run.seconds for run in node_runs])
    bare_s = median([run.seconds for run in bare_runs])
    node_cpu, bare_cpu = server_cpu["node"], server_cpu["bare"]
    return {
        "node_per_s": round(requests / node_s),
        "raw_per_s": round(requests / bare_s),
        "ratio": paired_ratio([r.seconds for r in node_runs], [r.seconds for r in bare_runs]),
        "p95_ms": round(median([percentile(r.latencies, 95) for r in node_runs]) * 1000, 2),
        "node_cpu_us": round(node_cpu / (requests * rounds) * 1e6, 1),
        "raw_cpu_us": round(bare_cpu / (requests * rounds) * 1e6, 1),
        "cpu_ratio": round(bare_cpu / node_cpu, 3) if node_cpu else 0.0,
    }


def bench_service(quick: bool) -> dict[str, float]:
    """The node's HTTP route versus a bare route calling the same handler."""
    rendered = render_node("standard", "effect")
    node_port, bare_port = _free_port(), _free_port()
    ports = [str(node_port), str(bare_port)]
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER.format(package=rendered.package), *ports],
        env={**os.environ, "PYTHONPATH": str(rendered.root / "src")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        return asyncio.run(_measure(quick, server, node_port, bare_port))
    finally:
        server.terminate()
        server.wait(timeout=30)
