"""Rendered Python, laid out as `ruff format` lays it out.

Templates write code for the longest names the questionnaire accepts, one argument per line;
with short names that leaves calls and signatures split that fit on one line. Every rendered
`.py` file goes through ruff's formatter (the node's own), told to ignore trailing commas, so
what fits on a line is on one line and what does not is split as the node's `ruff format`
splits it. It runs inside the Jinja render, so the old and new renders `copier update` compares
are formatted alike.
"""

from __future__ import annotations

import functools
import importlib
import subprocess

# The formatter's options: the node's line length and oldest Python, trailing commas ignored.
OPTIONS = [
    "format",
    "--isolated",
    "--line-length=100",
    "--target-version=py311",
    "--config=format.skip-magic-trailing-comma=true",
    "--config=lint.isort.split-on-trailing-comma=false",
    "--stdin-filename=rendered.py",
    "-",
]


@functools.cache
def _ruff() -> str:
    """The ruff binary of the environment Copier runs in, run directly: `python -m ruff` would
    start an interpreter for each of a node's files."""
    try:
        ruff_main = importlib.import_module("ruff.__main__")  # ships no type information
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            "this template lays out the Python it renders with ruff: install it in the "
            "environment Copier runs in (the template's README, Quick start, does)"
        ) from exc
    return str(ruff_main.find_ruff_bin())


def ruff_format(source: str) -> str:
    """``source`` as ruff formats it; a rendered file that does not parse fails the render."""
    formatted = subprocess.run(
        [_ruff(), *OPTIONS], input=source, capture_output=True, text=True, check=False, timeout=60
    )
    if formatted.returncode != 0:
        raise ValueError(
            f"rendered Python does not parse: {formatted.stderr.strip()}\n{_numbered(source)}"
        )
    return formatted.stdout


def _numbered(source: str) -> str:
    return "\n".join(f"{n:4} {line}" for n, line in enumerate(source.splitlines(), 1))
