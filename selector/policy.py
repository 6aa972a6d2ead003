"""The selection policy: from node type, operations and feature tags to a variant.

The policy (README, "How the selector decides"):
1. Normalise each tag to a vocabulary entry; unknown tags are ignored with a warning.
2. A tag signals one domain, or is production-grade, basic, or shared (signals nothing).
3. A domain's strength is the number of distinct entries that signal it. A domain whose variant
   does not support the node type is dropped, with a warning naming node types that would fit.
4. If a domain remains, the strongest wins; a tie goes to the node type's home domain, then to
   the domain with the lowest priority number (database, api, kafka, ml, analytics, workflow).
5. Otherwise by tier: production with 6+ operations or 2+ production-grade tags; minimal with at
   most 2 operations and no production-grade or basic tag; standard otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from selector.models import (
    NodeType,
    RankedVariant,
    SelectionResult,
    TagCategory,
    Tier,
    VariantSpec,
)
from selector.registry import Registry, default_registry
from selector.version import SELECTOR_VERSION

PRODUCTION_MIN_OPERATIONS = 6
PRODUCTION_MIN_TAGS = 2
MINIMAL_MAX_OPERATIONS = 2


@dataclass(frozen=True, slots=True)
class _Evidence:
    """The tags of a request, sorted by what they signal."""

    node_type: NodeType
    operations: int
    by_category: dict[str, list[str]]  # category -> distinct entries, in the order typed
    matched: dict[str, str]  # tag as typed -> category
    unknown: list[str]

    def entries(self, category: str) -> list[str]:
        return self.by_category.get(category, [])


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _a(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


def _listed(entries: Sequence[str]) -> str:
    return f" ({', '.join(entries)})" if entries else ""


def coerce_node_type(node_type: NodeType | str) -> NodeType:
    try:
        return NodeType(str(node_type).strip().lower())
    except ValueError:
        accepted = ", ".join(t.value for t in NodeType)
        raise ValueError(f"node_type {node_type!r} is not one of: {accepted}") from None


def _as_list(values: Iterable[str] | str | None) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        return [part.strip() for part in values.split(",") if part.strip()]
    return [str(v) for v in values]


def _gather(
    registry: Registry, node_type: NodeType, operations: list[str], features: list[str]
) -> _Evidence:
    by_category: dict[str, list[str]] = {}
    matched: dict[str, str] = {}
    unknown: list[str] = []
    for tag in features:
        meaning = registry.lexicon.lookup(tag)
        if meaning is None:
            if tag not in unknown:
                unknown.append(tag)
            continue
        matched[tag] = meaning.category
        entries = by_category.setdefault(meaning.category, [])
        if meaning.entry not in entries:
            entries.append(meaning.entry)
    return _Evidence(node_type, len(operations), by_category, matched, unknown)


def _tier_fits(ev: _Evidence) -> dict[Tier, float]:
    """How well each tier fits, in [0, 1]; exactly the tier the policy picks scores 1.0."""
    production_tags = len(ev.entries(TagCategory.PRODUCTION))
    basic_tags = len(ev.entries(TagCategory.BASIC))
    production = min(
        1.0,
        max(ev.operations / PRODUCTION_MIN_OPERATIONS, production_tags / PRODUCTION_MIN_TAGS),
    )
    excess = max(0, ev.operations - MINIMAL_MAX_OPERATIONS) + production_tags + basic_tags
    minimal = 1.0 if excess == 0 else max(0.0, 0.75 - 0.25 * (excess - 1))
    if production >= 1.0:
        minimal = min(minimal, 0.0)
    standard = 1.0 if production < 1.0 and minimal < 1.0 else 0.5
    return {Tier.PRODUCTION: production, Tier.MINIMAL: minimal, Tier.STANDARD: standard}


def _tier_reason(tier: Tier, ev: _Evidence) -> str:
    production_tags = ev.entries(TagCategory.PRODUCTION)
    basic_tags = ev.entries(TagCategory.BASIC)
    ops = _plural(ev.operations, "operation")
    if tier is Tier.PRODUCTION:
        reasons = []
        if ev.operations >= PRODUCTION_MIN_OPERATIONS:
            reasons.append(f"{ops} ({PRODUCTION_MIN_OPERATIONS} or more)")
        if len(production_tags) >= PRODUCTION_MIN_TAGS:
            reasons.append(
                f"{_plural(len(production_tags), 'production-grade tag')}{_listed(production_tags)}"
            )
        if reasons:
            return " and ".join(reasons)
        return (
            f"needs {PRODUCTION_MIN_OPERATIONS}+ operations or {PRODUCTION_MIN_TAGS}+ "
            f"production-grade tags; has {ops} and {len(production_tags)}"
        )
    if tier is Tier.MINIMAL:
        if ev.operations <= MINIMAL_MAX_OPERATIONS and not production_tags and not basic_tags:
            return f"{ops} (at most {MINIMAL_MAX_OPERATIONS}) and no production-grade or basic tag"
        blockers = []
        if ev.operations > MINIMAL_MAX_OPERATIONS:
            blockers.append(f"{ops} (more than {MINIMAL_MAX_OPERATIONS})")
        if production_tags or basic_tags:
            blockers.append(f"tags{_listed(production_tags + basic_tags)}")
        return "ruled out by " + " and ".join(blockers)
    # Standard: the middle ground, described by what kept the node out of the other two tiers.
    why = []
    if ev.operations > MINIMAL_MAX_OPERATIONS:
        why.append(f"{ops} (more than {MINIMAL_MAX_OPERATIONS})")
    elif production_tags or basic_tags:
        why.append(f"tags{_listed(production_tags + basic_tags)} beyond a minimal node")
    else:
        why.append(ops)
    why.append(
        f"below production's {PRODUCTION_MIN_OPERATIONS} operations or "
        f"{PRODUCTION_MIN_TAGS} production-grade tags"
    )
    return ", ".join(why)


def _confidence_from_margin(winner: float, runner_up: float) -> float:
    """0.5 for a tie, towards 1.0 as the winner pulls ahead of the runner-up."""
    if winner <= 0:
        return 0.5
    return round(0.5 + 0.5 * max(0.0, winner - runner_up) / (winner + 1.0), 3)


def select(
    node_type: NodeType | str,
    operations: Iterable[str] | str | None = (),
    features: Iterable[str] | str | None = (),
    *,
    registry: Registry | None = None,
) -> SelectionResult:
    """Recommend a variant for a node.

    ``operations`` and ``features`` are sequences of strings (a comma-separated string is also
    accepted). Unknown feature tags never raise: they are reported in ``warnings``.
    """
    registry = registry or default_registry()
    kind = coerce_node_type(node_type)
    ev = _gather(registry, kind, _as_list(operations), _as_list(features))
    warnings = [
        f"unknown feature tag {tag!r} ignored (see `python -m selector variants --vocabulary`)"
        for tag in ev.unknown
    ]

    # Domain strengths, keeping only domains whose variant fits this node type.
    strengths: dict[str, int] = {}
    for spec in registry.domains:
        assert spec.domain is not None
        entries = ev.entries(spec.domain.name)
        if not entries:
            continue
        if spec.supports(kind):
            strengths[spec.name] = len(entries)
        else:
            fits = " or ".join(t.value for t in spec.supported_node_types)
            warnings.append(
                f"{spec.domain.name} tags{_listed(entries)} ignored: {spec.name} does not "
                f"support {kind.value} nodes; node type {fits} would fit it"
            )

    def home(spec: VariantSpec) -> bool:
        return spec.domain is not None and kind in spec.domain.home_for

    def domain_key(spec: VariantSpec) -> tuple[int, bool, int]:
        assert spec.domain is not None
        return (strengths.get(spec.name, 0), home(spec), -spec.domain.priority)

    compatible_domains = [s for s in registry.domains if s.supports(kind)]
    ranked_domains = sorted(compatible_domains, key=domain_key, reverse=True)
    fits = _tier_fits(ev)
    tier_order = sorted(
        (registry.get(t.value) for t in Tier if registry.get(t.value).supports(kind)),
        key=lambda s: fits[Tier(s.name)],
        reverse=True,
    )

    alternatives: list[RankedVariant] = []
    if strengths:
        winner = ranked_domains[0]
        assert winner.domain is not None
        strength = strengths[winner.name]
        entries = ev.entries(winner.domain.name)
        runner = next((s for s in ranked_domains[1:] if strengths.get(s.name)), None)
        runner_strength = strengths.get(runner.name, 0) if runner else 0
        rationale = (
            f"{winner.name}: {_plural(strength, winner.domain.name + ' tag')}{_listed(entries)} "
            f"{'signal' if strength > 1 else 'signals'} it for {_a(kind.value)} node"
        )
        if runner is not None and runner.domain is not None:
            versus = f"{runner.domain.name} ({_plural(runner_strength, 'tag')})"
            if runner_strength == strength:
                why = (
                    f"as the {kind.value} node's home domain"
                    if home(winner)
                    else "as the first in domain order"
                )
                rationale += f"; it ties with {versus} and wins {why}"
            else:
                rationale += f", ahead of {versus}"
        rationale += "."
        confidence = _confidence_from_margin(strength, runner_strength)
        ordered = [*(s for s in ranked_domains if strengths.get(s.name)), *tier_order]
        ordered += [s for s in ranked_domains if not strengths.get(s.name)]
    else:
        winner = tier_order[0]
        tier = Tier(winner.name)
        no_domain = "no domain tag fits" if any("ignored:" in w for w in warnings) else "no domain tag"
        rationale = f"{winner.name}: {_tier_reason(tier, ev)}, and {no_domain}."
        runner_fit = max(fits[Tier(s.name)] for s in tier_order[1:])
        confidence = round(1.0 - runner_fit / 2.0, 3)
        ordered = [*tier_order, *ranked_domains]

    for spec in ordered:
        if spec.domain is not None:
            strength = strengths.get(spec.name, 0)
            entries = ev.entries(spec.domain.name)
            reason = (
                f"{_plural(strength, spec.domain.name + ' tag')}{_listed(entries)}"
                if strength
                else f"no {spec.domain.name} tags"
            )
            if strength and home(spec):
                reason += f"; home domain of {kind.value} nodes"
            alternatives.append(RankedVariant(variant=spec.name, score=float(strength), reason=reason))
        else:
            tier = Tier(spec.name)
            alternatives.append(
                RankedVariant(
                    variant=spec.name, score=round(fits[tier], 3), reason=_tier_reason(tier, ev)
                )
            )

    return SelectionResult(
        node_type=kind,
        variant=winner.name,
        confidence=confidence,
        rationale=rationale,
        matched_features=ev.matched,
        alternatives=tuple(alternatives),
        warnings=tuple(warnings),
        selector_version=SELECTOR_VERSION,
    )
