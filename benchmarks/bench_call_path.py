"""call_path: what a rendered node's call path adds to one call, in process, for the standard
and production effect nodes (the variants whose registry entries promise a per-call cost).

Per round and side: 5,000 sequential calls of the example operation (``fetch_item``, whose
handler awaits ``asyncio.sleep(0)`` in place of its I/O). The node side calls
``node.fetch_item(request)``: the node method, the runtime and its mixins (lifecycle, request
context, metrics; production adds the circuit breaker, the retry policy and an OpenTelemetry
span, with no exporter configured). The bare side awaits the handler itself,
``handlers.fetch_item(request, node.resources)``. Rounds alternate which side goes first;
``*_overhead_us`` is the median of the rounds' differences, which the machine's drift
affects far less than a throughput ratio. No network: this is the node's own CPU per call.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from benchmarks.bench_common import interleaved, median, node_settings, quiet_stdout, render_node

CALLS = 5_000
VALUES = [1.5, 2.5, 3.0]
VARIANTS = ("standard", "production")


async def _measure_variant(variant: str, quick: bool) -> dict[str, float]:
    calls = 200 if quick else CALLS
    rounds = 1 if quick else 9
    rendered = render_node(variant, "effect")
    models = rendered.module("models")
    handlers = rendered.module("handlers")
    node: Any = rendered.node_class(node_settings(rendered))
    await node.start()
    try:
        request = models.FetchItemInput(values=VALUES)
        resources = node.resources

        async def timed(call: Any) -> float:
            started = time.perf_counter()
            for _ in range(calls):
                await call()
            return (time.perf_counter() - started) / calls

        async def node_round() -> float:
            return await timed(lambda: node.fetch_item(request))

        async def bare_round() -> float:
            return await timed(lambda: handlers.fetch_item(request, resources))

        await node_round()  # warm-up: metric children, the logger, caches
        await bare_round()
        node_runs, bare_runs = await interleaved(rounds, node_round, bare_round)
    finally:
        await node.stop()
    overheads = [n - b for n, b in zip(node_runs, bare_runs, strict=True)]
    return {
        f"{variant}_us": round(median(node_runs) * 1e6, 2),
        f"{variant}_bare_us": round(median(bare_runs) * 1e6, 2),
        f"{variant}_overhead_us": round(median(overheads) * 1e6, 2),
    }


async def _measure(quick: bool) -> dict[str, float]:
    figures: dict[str, float] = {}
    for variant in VARIANTS:
        figures.update(await _measure_variant(variant, quick))
    return figures


def bench_call_path(quick: bool) -> dict[str, float]:
    """Per-call cost of the standard and production call paths over the bare handler."""
    with quiet_stdout():
        return asyncio.run(_measure(quick))
