"""copy: scaffolding time of a production effect node versus Copier's own floor."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_common import REPO_ROOT


def _copier(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "copier", "copy", "--trust", "--defaults", "--quiet", *args],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def bench_copy(quick: bool) -> dict[str, float]:
    """Median wall time of scaffolding a production effect node versus Copier's floor (a
    one-file template without extensions)."""
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
