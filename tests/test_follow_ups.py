"""Which kits follow up a node's example handler (selector/plan.py: NodePlan.follow_ups): they
do their part with each example operation's output (publish it, record it)."""

from __future__ import annotations

import pytest

from selector import default_registry
from selector.kits import effective_kits
from selector.models import NodeType
from selector.plan import NodePlan, example_receives_resources, plan_node

REGISTRY = default_registry()


def plan(variant: str, node_type: str, added: tuple[str, ...] = ()) -> NodePlan:
    kits = effective_kits(variant, added, (), registry=REGISTRY)
    return plan_node(node_type, kits, REGISTRY.get(variant).integrations, REGISTRY)


@pytest.mark.parametrize(
    ("variant", "node_type", "added", "handler", "follow_ups"),
    [
        ("api_heavy", "effect", ("postgres",), "http", ("postgres",)),
        ("api_heavy", "effect", ("kafka",), "http", ("kafka",)),
        ("ml_inference", "compute", ("kafka",), "onnx_inference", ("kafka",)),
        ("ml_inference", "effect", ("postgres", "kafka"), "onnx_inference", ("postgres", "kafka")),
        ("database_heavy", "effect", ("kafka",), "postgres", ("kafka",)),
        ("kafka_heavy", "effect", ("postgres",), "kafka", ("postgres",)),
    ],
)
def test_an_added_kit_follows_up_the_example_in_catalogue_order(
    variant: str,
    node_type: str,
    added: tuple[str, ...],
    handler: str,
    follow_ups: tuple[str, ...],
) -> None:
    node = plan(variant, node_type, added)
    assert node.handler_kit == handler
    assert node.follow_ups == follow_ups


def test_the_kits_an_example_is_built_on_are_part_of_it_already() -> None:
    assert plan("database_heavy", "effect", ("kafka", "outbox")).follow_ups == ()
    assert plan("workflow", "orchestrator").follow_ups == ()


def test_a_pure_example_has_no_follow_ups() -> None:
    # Windows compute handlers are functions of their input: no resources to publish with.
    assert not example_receives_resources("windows", NodeType.COMPUTE, REGISTRY)
    assert plan("analytics", "compute", ("kafka",)).follow_ups == ()


def test_a_kit_follows_up_only_on_the_node_types_it_declares() -> None:
    # Kafka orchestrators already answer on `<topic>.results` in their own transactions.
    assert NodeType.ORCHESTRATOR not in REGISTRY.integrations["kafka"].follows_up
    assert plan("api_heavy", "orchestrator", ("kafka",)).follow_ups == ()


def test_the_generic_example_and_single_kit_nodes_have_no_follow_ups() -> None:
    assert plan("minimal", "effect").follow_ups == ()
    for variant, node_types in REGISTRY.matrix().items():
        for node_type in node_types:
            assert plan(variant, str(node_type)).follow_ups == (), (variant, node_type)


def test_reducers_fold_state_and_get_no_follow_ups() -> None:
    assert not example_receives_resources("postgres", NodeType.REDUCER, REGISTRY)
    assert plan("database_heavy", "reducer", ("kafka",)).follow_ups == ()
