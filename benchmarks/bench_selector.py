"""selector: the latency of one uncached ``select()`` over the shared labelled cases."""

from __future__ import annotations

import json
import random
import statistics
import time
from typing import Any

from benchmarks.bench_common import REPO_ROOT
from selector import load_registry, select
from selector.registry import Registry


def _cases() -> list[dict[str, Any]]:
    path = REPO_ROOT / "tests" / "data" / "selector_cases.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def bench_selector(quick: bool) -> dict[str, float]:
    """p95 latency of one uncached select() call over the shared cases.

    Five rounds, each timing every case 40 times in shuffled order. ``p95_us`` is the best
    round's p95 (as timeit reports its best repeat: on a shared VM the other rounds measure
    the neighbours as much as the code); ``p95_median_us`` is the median round's.
    """
    cases = _cases()
    registry: Registry = load_registry()
    repeats = 2 if quick else 40
    rounds = 1 if quick else 5
    clock = time.perf_counter_ns
    shuffler = random.Random(7)
    round_p95: list[float] = []
    round_p50: list[float] = []
    for _ in range(rounds):
        order = cases * repeats
        shuffler.shuffle(order)
        samples: list[float] = []
        for case in order:
            node_type, operations, features = (
                case["node_type"],
                case["operations"],
                case["features"],
            )
            started = clock()
            select(node_type, operations, features, registry=registry)
            samples.append((clock() - started) / 1000)
        samples.sort()
        round_p50.append(samples[len(samples) // 2])
        round_p95.append(samples[int(len(samples) * 0.95)])
    return {
        "p95_us": round(min(round_p95), 2),
        "p95_median_us": round(statistics.median(round_p95), 2),
        "p50_us": round(statistics.median(round_p50), 2),
        "calls": len(cases) * repeats * rounds,
    }
