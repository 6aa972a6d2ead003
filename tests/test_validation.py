"""Every questionnaire validator: a clear message naming the question, or nothing."""

from __future__ import annotations

import pytest

from selector.validation import (
    features_problem,
    mixins_problem,
    node_name_problem,
    operations_problem,
    variant_problem,
)


@pytest.mark.parametrize("name", ["user_lookup", "a", "node2", "x" * 50, "payments_v2_node"])
def test_good_node_names(name: str) -> None:
    assert node_name_problem(name) == ""


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "non-empty"),
        ("UserLookup", "not snake_case"),
        ("user-lookup", "not snake_case"),
        ("2fast", "not snake_case"),
        ("a__b", "not snake_case"),
        ("class", "Python keyword"),
        ("match", "Python keyword"),
        ("json", "standard-library module"),
        ("asyncio", "standard-library module"),
        ("../x", "looks like a path"),
        ("a/b", "looks like a path"),
        ("x" * 51, "at most 50"),
        ("tests", "reserved"),
        (None, "non-empty"),
    ],
)
def test_bad_node_names_name_the_question(name: object, fragment: str) -> None:
    problem = node_name_problem(name)
    assert problem.startswith("node_name")
    assert fragment in problem


@pytest.mark.parametrize(
    ("ops", "fragment"),
    [
        ([], "at least one"),
        (["a", "a"], "listed twice"),
        (["Fetch"], "not snake_case"),
        (["for"], "Python keyword"),
        (["ok", "../x"], "looks like a path"),
        (["start"], "clashes with a method"),
        ([f"op{i}" for i in range(51)], "at most 50"),
        (["x" * 33], "at most 32"),
        ("fetch", "must be a list"),
        ([1], "non-empty snake_case"),
    ],
)
def test_bad_operations(ops: object, fragment: str) -> None:
    problem = operations_problem(ops)
    assert problem.startswith("operation")
    assert fragment in problem


def test_good_operations() -> None:
    assert operations_problem(["fetch_user", "store_user", "start_job"]) == ""
    assert operations_problem([f"op{i}" for i in range(50)]) == ""


def test_features() -> None:
    assert features_problem(["anything", "Goes Here"]) == ""
    assert features_problem(None) == ""
    assert "list of tags" in features_problem("postgres")
    assert "non-empty string" in features_problem(["ok", ""])


def test_variants_must_fit_the_node_type() -> None:
    assert variant_problem("workflow", "orchestrator") == ""
    problem = variant_problem("workflow", "effect")
    assert "does not support effect nodes (it supports orchestrator)" in problem
    assert "database_heavy" in problem  # lists what would fit
    assert "unknown" in variant_problem("turbo", "effect")


def test_mixins() -> None:
    assert mixins_problem(["retry", "metrics"]) == ""
    assert "'teleport' is not a mixin" in mixins_problem(["teleport"])


def test_mixins_must_keep_what_the_variants_kits_import() -> None:
    problem = mixins_problem(["retry", "metrics"], "api_heavy")
    assert "api_heavy" in problem
    assert "http" in problem
    assert "circuit_breaker" in problem
    assert mixins_problem(["circuit_breaker"], "api_heavy") == ""
    assert mixins_problem(["retry"], "standard") == ""
