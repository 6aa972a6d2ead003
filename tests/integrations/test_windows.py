"""The event-time windows kit against numpy and against a brute force written here in plain
Python: window contents, boundaries, lateness, exactly-once closing, histograms, Prometheus text."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from integrations.windows import (
    EventTimeJumpError,
    WindowAggregator,
    WindowBufferFullError,
    WindowError,
    WindowResult,
    WindowSpec,
    percentiles,
)

QS = (0.0, 25.0, 50.0, 95.0, 99.0, 100.0)
BUCKETS = (-10.0, 0.0, 0.5, 10.0, 100.0)

Event = tuple[float, float]


# --- brute force: plain Python, no numpy ----------------------------------------------------


def bf_percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default, Hyndman & Fan type 7)."""
    h = (len(ordered) - 1) * q / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (h - lo) * (ordered[hi] - ordered[lo])


@dataclass
class Expected:
    start: float
    end: float
    values: list[float]  # sorted

    @property
    def count(self) -> int:
        return len(self.values)


def bf_window(events: list[Event], start: float, end: float) -> Expected:
    return Expected(start, end, sorted(v for t, v in events if start <= t < end))


def assert_window(result: WindowResult, expected: Expected, spec: WindowSpec) -> None:
    values = expected.values
    assert (result.start, result.end) == (expected.start, expected.end)
    assert result.count == len(values)
    assert result.sum == pytest.approx(math.fsum(values), rel=1e-9, abs=1e-9)
    hist = [sum(1 for v in values if v <= b) for b in spec.histogram_buckets]
    assert result.histogram == (*hist, len(values))
    if not values:
        assert result.sum == 0.0
        assert (result.mean, result.min, result.max) == (None, None, None)
        assert result.percentiles == {}
        return
    assert result.min == values[0]
    assert result.max == values[-1]
    assert result.mean == pytest.approx(math.fsum(values) / len(values), rel=1e-9, abs=1e-9)
    assert list(result.percentiles) == list(spec.percentiles)
    for q in spec.percentiles:
        assert result.percentiles[q] == pytest.approx(bf_percentile(values, q), rel=1e-9, abs=1e-9)
    # ...and exactly what numpy says, bit for bit.
    numpy_says = np.percentile(np.array(values), list(spec.percentiles), method="linear")
    assert list(result.percentiles.values()) == numpy_says.tolist()


def spec_of(size: float, slide: float | None = None, **kwargs: Any) -> WindowSpec:
    kwargs.setdefault("percentiles", QS)
    kwargs.setdefault("histogram_buckets", BUCKETS)
    return WindowSpec(size_s=size, slide_s=slide, **kwargs)


def window_starts(t: float, size: float, slide: float) -> list[float]:
    """Brute force: the starts k * slide (k an integer) of the windows [start, start + size)
    that contain t."""
    k = math.floor((t - size) / slide) - 1
    starts = []
    while k * slide <= t:
        if k * slide + size > t:
            starts.append(k * slide)
        k += 1
    return starts


def random_events(seed: int, n: int, low: float, high: float) -> list[Event]:
    rng = np.random.default_rng(seed)
    ts = rng.uniform(low, high, n).round(3)
    vs = rng.normal(5.0, 20.0, n).round(2)  # rounded: duplicates on purpose
    return list(zip(ts.tolist(), vs.tolist(), strict=True))


# --- window contents ------------------------------------------------------------------------


def test_tumbling_windows_match_brute_force_and_gaps_give_no_windows() -> None:
    # Random order: the lateness covers the whole span, so nothing is late.
    spec = spec_of(10.0, allowed_lateness_s=100.0)
    events = random_events(1, 2000, 0.0, 40.0) + random_events(2, 2000, 60.0, 100.0)
    agg = WindowAggregator(spec)
    agg.add_many([t for t, _ in events], [v for _, v in events])
    results = agg.advance(200.0)
    # The gap [40, 60) has no events, so no windows.
    assert [r.start for r in results] == [0.0, 10.0, 20.0, 30.0, 60.0, 70.0, 80.0, 90.0]
    for r in results:
        assert_window(r, bf_window(events, r.start, r.end), spec)
    assert sum(r.count for r in results) == len(events)
    assert agg.late_events == 0


def test_sliding_windows_match_brute_force() -> None:
    spec = spec_of(10.0, 2.5, allowed_lateness_s=50.0)
    events = random_events(3, 3000, 3.0, 47.0)
    agg = WindowAggregator(spec)
    agg.add_many(np.array([t for t, _ in events]), np.array([v for _, v in events]))
    results = agg.advance(math.inf)
    # Every window [k * 2.5, k * 2.5 + 10) holding an event: events span panes 1 to 18.
    assert min(t for t, _ in events) >= 2.5
    assert max(t for t, _ in events) < 47.5
    assert [r.start for r in results] == [k * 2.5 for k in range(-2, 19)]
    for r in results:
        assert_window(r, bf_window(events, r.start, r.end), spec)
    assert sum(r.count for r in results) == 4 * len(events)  # each event is in 4 windows


def test_single_adds_and_batches_agree() -> None:
    # Random order and a short lateness: batches must decide each event as single adds do.
    spec = spec_of(6.0, 2.0, allowed_lateness_s=3.0)
    events = random_events(4, 500, 0.0, 30.0)
    one, many = WindowAggregator(spec), WindowAggregator(spec)
    for t, v in events:
        one.add(t, v)
    for i in range(0, len(events), 37):
        chunk = events[i : i + 37]
        many.add_many([t for t, _ in chunk], [v for _, v in chunk])
    assert one.current() == many.current()
    assert 0 < one.late_events == many.late_events < len(events)
    assert one.advance(math.inf) == many.advance(math.inf)


def test_window_bounds_are_half_open() -> None:
    spec = spec_of(10.0)
    agg = WindowAggregator(spec)
    agg.add_many([0.0, 9.999, 10.0, 20.0], [1.0, 2.0, 3.0, 4.0])
    results = agg.advance(30.0)
    assert [(r.start, r.end, r.count, r.sum) for r in results] == [
        (0.0, 10.0, 2, 3.0),
        (10.0, 20.0, 1, 3.0),  # 10.0 is the end of [0, 10): it starts the next window
        (20.0, 30.0, 1, 4.0),
    ]


def test_sliding_bounds_hold_for_a_slide_that_floats_cannot_represent() -> None:
    """0.1 is not a binary fraction: events on and next to the computed bounds must land in the
    windows whose reported [start, end) contains them, no matter how t / 0.1 rounds."""
    spec = spec_of(0.3, 0.1, allowed_lateness_s=10.0)
    ts = sorted({round(k * 0.1, 10) for k in range(60)} | {k * 0.1 for k in range(60)})
    ts += [math.nextafter(t, -math.inf) for t in ts if t > 0]
    agg, one_by_one = WindowAggregator(spec), WindowAggregator(spec)
    agg.add_many(ts, list(range(len(ts))))
    events = list(zip(ts, [float(i) for i in range(len(ts))], strict=True))
    for t, v in events:
        one_by_one.add(t, v)
    results = agg.advance(math.inf)
    assert one_by_one.advance(math.inf) == results
    for r in results:
        assert r.start == pytest.approx(round(r.start / 0.1) * 0.1)
        assert_window(r, bf_window(events, r.start, r.end), spec)
    assert sum(r.count for r in results) == 3 * len(ts)


def test_windows_without_events_are_not_returned() -> None:
    agg = WindowAggregator(spec_of(5.0))
    agg.add_many([1.0, 2.0, 31.0], [1.0, 1.0, 1.0])
    assert [(r.start, r.count) for r in agg.advance(100.0)] == [(0.0, 2), (30.0, 1)]
    assert agg.advance(200.0) == []  # idle: nothing to close, nothing made up


# --- issue 13, defect 9: one old or far-off timestamp -----------------------------------------

NOW = 1_764_680_000.0  # a current Unix time
DAY = 86_400.0


def stream_of_now(agg: WindowAggregator) -> None:
    """A minute of current events, one a second."""
    ts = NOW + np.arange(60.0)
    agg.add_many(ts, np.ones(60))


@pytest.mark.parametrize("old", [NOW - 208 * DAY, 0.0], ids=["208_days_old", "epoch_0"])
def test_an_event_older_than_the_lateness_is_late_and_closes_no_gap(old: float) -> None:
    """Issue 13, defect 9: a 208-day-old event made advance() return 300,000 windows (3.3 s);
    a timestamp of 0 about 30 million. It is late: event time has passed its window."""
    agg = WindowAggregator(spec_of(60.0, allowed_lateness_s=5.0))
    stream_of_now(agg)
    agg.add(old, 1.0)
    agg.add_many([old, NOW + 50.0], [1.0, 2.0])
    assert agg.late_events == 2
    started = time.perf_counter()
    closed = agg.advance(NOW + 2 * 60.0 + 5.0)
    assert time.perf_counter() - started < 0.5
    assert [(r.start, r.count) for r in closed] == [
        (math.floor(NOW / 60) * 60, 60 - int(NOW % 60)),
        (math.floor(NOW / 60) * 60 + 60, int(NOW % 60) + 1),
    ]
    assert sum(r.count for r in closed) == 61


def test_a_gap_in_the_data_materialises_no_windows() -> None:
    """Events far apart (each within the forward bound): only the windows holding them."""
    agg = WindowAggregator(spec_of(60.0, 30.0, max_forward_jump_s=30 * DAY))
    agg.add(NOW - 20 * DAY, 1.0)
    agg.add_many([NOW, NOW + 1.0], [2.0, 3.0])
    started = time.perf_counter()
    closed = agg.advance(NOW + DAY)
    assert time.perf_counter() - started < 0.5
    assert [r.count for r in closed] == [1, 1, 2, 2]  # two sliding windows per event
    assert agg.current(now=math.inf) == []
    assert agg.buffered_events == 0


def test_a_far_future_timestamp_is_refused_with_the_value_and_the_bound() -> None:
    agg = WindowAggregator(spec_of(60.0, allowed_lateness_s=5.0))
    stream_of_now(agg)
    future = NOW * 1000  # milliseconds given as seconds
    with pytest.raises(
        WindowError, match=r"timestamp 1\.76468e\+12|timestamp 1764680000000"
    ) as info:
        agg.add(future, 1.0)
    message = str(info.value)
    assert "max_forward_jump_s (86400 s)" in message
    assert agg.refused_events == 1
    with pytest.raises(WindowError, match="max_forward_jump_s"):
        agg.add_many([NOW + 61.0, NOW + 62.0 + 2 * DAY], [1.0, 1.0])
    assert agg.refused_events == 3
    assert agg.buffered_events == 60  # neither the event nor its batch went in
    # Event time did not move: current events are still accepted, none counted late.
    agg.add(NOW + 61.0, 1.0)
    assert (agg.late_events, agg.buffered_events) == (0, 61)


def test_forward_jump_error_is_typed_and_advance_lets_event_time_catch_up() -> None:
    agg = WindowAggregator(spec_of(10.0, max_forward_jump_s=100.0))
    agg.add(0.0, 1.0)  # the first event has nothing to be measured against
    with pytest.raises(EventTimeJumpError) as info:
        agg.add(NOW, 1.0)
    assert (info.value.timestamp, info.value.event_time, info.value.bound) == (NOW, 0.0, 100.0)
    agg.add(100.0, 1.0)  # exactly the bound is allowed
    assert [r.start for r in agg.advance(NOW)] == [0.0, 100.0]
    agg.add(NOW + 1.0, 1.0)  # the watermark moved event time: no longer a jump
    assert agg.refused_events == 1


def test_buffered_events_are_bounded() -> None:
    agg = WindowAggregator(spec_of(10.0, max_buffered_events=5))
    agg.add_many([1.0, 2.0, 3.0, 4.0], [1.0] * 4)
    with pytest.raises(WindowBufferFullError, match=r"max_buffered_events \(5\) reached"):
        agg.add_many([5.0, 6.0], [1.0, 1.0])
    agg.add(5.0, 1.0)
    with pytest.raises(WindowBufferFullError):
        agg.add(6.0, 1.0)
    assert (agg.buffered_events, agg.refused_events) == (5, 3)
    assert [r.count for r in agg.advance(10.0)] == [5]  # closing frees room
    agg.add_many([11.0, 12.0, 13.0, 14.0, 15.0], [1.0] * 5)
    assert agg.buffered_events == 5


# --- lateness, watermarks, exactly once -----------------------------------------------------


def test_out_of_order_events_within_lateness_land_in_their_window() -> None:
    spec = spec_of(10.0, allowed_lateness_s=5.0)
    agg = WindowAggregator(spec)
    agg.add_many([12.0, 3.0, 14.0], [1.0, 2.0, 3.0])
    assert agg.advance(14.0) == []  # [0, 10) closes at 10 + 5
    agg.add(9.5, 7.0)  # out of order, within the lateness
    agg.add(0.0, 8.0)
    (first,) = agg.advance(15.0)
    assert (first.start, first.count, first.sum) == (0.0, 3, 17.0)
    assert agg.late_events == 0


def test_events_beyond_lateness_are_counted_and_change_nothing() -> None:
    spec = spec_of(10.0, 5.0, allowed_lateness_s=2.0)
    agg = WindowAggregator(spec)
    agg.add_many([1.0, 6.0, 11.0, 16.0], [1.0, 2.0, 3.0, 4.0])
    closed = agg.advance(12.0)  # closes [-5, 5) and [0, 10)
    assert [r.start for r in closed] == [-5.0, 0.0]
    before = agg.current(now=19.0)
    agg.add(4.0, 100.0)  # its windows [-5, 5) and [0, 10) are closed
    agg.add(9.0, 100.0)  # [0, 10) is closed though [5, 15) is open: refused whole
    agg.add_many([2.0, 7.0, 12.0], [100.0, 100.0, 5.0])
    assert agg.late_events == 4
    assert agg.current(now=19.0) != before  # only the 12.0 event went in
    rest = agg.advance(math.inf)
    assert [(r.start, r.count, r.sum) for r in rest] == [
        (5.0, 3, 10.0),
        (10.0, 3, 12.0),
        (15.0, 1, 4.0),
    ]
    assert all(r.max != 100.0 for r in closed + rest)


def test_advance_returns_each_window_once_in_order_and_ignores_older_watermarks() -> None:
    agg = WindowAggregator(spec_of(4.0, 2.0))
    agg.add_many([0.5, 3.0, 5.0, 9.0], [1.0, 2.0, 3.0, 4.0])
    first = agg.advance(6.0)
    assert [(r.start, r.end) for r in first] == [(-2.0, 2.0), (0.0, 4.0), (2.0, 6.0)]
    assert agg.advance(6.0) == []
    assert agg.advance(3.0) == []  # watermarks do not go back
    assert agg.watermark == 6.0
    second = agg.advance(11.0)
    assert [r.start for r in second] == [4.0, 6.0]
    third = agg.advance(math.inf)
    assert [r.start for r in third] == [8.0]
    assert agg.advance(math.inf) == []
    assert agg.buffered_events == 0


def test_current_does_not_close_windows() -> None:
    spec = spec_of(10.0, 5.0, allowed_lateness_s=20.0)
    events = random_events(5, 300, 0.0, 20.0)
    agg = WindowAggregator(spec)
    agg.add_many([t for t, _ in events], [v for _, v in events])
    now = agg.current()
    assert [r.start for r in now] == [-5.0, 0.0, 5.0, 10.0, 15.0]
    for r in now:
        assert_window(r, bf_window(events, r.start, r.end), spec)
    assert agg.current() == now
    assert agg.current(now=7.0) == now[:3]  # only windows that have started by 7.0
    assert agg.buffered_events == len(events)
    assert agg.advance(math.inf) == now


def test_closed_panes_are_freed() -> None:
    agg = WindowAggregator(spec_of(10.0, 5.0))
    agg.add_many([1.0, 6.0, 11.0, 16.0], [1.0, 1.0, 1.0, 1.0])
    assert agg.buffered_events == 4
    agg.advance(10.0)  # [-5, 5) and [0, 10) closed: pane [0, 5) is needed by no open window
    assert agg.buffered_events == 3
    agg.advance(15.0)
    assert agg.buffered_events == 2


# --- histogram and Prometheus ---------------------------------------------------------------

SAMPLE_LINE = re.compile(
    r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)"
)


def parse_lines(text: str) -> list[tuple[str, str, str]]:
    samples = []
    for line in text.splitlines():
        if line.startswith("# "):
            assert re.fullmatch(r"# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+", line), line
            continue
        match = SAMPLE_LINE.fullmatch(line)
        assert match, line
        samples.append((match["name"], match["labels"] or "", match["value"]))
    return samples


def test_histogram_and_prometheus_export() -> None:
    spec = spec_of(
        10.0, histogram_buckets=(0.1, 1.0, 2.5), percentiles=(50.0, 99.9), allowed_lateness_s=20.0
    )
    rng = np.random.default_rng(6)
    ts, vs = rng.uniform(0, 20, 500), rng.exponential(1.0, 500)
    agg = WindowAggregator(spec)
    agg.add_many(ts, vs)
    results = agg.advance(40.0)  # 20 + the lateness
    events = list(zip(ts.tolist(), vs.tolist(), strict=True))
    for r in results:
        assert_window(r, bf_window(events, r.start, r.end), spec)
    latest = results[-1]
    text = agg.to_prometheus("request_latency_seconds", results)
    samples = parse_lines(text)

    buckets = [(lab, val) for n, lab, val in samples if n == "request_latency_seconds_bucket"]
    assert buckets == [
        ('le="0.1"', str(latest.histogram[0])),
        ('le="1.0"', str(latest.histogram[1])),
        ('le="2.5"', str(latest.histogram[2])),
        ('le="+Inf"', str(latest.count)),
    ]
    values = {(n, lab): val for n, lab, val in samples}
    assert values["request_latency_seconds_count", ""] == str(latest.count)
    assert float(values["request_latency_seconds_sum", ""]) == latest.sum
    assert (
        float(values["request_latency_seconds_quantiles", 'quantile="0.5"'])
        == (latest.percentiles[50.0])
    )
    assert (
        float(values["request_latency_seconds_quantiles", 'quantile="0.999"'])
        == (latest.percentiles[99.9])
    )
    assert float(values["request_latency_seconds_window_start_seconds", ""]) == 10.0
    assert float(values["request_latency_seconds_window_end_seconds", ""]) == 20.0

    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["request_latency_seconds"].type == "histogram"
    assert families["request_latency_seconds_quantiles"].type == "summary"
    inf = [
        s.value
        for s in families["request_latency_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["le"] == "+Inf"
    ]
    assert inf == [latest.count]


def test_prometheus_export_of_an_empty_window() -> None:
    spec = spec_of(5.0, histogram_buckets=(1.0,), percentiles=(50.0,))
    agg = WindowAggregator(spec)
    # The aggregator returns no empty windows; a caller may build one (say, for a quiet period).
    results = [WindowResult(0.0, 5.0, 0, 0.0, None, None, None, {}, (0, 0))]
    samples = parse_lines(agg.to_prometheus("x", results))
    assert ("x_bucket", 'le="+Inf"', "0") in samples
    assert ("x_count", "", "0") in samples
    assert ("x_quantiles", 'quantile="0.5"', "NaN") in samples
    assert agg.to_prometheus("x", []) == ""
    with pytest.raises(WindowError, match="name"):
        agg.to_prometheus("bad name", results)


# --- percentiles ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 10, 1001])
def test_percentiles_equal_numpy_and_brute_force(n: int) -> None:
    rng = np.random.default_rng(n)
    values = rng.integers(-5, 5, n).astype(float) + rng.random(n) * (n % 2)
    qs = [0.0, 1.0, 33.3, 50.0, 95.0, 99.0, 99.9, 100.0]
    got = percentiles(values, qs)
    assert got == dict(zip(qs, np.percentile(values, qs).tolist(), strict=True))
    ordered = sorted(values.tolist())
    assert got == pytest.approx({q: bf_percentile(ordered, q) for q in qs}, rel=1e-12)
    assert percentiles(np.array([]), qs) == {}
    with pytest.raises(WindowError, match="percentiles"):
        percentiles(values, [101.0])


def test_percentiles_do_not_reorder_their_input() -> None:
    values = np.array([3.0, 1.0, 2.0])
    percentiles(values, [50.0])
    assert values.tolist() == [3.0, 1.0, 2.0]


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"size_s": 0.0}, "size_s"),
        ({"size_s": -1.0}, "size_s"),
        ({"size_s": math.nan}, "size_s"),
        ({"size_s": math.inf}, "size_s"),
        ({"size_s": 10.0, "slide_s": 0.0}, "slide_s"),
        ({"size_s": 10.0, "slide_s": 20.0}, "slide_s"),
        ({"size_s": 10.0, "slide_s": 3.0}, "multiple of slide_s"),
        ({"size_s": 10.0, "allowed_lateness_s": -1.0}, "allowed_lateness_s"),
        ({"size_s": 10.0, "percentiles": (50.0, 101.0)}, "percentiles"),
        ({"size_s": 10.0, "percentiles": (-1.0,)}, "percentiles"),
        ({"size_s": 10.0, "percentiles": (50.0, 50.0)}, "percentiles"),
        ({"size_s": 10.0, "histogram_buckets": (1.0, 1.0)}, "histogram_buckets"),
        ({"size_s": 10.0, "histogram_buckets": (2.0, 1.0)}, "histogram_buckets"),
        ({"size_s": 10.0, "histogram_buckets": (1.0, math.inf)}, "histogram_buckets"),
        ({"size_s": 10.0, "max_forward_jump_s": 0.0}, "max_forward_jump_s"),
        ({"size_s": 10.0, "max_forward_jump_s": math.nan}, "max_forward_jump_s"),
        ({"size_s": 10.0, "max_forward_jump_s": math.inf}, "max_forward_jump_s"),
        ({"size_s": 10.0, "max_buffered_events": 0}, "max_buffered_events"),
        ({"size_s": 10.0, "max_buffered_events": 2.5}, "max_buffered_events"),
    ],
)
def test_bad_specs_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(WindowError, match=field):
        WindowSpec(**kwargs)


def test_spec_normalises_sequences() -> None:
    spec = WindowSpec(10, 5, percentiles=[50, 90], histogram_buckets=[1, 2])  # type: ignore[arg-type]
    assert spec.percentiles == (50.0, 90.0)
    assert spec.histogram_buckets == (1.0, 2.0)
    assert (spec.pane_s, spec.panes_per_window) == (5.0, 2)


def test_non_finite_input_is_rejected_with_the_value() -> None:
    agg = WindowAggregator(spec_of(10.0))
    with pytest.raises(WindowError, match=r"value must be finite, got nan"):
        agg.add(1.0, math.nan)
    with pytest.raises(WindowError, match=r"timestamp must be finite, got inf"):
        agg.add(math.inf, 1.0)
    with pytest.raises(WindowError, match=r"timestamp must be finite, got nan"):
        agg.add(math.nan, 1.0)
    with pytest.raises(WindowError, match=r"timestamps\[1\] must be finite, got nan"):
        agg.add_many([1.0, math.nan], [1.0, 2.0])
    with pytest.raises(WindowError, match=r"timestamps\[0\] must be finite, got -inf"):
        agg.add_many([-math.inf], [1.0])
    with pytest.raises(WindowError, match=r"values\[2\] must be finite, got -inf"):
        agg.add_many([1.0, 2.0, 3.0], [1.0, 2.0, -math.inf])
    with pytest.raises(WindowError, match="equal length"):
        agg.add_many([1.0, 2.0], [1.0])
    with pytest.raises(WindowError, match="watermark"):
        agg.advance(math.nan)
    assert agg.buffered_events == 0  # the bad batch was not added in part
    assert agg.current() == []
    assert (agg.late_events, agg.refused_events, agg.event_time) == (0, 0, -math.inf)


# --- random streams -------------------------------------------------------------------------

timestamps = st.integers(0, 80).map(lambda k: k / 2)  # halves: exact, with duplicates
values = st.one_of(st.integers(-3, 3).map(float), st.floats(-1e3, 1e3, allow_nan=False))
batches = st.tuples(
    st.just("events"), st.lists(st.tuples(timestamps, values), max_size=12), st.booleans()
)
advances = st.tuples(st.just("advance"), st.integers(0, 50).map(float), st.booleans())


@settings(max_examples=60, deadline=None)
@given(
    slide=st.integers(1, 4),
    panes=st.integers(1, 3),
    lateness=st.integers(0, 6).map(lambda k: k / 2),
    jump=st.sampled_from([3.0, 1000.0]),
    ops=st.lists(st.one_of(batches, advances), max_size=25),
)
def test_random_streams_match_brute_force(
    slide: int,
    panes: int,
    lateness: float,
    jump: float,
    ops: list[tuple[str, Any, bool]],
) -> None:
    """Against a reference written event by event: an event more than `jump` ahead of event
    time is refused (with its whole batch in add_many), one whose windows event time has
    passed (end + lateness) is late, any other is accepted; only windows with events close."""
    size = float(slide * panes)
    spec = spec_of(
        size,
        None if panes == 1 else float(slide),
        allowed_lateness_s=lateness,
        max_forward_jump_s=jump,
    )
    agg = WindowAggregator(spec)
    watermark = latest = -math.inf
    accepted: list[Event] = []
    late = refused = 0
    emitted: list[WindowResult] = []

    def decide(t: float, now: float) -> str:
        if now > -math.inf and t - now > jump:
            return "refused"
        if all(s + size + lateness > now for s in window_starts(t, size, slide)):
            return "accepted"
        return "late"

    for op, arg, flag in [*ops, ("advance", math.inf, False)]:
        if op == "events":
            batch: list[Event] = arg
            if flag:
                now = max(watermark, latest)
                verdicts = []
                for t, _ in batch:
                    verdicts.append(decide(t, now))
                    now = max(now, t)
                if "refused" in verdicts:
                    with pytest.raises(EventTimeJumpError):
                        agg.add_many([t for t, _ in batch], [v for _, v in batch])
                    refused += len(batch)
                else:
                    agg.add_many([t for t, _ in batch], [v for _, v in batch])
                    for (t, v), verdict in zip(batch, verdicts, strict=True):
                        if verdict == "accepted":
                            accepted.append((t, v))
                            latest = max(latest, t)
                        else:
                            late += 1
            else:
                for t, v in batch:
                    verdict = decide(t, max(watermark, latest))
                    if verdict == "refused":
                        with pytest.raises(EventTimeJumpError):
                            agg.add(t, v)
                        refused += 1
                        continue
                    agg.add(t, v)
                    if verdict == "accepted":
                        accepted.append((t, v))
                        latest = max(latest, t)
                    else:
                        late += 1
        else:
            closed = agg.advance(arg)
            for r in closed:  # closed now, and not closable at the previous watermark
                assert watermark < r.end + lateness <= arg
            watermark = max(watermark, arg)
            emitted += closed
        assert (agg.late_events, agg.refused_events) == (late, refused)

    starts = [r.start for r in emitted]
    assert starts == sorted(set(starts))  # in order, each once
    for r in emitted:
        assert r.end == r.start + size
        assert_window(r, bf_window(accepted, r.start, r.end), spec)
    # Exactly the windows holding an accepted event, no empty ones.
    assert starts == sorted({s for t, _ in accepted for s in window_starts(t, size, slide)})
    assert sum(r.count for r in emitted) == panes * len(accepted)
    assert agg.buffered_events == 0
