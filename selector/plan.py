"""What a node is made of, derived from its node type and kits: the single place where the
catalogue's per-kit data (selector/integrations.yaml) turns into the facts templates test.

Templates never ask "is kafka one of the kits?"; they ask what the kits bring: a file, a service,
a capability such as ``state_in_changelog``. A new kit is then a catalogue entry and its
fragments in ``partials/kits/<kit>/``, and no shared template changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pydantic import BaseModel, ConfigDict

from selector.kits import requirements
from selector.models import IntegrationSpec, NodeType
from selector.registry import Registry

ALL_NODE_TYPES = "all"


class NodePlan(BaseModel):
    """Everything the template derives from (node type, kits), as plain data."""

    model_config = ConfigDict(frozen=True)

    kits: tuple[str, ...]
    # Kits with a service of their own (a container in docker-compose, a fixture in the tests).
    services: tuple[str, ...]
    # Kits whose example handler tests are files of their own (tests/test_handlers_<kit>.py).
    examples: tuple[str, ...]
    # Capabilities the kits give this node type, e.g. ``state_in_database``.
    provides: tuple[str, ...]
    # The kit whose example handler the node gets ('' for the generic example).
    handler_kit: str
    # The node's other kits that follow up that example: at the end of each operation, each
    # does its part with the output (publish it, record it), in catalogue order.
    follow_ups: tuple[str, ...] = ()
    # What `onex validate --strict` reports on the kits' modules and the node accepts.
    onex_advice: tuple[tuple[str, str], ...]


def _for_type(by_type: dict[str, tuple[str, ...]], node_type: NodeType) -> tuple[str, ...]:
    return by_type.get(ALL_NODE_TYPES, ()) + by_type.get(node_type.value, ())


def handler_kit(
    kits: Sequence[str], node_type: NodeType, own_kits: Iterable[str], registry: Registry
) -> str:
    """The kit whose example handler a node gets.

    A kit built on others (the outbox on postgres and kafka, workflow on postgres) shows them
    working together, so it wins over the kits it needs. Among kits that do not build on each
    other, the variant's own kit wins over added ones: the added kit is still on ``Resources``
    for the person's handlers. Without a kit example for this node type, the generic one.
    """
    with_example = [k for k in kits if node_type in registry.integrations[k].examples]
    needed_by_others = {n for k in with_example for n in requirements(k, registry)}
    candidates = [k for k in with_example if k not in needed_by_others]
    if len(candidates) > 1:
        own = [k for k in candidates if k in set(own_kits)]
        candidates = own or candidates
    return candidates[0] if candidates else ""


# Capabilities that give a compute node's handlers `resources` (node.py passes them).
COMPUTE_WITH_RESOURCES = "compute_with_resources"


def example_receives_resources(kit: str, node_type: NodeType, registry: Registry) -> bool:
    """Whether ``kit``'s example handler for ``node_type`` is given the node's resources:
    reducers fold state and most compute handlers are pure functions; effect and orchestrator
    handlers always get them."""
    if node_type in (NodeType.EFFECT, NodeType.ORCHESTRATOR):
        return True
    if node_type is NodeType.COMPUTE:
        return COMPUTE_WITH_RESOURCES in _for_type(registry.integrations[kit].provides, node_type)
    return False


def follow_ups(
    kits: Sequence[str], node_type: NodeType, chosen: str, registry: Registry
) -> tuple[str, ...]:
    """The kits that follow up ``chosen``'s example on this node type.

    Only an example that can reach them has follow-ups (it is given the node's resources), and
    a kit the example kit builds on is already part of its example (the outbox's postgres and
    kafka), so it does not do its part twice.
    """
    if not chosen or not example_receives_resources(chosen, node_type, registry):
        return ()
    own = requirements(chosen, registry) | {chosen}
    return tuple(
        k for k in kits if k not in own and node_type in registry.integrations[k].follows_up
    )


def plan_node(
    node_type: NodeType | str, kits: Sequence[str], own_kits: Iterable[str], registry: Registry
) -> NodePlan:
    """The plan of a node of ``node_type`` with ``kits`` (in catalogue order, as
    ``effective_kits`` returns them); ``own_kits`` are its variant's own."""
    kind = NodeType(node_type)
    specs: list[tuple[str, IntegrationSpec]] = [(k, registry.integrations[k]) for k in kits]
    chosen = handler_kit(kits, kind, own_kits, registry)
    return NodePlan(
        kits=tuple(kits),
        services=tuple(k for k, spec in specs if spec.service),
        examples=(chosen,) if chosen and registry.integrations[chosen].examples[kind] else (),
        provides=tuple(
            dict.fromkeys(p for _, spec in specs for p in _for_type(spec.provides, kind))
        ),
        handler_kit=chosen,
        follow_ups=follow_ups(kits, kind, chosen, registry),
        onex_advice=tuple(advice for _, spec in specs for advice in spec.onex_advice),
    )
