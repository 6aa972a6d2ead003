"""The selector against the labelled cases that follow the selection policy."""

from __future__ import annotations

from typing import Any

import pytest

from selector import select
from selector.models import Variant
from tests.conftest import load_cases

CASES = load_cases()


def test_the_labelled_cases_are_present() -> None:
    assert len(CASES) >= 71


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_selects_the_labelled_variant(case: dict[str, Any]) -> None:
    result = select(case["node_type"], case["operations"], case["features"])
    assert result.variant == case["expected"], result.rationale


LABELLED = [c for c in CASES if "domain_signals" in c]


@pytest.mark.parametrize("case", LABELLED, ids=[c["id"] for c in LABELLED])
def test_domain_strengths_match_the_labels(case: dict[str, Any]) -> None:
    result = select(case["node_type"], case["operations"], case["features"])
    scored = {alt.variant: alt.score for alt in result.alternatives}
    for variant, strength in case["domain_signals"].items():
        if variant in scored:
            assert scored[variant] == strength
        else:  # dropped as incompatible: the warning names it
            assert any(variant in warning for warning in result.warnings)


def test_result_fields() -> None:
    result = select("effect", ["a", "b", "c"], ["postgres", "retries", "sql", "wibble"])
    assert result.variant == Variant.DATABASE_HEAVY
    assert 0.5 < result.confidence <= 1.0
    assert "postgres" in result.rationale
    assert "sql" in result.rationale
    assert result.matched_features == {
        "postgres": "database",
        "retries": "production",
        "sql": "database",
    }
    assert [w for w in result.warnings if "wibble" in w]
    compatible = {
        "minimal",
        "standard",
        "production",
        "database_heavy",
        "api_heavy",
        "kafka_heavy",
        "ml_inference",
    }
    assert {alt.variant for alt in result.alternatives} == compatible
    assert result.alternatives[0].variant == result.variant
    scores = [alt.score for alt in result.alternatives[:4]]
    assert scores[0] == 2.0


def test_confidence_is_low_when_the_runner_up_is_close() -> None:
    tie = select("reducer", ["a"], ["p95", "db"])
    clear = select("reducer", ["a"], ["p95", "histogram", "percentiles", "aggregation"])
    assert tie.variant == "analytics"  # the reducer's home domain wins the tie
    assert "home domain" in tie.rationale
    assert tie.confidence < clear.confidence
    assert tie.confidence <= 0.5


def test_incompatible_domain_is_dropped_with_a_warning_naming_a_fitting_node_type() -> None:
    result = select("effect", ["a", "b", "c"], ["workflow", "saga", "compensation"])
    assert result.variant == "standard"
    assert any("orchestrator" in w and "workflow" in w for w in result.warnings)


def test_zero_operations_are_accepted() -> None:
    assert select("compute", [], []).variant == "minimal"


def test_unknown_node_type_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="node_type 'gateway' is not one of: effect, compute"):
        select("gateway", ["a"], [])


@pytest.mark.parametrize(
    ("typed", "meaning"),
    [
        ("PostgreSQL", "database"),
        ("postgres-16", "database"),
        ("Circuit Breakers", "production"),
        ("CircuitBreaker", "production"),
        ("percentiles", "analytics"),
        ("P95", "analytics"),
        ("kafka.consumer", "kafka"),
        ("Dead-Letter-Queue", "kafka"),
        ("OTel", "production"),
        ("sklearn", "ml"),
        ("torch", "ml"),
        ("MySQL 8", "database"),
        ("Health Check", "basic"),
        ("rate-limits", "api"),
        ("state machines", "workflow"),
        ("Redis", "shared"),
        ("retries", "production"),
    ],
)
def test_tags_are_read_as_a_person_would(typed: str, meaning: str) -> None:
    result = select("effect", ["a"], [typed])
    assert result.matched_features == {typed: meaning}
    assert not result.warnings or meaning in {"ml", "analytics", "workflow"}


@pytest.mark.parametrize("tag", ["legacy_compat", "docs", "i18n", "team_alpha", "p", "s3x"])
def test_unknown_tags_are_ignored_with_a_warning(tag: str) -> None:
    result = select("effect", ["a"], [tag])
    assert result.variant == "minimal"
    assert result.matched_features == {}
    assert len(result.warnings) == 1
    assert repr(tag) in result.warnings[0]


def test_the_same_meaning_twice_counts_once() -> None:
    once = select("effect", ["a"], ["postgres"])
    twice = select("effect", ["a"], ["postgres", "Postgres", "postgres-15"])
    assert [a.score for a in once.alternatives] == [a.score for a in twice.alternatives]
