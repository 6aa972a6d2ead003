"""analytics: the windows kit of a rendered analytics reducer node (its
``integrations/windows.py``).

``aggregate_1000_ms``: a fresh ``WindowAggregator`` (tumbling 60 s windows, P50/P95/P99, the
default histogram buckets) takes 1,000 events in one ``add_many`` and closes their window with
``advance``, which computes count, sum, mean, min, max, the percentiles and the histogram.
``aggregate_1000_each_ms`` is the same with one ``add`` per event.

``percentile_ratio``: the kit's ``percentiles(values, [50, 95, 99])`` over 100,000 values
divided by ``np.percentile`` of the same values and percentiles (both exact, method="linear").

Each figure is the median of interleaved rounds, each round the best of a few repeats.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.bench_common import best_of, interleaved_sync, median, render_node

EVENTS = 1_000
VALUES = 100_000
QS = [50.0, 95.0, 99.0]


def bench_analytics(quick: bool) -> dict[str, float]:
    """Window aggregation of 1,000 events, and exact percentiles versus numpy."""
    rounds = 1 if quick else 9
    repeats = 2 if quick else 5
    number = 5 if quick else 50
    rendered = render_node("analytics", "reducer")
    windows: Any = rendered.module("integrations.windows")
    spec = windows.WindowSpec(size_s=60.0, percentiles=tuple(QS))
    rng = np.random.default_rng(3)
    timestamps = 1_700_000_040.0 + rng.random(EVENTS) * 59.0  # one 60 s window
    latencies = rng.lognormal(-3.0, 1.0, EVENTS)
    pairs = list(zip(timestamps.tolist(), latencies.tolist(), strict=True))
    values = rng.lognormal(0.0, 1.0, VALUES)

    def aggregate_batch() -> object:
        aggregator = windows.WindowAggregator(spec)
        aggregator.add_many(timestamps, latencies)
        (result,) = aggregator.advance(float("inf"))
        return result

    def aggregate_each() -> object:
        aggregator = windows.WindowAggregator(spec)
        for timestamp, latency in pairs:
            aggregator.add(timestamp, latency)
        (result,) = aggregator.advance(float("inf"))
        return result

    expected = np.percentile(latencies, QS)
    got = aggregate_batch().percentiles  # type: ignore[attr-defined]
    if [got[q] for q in QS] != expected.tolist():
        raise AssertionError(f"window percentiles {got} differ from numpy's {expected}")

    batch = median([best_of(repeats, aggregate_batch, number=number) for _ in range(rounds)])
    each = median(
        [best_of(repeats, aggregate_each, number=max(1, number // 10)) for _ in range(rounds)]
    )
    kit_runs, numpy_runs = interleaved_sync(
        rounds,
        lambda: best_of(repeats, lambda: windows.percentiles(values, QS), number=number // 5 or 1),
        lambda: best_of(repeats, lambda: np.percentile(values, QS), number=number // 5 or 1),
    )
    kit_s, numpy_s = median(kit_runs), median(numpy_runs)
    return {
        "aggregate_1000_ms": round(batch * 1000, 4),
        "aggregate_1000_each_ms": round(each * 1000, 3),
        "percentile_ratio": round(kit_s / numpy_s, 3),
        "percentiles_100k_ms": round(kit_s * 1000, 3),
        "numpy_percentile_100k_ms": round(numpy_s * 1000, 3),
    }
