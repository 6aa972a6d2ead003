#!/usr/bin/env bash
# The whole test suite on a fresh machine with Python 3.11+ and git: creates .venv, installs the
# template's tooling, lints and type-checks this repo, then runs every test (selector, mixins,
# questionnaire, and every rendered node's own ruff, mypy and pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
