"""Render every compatible (node type, variant) pair and every mixin choice, install them into
one virtual environment, and run each node's own ruff, mypy and pytest."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from selector import default_registry
from tests.render_helpers import (
    KIT_SUPPORT,
    check_node,
    install_nodes,
    kit_modules,
    make_node_env,
    make_own_env,
    run_node_tests,
    serving,
    shipped_kits,
)

REGISTRY = default_registry()
ALL_MIXINS = list(REGISTRY.mixins)

PAIRS = [
    (variant, node_type.value)
    for variant, spec in REGISTRY.variants.items()
    for node_type in spec.supported_node_types
]
# Mixin answers beyond the variants' own: none, all, each alone, all but each. Mixins do not
# import each other, so these cover every interaction the runtime wires.
MIXIN_SETS = {
    "none": [],
    "all": ALL_MIXINS,
    **{f"only_{m}": [m] for m in ALL_MIXINS},
    **{f"all_but_{m}": [x for x in ALL_MIXINS if x != m] for m in ALL_MIXINS},
}
NODE_TYPE_FOR_MIXINS = ["effect", "compute", "reducer", "orchestrator"]
# The longest names the questionnaire accepts: generated lines must still fit ruff's limits.
LONGEST_NAME = "n" * 40 + "_long_name"  # 50 characters
LONGEST_OPERATIONS = ["o" * 26 + f"_op_{i}" for i in range(3)]  # 32 characters each
LONG_NAME_CASES = [
    (node_type, f"{LONGEST_NAME[: 50 - len(node_type) - 1]}_{node_type}")
    for node_type in NODE_TYPE_FOR_MIXINS
]
# The same for every variant whose code differs by integration kit.
LONG_NAME_KIT_CASES = [
    (
        variant,
        node_type,
        f"{LONGEST_NAME[: 50 - len(variant) - len(node_type) - 2]}_{variant}_{node_type}",
    )
    for variant, node_type in [
        ("database_heavy", "reducer"),
        ("api_heavy", "orchestrator"),
        ("kafka_heavy", "orchestrator"),
        ("kafka_heavy", "reducer"),
        ("ml_inference", "effect"),
        ("analytics", "reducer"),
        ("analytics", "compute"),
        ("workflow", "orchestrator"),
    ]
]


# Nodes that carry kits besides their variant's own, as the selector recommends them for these
# feature tags (every other answer at its default): name -> (node type, tags, variant, kits).
COMPOSED = {
    "orders_outbox": ("effect", ["postgres", "kafka_producer", "outbox"], "database_heavy"),
    "stream_scoring": ("compute", ["onnx", "kafka"], "ml_inference"),
    "upstream_records": ("effect", ["rest_api", "http_client", "postgres"], "api_heavy"),
    "upstream_events": ("effect", ["rest_api", "kafka_producer"], "api_heavy"),
}
COMPOSED_KITS = {
    "orders_outbox": {"postgres", "kafka", "outbox"},
    "stream_scoring": {"onnx_inference", "kafka"},
    "upstream_records": {"http", "postgres"},
    "upstream_events": {"http", "kafka"},
}
# The kits that follow up each composed node's example with its output (publish it, record it),
# each with its example tests (tests/test_handlers_then_<kit>.py).
COMPOSED_FOLLOW_UPS = {
    "orders_outbox": set(),  # the outbox's example uses postgres and kafka itself
    "stream_scoring": {"kafka"},
    "upstream_records": {"postgres"},
    "upstream_events": {"kafka"},
}

# The longest names for a node composed of several kits (the outbox's examples and tests).
LONG_NAME_COMPOSED = f"{LONGEST_NAME[:43]}_outbox"


def pair_answers(variant: str, node_type: str) -> dict[str, Any]:
    return {
        "node_name": f"{variant}_{node_type}",
        "node_type": node_type,
        "variant": variant,
        "operations": ["fetch_item", "store_item"],
        # Typographic punctuation, as people paste it: kept as written, and the node's ruff passes.
        "description": f"A {variant} {node_type} node \u2013 the template\u2019s tests render it.",
    }


def mixin_answers(label: str, index: int) -> dict[str, Any]:
    """A production node whose mixins are exactly MIXIN_SETS[label], as the questionnaire
    stores them: changes to the variant's own mixins."""
    node_type = NODE_TYPE_FOR_MIXINS[index % len(NODE_TYPE_FOR_MIXINS)]
    own = REGISTRY.get("production").mixins
    wanted = MIXIN_SETS[label]
    return {
        "node_name": f"mix_{label}",
        "node_type": node_type,
        "variant": "production",
        "mixins_added": [m for m in wanted if m not in own],
        "mixins_removed": [m for m in own if m not in wanted],
        "operations": ["handle"],
    }


@pytest.fixture(scope="session")
def rendered_nodes(copie_session: Any) -> dict[str, Path]:
    """Every node of this module, rendered once per test session with pytest-copie."""
    answer_sets = [pair_answers(variant, node_type) for variant, node_type in PAIRS]
    answer_sets += [mixin_answers(label, index) for index, label in enumerate(MIXIN_SETS)]
    answer_sets += [
        {
            "node_name": name,
            "node_type": node_type,
            "variant": "production",
            "operations": LONGEST_OPERATIONS,
        }
        for node_type, name in LONG_NAME_CASES
    ]
    answer_sets += [
        {
            "node_name": name,
            "node_type": node_type,
            "variant": variant,
            "operations": LONGEST_OPERATIONS,
        }
        for variant, node_type, name in LONG_NAME_KIT_CASES
    ]
    answer_sets += [
        {
            "node_name": name,
            "node_type": node_type,
            "features": tags,
            "operations": ["fetch_item", "store_item"],
        }
        for name, (node_type, tags, _variant) in COMPOSED.items()
    ]
    answer_sets.append(
        {
            "node_name": LONG_NAME_COMPOSED,
            "node_type": "effect",
            "features": COMPOSED["orders_outbox"][1],
            "operations": LONGEST_OPERATIONS,
        }
    )
    nodes: dict[str, Path] = {}
    for answers in answer_sets:
        result = copie_session.copy(extra_answers=answers)
        assert result.exception is None, f"{answers['node_name']}: {result.exception}"
        assert result.project_dir is not None
        nodes[answers["node_name"]] = result.project_dir
    return nodes


@pytest.fixture(scope="session")
def node_python(rendered_nodes: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    python = make_node_env(tmp_path_factory.mktemp("env"))
    install_nodes(python, list(rendered_nodes.values()))
    return python


@pytest.fixture(scope="session")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache for every node a test worker checks: their environments differ, but the
    third-party modules they share are analysed once (mypy validates each entry by content)."""
    return tmp_path_factory.mktemp("mypy-cache")


def test_all_24_pairs_are_compatible() -> None:
    assert len(PAIRS) == 24


@pytest.mark.render
@pytest.mark.parametrize(("variant", "node_type"), PAIRS, ids=[f"{v}-{t}" for v, t in PAIRS])
def test_rendered_pair_passes_its_own_checks(
    variant: str,
    node_type: str,
    rendered_nodes: dict[str, Path],
    mypy_cache: Path,
    tmp_path: Path,
) -> None:
    """Ruff, mypy and pytest in a fresh environment built only from the node's pyproject."""
    node = rendered_nodes[f"{variant}_{node_type}"]
    spec = REGISTRY.get(variant)
    package = node / "src" / f"{variant}_{node_type}"
    shipped = {p.stem for p in (package / "mixins").glob("*.py")} - {"__init__"}
    assert shipped == set(spec.mixins)
    assert shipped_kits(package / "integrations") == set(spec.integrations)
    assert (package / "integrations" / f"{KIT_SUPPORT}.py").is_file() == bool(spec.integrations)
    check_node(make_own_env(tmp_path, sys.executable, node, "dev"), node, mypy_cache)


@pytest.mark.render
@pytest.mark.parametrize("name", list(COMPOSED))
def test_a_composed_node_carries_the_recommended_kits_and_passes_its_own_checks(
    name: str, rendered_nodes: dict[str, Path], mypy_cache: Path, tmp_path: Path
) -> None:
    node = rendered_nodes[name]
    answers = yaml.safe_load((node / ".copier-answers.yml").read_text(encoding="utf-8"))
    variant = COMPOSED[name][2]
    assert answers["variant"] == variant
    own = set(REGISTRY.get(variant).integrations)
    assert set(answers["kits_added"]) == COMPOSED_KITS[name] - own
    assert shipped_kits(node / "src" / name / "integrations") == COMPOSED_KITS[name]
    follow_up_tests = (node / "tests").glob("test_handlers_then_*.py")
    assert {p.stem.removeprefix("test_handlers_then_") for p in follow_up_tests} == (
        COMPOSED_FOLLOW_UPS[name]
    )
    check_node(make_own_env(tmp_path, sys.executable, node, "dev"), node, mypy_cache)


@pytest.mark.render
@pytest.mark.parametrize("label", list(MIXIN_SETS))
def test_every_mixin_choice_renders_and_passes(
    label: str, rendered_nodes: dict[str, Path], node_python: Path, mypy_cache: Path
) -> None:
    node = rendered_nodes[f"mix_{label}"]
    mixins_dir = node / "src" / f"mix_{label}" / "mixins"
    shipped = {p.stem for p in mixins_dir.glob("*.py")} - {"__init__"}
    assert shipped == set(MIXIN_SETS[label])
    assert mixins_dir.exists() == bool(MIXIN_SETS[label])
    check_node(node_python, node, mypy_cache)


@pytest.mark.render
@pytest.mark.parametrize(("node_type", "name"), LONG_NAME_CASES)
def test_longest_names_still_pass_lint_and_format(
    node_type: str, name: str, rendered_nodes: dict[str, Path], node_python: Path, mypy_cache: Path
) -> None:
    assert len(name) == 50
    check_node(node_python, rendered_nodes[name], mypy_cache)


@pytest.mark.render
@pytest.mark.parametrize(
    ("variant", "node_type", "name"),
    LONG_NAME_KIT_CASES,
    ids=[f"{c[0]}-{c[1]}" for c in LONG_NAME_KIT_CASES],
)
def test_longest_names_pass_for_kit_variants(
    variant: str,
    node_type: str,
    name: str,
    rendered_nodes: dict[str, Path],
    node_python: Path,
    mypy_cache: Path,
) -> None:
    assert len(name) == 50
    check_node(node_python, rendered_nodes[name], mypy_cache)


@pytest.mark.render
def test_longest_names_pass_for_a_composed_node(
    rendered_nodes: dict[str, Path], node_python: Path, mypy_cache: Path
) -> None:
    assert len(LONG_NAME_COMPOSED) == 50
    check_node(node_python, rendered_nodes[LONG_NAME_COMPOSED], mypy_cache)


@pytest.mark.parametrize(
    ("variant", "node_type"), [p for p in PAIRS if REGISTRY.get(p[0]).integrations]
)
def test_kits_are_copied_with_only_the_mixins_import_rewritten(
    variant: str, node_type: str, rendered_nodes: dict[str, Path]
) -> None:
    """Each kit module (a package kit's too) and the shared support module, and nothing else."""
    name = f"{variant}_{node_type}"
    root = Path(__file__).resolve().parent.parent
    kits_dir = root / "integrations"
    copied_dir = rendered_nodes[name] / "src" / name / "integrations"
    expected_files = {"__init__.py"}
    for kit in REGISTRY.get(variant).integrations:
        modules = kit_modules(kits_dir, kit)
        assert modules, kit
        for source in [*modules, kits_dir / f"{KIT_SUPPORT}.py"]:
            relative = source.relative_to(kits_dir).as_posix()
            expected_files.add(relative)
            expected = (
                source.read_text(encoding="utf-8")
                .replace("from mixins.", f"from {name}.mixins.")
                .replace("from integrations.", f"from {name}.integrations.")
            )
            assert (copied_dir / relative).read_text(encoding="utf-8") == expected, relative
        local = root / "integrations" / f"local_{kit}.py"
        if local.exists():
            copied = rendered_nodes[name] / "tests" / f"local_{kit}.py"
            assert copied.read_bytes() == local.read_bytes()
    copied_files = {p.relative_to(copied_dir).as_posix() for p in copied_dir.rglob("*.py")}
    assert copied_files == expected_files


def test_mixins_are_copied_verbatim(rendered_nodes: dict[str, Path]) -> None:
    mixins_dir = rendered_nodes["mix_all"] / "src" / "mix_all" / "mixins"
    for name in ALL_MIXINS:
        source = Path(__file__).resolve().parent.parent / "mixins" / f"{name}.py"
        assert (mixins_dir / f"{name}.py").read_bytes() == source.read_bytes(), name


CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# No first-run, sync or update traffic: this machine's network is closed, and the page must not
# need it.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.render
def test_docs_page_lists_and_runs_every_operation_offline_in_chromium(
    rendered_nodes: dict[str, Path], node_python: Path
) -> None:
    from playwright.sync_api import Route, sync_playwright

    name = "standard_effect"
    operations = pair_answers("standard", "effect")["operations"]
    with serving(node_python, rendered_nodes[name], name) as base_url:
        elsewhere: list[str] = []

        def local_only(route: Route) -> None:
            if route.request.url.startswith(base_url):
                route.continue_()
            else:
                elsewhere.append(route.request.url)
                route.abort()

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.route("**/*", local_only)
                page.goto(f"{base_url}/docs")
                paths = page.locator(".opblock-summary-path")
                paths.first.wait_for(timeout=20_000)
                listed = [text.replace("\u200b", "").strip() for text in paths.all_inner_texts()]
                assert sorted(p for p in listed if p.startswith("/operations/")) == sorted(
                    f"/operations/{op}" for op in operations
                )
                block = page.locator(".opblock", has_text=f"/operations/{operations[0]}")
                block.locator(".opblock-summary").click()
                block.get_by_role("button", name="Try it out").click()
                block.get_by_role("button", name="Execute").click()
                status = block.locator(".live-responses-table tbody .response-col_status")
                status.first.wait_for(timeout=20_000)
                assert status.first.inner_text().strip() == "200", block.inner_text()[-3000:]
                body = block.locator(".live-responses-table .highlight-code").first.inner_text()
                assert f'"operation": "{operations[0]}"' in body
            finally:
                browser.close()
        assert elsewhere == []


@pytest.fixture(scope="session")
def python312() -> str:
    python = os.environ.get("PYTHON312")
    if not python:
        pytest.fail("PYTHON312 is not set: scripts/test.sh finds a Python 3.12 and sets it")
    return python


@pytest.mark.render
@pytest.mark.parametrize(("variant", "node_type"), PAIRS, ids=[f"{v}-{t}" for v, t in PAIRS])
def test_rendered_pair_passes_its_own_tests_on_the_onex_runtime(
    variant: str, node_type: str, rendered_nodes: dict[str, Path], python312: str, tmp_path: Path
) -> None:
    """Python 3.12 with the `onex` extra: the node's whole suite, its ONEX tests included, and
    nothing skipped."""
    node = rendered_nodes[f"{variant}_{node_type}"]
    onex_python = make_own_env(tmp_path, python312, node, "dev,onex")
    run_node_tests(onex_python, node, {"PYTHONDONTWRITEBYTECODE": "1"})


@pytest.mark.render
@pytest.mark.parametrize("name", list(COMPOSED))
def test_a_composed_node_passes_its_own_tests_on_the_onex_runtime(
    name: str, rendered_nodes: dict[str, Path], python312: str, tmp_path: Path
) -> None:
    """Installed from its own pyproject into a fresh environment, with nothing skipped."""
    node = rendered_nodes[name]
    onex_python = make_own_env(tmp_path, python312, node, "dev,onex")
    run_node_tests(onex_python, node, {"PYTHONDONTWRITEBYTECODE": "1"})
