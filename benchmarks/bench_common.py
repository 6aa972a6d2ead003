"""What the benchmarks share: rendering a node once per variant, settings from the environment,
quiet node logs, and timing node and raw side by side.

Node and raw runs are interleaved (node first in even rounds, raw first in odd ones), so that
noise from the machine, and whatever a run leaves behind (a warmer cache, a bigger table),
falls on both alike. Each side's throughput is the median of its rounds; the ratios are the
median of each round's own ratio (``paired_ratio``).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

T = TypeVar("T")

# Operations of every rendered node; the benchmarks call the first.
OPERATIONS = ["fetch_item", "store_item"]


@dataclass(frozen=True)
class RenderedNode:
    """A node rendered by the template and importable (its `src/` is on `sys.path`)."""

    package: str
    root: Path

    def module(self, name: str) -> ModuleType:
        """The node's submodule ``name`` (``node``, ``models``, ``integrations.windows``...)."""
        return importlib.import_module(f"{self.package}.{name}")

    @property
    def node_class(self) -> Any:
        """The node class of ``node.py`` (the one class it defines that ends in ``Node``)."""
        node = self.module("node")
        (cls,) = [
            value
            for key, value in vars(node).items()
            if key.endswith("Node")
            and isinstance(value, type)
            and value.__module__ == node.__name__
        ]
        return cls


_RENDERED: dict[tuple[str, str], RenderedNode] = {}
_WORKDIR: list[Path] = []


def _workdir() -> Path:
    if not _WORKDIR:
        path = Path(tempfile.mkdtemp(prefix="onex-bench-"))
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        _WORKDIR.append(path)
    return _WORKDIR[0]


def render_node(variant: str, node_type: str) -> RenderedNode:
    """Render ``variant`` as a ``node_type`` node (once per process and pair) into a temp dir
    removed at exit, and put its ``src/`` on ``sys.path``."""
    cached = _RENDERED.get((variant, node_type))
    if cached is not None:
        return cached
    import copier  # only the benchmarks that render need it

    package = f"bench_{variant}_{node_type}"
    destination = _workdir() / package
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DirtyLocalWarning: the working tree is what we want
        copier.run_copy(
            str(REPO_ROOT),
            str(destination),
            data={
                "node_name": package,
                "node_type": node_type,
                "variant": variant,
                "operations": OPERATIONS,
            },
            defaults=True,
            unsafe=True,
            vcs_ref="HEAD",
            quiet=True,
        )
    sys.path.insert(0, str(destination / "src"))
    rendered = RenderedNode(package, destination)
    _RENDERED[variant, node_type] = rendered
    return rendered


@contextlib.contextmanager
def environ(**values: str) -> Iterator[None]:
    """Set environment variables for the block (node settings read them), then restore."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def node_settings(node: RenderedNode, **env: str) -> Any:
    """The node's ``Settings`` as read from the environment plus ``env``."""
    with environ(**env):
        return node.module("config").Settings()


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Send stdout (where nodes log, one JSON line per call at INFO) to /dev/null: the log
    lines are still rendered and written, as in production, just not onto the terminal."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``samples``."""
    ordered = sorted(samples)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def ratio(node: float, raw: float) -> float:
    return round(node / raw, 3) if raw > 0 else 0.0


def paired_ratio(node_seconds: Sequence[float], raw_seconds: Sequence[float]) -> float:
    """The median over rounds of raw time / node time, each round's two runs side by side.

    Node throughput over raw throughput, like ``ratio`` of the medians, but paired: the
    machine's speed drifts over seconds (a shared VM), and a round's two runs, one right after
    the other, share its speed of the moment, which a ratio of medians taken apart does not.
    """
    ratios = [raw / node for node, raw in zip(node_seconds, raw_seconds, strict=True) if node > 0]
    return round(median(ratios), 3) if ratios else 0.0


async def interleaved(
    rounds: int,
    node: Callable[[], Awaitable[T]],
    raw: Callable[[], Awaitable[T]],
) -> tuple[list[T], list[T]]:
    """Run ``node()`` and ``raw()`` ``rounds`` times each, alternating which goes first."""
    node_runs: list[T] = []
    raw_runs: list[T] = []
    for index in range(rounds):
        if index % 2 == 0:
            node_runs.append(await node())
            raw_runs.append(await raw())
        else:
            raw_runs.append(await raw())
            node_runs.append(await node())
    return node_runs, raw_runs


def interleaved_sync(
    rounds: int, node: Callable[[], T], raw: Callable[[], T]
) -> tuple[list[T], list[T]]:
    """``interleaved`` for plain functions."""
    node_runs: list[T] = []
    raw_runs: list[T] = []
    for index in range(rounds):
        if index % 2 == 0:
            node_runs.append(node())
            raw_runs.append(raw())
        else:
            raw_runs.append(raw())
            node_runs.append(node())
    return node_runs, raw_runs


@dataclass
class Run:
    """One timed run: wall time and, when measured, each call's latency in seconds."""

    seconds: float
    latencies: list[float]


async def run_concurrently(
    calls: int, concurrency: int, call: Callable[[int], Awaitable[object]]
) -> Run:
    """Await ``call(i)`` for i in range(calls) from ``concurrency`` workers; time each call and
    the whole."""
    import asyncio

    latencies: list[float] = [0.0] * calls
    clock = time.perf_counter
    next_index = iter(range(calls))

    async def worker() -> None:
        for index in next_index:
            started = clock()
            await call(index)
            latencies[index] = clock() - started

    started = clock()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, calls))))
    return Run(clock() - started, latencies)


def best_of(repeats: int, fn: Callable[[], object], *, number: int = 1) -> float:
    """The fastest of ``repeats`` timings of ``number`` calls of ``fn``, per call, in seconds."""
    clock = time.perf_counter
    best = float("inf")
    for _ in range(repeats):
        started = clock()
        for _ in range(number):
            fn()
        best = min(best, (clock() - started) / number)
    return best
