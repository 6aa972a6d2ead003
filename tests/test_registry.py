"""The registry is data: validated on load, and extendable without touching scoring code."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from selector import NodeType, RegistryError, load_registry, select
from selector.registry import (
    DEFAULT_INTEGRATIONS_FILE,
    DEFAULT_MIXINS_FILE,
    DEFAULT_VARIANTS_DIR,
    DEFAULT_VOCABULARY_FILE,
)

EXPECTED_MATRIX = {
    "minimal": {"effect", "compute", "reducer", "orchestrator"},
    "standard": {"effect", "compute", "reducer", "orchestrator"},
    "production": {"effect", "compute", "reducer", "orchestrator"},
    "database_heavy": {"effect", "reducer"},
    "api_heavy": {"effect", "orchestrator"},
    "kafka_heavy": {"effect", "orchestrator", "reducer"},
    "ml_inference": {"effect", "compute"},
    "analytics": {"reducer", "compute"},
    "workflow": {"orchestrator"},
}


def copy_registry(tmp_path: Path) -> Path:
    target = tmp_path / "variants"
    shutil.copytree(DEFAULT_VARIANTS_DIR, target)
    return target


def load(variants: Path) -> object:
    return load_registry(variants, DEFAULT_VOCABULARY_FILE, DEFAULT_MIXINS_FILE)


def test_compatibility_matrix() -> None:
    registry = load_registry()
    matrix = {name: {t.value for t in types} for name, types in registry.matrix().items()}
    assert matrix == EXPECTED_MATRIX
    assert sum(len(types) for types in matrix.values()) == 24


def test_a_custom_variant_is_scored_like_the_built_in_ones(tmp_path: Path) -> None:
    variants = copy_registry(tmp_path)
    entry = {
        "name": "search_heavy",
        "title": "Search-heavy",
        "summary": "Operations backed by a search index.",
        "domain": {"name": "search", "priority": 70},
        "supported_node_types": ["effect"],
        "operations": {"min": 1, "max": 50},
        "features": ["index client"],
        "mixins": ["metrics"],
        "patterns": ["query builder"],
        "complexity": 3,
        "performance": {"latency": "index-bound"},
        "prerequisites": ["OpenSearch"],
        "signals": {"search": ["full_text_search"], "opensearch": ["elasticsearch"]},
    }
    (variants / "search_heavy.yaml").write_text(yaml.safe_dump(entry))
    registry = load_registry(variants, DEFAULT_VOCABULARY_FILE, DEFAULT_MIXINS_FILE)
    result = select(
        NodeType.EFFECT, ["a"], ["Elasticsearch", "full-text search"], registry=registry
    )
    assert result.variant == "search_heavy"
    # Ties go to the earlier domain: database (priority 10) beats search (70).
    tie = select(NodeType.EFFECT, ["a"], ["elasticsearch", "postgres"], registry=registry)
    assert tie.variant == "database_heavy"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"complexity": 9}, "complexity"),
        ({"supported_node_types": ["gateway"]}, "supported_node_types"),
        ({"tier": "minimal"}, "exactly one of 'tier' or 'domain'"),
        ({"signals": {}}, "needs at least one entry in 'signals'"),
        ({"mixins": ["teleport"]}, "unknown mixins ['teleport']"),
        ({"name": "other"}, "expected 'api_heavy'"),
        ({"signals": {"postgres": []}}, "claimed by both"),
        ({"operations": {"min": 5, "max": 1}}, "operations.min (5) exceeds operations.max (1)"),
        ({"colour": "blue"}, "colour"),
        ({"integrations": ["ftp"]}, "unknown integrations ['ftp']"),
    ],
)
def test_bad_registry_entries_are_rejected_with_the_file_and_field(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    variants = copy_registry(tmp_path)
    path = variants / "api_heavy.yaml"
    data = yaml.safe_load(path.read_text())
    data.update(change)
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RegistryError, match="api_heavy") as caught:
        load(variants)
    assert message in str(caught.value)


def test_a_missing_tier_is_rejected(tmp_path: Path) -> None:
    variants = copy_registry(tmp_path)
    (variants / "standard.yaml").unlink()
    with pytest.raises(RegistryError, match="tier variants missing"):
        load(variants)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"requires_mixins": ["teleport"]}, "requires unknown mixins ['teleport']"),
        ({"summary": None}, "summary"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_integration_entries_are_rejected_with_the_file_and_kit(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    kits = yaml.safe_load(DEFAULT_INTEGRATIONS_FILE.read_text())
    kits["http"].update(change)
    path = tmp_path / "integrations.yaml"
    path.write_text(yaml.safe_dump(kits))
    with pytest.raises(RegistryError, match="http") as caught:
        load_registry(DEFAULT_VARIANTS_DIR, DEFAULT_VOCABULARY_FILE, DEFAULT_MIXINS_FILE, path)
    assert message in str(caught.value)


def test_kit_variants_list_their_kits_and_the_mixins_the_kits_need() -> None:
    registry = load_registry()
    assert {v: s.integrations for v, s in registry.variants.items() if s.integrations} == {
        "database_heavy": ("postgres",),
        "api_heavy": ("http",),
        "kafka_heavy": ("kafka",),
        "ml_inference": ("onnx_inference",),
        "analytics": ("windows",),
        "workflow": ("postgres", "workflow"),
    }
    assert registry.required_mixins("api_heavy") == ("circuit_breaker",)
    assert registry.required_mixins("standard") == ()
