"""The benchmark script runs (smoke mode); its figures are judged by people, not by tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT


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
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    assert set(figures) == {"selector", "copy"}
    assert figures["selector"]["p95_us"] > 0
    assert figures["copy"]["ratio"] > 0
    assert "selector" in result.stdout
