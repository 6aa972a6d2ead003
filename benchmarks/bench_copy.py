"""copy: scaffolding time of a production effect node versus Copier's own floor.

``template_s`` copies from a git repository, as a person does (Copier clones it first): a
fresh clone of this one, so that its objects are packed as in any clone, whatever state
the working repository is in (thousands of loose objects made Copier's clone of it take
0.45 s instead of 0.07);
``floor_s`` is a one-file template without extensions, in a plain directory. For reference,
``template_dir_s`` copies the same commit exported to a plain directory (the difference to
``template_s`` is the clone), and ``floor_files_s`` is the floor template with as many
one-line files as the node has (``files``): what Copier itself spends per rendered file.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_common import REPO_ROOT


def _clone_head(destination: Path) -> None:
    """This repository's committed history, as a person's clone of it holds it: packed."""
    subprocess.run(
        ["git", "clone", "--quiet", "--no-local", str(REPO_ROOT), str(destination)],
        check=True,
        capture_output=True,
    )


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


def _floor_template(directory: Path, files: int) -> Path:
    """A template of one question and ``files`` one-line files, without extensions."""
    directory.mkdir()
    (directory / "copier.yml").write_text("name:\n  type: str\n  default: x\n")
    for index in range(files):
        (directory / f"file{index}.md.jinja").write_text("{{ name }}\n")
    return directory


def bench_copy(quick: bool) -> dict[str, float]:
    """Median wall time of scaffolding a production effect node versus Copier's floor (a
    one-file template without extensions)."""
    runs = 1 if quick else 7
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        floor_template = _floor_template(root / "floor", 1)
        cloned = root / "cloned"
        _clone_head(cloned)
        exported = root / "exported"
        _export_head(exported)
        node_data = ["--data", "node_name=bench_node", "--data", "variant=production"]
        # The node's file count, from a copy outside the timed runs.
        _copier([*node_data, str(exported), str(root / "counted")])
        files = sum(1 for path in (root / "counted").rglob("*") if path.is_file())
        floor_files_template = _floor_template(root / "floor_files", files)
        template: list[float] = []
        template_dir: list[float] = []
        floor: list[float] = []
        floor_files: list[float] = []
        for index in range(runs):
            template.append(
                _copier(["--vcs-ref", "HEAD", *node_data, str(cloned), str(root / f"node{index}")])
            )
            template_dir.append(
                _copier([*node_data, str(exported), str(root / f"exported{index}")])
            )
            floor.append(_copier([str(floor_template), str(root / f"floor{index}")]))
            floor_files.append(
                _copier([str(floor_files_template), str(root / f"floor_files{index}")])
            )
    template_s = statistics.median(template)
    floor_s = statistics.median(floor)
    return {
        "template_s": round(template_s, 3),
        "floor_s": round(floor_s, 3),
        "ratio": round(template_s / floor_s, 2),
        "template_dir_s": round(statistics.median(template_dir), 3),
        "floor_files_s": round(statistics.median(floor_files), 3),
        "files": files,
    }
