"""Event-time windows: count, sum, mean, min, max, exact percentiles and a histogram per window,
closed by a watermark, and exported as Prometheus text.

Written here rather than wrapped: stream processors that do event-time windows (Flink, Bytewax,
Faust) are whole runtimes, pandas' rolling windows know nothing of lateness or watermarks, and
sketches (t-digest, HDR) give approximate percentiles, while at a node's volumes exact ones over
numpy buffers are cheap.

Windows. Window ``k`` covers event times ``[k * slide, k * slide + size)``: aligned to the epoch,
half-open, so an event exactly at a window's end belongs to the next one. ``slide_s=None`` means
tumbling windows (slide == size); otherwise ``size_s`` must be a whole multiple of ``slide_s``
and each event lies in ``size / slide`` overlapping windows. Events are stored once, in the
slide-wide *pane* that holds them, in a growable float64 buffer; a window is its ``size / slide``
consecutive panes, combined only when it is computed.

Event time, watermark and lateness. *Event time* is the later of the watermark and the latest
accepted event's timestamp. ``advance(watermark)`` closes, in start order and exactly once, every
window whose ``end + allowed_lateness_s <= watermark`` and frees the panes no open window needs.
Watermarks only move forward (an older one closes nothing), and ``advance(math.inf)`` closes
every window that holds data. An event is accepted only while *all* the windows that contain it
are within the lateness, i.e. while its pane's end + allowed_lateness_s > event time; after that
it is counted in ``late_events`` and changes nothing. Measured against the latest event as well
as the watermark, so an event far in the past (a stale clock, a timestamp of 0) is late even
before the first ``advance``. All or nothing, so overlapping windows never disagree about which
events they saw, and ``sum(window counts) == (size / slide) * (events - late_events)`` once every
window is closed. ``add_many`` decides each event as ``add`` would, in the batch's order.

Bounds. One event may move event time forward by at most ``max_forward_jump_s`` (default one
day): a timestamp further ahead (a wrong unit, a clock years off) would make every later,
correct event late, so it is refused with ``EventTimeJumpError`` naming it and the bound. The
first event ever has nothing to be measured against and is taken as it is; ``advance`` moves
event time too, so a node that calls it on a clock recovers from idling longer than the bound.
At most ``max_buffered_events`` events are held in the open windows; beyond it an event is
refused with ``WindowBufferFullError`` (advance the watermark to free them). A refused batch is
refused whole, and its events counted in ``refused_events``.

Empty windows are not materialised: ``advance`` and ``current`` return only windows that hold
events, so their cost follows the data, not the time spanned (a watermark far ahead of the data
closes the windows that hold data and nothing more). A dashboard sees a quiet period through
``<name>_window_end_seconds`` falling behind.

Percentiles are exact: the window's values are sorted once and interpolated as numpy's
``method="linear"`` does, with the same floating-point operations, so they equal
``np.percentile(values, q)`` bit for bit; the sort also gives min, max and the histogram.

Histogram counts are cumulative, as Prometheus buckets are: ``histogram[i]`` is the number of
values ``<= histogram_buckets[i]`` and the last entry (``+Inf``) equals ``count``.

Prometheus export (``to_prometheus``) writes only the latest of the given windows, with no
per-window labels, because a label per window would create a new series every window. Its bounds
are the gauges ``<name>_window_start_seconds`` and ``<name>_window_end_seconds``; the values are
the histogram ``<name>`` (``_bucket`` with cumulative ``le``, ``_sum``, ``_count``) and the
summary ``<name>_quantiles`` (``quantile`` = percentile / 100; NaN for an empty window, as
Prometheus summaries do). They describe one window, not running totals: query them directly
(``histogram_quantile(0.99, <name>_bucket)``), not through ``rate()``.

Timestamps, values and watermarks must be finite (watermark may be +inf): NaN or infinity raises
WindowError naming it, and a batch with one is rejected whole.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]

# Prometheus' default histogram buckets (seconds-scale latencies).
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_INITIAL_CAPACITY = 64
# Beyond this many panes from the epoch, float pane boundaries stop being distinct.
_MAX_PANE_INDEX = 2.0**52


class WindowError(Exception):
    """A bad window spec or metric name, or a non-finite timestamp, value or watermark."""


class EventTimeJumpError(WindowError):
    """An event further ahead of event time than ``max_forward_jump_s``; nothing was added."""

    def __init__(self, message: str, *, timestamp: float, event_time: float, bound: float):
        super().__init__(message)
        self.timestamp = timestamp
        self.event_time = event_time
        self.bound = bound


class WindowBufferFullError(WindowError):
    """Adding the events would hold more than ``max_buffered_events``; nothing was added."""

    def __init__(self, message: str, *, buffered: int, adding: int, bound: int):
        super().__init__(message)
        self.buffered = buffered
        self.adding = adding
        self.bound = bound


def _finite(field: str, value: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise WindowError(f"{field} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise WindowError(f"{field} must be finite, got {value!r}")
    return number


@dataclass(frozen=True)
class WindowSpec:
    """What to aggregate over: window size and slide in seconds of event time, how late an event
    may arrive, which percentiles and which histogram bucket bounds to compute."""

    size_s: float
    slide_s: float | None = None  # None: tumbling, slide == size
    allowed_lateness_s: float = 0.0
    percentiles: tuple[float, ...] = (50.0, 95.0, 99.0)
    histogram_buckets: tuple[float, ...] = DEFAULT_BUCKETS
    # How far one event may move event time forward, and how many events open windows may hold.
    max_forward_jump_s: float = 86_400.0
    max_buffered_events: int = 1_000_000

    def __post_init__(self) -> None:
        size = _finite("size_s", self.size_s)
        if size <= 0:
            raise WindowError(f"size_s must be > 0 seconds, got {self.size_s!r}")
        if self.slide_s is not None:
            slide = _finite("slide_s", self.slide_s)
            if not 0 < slide <= size:
                raise WindowError(
                    f"slide_s must be > 0 and <= size_s ({size:g}), got {self.slide_s!r}; "
                    "None means tumbling windows"
                )
            ratio = size / slide
            if abs(ratio - round(ratio)) > 1e-9 * ratio:
                raise WindowError(
                    f"size_s ({size:g}) must be a whole multiple of slide_s ({slide:g}), "
                    f"got a ratio of {ratio:g}"
                )
        lateness = _finite("allowed_lateness_s", self.allowed_lateness_s)
        if lateness < 0:
            raise WindowError(
                f"allowed_lateness_s must be >= 0 seconds, got {self.allowed_lateness_s!r}"
            )
        qs = tuple(_finite("percentiles", q) for q in self.percentiles)
        bad = [q for q in qs if not 0.0 <= q <= 100.0]
        if bad:
            raise WindowError(f"percentiles must be in [0, 100], got {bad[0]!r}")
        if len(set(qs)) != len(qs):
            raise WindowError(f"percentiles must be distinct, got {qs!r}")
        buckets = tuple(_finite("histogram_buckets", b) for b in self.histogram_buckets)
        if any(b >= c for b, c in itertools.pairwise(buckets)):
            raise WindowError(
                f"histogram_buckets must be strictly increasing (+Inf is implicit), got {buckets!r}"
            )
        jump = _finite("max_forward_jump_s", self.max_forward_jump_s)
        if jump <= 0:
            raise WindowError(
                f"max_forward_jump_s must be > 0 seconds, got {self.max_forward_jump_s!r}"
            )
        held = self.max_buffered_events
        if isinstance(held, bool) or not isinstance(held, int) or held < 1:
            raise WindowError(f"max_buffered_events must be an integer >= 1, got {held!r}")
        # Normalised so that lists and ints given by callers compare and hash like tuples.
        object.__setattr__(self, "percentiles", qs)
        object.__setattr__(self, "histogram_buckets", buckets)
        object.__setattr__(self, "max_forward_jump_s", jump)

    @property
    def pane_s(self) -> float:
        """The pane width: slide_s, or size_s for tumbling windows."""
        return float(self.size_s if self.slide_s is None else self.slide_s)

    @property
    def panes_per_window(self) -> int:
        return round(float(self.size_s) / self.pane_s)


@dataclass(frozen=True)
class WindowResult:
    """One window's aggregate. ``percentiles`` maps each requested percentile (0-100) to its
    value; ``histogram`` is cumulative, ``+Inf`` last. Windows without events are never
    returned, so ``count >= 1``; ``mean``, ``min`` and ``max`` stay optional for callers that
    build empty results of their own."""

    start: float
    end: float
    count: int
    sum: float
    mean: float | None
    min: float | None
    max: float | None
    percentiles: dict[float, float]
    histogram: tuple[int, ...]


def _sorted_percentiles(ordered: FloatArray, qs: Sequence[float]) -> dict[float, float]:
    """numpy's method="linear" on already sorted values, with numpy's very float operations
    (index (n - 1) * q / 100, then its two-sided lerp), so results equal np.percentile's."""
    n = len(ordered)
    if n == 0:
        return {}
    top = n - 1
    out: dict[float, float] = {}
    for q in qs:
        virtual = top * (q / 100)
        if virtual >= top:
            out[q] = float(ordered[top])
            continue
        lower = math.floor(virtual)
        a = float(ordered[lower])
        b = float(ordered[lower + 1])
        gamma = virtual - lower
        diff = b - a
        out[q] = b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma
    return out


def percentiles(values: ArrayLike, qs: Sequence[float]) -> dict[float, float]:
    """Exact percentiles (each q in [0, 100]) of finite ``values``, equal to
    ``np.percentile(values, qs)`` (method="linear"); empty when there are no values.

    Sorts a copy rather than partitioning as numpy does: numpy's sort is vectorised and, at
    these sizes, faster than its multi-kth partition."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    keys = [_finite("percentiles", q) for q in qs]
    bad = [q for q in keys if not 0.0 <= q <= 100.0]
    if bad:
        raise WindowError(f"percentiles must be in [0, 100], got {bad[0]!r}")
    return _sorted_percentiles(np.sort(arr), keys)


class WindowBuffer:
    """A growable float64 array: amortised O(1) appends without a Python list of floats."""

    __slots__ = ("data", "size")

    def __init__(self, capacity: int = _INITIAL_CAPACITY) -> None:
        self.data: FloatArray = np.empty(max(capacity, _INITIAL_CAPACITY), dtype=np.float64)
        self.size = 0

    def _reserve(self, needed: int) -> None:
        if needed > len(self.data):
            grown = np.empty(max(needed, 2 * len(self.data)), dtype=np.float64)
            grown[: self.size] = self.data[: self.size]
            self.data = grown

    def append(self, value: float) -> None:
        self._reserve(self.size + 1)
        self.data[self.size] = value
        self.size += 1

    def extend(self, values: FloatArray) -> None:
        end = self.size + len(values)
        self._reserve(end)
        self.data[self.size : end] = values
        self.size = end

    def view(self) -> FloatArray:
        return self.data[: self.size]


def _format(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class WindowAggregator:
    """Aggregates (timestamp, value) events into the windows of ``spec``; not thread-safe."""

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self._pane = spec.pane_s
        self._n = spec.panes_per_window
        self._lateness = float(spec.allowed_lateness_s)
        self._jump = float(spec.max_forward_jump_s)
        self._max_buffered = spec.max_buffered_events
        self._qs = spec.percentiles
        self._buckets = np.asarray(spec.histogram_buckets, dtype=np.float64)
        self._panes: dict[int, WindowBuffer] = {}
        self._buffered = 0
        # Index of the next window to close: every window below it is closed. None until the
        # first event.
        self._next: int | None = None
        self._watermark = -math.inf
        self._latest = -math.inf  # the latest accepted event time
        self._late = 0
        self._refused = 0

    @property
    def late_events(self) -> int:
        """Events dropped because event time had passed the end + lateness of their windows."""
        return self._late

    @property
    def refused_events(self) -> int:
        """Events of the calls refused by a bound (``EventTimeJumpError``,
        ``WindowBufferFullError``)."""
        return self._refused

    @property
    def watermark(self) -> float:
        return self._watermark

    @property
    def event_time(self) -> float:
        """The later of the watermark and the latest accepted event (-inf before either)."""
        return max(self._watermark, self._latest)

    @property
    def buffered_events(self) -> int:
        """Events held in memory: those of the panes some open window still needs."""
        return self._buffered

    # --- pane arithmetic: one formula for bounds, lateness and closing, so they always agree

    def _pane_of(self, t: float) -> int:
        quotient = t / self._pane
        if abs(quotient) >= _MAX_PANE_INDEX:
            raise WindowError(f"timestamp {t!r} is too far from the epoch for slide {self._pane}")
        p = math.floor(quotient)
        # The division rounds: step to the pane whose computed bounds hold t.
        if p * self._pane > t:
            p -= 1
        elif (p + 1) * self._pane <= t:
            p += 1
        return p

    def _panes_of(self, ts: FloatArray) -> FloatArray:
        """Pane indices as whole float64s (exact below 2**52): the same products as _pane_of
        makes from ints, and float arithmetic avoids int64 temporaries, several times slower."""
        panes = ts / self._pane
        np.floor(panes, out=panes)
        if len(panes) and max(-float(panes.min()), float(panes.max())) >= _MAX_PANE_INDEX:
            raise WindowError(f"timestamps too far from the epoch for slide {self._pane}")
        # In place, one scratch array: large temporaries cost more than the arithmetic.
        bound = panes * self._pane
        panes -= bound > ts
        np.add(panes, 1.0, out=bound)
        bound *= self._pane
        panes += bound <= ts
        return panes

    def _is_late(self, pane: int, event_time: float) -> bool:
        # The earliest window holding this pane ends where the pane ends.
        return (pane + 1) * self._pane + self._lateness <= event_time

    def _refuse_jump(self, t: float, event_time: float, count: int) -> NoReturn:
        self._refused += count
        raise EventTimeJumpError(
            f"timestamp {t!r} is {t - event_time:g} s ahead of event time {event_time!r}, more "
            f"than max_forward_jump_s ({self._jump:g} s) allows; the event was not added "
            "(a timestamp in the wrong unit, or a clock far off?)",
            timestamp=t,
            event_time=event_time,
            bound=self._jump,
        )

    def _check_room(self, adding: int, count: int) -> None:
        if self._buffered + adding > self._max_buffered:
            self._refused += count
            raise WindowBufferFullError(
                f"max_buffered_events ({self._max_buffered}) reached: {self._buffered} events "
                f"held, {adding} more given; nothing was added. Advance the watermark to close "
                "windows and free them",
                buffered=self._buffered,
                adding=adding,
                bound=self._max_buffered,
            )

    def _accepted(self, first_pane: int, latest: float, count: int) -> None:
        first_window = first_pane - self._n + 1
        self._next = first_window if self._next is None else min(self._next, first_window)
        self._latest = max(self._latest, latest)
        self._buffered += count

    # --- ingestion

    def add(self, timestamp: float, value: float) -> None:
        """Add one event (event time in seconds); out of order is fine within the lateness."""
        t = _finite("timestamp", timestamp)
        v = _finite("value", value)
        pane = self._pane_of(t)
        now = self.event_time
        if now > -math.inf and t - now > self._jump:
            self._refuse_jump(t, now, 1)
        if self._is_late(pane, now):
            self._late += 1
            return
        self._check_room(1, 1)
        buffer = self._panes.get(pane)
        if buffer is None:
            buffer = self._panes[pane] = WindowBuffer()
        buffer.append(v)
        self._accepted(pane, t, 1)

    def add_many(
        self, timestamps: FloatArray | Sequence[float], values: FloatArray | Sequence[float]
    ) -> None:
        """Add a batch of events, vectorised, each decided as ``add`` would in the batch's
        order; refused whole if any timestamp or value is not finite, or a bound is hit."""
        ts = np.asarray(timestamps, dtype=np.float64)
        vs = np.asarray(values, dtype=np.float64)
        if ts.ndim != 1 or ts.shape != vs.shape:
            raise WindowError(
                f"timestamps and values must be 1-D and of equal length, got shapes "
                f"{ts.shape} and {vs.shape}"
            )
        for field, arr in (("timestamps", ts), ("values", vs)):
            finite = np.isfinite(arr)
            if not finite.all():
                i = int(np.argmin(finite))
                raise WindowError(
                    f"{field}[{i}] must be finite, got {float(arr[i])!r}; the batch was not added"
                )
        if len(ts) == 0:
            return
        panes = self._panes_of(ts)
        now = self.event_time
        # Event time as each event arrives: the latest before it, or for the first event ever
        # itself (nothing to measure it against). Late events never raise it (they are older
        # than it), so taking them into the running maximum changes nothing.
        running = np.maximum.accumulate(ts)
        before = np.empty_like(ts)
        before[0] = ts[0] if now == -math.inf else now
        np.maximum(running[:-1], now, out=before[1:])
        jumps = ts - before > self._jump
        if jumps.any():
            i = int(np.argmax(jumps))
            self._refuse_jump(float(ts[i]), float(before[i]), len(ts))
        # An event never counts itself late (its pane ends after it), so `running` may hold it.
        np.maximum(running, now, out=running)
        late = (panes + 1.0) * self._pane + self._lateness <= running
        n_late = int(np.count_nonzero(late))
        self._check_room(len(ts) - n_late, len(ts))
        if n_late:
            self._late += n_late
            keep = ~late
            ts, vs, panes = ts[keep], vs[keep], panes[keep]
            if len(ts) == 0:
                return
        first, last = int(panes.min()), int(panes.max())
        if first == last:
            self._extend(first, vs)
        else:
            order = np.argsort(panes, kind="stable")
            panes, vs = panes[order], vs[order]
            cuts = np.flatnonzero(np.diff(panes)) + 1
            for start, stop in zip([0, *cuts.tolist()], [*cuts.tolist(), len(panes)], strict=True):
                self._extend(int(panes[start]), vs[start:stop])
        self._accepted(first, float(ts.max()), len(ts))

    def _extend(self, pane: int, values: FloatArray) -> None:
        buffer = self._panes.get(pane)
        if buffer is None:
            buffer = self._panes[pane] = WindowBuffer(len(values))
        buffer.extend(values)

    # --- windows

    def advance(self, watermark: float) -> list[WindowResult]:
        """Close and return, in start order, every window holding events with end +
        allowed_lateness_s <= watermark; each window is returned once and its memory freed.
        +inf flushes all."""
        w = float(watermark)
        if math.isnan(w):
            raise WindowError("watermark must not be NaN")
        if w <= self._watermark:
            return []
        if self._next is None:
            self._watermark = w
            return []
        last = max(self._panes, default=self._next - 1) if math.isinf(w) else self._last_closable(w)
        self._watermark = w
        results = self._windows(self._next, last)
        self._next = max(self._next, last + 1)
        # Windows from _next on start at pane _next or later: no one needs the panes before.
        for pane in [p for p in self._panes if p < self._next]:
            self._buffered -= self._panes.pop(pane).size
        return results

    def _last_closable(self, w: float) -> int:
        """The highest window k with end + lateness <= w, by the expression _is_late uses."""
        quotient = (w - self._lateness) / self._pane
        if abs(quotient) >= _MAX_PANE_INDEX:
            raise WindowError(f"watermark {w!r} is too far from the epoch for slide {self._pane}")
        k = math.floor(quotient) - self._n
        while (k + 1 + self._n) * self._pane + self._lateness <= w:
            k += 1
        while (k + self._n) * self._pane + self._lateness > w:
            k -= 1
        return k

    def current(self, now: float | None = None) -> list[WindowResult]:
        """The open windows holding events that have started by ``now`` (default: the latest
        event time), as they stand; nothing is closed."""
        if self._next is None:
            return []
        t = self._latest if now is None else float(now)
        if math.isnan(t):
            raise WindowError("now must not be NaN")
        if t == -math.inf:
            return []
        last = max(self._panes, default=self._next - 1) if math.isinf(t) else self._pane_of(t)
        return self._windows(self._next, last)

    def _windows(self, first: int, last: int) -> list[WindowResult]:
        """The windows in [first, last] that hold events: found from the panes, so the cost
        follows the data however many windows the range spans."""
        n = self._n
        indices = sorted(
            {k for p in self._panes for k in range(max(p - n + 1, first), min(p, last) + 1)}
        )
        results: list[WindowResult] = []
        for k in indices:
            parts = [self._panes[p].view() for p in range(k, k + n) if p in self._panes]
            results.append(self._result(k, parts))
        return results

    def _result(self, k: int, parts: list[FloatArray]) -> WindowResult:
        start = k * self._pane
        end = (k + self._n) * self._pane
        # np.sort and np.concatenate both copy: the panes themselves stay untouched.
        ordered = np.sort(parts[0]) if len(parts) == 1 else np.sort(np.concatenate(parts))
        count = len(ordered)
        total = float(ordered.sum())
        cumulative = np.searchsorted(ordered, self._buckets, side="right").tolist()
        return WindowResult(
            start=start,
            end=end,
            count=count,
            sum=total,
            mean=total / count,
            min=float(ordered[0]),
            max=float(ordered[-1]),
            percentiles=_sorted_percentiles(ordered, self._qs),
            histogram=(*cumulative, count),
        )

    # --- export

    def to_prometheus(self, name: str, results: Sequence[WindowResult]) -> str:
        """Prometheus text exposition of the latest of ``results`` (see the module docstring);
        empty when there are none."""
        if not _METRIC_NAME.fullmatch(name):
            raise WindowError(
                f"name must be a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*), got {name!r}"
            )
        if not results:
            return ""
        latest = max(results, key=lambda r: r.start)
        if len(latest.histogram) != len(self.spec.histogram_buckets) + 1:
            raise WindowError(
                f"results must come from this spec's {len(self.spec.histogram_buckets)} "
                f"histogram_buckets, got a histogram of {len(latest.histogram)} counts"
            )
        quantiles = f"{name}_quantiles"
        lines = [
            f"# HELP {name}_window_start_seconds Start of the window exported (event time).",
            f"# TYPE {name}_window_start_seconds gauge",
            f"{name}_window_start_seconds {_format(latest.start)}",
            f"# HELP {name}_window_end_seconds End (exclusive) of the window exported.",
            f"# TYPE {name}_window_end_seconds gauge",
            f"{name}_window_end_seconds {_format(latest.end)}",
            f"# HELP {name} Values in the latest event-time window given.",
            f"# TYPE {name} histogram",
        ]
        bounds = [*self.spec.histogram_buckets, math.inf]
        for bound, cumulative in zip(bounds, latest.histogram, strict=True):
            lines.append(f"{name}_bucket" + '{le="' + _format(bound) + '"} ' + str(cumulative))
        lines.append(f"{name}_sum {_format(latest.sum)}")
        lines.append(f"{name}_count {latest.count}")
        lines.append(f"# HELP {quantiles} Exact percentiles of the latest window (NaN if empty).")
        lines.append(f"# TYPE {quantiles} summary")
        for q in self.spec.percentiles:
            value = latest.percentiles.get(q, math.nan)
            label = _format(round(q / 100, 12))
            lines.append(quantiles + '{quantile="' + label + '"} ' + _format(value))
        return "\n".join(lines) + "\n"
