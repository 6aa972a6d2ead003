"""The kits a node carries: its variant's own, changed by the person's additions and removals,
with every kit those require.

Nodes store their kits as changes to the variant's list (``kits_added``, ``kits_removed``), like
their mixins, so that a variant switch re-derives the list from the new variant and keeps the
changes. Everything here is a pure function of the registry.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass

from selector.models import NodeType
from selector.registry import Registry, default_registry


@dataclass(frozen=True, slots=True)
class KitTable:
    """The catalogue as the selector reads it on every call, worked out once per registry."""

    rank: dict[str, int]  # kit -> catalogue position, the order of a node's kits
    needs: dict[str, frozenset[str]]  # kit -> every kit it requires
    # (node type, variant) -> the variant's kits a node of that type may choose.
    fitting: dict[tuple[NodeType, str], tuple[str, ...]]


_TABLES: weakref.WeakKeyDictionary[Registry, KitTable] = weakref.WeakKeyDictionary()


def kit_table(registry: Registry) -> KitTable:
    table = _TABLES.get(registry)
    if table is None:
        kits = registry.integrations
        table = KitTable(
            rank={kit: index for index, kit in enumerate(kits)},
            needs={kit: frozenset(requirements(kit, registry)) for kit in kits},
            fitting={
                (kind, name): tuple(k for k in spec.integrations if kind in kits[k].node_types)
                for name, spec in registry.variants.items()
                for kind in NodeType
            },
        )
        _TABLES[registry] = table
    return table


def requirements(kit: str, registry: Registry | None = None) -> set[str]:
    """Every kit ``kit`` requires, directly or through another kit (``kit`` itself excluded).
    Raises ``ValueError`` on a name the catalogue does not know."""
    registry = registry or default_registry()
    found: set[str] = set()
    pending = [kit]
    while pending:
        name = pending.pop()
        spec = registry.integrations.get(name)
        if spec is None:
            raise ValueError(
                f"unknown kit {name!r}; known kits: {', '.join(registry.integrations)}"
            )
        for needed in spec.requires_integrations:
            if needed not in found and needed != kit:
                found.add(needed)
                pending.append(needed)
    return found


def effective_kits(
    variant: str,
    kits_added: Iterable[str] = (),
    kits_removed: Iterable[str] = (),
    *,
    registry: Registry | None = None,
) -> list[str]:
    """The node's kits: the variant's own minus ``kits_removed``, plus ``kits_added``, plus every
    kit those require, in catalogue order (integrations.yaml, where a kit's requirements come
    before it), so neither the answers' order nor the variant changes a kit's place. A removed
    kit that a kept kit requires stays (``kit_delta_problem`` refuses such an answer). Raises
    ``KeyError`` for an unknown variant, ``ValueError`` for an unknown kit."""
    registry = registry or default_registry()
    own = registry.get(variant).integrations
    added = set(kits_added)
    removed = set(kits_removed)
    unknown = sorted((added | removed) - set(registry.integrations))
    if unknown:
        raise ValueError(f"unknown kits {unknown}; known kits: {', '.join(registry.integrations)}")
    kept = {kit for kit in own if kit not in removed} | added
    for kit in list(kept):
        kept |= requirements(kit, registry)
    return [kit for kit in registry.integrations if kit in kept]


def required_by(kit: str, kits: Iterable[str], registry: Registry | None = None) -> list[str]:
    """Which of ``kits`` need ``kit`` (directly or through another kit), in their order."""
    registry = registry or default_registry()
    return [other for other in kits if kit in requirements(other, registry)]


def kits_for(node_type: str, registry: Registry | None = None) -> list[str]:
    """The kits a node of ``node_type`` may choose, in catalogue order."""
    registry = registry or default_registry()
    return [name for name, spec in registry.integrations.items() if node_type in spec.node_types]


def required_mixins(kits: Iterable[str], registry: Registry | None = None) -> tuple[str, ...]:
    """Mixins ``kits`` import, in mixin-catalogue order: a node with these kits must keep them."""
    registry = registry or default_registry()
    needed = {m for kit in kits for m in registry.integrations[kit].requires_mixins}
    return tuple(m for m in registry.mixins if m in needed)
