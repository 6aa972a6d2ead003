"""Shared fixtures of the template's own test suite."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
CASES_IN_REPO = REPO_ROOT / "tests" / "data" / "selector_cases.jsonl"
# The labelled cases are maintained outside the repo; the copy in tests/data travels with it.
CASES_SHARED = REPO_ROOT.parent / "shared" / "data" / "selector_cases.jsonl"


def load_cases() -> list[dict[str, Any]]:
    cases: dict[str, dict[str, Any]] = {}
    for path in (CASES_IN_REPO, CASES_SHARED):
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    case = json.loads(line)
                    cases[case["id"]] = case
    return list(cases.values())
