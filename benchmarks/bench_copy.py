"""copy: scaffolding time of a production effect node versus Copier's own floor.

``template_s`` copies from this git repository, as a person does (Copier clones it first);
``floor_s`` is a one-file template without extensions, in a plain directory. For reference,
``template_dir_s`` copies the same commit exported to a plain directory: the difference to
``template_s`` is the clone.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_common import REPO_ROOT


def _export_head(destination: Path) -> None:
    """The committed tree of this repository (what ``--vcs-ref HEAD`` renders) as files."""
    destination.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", "--format=tar", "HEAD"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(destination)], input=archive, check=True)


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
        exported = root / "exported"
        _export_head(exported)
        node_data = ["--data", "node_name=bench_node", "--data", "variant=production"]
        template: list[float] = []
        template_dir: list[float] = []
        floor: list[float] = []
        for index in range(runs):
            template.append(
                _copier(
                    ["--vcs-ref", "HEAD", *node_data, str(REPO_ROOT), str(root / f"node{index}")]
                )
            )
            template_dir.append(
                _copier([*node_data, str(exported), str(root / f"exported{index}")])
            )
            floor.append(_copier([str(floor_template), str(root / f"floor{index}")]))
    template_s = statistics.median(template)
    floor_s = statistics.median(floor)
    return {
        "template_s": round(template_s, 3),
        "floor_s": round(floor_s, 3),
        "ratio": round(template_s / floor_s, 2),
        "template_dir_s": round(statistics.median(template_dir), 3),
    }
