"""What the Copier questionnaire shows and the derived answers, computed from the selector.

The Copier-facing side of ``selector``: returns plain strings (YAML where Copier parses YAML)
and plain data, so that the Jinja extension beside it only forwards calls.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from typing import Any

import yaml

from selector import kits
from selector.models import NodeType, SelectionResult
from selector.plan import plan_node
from selector.policy import select
from selector.registry import Registry, default_registry
from selector.validation import operations_problem, variant_problem


def _dump(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=2**31).strip()


def recommend(node_type: str, operations: Any, features: Any) -> SelectionResult:
    """The selector's recommendation for answers that may still be incomplete."""
    ops = [] if operations_problem(operations) else list(operations)
    tags = [str(tag) for tag in features] if isinstance(features, Iterable) else []
    if isinstance(features, str):
        tags = []
    return select(node_type, ops, tags)


def variant_choices(node_type: str, recommended: str, registry: Registry | None = None) -> str:
    """Every variant as a Copier choice; those that do not fit the node type are disabled with
    the reason, so that both the prompt and ``--data variant=...`` explain the refusal."""
    registry = registry or default_registry()
    choices: dict[str, dict[str, str]] = {}
    for name, spec in registry.variants.items():
        label = f"{name}: {spec.summary}"
        if name == recommended:
            label = f"{name} (recommended): {spec.summary}"
        choices[label] = {"value": name, "validator": variant_problem(name, node_type, registry)}
    return _dump(choices)


def variant_help(result: SelectionResult) -> str:
    lines = [
        "Node variant. "
        f"Recommended: {result.variant} (confidence {result.confidence:.2f}). {result.rationale}"
    ]
    lines += [f"Note: {warning}" for warning in result.warnings]
    return "\n".join(lines)


def effective_mixins(
    variant: str, added: Any, removed: Any, node_kits: Any = None, registry: Registry | None = None
) -> list[str]:
    """The node's mixins: the variant's own plus ``added`` minus ``removed``, plus every mixin
    the node's kits import, in catalogue order.

    Stored answers are these two deltas, not the result, so that moving a node to another
    variant re-derives its mixins from the new variant and keeps the person's own choices.
    Names outside the catalogue are ignored here; the questions' validators refuse them.
    """
    registry = registry or default_registry()
    spec = registry.variants.get(variant)
    chosen = (set(spec.mixins if spec else ()) | set(added or ())) - set(removed or ())
    known_kits = [kit for kit in node_kits or () if kit in registry.integrations]
    chosen |= set(kits.required_mixins(known_kits, registry))
    return [name for name in registry.mixins if name in chosen]


def mixin_delta_help(variant: str, kind: str, registry: Registry | None = None) -> str:
    registry = registry or default_registry()
    spec = registry.variants.get(variant)
    own = ", ".join(spec.mixins) if spec and spec.mixins else "none"
    if kind == "added":
        return f"Mixins to add to the {variant} variant's own ({own})"
    return f"Mixins of the {variant} variant to leave out (its own: {own})"


def mixin_choices(
    variant: str = "", kind: str = "", kept: Any = None, registry: Registry | None = None
) -> str:
    """Every mixin as a Copier choice: those the question can change first, the rest disabled
    with the reason (for "added", the variant's own; for "removed", those it lacks).

    ``kept`` is the question's stored answer: its mixins stay choosable whatever the variant.
    Copier drops a stored answer that has become a disabled choice, so a change made for one
    variant would otherwise be lost on a switch to a variant that has (or lacks) the mixin, and
    not come back on the way back.
    """
    registry = registry or default_registry()
    spec = registry.variants.get(variant)
    own = set(spec.mixins) if spec else set()
    stored = set(kept) if isinstance(kept, list) else set()
    changes: dict[str, dict[str, str]] = {}
    no_change: dict[str, dict[str, str]] = {}
    for name, about in registry.mixins.items():
        if spec is None or (kind == "added") != (name in own):
            changes[f"{name}: {about}"] = {"value": name, "validator": ""}
            continue
        where = f"{'already in' if kind == 'added' else 'not in'} the {variant} variant"
        if name in stored:
            no_change[f"{name} ({where}): {about}"] = {"value": name, "validator": ""}
        else:  # the prompt shows the reason after the label
            no_change[f"{name}: {about}"] = {"value": name, "validator": where}
    return _dump(changes | no_change)


def vocabulary_help(registry: Registry | None = None, width: int = 79) -> str:
    """The feature question's help: the known tags by category, wrapped for an 80-column
    terminal (continuation lines indented under the category's first tag)."""
    registry = registry or default_registry()
    groups = [
        textwrap.fill(
            ", ".join(entries),
            width=width,
            initial_indent=f"  {category}: ",
            subsequent_indent=" " * (len(category) + 4),
            break_on_hyphens=False,
            break_long_words=False,
        )
        for category, entries in registry.vocabulary().items()
    ]
    return "\n".join(
        [
            "Feature tags as a YAML list, e.g. [postgres, retries]. Known tags (synonyms and",
            "other tags are accepted; unknown ones are ignored with a warning):",
            *groups,
        ]
    )


def onex_node_type(node_type: str) -> str:
    return NodeType(node_type).onex_name


def variant_spec(variant: str, registry: Registry | None = None) -> dict[str, Any]:
    """The registry entry as plain data, for templates."""
    registry = registry or default_registry()
    return registry.get(variant).model_dump(mode="json")


def kit_specs(kits: Iterable[str], registry: Registry | None = None) -> list[dict[str, Any]]:
    """The catalogue entries of ``kits`` as plain data, each with its ``name``."""
    registry = registry or default_registry()
    return [{"name": kit, **registry.integrations[kit].model_dump(mode="json")} for kit in kits]


def effective_kits(
    variant: str, added: Any, removed: Any, registry: Registry | None = None
) -> list[str]:
    """The node's kits: the variant's own plus ``added`` minus ``removed``, with what they
    require, in catalogue order. Unknown names are left to the questions' validators."""
    registry = registry or default_registry()
    if variant not in registry.variants:
        return []
    try:
        return kits.effective_kits(variant, added or (), removed or (), registry=registry)
    except ValueError:
        return list(registry.variants[variant].integrations)


def suggested_kits(
    node_type: str, operations: Any, features: Any, variant: str, registry: Registry | None = None
) -> list[str]:
    """The selector's recommended additions that the chosen variant lacks (all of them when
    the person keeps the recommended variant). A kit that cannot be chosen for this node type
    and only comes with another (postgres under workflow) is left to come with it."""
    registry = registry or default_registry()
    spec = registry.variants.get(variant)
    own = set(spec.integrations) if spec else set()
    return [
        kit
        for kit in recommend(node_type, operations, features).kits_added
        if kit not in own and node_type in registry.integrations[kit].node_types
    ]


def kit_choices(node_type: str, variant: str, kind: str, registry: Registry | None = None) -> str:
    """Every kit as a Copier choice; those that cannot be added (or removed) here are disabled
    with the reason."""
    registry = registry or default_registry()
    spec = registry.variants.get(variant)
    own = spec.integrations if spec else ()
    choices: dict[str, dict[str, str]] = {}
    for name, kit in registry.integrations.items():
        label = f"{name}: {kit.summary}"
        if kind == "added":
            # A kit the variant has stays choosable (as a redundant addition is accepted), so
            # that an addition stored before a variant switch is not dropped by it.
            if name in own:
                label = f"{name} (already in the {variant} variant): {kit.summary}"
            reason = (
                ""
                if name in own or node_type in kit.node_types
                else f"not for {node_type} nodes (only {', '.join(kit.node_types)})"
            )
        else:
            reason = "" if name in own else f"not one of the {variant} variant's kits"
        choices[label] = {"value": name, "validator": reason}
    return _dump(choices)


def kit_delta_help(variant: str, kind: str, registry: Registry | None = None) -> str:
    registry = registry or default_registry()
    spec = registry.variants.get(variant)
    own = ", ".join(spec.integrations) if spec and spec.integrations else "none"
    if kind == "added":
        return f"Kits to add to the {variant} variant's own ({own})"
    return f"Kits of the {variant} variant to leave out (its own: {own})"


def node_plan(
    node_type: str, variant: str, kits: Any, registry: Registry | None = None
) -> dict[str, Any]:
    """What the kits bring to this node (see ``selector.plan``), as plain data."""
    registry = registry or default_registry()
    spec = registry.variants.get(variant)
    own = spec.integrations if spec else ()
    return plan_node(node_type, list(kits or ()), own, registry).model_dump(mode="json")
