"""Benchmarks of the template and of the nodes it renders.

    python benchmarks/run.py --json OUT.json [--only selector,copy,...] [--quick]

Prints each benchmark's figures as it finishes, then a table of the goals, and writes the
figures as JSON (one object per benchmark). `--quick` runs each benchmark on small sizes to
check that it works (CI); its figures are not meant to be compared.

Each node benchmark renders its variant once into a temp dir, starts the services it needs
(embedded PostgreSQL, a local Tansu broker, an in-process aiohttp server), runs the node and
the raw client against the same services in alternating rounds, and stops everything. See
the module of each for its workload.
"""

from __future__ import annotations

import argparse
import importlib
import json
import operator
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

Figures = dict[str, float]

# name -> (module under benchmarks/, function); imported only when run.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "selector": ("bench_selector", "bench_selector"),
    "copy": ("bench_copy", "bench_copy"),
    "database_heavy": ("bench_database", "bench_database"),
    "api_heavy": ("bench_api", "bench_api"),
    "kafka_heavy": ("bench_kafka", "bench_kafka"),
    "ml_inference": ("bench_ml", "bench_ml"),
    "analytics": ("bench_analytics", "bench_analytics"),
    "workflow": ("bench_workflow", "bench_workflow"),
    "service": ("bench_service", "bench_service"),
    "call_path": ("bench_call_path", "bench_call_path"),
    "reducer": ("bench_reducer", "bench_reducer"),
}

# (benchmark, figure, comparison, goal): the figures the issue sets goals for.
GOALS: list[tuple[str, str, str, float]] = [
    ("selector", "p95_us", "<=", 50.0),
    ("copy", "ratio", "<=", 1.5),
    ("database_heavy", "ratio", ">=", 0.90),
    ("api_heavy", "ratio", ">=", 0.85),
    ("kafka_heavy", "ratio", ">=", 0.90),
    ("ml_inference", "ratio", ">=", 0.90),
    ("ml_inference", "raw_single_us", ">=", 100.0),
    ("analytics", "aggregate_1000_ms", "<=", 1.0),
    ("analytics", "percentile_ratio", "<=", 1.2),
    ("workflow", "transition_us", "<=", 100.0),
    ("workflow", "workflows_per_s", ">=", 200.0),
    ("service", "ratio", ">=", 0.85),
    # The registry's own promises (selector/variants/*.yaml, `performance:`), read as numbers:
    # standard "microseconds per call", production "tens of microseconds per call".
    ("call_path", "standard_overhead_us", "<=", 10.0),
    ("call_path", "production_overhead_us", "<=", 100.0),
]
_COMPARE: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le}


def load(name: str) -> Callable[[bool], Figures]:
    module, function = BENCHMARKS[name]
    bench: Callable[[bool], Figures] = getattr(
        importlib.import_module(f"benchmarks.{module}"), function
    )
    return bench


def goal_table(results: dict[str, Figures]) -> list[str]:
    rows = [("benchmark", "figure", "value", "goal", "")]
    for name, key, comparison, goal in GOALS:
        if name not in results:
            continue
        value = results[name].get(key)
        status = "?" if value is None else "met" if _COMPARE[comparison](value, goal) else "MISSED"
        rows.append(
            (name, key, "-" if value is None else f"{value:g}", f"{comparison} {goal:g}", status)
        )
    widths = [max(len(row[column]) for row in rows) for column in range(5)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="smoke mode for CI")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {', '.join(BENCHMARKS)}")
    results: dict[str, Figures] = {}
    failed: list[str] = []
    width = max(len(name) for name in names)
    for name in names:
        started = time.perf_counter()
        try:
            results[name] = load(name)(args.quick)
        except Exception:
            failed.append(name)
            print(f"{name:<{width}}  FAILED", flush=True)
            traceback.print_exc()
            continue
        elapsed = time.perf_counter() - started
        figures = "  ".join(f"{key}={value}" for key, value in results[name].items())
        print(f"{name:<{width}}  {figures}  ({elapsed:.1f} s)", flush=True)
    table = goal_table(results)
    if len(table) > 1:
        note = " (--quick: sizes too small for the figures to mean anything)" if args.quick else ""
        print(f"\nGoals{note}:")
        print("\n".join(table))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
