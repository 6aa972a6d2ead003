"""Checks of questionnaire answers. Each returns an empty string when the answer is fine and
otherwise one sentence naming the question and what would be accepted (Copier shows it at the
prompt and writes nothing)."""

from __future__ import annotations

import keyword
import re
import sys
from collections.abc import Iterable

from selector.kits import kits_for, required_by, required_mixins
from selector.models import NodeType
from selector.registry import Registry, default_registry

MAX_NAME_LENGTH = 50
MAX_OPERATIONS = 50
# Operation names become method and model names; past this length generated lines outgrow
# the 100-column limit the rendered node is formatted to.
MAX_OPERATION_LENGTH = 32
_SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
# Names that would shadow something a node imports or that tools treat specially.
# Methods every rendered node class has; an operation of the same name would replace one.
NODE_METHODS = frozenset(
    {"start", "stop", "run", "close", "health", "liveness", "readiness", "execute", "config"}
)
_RESERVED = frozenset({"test", "tests", "src", "setup", "conftest", "site", "node", "models"})


def _identifier_problem(question: str, value: object, limit: int = MAX_NAME_LENGTH) -> str:
    if not isinstance(value, str) or not value:
        return f"{question} must be a non-empty snake_case name such as 'fetch_user'"
    if "/" in value or "\\" in value or value.startswith(".") or ".." in value:
        return f"{question} {value!r} looks like a path; use a snake_case name such as 'fetch_user'"
    if len(value) > limit:
        return f"{question} {value!r} is {len(value)} characters; at most {limit} allowed"
    if not _SNAKE_CASE.match(value):
        return (
            f"{question} {value!r} is not snake_case: use lower-case letters, digits and single "
            "underscores, starting with a letter (e.g. 'fetch_user')"
        )
    if keyword.iskeyword(value) or keyword.issoftkeyword(value):
        return f"{question} {value!r} is a Python keyword; pick another name"
    return ""


def node_name_problem(value: object) -> str:
    """Why ``value`` cannot be a node (and Python package) name, or ``""``."""
    problem = _identifier_problem("node_name", value)
    if problem:
        return problem
    assert isinstance(value, str)
    if value in sys.stdlib_module_names:
        return (
            f"node_name {value!r} is a standard-library module and would shadow it; "
            f"try '{value}_node'"
        )
    if value in _RESERVED:
        return f"node_name {value!r} is reserved by the node layout; try '{value}_node'"
    return ""


def operations_problem(value: object) -> str:
    """Why ``value`` is not a valid list of operations, or ``""``."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        return (
            "operations must be a list of snake_case names, e.g. [fetch_user, store_user] "
            f"(got {value!r})"
        )
    ops = list(value)
    if not ops:
        return "operations must list at least one operation, e.g. [process]"
    if len(ops) > MAX_OPERATIONS:
        return f"operations lists {len(ops)} names; at most {MAX_OPERATIONS} are allowed"
    seen: set[str] = set()
    for op in ops:
        problem = _identifier_problem("operation", op, MAX_OPERATION_LENGTH)
        if problem:
            return f"operations: {problem}"
        assert isinstance(op, str)
        if op in seen:
            return f"operations: {op!r} is listed twice; operation names must be unique"
        if op in NODE_METHODS:
            return f"operations: {op!r} clashes with a method every node has; rename it"
        seen.add(op)
    return ""


def features_problem(value: object) -> str:
    """Why ``value`` is not a list of feature tags, or ``""`` (unknown tags are fine)."""
    if value is None:
        return ""
    if isinstance(value, str) or not isinstance(value, Iterable):
        return f"features must be a list of tags, e.g. [postgres, retries] (got {value!r})"
    for tag in value:
        if not isinstance(tag, str) or not tag.strip():
            return f"features: every tag must be a non-empty string (got {tag!r})"
    return ""


def variant_problem(variant: object, node_type: object, registry: Registry | None = None) -> str:
    """Why ``variant`` cannot be used for ``node_type``, or ``""``."""
    registry = registry or default_registry()
    try:
        kind = NodeType(str(node_type))
    except ValueError:
        return f"node_type {node_type!r} is not one of: {', '.join(t.value for t in NodeType)}"
    compatible = [spec.name for spec in registry.compatible(kind)]
    if variant not in registry.variants:
        return (
            f"variant {variant!r} is unknown; for {_a(kind.value)} node choose one of: "
            + ", ".join(compatible)
        )
    if variant not in compatible:
        spec = registry.get(str(variant))
        fits = ", ".join(t.value for t in spec.supported_node_types)
        return (
            f"variant {variant!r} does not support {kind.value} nodes (it supports {fits}); "
            f"for {_a(kind.value)} node choose one of: {', '.join(compatible)}"
        )
    return ""


def mixins_problem(
    value: object,
    variant: str | None = None,
    registry: Registry | None = None,
    *,
    kits: Iterable[str] | None = None,
) -> str:
    """Why ``value`` is not a list of known mixins (keeping those the node's kits import: ``kits``,
    by default the variant's own), or ``""``."""
    registry = registry or default_registry()
    allowed = list(registry.mixins)
    if value is None:
        return ""
    if isinstance(value, str) or not isinstance(value, Iterable):
        return f"mixins must be a list drawn from: {', '.join(allowed)}"
    chosen = list(value)
    for name in chosen:
        if name not in allowed:
            return f"mixins: {name!r} is not a mixin; choose from: {', '.join(allowed)}"
    if variant in registry.variants:
        node_kits = _node_kits(str(variant), kits, registry)
        missing = [m for m in required_mixins(node_kits, registry) if m not in chosen]
        if missing:
            return (
                f"mixins: {_kits_owner(variant, kits, node_kits, registry)} "
                f"{', '.join(missing)}; "
                "keep it selected or choose another variant"
            )
    return ""


def mixin_delta_problem(
    value: object,
    question: str,
    variant: str | None = None,
    registry: Registry | None = None,
    *,
    kits: Iterable[str] | None = None,
) -> str:
    """Why a `mixins_added` / `mixins_removed` answer is unusable, or ``""``: unknown names, or a
    removal of a mixin the node's kits import (``kits``, by default the variant's own)."""
    registry = registry or default_registry()
    allowed = list(registry.mixins)
    if value is None:
        return ""
    if isinstance(value, str) or not isinstance(value, Iterable):
        return f"{question} must be a list drawn from: {', '.join(allowed)}"
    chosen = list(value)
    for name in chosen:
        if name not in allowed:
            return f"{question}: {name!r} is not a mixin; choose from: {', '.join(allowed)}"
    if question == "mixins_removed" and variant in registry.variants:
        node_kits = _node_kits(variant, kits, registry)
        needed = [m for m in required_mixins(node_kits, registry) if m in chosen]
        if needed:
            return (
                f"mixins_removed: {_kits_owner(variant, kits, node_kits, registry)} "
                f"{', '.join(needed)}; keep it or choose another variant"
            )
    return ""


def _node_kits(variant: str, kits: Iterable[str] | None, registry: Registry) -> list[str]:
    if kits is None:
        return list(registry.get(variant).integrations)
    return [kit for kit in kits if kit in registry.integrations]


def _kits_owner(
    variant: str, kits: Iterable[str] | None, node_kits: list[str], registry: Registry
) -> str:
    if kits is None or node_kits == list(registry.get(variant).integrations):
        return f"the {variant} variant's {', '.join(node_kits)} kit needs"
    return f"the node's kits ({', '.join(node_kits)}) need"


KIT_QUESTIONS = ("kits_added", "kits_removed")


def kit_delta_problem(
    value: object,
    question: str,
    variant: object,
    node_type: object,
    registry: Registry | None = None,
    *,
    kits_added: Iterable[str] = (),
) -> str:
    """Why a ``kits_added`` / ``kits_removed`` answer is unusable, or ``""``.

    Both are changes to the variant's own kit list. An addition must be a kit the variant lacks
    that supports the node type; a removal must be one of the variant's kits that no kept kit
    requires (``kits_added``, the other answer, counts as kept when checking removals).
    """
    if question not in KIT_QUESTIONS:
        raise ValueError(f"question must be one of {KIT_QUESTIONS}, not {question!r}")
    registry = registry or default_registry()
    problem = variant_problem(variant, node_type, registry)
    if problem:
        return problem
    kind = NodeType(str(node_type))
    own = registry.get(str(variant)).integrations
    addable = [kit for kit in kits_for(kind, registry) if kit not in own]
    accepted = (
        f"for {_a(kind.value)} node with the {variant} variant add one of: "
        f"{', '.join(addable) or 'none'}"
        if question == "kits_added"
        else f"the {variant} variant's kits are: {', '.join(own) or 'none'}"
    )
    if value is None:
        return ""
    if isinstance(value, str) or not isinstance(value, Iterable):
        return f"{question} must be a list of kits, e.g. [kafka]; {accepted}"
    chosen = list(value)
    seen: set[str] = set()
    for kit in chosen:
        if not isinstance(kit, str) or kit not in registry.integrations:
            return f"{question}: {kit!r} is not a kit; {accepted}"
        if kit in seen:
            return f"{question}: {kit!r} is listed twice"
        seen.add(kit)
    if question == "kits_added":
        for kit in chosen:
            if kit in own:
                # Redundant, and accepted: a stored addition survives a switch to a variant
                # that has the kit, and comes back into effect if the node switches back.
                continue
            spec = registry.integrations[kit]
            # A kit another chosen kit requires comes with it, whatever the node type.
            if kind not in spec.node_types and not required_by(kit, chosen, registry):
                fits = ", ".join(t.value for t in spec.node_types)
                comes_with = required_by(kit, addable, registry)
                also = (
                    f"; on {kind.value} nodes it comes with {' or '.join(comes_with)}"
                    if comes_with
                    else ""
                )
                return (
                    f"kits_added: the {kit} kit does not support {kind.value} nodes "
                    f"(it supports {fits}{also}); {accepted}"
                )
        return ""
    for kit in chosen:
        if kit not in own:
            return f"kits_removed: the {variant} variant has no {kit} kit; {accepted}"
    added = [k for k in kits_added if k in registry.integrations] if kits_added else []
    kept = [k for k in (*own, *added) if k not in seen]
    for kit in chosen:
        needing = required_by(kit, kept, registry)
        if needing:
            return (
                f"kits_removed: {kit} is needed by the {', '.join(needing)} "
                f"{'kit' if len(needing) == 1 else 'kits'}, which the node keeps; "
                f"keep {kit} or remove {', '.join(needing)} as well"
            )
    return ""


def _a(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"
