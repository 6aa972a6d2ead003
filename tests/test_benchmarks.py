"""The benchmark script runs (smoke mode) every benchmark and writes every figure the issue
names; the figures themselves are judged by people, not by tests."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT

# The JSON shape of the benchmark issue: each benchmark's figures that must be present.
EXPECTED_KEYS = {
    "selector": {"p95_us"},
    "copy": {"template_s", "floor_s", "ratio", "template_dir_s", "floor_files_s", "files"},
    "database_heavy": {"node_per_s", "raw_per_s", "ratio", "p95_ms"},
    "api_heavy": {"node_per_s", "raw_per_s", "ratio", "p95_ms"},
    "kafka_heavy": {"node_per_s", "raw_per_s", "ratio"},
    "ml_inference": {"node_per_s", "raw_per_s", "ratio", "p95_ms"},
    "analytics": {"aggregate_1000_ms", "percentile_ratio"},
    "workflow": {"transition_us", "workflows_per_s"},
    "service": {"node_per_s", "raw_per_s", "ratio", "p95_ms"},
    "call_path": {"standard_overhead_us", "production_overhead_us"},
    "reducer": {"events_per_s", "join_s"},
}


def test_quick_benchmarks_run_and_write_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--quick", "--json", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    figures = json.loads(out.read_text())
    assert set(figures) == set(EXPECTED_KEYS)
    for name, keys in EXPECTED_KEYS.items():
        missing = keys - set(figures[name])
        assert not missing, f"{name} lacks {sorted(missing)}: {figures[name]}"
        for key, value in figures[name].items():
            assert isinstance(value, int | float), (name, key, value)
            assert not isinstance(value, bool), (name, key, value)
            assert math.isfinite(value), (name, key, value)
        # Throughputs and times are measured, so positive; a zero means nothing ran.
        for key in keys:
            assert figures[name][key] > 0, (name, key, figures[name][key])
        assert name in result.stdout
    assert "Goals" in result.stdout


def test_only_runs_the_named_benchmarks(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--quick", "--only", "selector", "--json", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert set(json.loads(out.read_text())) == {"selector"}


def test_unknown_benchmark_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--quick", "--only", "nope"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 2
    assert "unknown benchmarks" in result.stderr
