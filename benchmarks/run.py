"""Benchmarks of the template: selector latency and scaffolding time.

    python benchmarks/run.py --json OUT.json [--only selector,copy] [--quick]

Prints a table and writes JSON. `--quick` runs each benchmark briefly to check that it works
(CI); its figures are not meant to be compared.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from selector import load_registry, select  # noqa: E402
from selector.registry import Registry  # noqa: E402


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


def _copier(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "copier", "copy", "--trust", "--defaults", "--quiet", *args],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def bench_copy(quick: bool) -> dict[str, float]:
    """Median wall time of scaffolding a production effect node versus Copier's own floor."""
    runs = 1 if quick else 7
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        floor_template = root / "floor"
        floor_template.mkdir()
        (floor_template / "copier.yml").write_text("name:\n  type: str\n  default: x\n")
        (floor_template / "README.md.jinja").write_text("{{ name }}\n")
        template: list[float] = []
        floor: list[float] = []
        for index in range(runs):
            template.append(
                _copier(
                    [
                        "--vcs-ref",
                        "HEAD",
                        "--data",
                        "node_name=bench_node",
                        "--data",
                        "variant=production",
                        str(REPO_ROOT),
                        str(root / f"node{index}"),
                    ]
                )
            )
            floor.append(_copier([str(floor_template), str(root / f"floor{index}")]))
    template_s = statistics.median(template)
    floor_s = statistics.median(floor)
    return {
        "template_s": round(template_s, 3),
        "floor_s": round(floor_s, 3),
        "ratio": round(template_s / floor_s, 2),
    }


BENCHMARKS: dict[str, Callable[[bool], dict[str, float]]] = {
    "selector": bench_selector,
    "copy": bench_copy,
}


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
    results: dict[str, dict[str, float]] = {}
    for name in names:
        results[name] = BENCHMARKS[name](args.quick)
        figures = "  ".join(f"{key}={value}" for key, value in results[name].items())
        print(f"{name:<10} {figures}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
