"""The code a node gets reads as a person would write it: laid out as ruff lays it out, with
nothing generated that the node does not use."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.render_helpers import render

# Rendered once per case: (variant, node type) pairs whose code differs the most.
CASES = [
    ("minimal", "compute"),
    ("production", "orchestrator"),
    ("workflow", "orchestrator"),
    ("kafka_heavy", "reducer"),
    ("api_heavy", "effect"),
]


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("generated")
    return {
        (variant, node_type): render(
            root / f"{variant}_{node_type}",
            {
                "node_name": "orders",
                "node_type": node_type,
                "variant": variant,
                "operations": ["fetch", "store"],
            },
        )
        for variant, node_type in CASES
    }


def _own_python(node: Path) -> list[Path]:
    """The node's Python the template writes (kit and mixin modules are copied verbatim)."""
    return [
        p
        for p in sorted(node.rglob("*.py"))
        if "integrations" not in p.parts and "mixins" not in p.parts
    ]


@pytest.mark.parametrize("case", CASES, ids=[f"{v}-{t}" for v, t in CASES])
def test_what_fits_on_a_line_is_on_one_line(
    nodes: dict[tuple[str, str], Path], case: tuple[str, str]
) -> None:
    """Ruff, told to ignore trailing commas, changes nothing: no import of one name in
    parentheses, no call or signature split over lines that fits on one."""
    node = nodes[case]
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "format",
            "--check",
            "--diff",
            "--isolated",
            "--line-length=100",
            "--config=format.skip-magic-trailing-comma=true",
            *map(str, _own_python(node)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout[-4000:]


@pytest.mark.parametrize("case", CASES, ids=[f"{v}-{t}" for v, t in CASES])
def test_every_module_and_method_of_the_node_is_used(
    nodes: dict[tuple[str, str], Path], case: tuple[str, str]
) -> None:
    """Each module of the package is imported by another file of the node, and each method of
    the node class is called somewhere (the service, the ONEX adapter, the tests)."""
    node = nodes[case]
    package = node / "src" / "orders"
    sources = {p: p.read_text(encoding="utf-8") for p in node.rglob("*.py")}
    imported: dict[str, set[Path]] = {}
    for path, text in sources.items():
        for statement in ast.walk(ast.parse(text)):
            if isinstance(statement, ast.ImportFrom) and statement.module:
                names = [statement.module]
                names += [f"{statement.module}.{alias.name}" for alias in statement.names]
            elif isinstance(statement, ast.Import):
                names = [alias.name for alias in statement.names]
            else:
                continue
            for name in names:
                imported.setdefault(name, set()).add(path)
    for module in _own_python(package):
        if module.name in {"__init__.py", "__main__.py", "handler.py"}:
            continue  # the package, `python -m`, and the ONEX entry point contract.yaml names
        dotted = ".".join(module.relative_to(node / "src").with_suffix("").parts)
        assert imported.get(dotted, set()) - {module}, f"{case}: nothing imports {dotted}"
    node_class = next(
        n
        for n in ast.parse(sources[package / "node.py"]).body
        if isinstance(n, ast.ClassDef) and n.name.endswith("Node")
    )
    others = "\n".join(text for p, text in sources.items() if p != package / "node.py")
    body = sources[package / "node.py"]
    for method in node_class.body:
        if not isinstance(method, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if method.name.startswith("__"):
            continue
        used = f".{method.name}" in others or f".{method.name}" in body
        assert used, f"{case}: {node_class.name}.{method.name} is never called"


def test_workflow_handlers_check_their_input_once_and_take_no_steps(
    nodes: dict[tuple[str, str], Path],
) -> None:
    package = nodes[("workflow", "orchestrator")] / "src" / "orders"
    handlers = (package / "handlers.py").read_text(encoding="utf-8")
    assert handlers.count("math.isfinite") == 2  # one check in each of the two operations
    tree = ast.parse(handlers)
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {a.arg for n in ast.walk(tree) if isinstance(n, ast.arguments) for a in n.args}
    assert not names & {"steps", "Steps"}
    assert not (package / "orchestration.py").exists()
    node = (package / "node.py").read_text(encoding="utf-8")
    assert "handlers.fetch(request, self.resources)" in node


def test_orchestrators_without_a_durable_engine_get_step_bookkeeping(
    nodes: dict[tuple[str, str], Path],
) -> None:
    package = nodes[("production", "orchestrator")] / "src" / "orders"
    assert "steps: Steps" in (package / "handlers.py").read_text(encoding="utf-8")
    assert (package / "orchestration.py").exists()
