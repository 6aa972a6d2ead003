"""Kits per node: the catalogue's node types and signals, the kits the selector recommends beside
the variant's own, the node's effective kit list, and the checks of the kit answers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from selector import NodeType, RegistryError, default_registry, load_registry, select
from selector.kits import effective_kits, kits_for, required_by, required_mixins, requirements
from selector.policy import explain_kits
from selector.registry import (
    DEFAULT_INTEGRATIONS_FILE,
    DEFAULT_MIXINS_FILE,
    DEFAULT_VARIANTS_DIR,
    DEFAULT_VOCABULARY_FILE,
    Registry,
)
from selector.validation import kit_delta_problem, mixin_delta_problem, mixins_problem
from tests.conftest import REPO_ROOT, load_cases

REGISTRY = default_registry()
COMPOSITION_CASES_FILE = REPO_ROOT / "tests" / "data" / "selector_composition_cases.jsonl"
COMPOSITION_CASES = [
    json.loads(line) for line in COMPOSITION_CASES_FILE.read_text().splitlines() if line.strip()
]


def load_with(
    tmp_path: Path, *, kits: dict[str, Any] | None = None, variant: dict[str, Any] | None = None
) -> Registry:
    """The shipped registry with one catalogue or variant entry changed."""
    variants = tmp_path / "variants"
    shutil.copytree(DEFAULT_VARIANTS_DIR, variants)
    if variant is not None:
        (variants / f"{variant['name']}.yaml").write_text(yaml.safe_dump(variant))
    catalogue = tmp_path / "integrations.yaml"
    catalogue.write_text(
        yaml.safe_dump(kits, sort_keys=False) if kits else DEFAULT_INTEGRATIONS_FILE.read_text()
    )
    return load_registry(variants, DEFAULT_VOCABULARY_FILE, DEFAULT_MIXINS_FILE, catalogue)


def shipped_kits() -> dict[str, Any]:
    kits: dict[str, Any] = yaml.safe_load(DEFAULT_INTEGRATIONS_FILE.read_text())
    return kits


# The catalogue ----------------------------------------------------------------------------------


def test_every_kit_declares_the_node_types_it_supports() -> None:
    declared = {
        name: {t.value for t in spec.node_types} for name, spec in REGISTRY.integrations.items()
    }
    assert declared == {
        "postgres": {"effect", "reducer"},
        "http": {"effect", "orchestrator"},
        "kafka": {"effect", "compute", "reducer", "orchestrator"},
        "onnx_inference": {"effect", "compute"},
        "windows": {"compute", "reducer"},
        "workflow": {"orchestrator"},
        "outbox": {"effect"},
    }


def test_the_outbox_runs_on_postgres_and_kafka_and_brings_nothing_else() -> None:
    outbox = REGISTRY.integrations["outbox"]
    assert outbox.requires_integrations == ("postgres", "kafka")
    assert outbox.dependencies == ()
    assert outbox.dev_dependencies == ()
    assert outbox.requires_mixins == ()
    assert effective_kits("minimal", ["outbox"]) == ["postgres", "kafka", "outbox"]


def test_a_kit_without_node_types_is_refused(tmp_path: Path) -> None:
    kits = shipped_kits()
    del kits["http"]["node_types"]
    with pytest.raises(RegistryError, match="http") as caught:
        load_with(tmp_path, kits=kits)
    assert "node_types" in str(caught.value)


def test_a_variant_whose_kit_does_not_support_its_node_types_is_refused(tmp_path: Path) -> None:
    api_heavy = yaml.safe_load((DEFAULT_VARIANTS_DIR / "api_heavy.yaml").read_text())
    api_heavy["supported_node_types"] = ["effect", "orchestrator", "compute"]
    with pytest.raises(RegistryError, match="api_heavy") as caught:
        load_with(tmp_path, variant=api_heavy)
    assert "http (compute)" in str(caught.value)


def test_a_required_kit_travels_with_its_kit_but_is_not_chosen_alone(tmp_path: Path) -> None:
    # The workflow variant's orchestrators carry postgres because the workflow kit needs it.
    assert REGISTRY.get("workflow").integrations == ("postgres", "workflow")
    assert NodeType.ORCHESTRATOR not in REGISTRY.integrations["postgres"].node_types
    workflow = yaml.safe_load((DEFAULT_VARIANTS_DIR / "workflow.yaml").read_text())
    workflow["integrations"] = ["postgres"]
    with pytest.raises(RegistryError, match="postgres \\(orchestrator\\)"):
        load_with(tmp_path, variant=workflow)


@pytest.mark.parametrize(
    ("requires", "message"),
    [(["ftp"], "requires ['ftp']"), (["outbox"], "requires ['outbox']")],
)
def test_a_kit_must_require_known_kits_listed_before_it(
    tmp_path: Path, requires: list[str], message: str
) -> None:
    kits = shipped_kits()
    kits["kafka"]["requires_integrations"] = requires
    with pytest.raises(RegistryError, match="kafka") as caught:
        load_with(tmp_path, kits=kits)
    assert message in str(caught.value)
    assert "listed before it" in str(caught.value)


def test_kit_tags_join_the_vocabulary() -> None:
    assert REGISTRY.vocabulary()["kit:outbox"] == ["outbox", "transactional_outbox"]
    for typed in ("outbox", "Transactional-Outbox", "outbox pattern", "OUTBOXES"):
        assert select("effect", ["a"], [typed]).matched_features == {typed: "kit:outbox"}


def test_a_kit_tag_may_not_be_claimed_twice(tmp_path: Path) -> None:
    kits = shipped_kits()
    kits["outbox"]["signals"]["outbox"] = ["postgres"]
    with pytest.raises(RegistryError, match="claimed by both") as caught:
        load_with(tmp_path, kits=kits)
    assert "integrations.yaml" in str(caught.value)
    assert "database:postgres" in str(caught.value)


def test_a_kit_named_like_a_domain_can_declare_tags(tmp_path: Path) -> None:
    kits = shipped_kits()
    kits["kafka"]["signals"] = {"kafka_kit": []}
    registry = load_with(tmp_path, kits=kits)
    result = select("compute", ["a"], ["onnx", "kafka kit"], registry=registry)
    assert result.matched_features == {"onnx": "ml", "kafka kit": "kit:kafka"}
    assert result.kits_added == ["kafka"]
    assert "kafka: 1 tag (kafka_kit) asks for it" in result.rationale


# Recommendations --------------------------------------------------------------------------------


def test_the_composition_cases_are_present() -> None:
    assert len(COMPOSITION_CASES) >= 25
    assert len({c["id"] for c in COMPOSITION_CASES}) == len(COMPOSITION_CASES)
    assert any(c["kits_added"] == [] for c in COMPOSITION_CASES)


@pytest.mark.parametrize("case", COMPOSITION_CASES, ids=[c["id"] for c in COMPOSITION_CASES])
def test_recommends_the_labelled_kits(case: dict[str, Any]) -> None:
    result = select(case["node_type"], case["operations"], case["features"])
    assert result.variant == case["expected"], result.rationale
    assert result.kits_added == case["kits_added"], result.rationale
    for fragment in case.get("rationale", []):
        assert fragment in result.rationale
    for fragment in case.get("warns", []):
        assert any(fragment in warning for warning in result.warnings), result.warnings
    assert ("Kits added:" in result.rationale) == bool(case["kits_added"])


def test_the_acceptance_request_gets_both_kits_and_the_outbox() -> None:
    result = select("effect", ["store_order"], ["postgres", "kafka_producer", "outbox"])
    assert result.variant == "database_heavy"
    assert result.kits_added == ["kafka", "outbox"]
    assert effective_kits(result.variant, result.kits_added) == ["postgres", "kafka", "outbox"]
    assert kit_delta_problem(result.kits_added, "kits_added", result.variant, "effect") == ""


def test_additions_never_change_the_labelled_variants() -> None:
    for case in load_cases():
        plain = select(case["node_type"], case["operations"], case["features"])
        asked = select(case["node_type"], case["operations"], [*case["features"], "outbox"])
        assert asked.variant == plain.variant == case["expected"]


def test_explain_kits_lists_the_additions_with_their_reasons() -> None:
    features = ["postgres", "kafka_producer", "outbox"]
    kits = explain_kits("effect", ["a"], features)
    assert [kit for kit, _ in kits] == select("effect", ["a"], features).kits_added
    assert kits[0] == ("kafka", "kafka: 1 tag (kafka_producer) beside database")
    assert explain_kits("effect", ["a"], ["postgres"]) == []


def test_the_stronger_domain_is_credited_with_a_kit_two_bring() -> None:
    # Both kafka and workflow signal an orchestrator beside api; workflow brings postgres along.
    result = select(
        "orchestrator", ["a"], ["http", "rest", "api", "saga", "kafka", "kafka_consumer"]
    )
    assert result.variant == "api_heavy"
    assert result.kits_added == ["postgres", "kafka", "workflow"]
    assert "kafka: 2 tags (kafka, kafka_consumer) beside api" in result.rationale
    assert "postgres: required by workflow" in result.rationale


tags = st.lists(st.sampled_from(sorted(REGISTRY.lexicon.spellings())), max_size=8)


@given(st.sampled_from(list(NodeType)), st.integers(0, 8), tags)
def test_a_recommendation_is_always_an_answer_the_questionnaire_accepts(
    node_type: NodeType, operations: int, features: list[str]
) -> None:
    ops = [f"op{i}" for i in range(operations)]
    result = select(node_type, ops, features)
    without_kit_tags = [
        t
        for t in features
        if t not in result.matched_features or not (result.matched_features[t].startswith("kit:"))
    ]
    assert select(node_type, ops, without_kit_tags).variant == result.variant
    own = REGISTRY.get(result.variant).integrations
    assert not set(result.kits_added) & set(own)
    node_kits = effective_kits(result.variant, result.kits_added)
    assert [k for k in node_kits if k not in own] == result.kits_added
    assert kit_delta_problem(result.kits_added, "kits_added", result.variant, node_type) == ""
    for kit in result.kits_added:
        assert f"{kit}: " in result.rationale


# The node's kits -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "added", "removed", "expected"),
    [
        ("database_heavy", [], [], ["postgres"]),
        ("database_heavy", ["kafka"], [], ["postgres", "kafka"]),
        ("database_heavy", ["outbox", "kafka"], [], ["postgres", "kafka", "outbox"]),
        ("kafka_heavy", ["outbox"], [], ["postgres", "kafka", "outbox"]),
        ("api_heavy", ["workflow"], [], ["postgres", "http", "workflow"]),
        ("api_heavy", [], ["http"], []),
        ("api_heavy", ["kafka"], ["http"], ["kafka"]),
        ("workflow", [], [], ["postgres", "workflow"]),
        # An answer that removes a required kit is refused by kit_delta_problem; the list
        # stays usable all the same.
        ("workflow", [], ["postgres"], ["postgres", "workflow"]),
        ("minimal", [], [], []),
    ],
)
def test_effective_kits(
    variant: str, added: list[str], removed: list[str], expected: list[str]
) -> None:
    assert effective_kits(variant, added, removed) == expected


@given(
    st.sampled_from(list(REGISTRY.variants)),
    st.sets(st.sampled_from(list(REGISTRY.integrations))),
    st.sets(st.sampled_from(list(REGISTRY.integrations))),
)
def test_effective_kits_are_closed_ordered_and_honour_the_answers(
    variant: str, added: set[str], removed: set[str]
) -> None:
    kits = effective_kits(variant, sorted(added, reverse=True), removed)
    assert kits == effective_kits(variant, sorted(added), sorted(removed))  # order-free answers
    catalogue = list(REGISTRY.integrations)
    assert kits == sorted(kits, key=catalogue.index)
    assert len(set(kits)) == len(kits)
    for kit in kits:
        assert requirements(kit) <= set(kits)
    assert added <= set(kits)
    own = set(REGISTRY.get(variant).integrations)
    for kit in removed - added:
        assert (kit in kits) == any(kit in requirements(other) for other in kits)
    assert set(kits) <= own | added | {r for k in own | added for r in requirements(k)}


def test_unknown_names_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown kits \\['ftp'\\]; known kits: postgres"):
        effective_kits("standard", ["ftp"])
    with pytest.raises(KeyError, match="unknown variant 'turbo'"):
        effective_kits("turbo")


def test_kit_helpers() -> None:
    assert requirements("outbox") == {"postgres", "kafka"}
    assert requirements("postgres") == set()
    assert required_by("postgres", ["http", "workflow", "outbox"]) == ["workflow", "outbox"]
    assert kits_for("orchestrator") == ["http", "kafka", "workflow"]
    assert kits_for(NodeType.COMPUTE) == ["kafka", "onnx_inference", "windows"]
    assert required_mixins(["postgres", "http"]) == ("circuit_breaker",)
    assert required_mixins([]) == ()


# Checks of the kit answers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "question", "variant", "node_type"),
    [
        (None, "kits_added", "standard", "effect"),
        ([], "kits_added", "standard", "effect"),
        (["kafka", "outbox"], "kits_added", "database_heavy", "effect"),
        (["kafka"], "kits_added", "ml_inference", "compute"),
        (["workflow"], "kits_added", "api_heavy", "orchestrator"),
        ([], "kits_removed", "api_heavy", "effect"),
        (["http"], "kits_removed", "api_heavy", "effect"),
        (["postgres", "workflow"], "kits_removed", "workflow", "orchestrator"),
    ],
)
def test_good_kit_answers(value: object, question: str, variant: str, node_type: str) -> None:
    assert kit_delta_problem(value, question, variant, node_type) == ""


@pytest.mark.parametrize(
    ("value", "question", "variant", "node_type", "fragments"),
    [
        (
            "kafka",
            "kits_added",
            "api_heavy",
            "orchestrator",
            ["kits_added must be a list of kits", "add one of: kafka, workflow"],
        ),
        (
            ["ftp"],
            "kits_added",
            "database_heavy",
            "effect",
            ["kits_added: 'ftp' is not a kit", "add one of: http, kafka, onnx_inference, outbox"],
        ),
        (
            ["windows"],
            "kits_added",
            "database_heavy",
            "effect",
            ["the windows kit does not support effect nodes (it supports compute, reducer)"],
        ),
        (
            ["postgres"],
            "kits_added",
            "api_heavy",
            "orchestrator",
            ["postgres kit does not support orchestrator", "it comes with workflow"],
        ),
        (["kafka", "kafka"], "kits_added", "standard", "effect", ["'kafka' is listed twice"]),
        (
            ["kafka"],
            "kits_removed",
            "api_heavy",
            "effect",
            ["kits_removed: the api_heavy variant has no kafka kit", "kits are: http"],
        ),
        (
            ["postgres"],
            "kits_removed",
            "workflow",
            "orchestrator",
            ["postgres is needed by the workflow kit", "keep postgres or remove workflow"],
        ),
        (
            ["http"],
            "kits_added",
            "workflow",
            "effect",
            ["variant 'workflow' does not support effect nodes", "for an effect node"],
        ),
    ],
)
def test_bad_kit_answers_name_the_question_and_what_is_accepted(
    value: object, question: str, variant: str, node_type: str, fragments: list[str]
) -> None:
    problem = kit_delta_problem(value, question, variant, node_type)
    for fragment in fragments:
        assert fragment in problem


def test_a_removal_must_keep_what_an_added_kit_requires() -> None:
    problem = kit_delta_problem(
        ["postgres"], "kits_removed", "database_heavy", "effect", kits_added=["outbox"]
    )
    assert "postgres is needed by the outbox kit" in problem
    assert kit_delta_problem(["postgres"], "kits_removed", "database_heavy", "effect") == ""


def test_an_unknown_question_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="kits_added"):
        kit_delta_problem([], "kits", "standard", "effect")


def test_mixins_must_keep_what_added_kits_import() -> None:
    kits = effective_kits("database_heavy", ["http"])
    problem = mixins_problem(["metrics"], "database_heavy", kits=kits)
    assert "the node's kits (postgres, http) need circuit_breaker" in problem
    assert mixins_problem(["metrics"], "database_heavy") == ""
    removal = mixin_delta_problem(["circuit_breaker"], "mixins_removed", "standard", kits=kits)
    assert "circuit_breaker" in removal
    assert mixin_delta_problem(["circuit_breaker"], "mixins_removed", "standard") == ""


def test_adding_a_kit_the_variant_has_is_accepted_so_a_variant_switch_keeps_it() -> None:
    # A node of database_heavy + kafka switched to kafka_heavy keeps its stored addition.
    assert kit_delta_problem(["kafka"], "kits_added", "kafka_heavy", "effect") == ""
    assert kit_delta_problem(["postgres"], "kits_added", "database_heavy", "effect") == ""
