"""The rules that let each mixin module be copied verbatim into any node."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

MIXINS_DIR = Path(__file__).resolve().parents[2] / "mixins"
MODULES = sorted(p for p in MIXINS_DIR.glob("*.py") if p.name != "__init__.py")
# The one third-party library each module may wrap.
LIBRARY = {
    "structured_logging": "structlog",
    "metrics": "prometheus_client",
    "tracing": "opentelemetry",
    "retry": "tenacity",
}
# Jinja would interpret these when the module is included into the template.
JINJA_DELIMITERS = ("{" + "{", "}" + "}", "{" + "%", "%" + "}", "{" + "#", "#" + "}")


def test_every_catalogued_module_exists() -> None:
    assert {p.stem for p in MODULES} == {
        "structured_logging",
        "metrics",
        "health",
        "circuit_breaker",
        "retry",
        "tracing",
        "events",
        "lifecycle",
    }


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_module_has_no_jinja_delimiters(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert [d for d in JINJA_DELIMITERS if d in text] == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_module_imports_only_stdlib_and_its_library(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import: mixins must not depend on each other"
            assert node.module is not None
            roots.add(node.module.split(".")[0])
    allowed = set(sys.stdlib_module_names) | {"__future__"}
    if path.stem in LIBRARY:
        allowed.add(LIBRARY[path.stem])
    assert sorted(roots - allowed) == []


def test_package_init_is_only_a_docstring() -> None:
    tree = ast.parse((MIXINS_DIR / "__init__.py").read_text(encoding="utf-8"))
    assert len(tree.body) == 1
    assert isinstance(tree.body[0], ast.Expr)
    assert isinstance(tree.body[0].value, ast.Constant)
