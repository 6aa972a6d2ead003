"""Rendered Python, laid out as `ruff format` lays it out.

Templates write code for the longest names the questionnaire accepts, one argument per line;
with short names that leaves calls and signatures split that fit on one line. Every rendered
`.py` file goes through ruff's formatter (the node's own), told to ignore trailing commas, so
what fits on a line is on one line and what does not is split as the node's `ruff format`
splits it. It runs inside the Jinja render, so the old and new renders `copier update` compares
are formatted alike.
"""

from __future__ import annotations

import subprocess
import sys

RUFF_FORMAT = [
    sys.executable,
    "-m",
    "ruff",
    "format",
    "--isolated",
    "--line-length=100",
    "--target-version=py311",
    "--config=format.skip-magic-trailing-comma=true",
    "--config=lint.isort.split-on-trailing-comma=false",
    "--stdin-filename=rendered.py",
    "-",
]


def ruff_format(source: str) -> str:
    """``source`` as ruff formats it; a rendered file that does not parse fails the render."""
    try:
        formatted = subprocess.run(
            RUFF_FORMAT, input=source, capture_output=True, text=True, check=False, timeout=60
        )
    except FileNotFoundError as exc:  # pragma: no cover - sys.executable always exists
        raise RuntimeError(f"cannot run ruff: {exc}") from exc
    if formatted.returncode != 0:
        if "No module named ruff" in formatted.stderr:
            raise RuntimeError(
                "this template formats the Python it renders with ruff: install it in the "
                "environment Copier runs in (the template's README, Quick start, does)"
            )
        raise ValueError(
            f"rendered Python does not parse: {formatted.stderr.strip()}\n{_numbered(source)}"
        )
    return formatted.stdout


def _numbered(source: str) -> str:
    return "\n".join(f"{n:4} {line}" for n, line in enumerate(source.splitlines(), 1))
