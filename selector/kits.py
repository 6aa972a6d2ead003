"""The kits a node carries: its variant's own, changed by the person's additions and removals,
with every kit those require.

Nodes store their kits as changes to the variant's list (``kits_added``, ``kits_removed``), like
their mixins, so that a variant switch re-derives the list from the new variant and keeps the
changes. Everything here is a pure function of the registry.
"""

from __future__ import annotations

from collections.abc import Iterable

from selector.registry import Registry, default_registry


def with_requirements(kits: Iterable[str], registry: Registry | None = None) -> list[str]:
    """``kits`` in their order, each preceded by the kits it requires (transitively) unless they
    already came earlier. Raises ``ValueError`` on a name the catalogue does not know."""
    registry = registry or default_registry()
    ordered: list[str] = []
    placed: set[str] = set()
    # Depth-first with an explicit stack, so a cycle in the catalogue cannot recurse for ever.
    for kit in kits:
        stack: list[tuple[str, bool]] = [(kit, False)]
        visiting: set[str] = set()
        while stack:
            name, expanded = stack.pop()
            if name in placed:
                continue
            if expanded:
                placed.add(name)
                ordered.append(name)
                continue
            if name in visiting:
                continue
            spec = registry.integrations.get(name)
            if spec is None:
                raise ValueError(
                    f"unknown kit {name!r}; known kits: {', '.join(registry.integrations)}"
                )
            visiting.add(name)
            stack.append((name, True))
            stack.extend((needed, False) for needed in reversed(spec.requires_integrations))
    return ordered


def effective_kits(
    variant: str,
    kits_added: Iterable[str] = (),
    kits_removed: Iterable[str] = (),
    *,
    registry: Registry | None = None,
) -> list[str]:
    """The node's kits: the variant's own in its order minus ``kits_removed``, then
    ``kits_added`` in catalogue order (so the answer's order does not matter), each kit preceded
    by the kits it requires. A removed kit that a kept kit requires stays (``kit_delta_problem``
    refuses such an answer). Raises ``KeyError`` for an unknown variant, ``ValueError`` for an
    unknown kit."""
    registry = registry or default_registry()
    own = registry.get(variant).integrations
    added = set(kits_added)
    removed = set(kits_removed)
    unknown = sorted((added | removed) - set(registry.integrations))
    if unknown:
        raise ValueError(f"unknown kits {unknown}; known kits: {', '.join(registry.integrations)}")
    kept = [kit for kit in own if kit not in removed]
    kept += [kit for kit in registry.integrations if kit in added and kit not in kept]
    return with_requirements(kept, registry)


def required_by(kit: str, kits: Iterable[str], registry: Registry | None = None) -> list[str]:
    """Which of ``kits`` need ``kit`` (directly or through another kit), in their order."""
    registry = registry or default_registry()
    return [
        other for other in kits if other != kit and kit in with_requirements([other], registry)[:-1]
    ]


def kits_for(node_type: str, registry: Registry | None = None) -> list[str]:
    """The kits a node of ``node_type`` may choose, in catalogue order."""
    registry = registry or default_registry()
    return [name for name, spec in registry.integrations.items() if node_type in spec.node_types]
