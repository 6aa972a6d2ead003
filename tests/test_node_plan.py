"""What a node's kits bring to its node type (selector/plan.py): the facts templates test."""

from __future__ import annotations

import pytest

from selector import default_registry
from selector.kits import effective_kits
from selector.models import NodeType
from selector.plan import NodePlan, handler_kit, plan_node

REGISTRY = default_registry()


def plan(variant: str, node_type: str, added: tuple[str, ...] = ()) -> NodePlan:
    kits = effective_kits(variant, added, (), registry=REGISTRY)
    return plan_node(node_type, kits, REGISTRY.get(variant).integrations, REGISTRY)


def test_a_kit_built_on_others_gives_the_example_handler() -> None:
    outbox = plan_node("effect", ["postgres", "kafka", "outbox"], ["postgres"], REGISTRY)
    assert outbox.handler_kit == "outbox"
    assert outbox.examples == ("outbox",)
    workflow = plan_node(
        "orchestrator", ["postgres", "workflow"], ["postgres", "workflow"], REGISTRY
    )
    assert workflow.handler_kit == "workflow"


def test_the_variants_own_kit_gives_the_example_over_an_added_one() -> None:
    # api_heavy + postgres, and database_heavy + http: each keeps its own example.
    assert handler_kit(["postgres", "http"], NodeType.EFFECT, ["http"], REGISTRY) == "http"
    assert handler_kit(["postgres", "http"], NodeType.EFFECT, ["postgres"], REGISTRY) == "postgres"


def test_without_an_example_for_the_node_type_the_example_is_generic() -> None:
    # The postgres kit has an example for effect nodes only; kafka reducers fold in the node.
    assert plan("database_heavy", "reducer").handler_kit == ""
    assert plan("kafka_heavy", "reducer").handler_kit == ""
    assert plan("minimal", "effect").handler_kit == ""


@pytest.mark.parametrize(
    ("variant", "node_type", "capability"),
    [
        ("database_heavy", "reducer", "state_in_database"),
        ("kafka_heavy", "reducer", "state_in_changelog"),
        ("kafka_heavy", "orchestrator", "consumes_stream"),
        ("analytics", "reducer", "state_in_windows"),
        ("api_heavy", "effect", "upstream_breakers"),
        ("ml_inference", "compute", "compute_with_resources"),
    ],
)
def test_capabilities_follow_the_kits_and_the_node_type(
    variant: str, node_type: str, capability: str
) -> None:
    assert capability in plan(variant, node_type).provides
    other_types = [t for t in REGISTRY.get(variant).supported_node_types if t != node_type]
    node_type_only = {"state_in_database", "state_in_changelog", "consumes_stream"}
    for other in other_types:
        if capability in node_type_only and other in ("effect", "compute"):
            assert capability not in plan(variant, other).provides


def test_services_are_the_kits_with_a_container_of_their_own() -> None:
    assert plan("database_heavy", "effect", ("kafka", "outbox")).services == ("postgres", "kafka")
    assert plan("api_heavy", "effect").services == ()
    assert plan("workflow", "orchestrator").services == ("postgres",)


def test_what_onex_validate_reports_comes_with_the_kits() -> None:
    advice = plan("kafka_heavy", "effect").onex_advice
    assert {path for path, _ in advice} == {
        "integrations/kafka/producer.py",
        "integrations/kafka/consumer.py",
    }
    assert plan("database_heavy", "effect").onex_advice == ()
