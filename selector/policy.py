"""The selection policy: from node type, operations and feature tags to a variant.

The policy (README, "How the selector decides"):
1. Normalise each tag to a vocabulary entry. A tag unknown as a whole is read by its words (split
   on ``_ - . /``, spaces and camelCase; the longest known phrase first): a domain or kit word
   decides, over production-grade, then basic, then shared words, which only describe
   (``pg_pool`` is database, ``retry_logging`` production-grade); words naming different domains
   or kits, or a negation (``no_kafka``), signal nothing, with a warning. A tag with no known word
   may be a close misspelling of one vocabulary entry (5+ characters, Damerau-Levenshtein
   distance 1, or 2 from 8 characters, the nearest entry unique; never when its words are all
   vocabulary or English words), read as it with a "did you mean" warning. Other unknown tags
   are ignored with a warning.
2. A tag signals one domain, or is production-grade, basic, or shared (signals nothing).
3. A domain's strength is the number of distinct entries that signal it. A domain whose variant
   does not support the node type is dropped, with a warning naming node types that would fit.
4. If a domain remains, the strongest wins; a tie goes to the node type's home domain, then to
   the domain with the lowest priority number (database, api, kafka, ml, analytics, workflow).
5. Otherwise by tier: production with 6+ operations or 2+ production-grade tags; minimal with at
   most 2 operations and no production-grade or basic tag; standard otherwise.

Kits recommended beside the variant's own (``kits_added``) never change which variant wins:
6. When a domain wins, every other signalled domain whose variant's kits support the node type
   (even if that variant does not) adds those of its kits the winner lacks; a tier wins only
   when no domain fits, so then no domain adds kits.
7. A tag that asks for a kit itself (``signals`` in integrations.yaml, e.g. ``outbox``) adds it
   whatever won, if the kit supports the node type; otherwise it is ignored with a warning.
8. Every added kit brings the kits it requires; the order is ``selector.kits.effective_kits``'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from selector.kits import kit_table
from selector.models import (
    KIT_CATEGORY_PREFIX,
    NodeType,
    RankedVariant,
    SelectionResult,
    TagCategory,
    Tier,
)
from selector.registry import DomainSlot, Registry, default_registry
from selector.version import SELECTOR_VERSION

PRODUCTION_MIN_OPERATIONS = 6
PRODUCTION_MIN_TAGS = 2
MINIMAL_MAX_OPERATIONS = 2
# Plain strings: hashing a StrEnum member costs more than the lookup it keys.
_PRODUCTION = TagCategory.PRODUCTION.value
_BASIC = TagCategory.BASIC.value


# Internal records are plain slotted dataclasses: frozen ones are slower to build, per field.
@dataclass(slots=True)
class _Evidence:
    """The tags of a request, sorted by what they signal."""

    node_type: NodeType
    operations: int
    by_category: dict[str, list[str]]  # category -> distinct entries, in the order typed
    matched: dict[str, str]  # tag as typed -> category
    warnings: list[str]  # about tags: unknown, corrected or contradicting themselves
    labels: dict[str, str]  # entry -> how a tag read by its words names it, e.g. sql_store (sql)

    def entries(self, category: str) -> list[str]:
        entries = self.by_category.get(category, [])
        if not self.labels:
            return entries
        return [self.labels.get(entry, entry) for entry in entries]


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _a(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


def _listed(entries: Sequence[str]) -> str:
    return f" ({', '.join(entries)})" if entries else ""


_NODE_TYPES: dict[object, NodeType] = {t.value: t for t in NodeType}


def coerce_node_type(node_type: NodeType | str) -> NodeType:
    known = _NODE_TYPES.get(node_type)
    if known is not None:
        return known
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
    if isinstance(values, list | tuple) and all(type(v) is str for v in values):
        return list(values)
    return [str(v) for v in values]


def _gather(
    registry: Registry, node_type: NodeType, operations: list[str], features: list[str]
) -> _Evidence:
    by_category: dict[str, list[str]] = {}
    matched: dict[str, str] = {}
    warnings: list[str] = []
    labels: dict[str, str] = {}
    lexicon = registry.lexicon
    lookup = lexicon.lookup
    for tag in features:
        meaning = lookup(tag)
        label = None
        if meaning is None:
            reading = lexicon.read(tag)
            note = reading.note
            if note is None and reading.meaning is None:
                note = (
                    f"unknown feature tag {tag!r} ignored "
                    "(see `python -m selector variants --vocabulary`)"
                )
            if note is not None and note not in warnings:
                warnings.append(note)
            meaning, label = reading.meaning, reading.label
            if meaning is None:
                continue
        matched[tag] = meaning.category
        entries = by_category.setdefault(meaning.category, [])
        if meaning.entry not in entries:
            entries.append(meaning.entry)
            if label is not None:
                labels[meaning.entry] = label
    return _Evidence(node_type, len(operations), by_category, matched, warnings, labels)


def _tier_fits(ev: _Evidence) -> dict[str, float]:
    """How well each tier fits, in [0, 1]; exactly the tier the policy picks scores 1.0."""
    production_tags = len(ev.by_category.get(_PRODUCTION, ()))
    basic_tags = len(ev.by_category.get(_BASIC, ()))
    production = min(
        1.0,
        max(ev.operations / PRODUCTION_MIN_OPERATIONS, production_tags / PRODUCTION_MIN_TAGS),
    )
    excess = max(0, ev.operations - MINIMAL_MAX_OPERATIONS) + production_tags + basic_tags
    minimal = 1.0 if excess == 0 else max(0.0, 0.75 - 0.25 * (excess - 1))
    if production >= 1.0:
        minimal = min(minimal, 0.0)
    standard = 1.0 if production < 1.0 and minimal < 1.0 else 0.5
    return {
        "production": round(production, 3),
        "minimal": round(minimal, 3),
        "standard": standard,
    }


def _tier_reason(tier: Tier, ev: _Evidence) -> str:
    production_tags = ev.entries(_PRODUCTION)
    basic_tags = ev.entries(_BASIC)
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


@dataclass(slots=True)
class _Decision:
    kind: NodeType
    evidence: _Evidence
    chosen: str
    order: tuple[DomainSlot | str, ...]  # every compatible variant, best first
    strengths: dict[str, int]
    fits: dict[str, float]
    rationale: str
    confidence: float
    warnings: tuple[str, ...]
    kits_added: list[str]
    kit_reasons: dict[str, str]  # kit -> why it was added, in kits_added order

    def ranked(self) -> list[RankedVariant]:
        fits, strengths = self.fits, self.strengths
        ranked = []
        for item in self.order:
            if isinstance(item, str):
                ranked.append(RankedVariant(item, fits[item]))
            elif item.variant in strengths:
                ranked.append(RankedVariant(item.variant, float(strengths[item.variant])))
            else:
                ranked.append(item.unsignalled)
        return ranked


def _decide(
    registry: Registry,
    node_type: NodeType | str,
    operations: Iterable[str] | str | None,
    features: Iterable[str] | str | None,
) -> _Decision:
    kind = coerce_node_type(node_type)
    plan = registry.plans[kind]
    ev = _gather(registry, kind, _as_list(operations), _as_list(features))
    warnings = list(ev.warnings)

    # Domain strengths, keeping only domains whose variant fits this node type.
    strengths: dict[str, int] = {}
    compatible: list[DomainSlot] = []
    dropped: list[DomainSlot] = []
    for slot in plan.domains:
        entries = ev.by_category.get(slot.domain)
        if slot.supported:
            compatible.append(slot)
            if entries:
                strengths[slot.variant] = len(entries)
        elif entries:
            dropped.append(slot)
    fits = _tier_fits(ev)
    tier_order = sorted(plan.tiers, key=fits.__getitem__, reverse=True)
    order: tuple[DomainSlot | str, ...]
    winner: DomainSlot | None = None
    signalled: list[DomainSlot] = []

    if strengths:
        # Stable sort: equal strengths keep the plan's tie-break order.
        ranked = sorted(compatible, key=lambda slot: strengths.get(slot.variant, 0), reverse=True)
        winner = ranked[0]
        strength = strengths[winner.variant]
        runner = ranked[1] if len(ranked) > 1 and ranked[1].variant in strengths else None
        runner_strength = strengths[runner.variant] if runner else 0
        rationale = (
            f"{winner.variant}: {_plural(strength, winner.domain + ' tag')}"
            f"{_listed(ev.entries(winner.domain))} "
            f"{'signal' if strength > 1 else 'signals'} it for {_a(kind.value)} node"
        )
        if runner is not None:
            versus = f"{runner.domain} ({_plural(runner_strength, 'tag')})"
            if runner_strength == strength:
                why = (
                    f"as the {kind.value} node's home domain"
                    if winner.home
                    else "as the first in domain order"
                )
                rationale += f"; it ties with {versus} and wins {why}"
            else:
                rationale += f", ahead of {versus}"
        rationale += "."
        confidence = _confidence_from_margin(strength, runner_strength)
        signalled = [slot for slot in ranked if slot.variant in strengths]
        silent = [slot for slot in ranked if slot.variant not in strengths]
        order = (*signalled, *tier_order, *silent)
        chosen = winner.variant
    else:
        chosen = tier_order[0]
        no_domain = "no domain tag fits" if dropped else "no domain tag"
        rationale = f"{chosen}: {_tier_reason(Tier(chosen), ev)}, and {no_domain}."
        confidence = round(1.0 - max(fits[name] for name in tier_order[1:]) / 2.0, 3)
        order = (*tier_order, *compatible)

    kit_reasons: dict[str, str] = {}
    asks_for_kits = any(c.startswith(KIT_CATEGORY_PREFIX) for c in ev.by_category)
    if asks_for_kits or (winner is not None and (len(signalled) > 1 or dropped)):
        kit_reasons = _recommend_kits(registry, ev, chosen, winner, signalled, dropped, warnings)
    for slot in dropped:
        listed = f"{slot.domain} tags{_listed(ev.entries(slot.domain))}"
        added = [k for k in registry.variants[slot.variant].integrations if k in kit_reasons]
        if added:
            warnings.append(
                f"{listed} add the {', '.join(added)} {'kit' if len(added) == 1 else 'kits'} "
                f"beside {chosen}; {slot.variant} itself does not support {kind.value} nodes "
                f"(node type {slot.fits} would fit it)"
            )
        else:
            warnings.append(
                f"{listed} ignored: {slot.variant} does not support {kind.value} nodes; "
                f"node type {slot.fits} would fit it"
            )
    if kit_reasons:
        rationale += f" Kits added: {'; '.join(kit_reasons.values())}."
    return _Decision(
        kind,
        ev,
        chosen,
        order,
        strengths,
        fits,
        rationale,
        confidence,
        tuple(warnings),
        list(kit_reasons),
        kit_reasons,
    )


def _recommend_kits(
    registry: Registry,
    ev: _Evidence,
    chosen: str,
    winner: DomainSlot | None,
    signalled: list[DomainSlot],
    dropped: list[DomainSlot],
    warnings: list[str],
) -> dict[str, str]:
    """Kits to add beside ``chosen``'s own (policy steps 6 to 8): kit -> why, in the order
    the node lists them. Appends a warning for each kit asked for that cannot be added."""
    kind = ev.node_type
    own = registry.variants[chosen].integrations
    kits = registry.integrations
    table = kit_table(registry)
    why: dict[str, str] = {}
    if winner is not None:
        others = [slot for slot in (*signalled, *dropped) if slot is not winner]
        if len(others) > 1:
            # Strongest first, so a kit two domains bring is credited to the stronger one.
            others.sort(key=lambda slot: len(ev.entries(slot.domain)), reverse=True)
        for slot in others:
            entries = ev.entries(slot.domain)
            for kit in table.fitting[kind, slot.variant]:
                if kit not in own and kit not in why:
                    why[kit] = (
                        f"{kit}: {_plural(len(entries), 'tag')}{_listed(entries)} "
                        f"beside {winner.domain}"
                    )
    for category in ev.by_category:
        if not category.startswith(KIT_CATEGORY_PREFIX):
            continue
        entries = ev.entries(category)
        kit = category.removeprefix(KIT_CATEGORY_PREFIX)
        if kind not in kits[kit].node_types:
            fit = " or ".join(t.value for t in kits[kit].node_types)
            warnings.append(
                f"{kit} tags{_listed(entries)} ignored: the {kit} kit does not support "
                f"{kind.value} nodes; node type {fit} would fit it"
            )
        elif kit not in own and kit not in why:
            asks = "asks" if len(entries) == 1 else "ask"
            why[kit] = f"{kit}: {_plural(len(entries), 'tag')}{_listed(entries)} {asks} for it"
    if not why:
        return {}
    needs = table.needs
    brought = [need for kit in why for need in needs[kit] if need not in why and need not in own]
    if not brought and len(why) == 1:
        return why
    # The order of selector.kits.effective_kits: catalogue order, requirements included.
    reasons: dict[str, str] = {}
    for kit in sorted({*why, *brought}, key=table.rank.__getitem__):
        if kit in why:
            reasons[kit] = why[kit]
        else:
            needing = [k for k in sorted(why, key=table.rank.__getitem__) if kit in needs[k]]
            reasons[kit] = f"{kit}: required by {', '.join(needing)}"
    return reasons


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
    decision = _decide(registry or default_registry(), node_type, operations, features)
    alternatives = decision.ranked()
    return SelectionResult(
        node_type=decision.kind,
        variant=decision.chosen,
        confidence=decision.confidence,
        rationale=decision.rationale,
        matched_features=decision.evidence.matched,
        alternatives=tuple(alternatives),
        warnings=decision.warnings,
        selector_version=SELECTOR_VERSION,
        kits_added=decision.kits_added,
    )


def explain(
    node_type: NodeType | str,
    operations: Iterable[str] | str | None = (),
    features: Iterable[str] | str | None = (),
    *,
    registry: Registry | None = None,
) -> tuple[SelectionResult, list[tuple[RankedVariant, str]]]:
    """``select`` plus a row for every registered variant: the compatible ones in rank order
    with why they scored what they did, then the ones that do not support the node type."""
    registry = registry or default_registry()
    result = select(node_type, operations, features, registry=registry)
    decision = _decide(registry, node_type, operations, features)
    ev, kind = decision.evidence, decision.kind
    rows: list[tuple[RankedVariant, str]] = []
    for item, ranked in zip(decision.order, result.alternatives, strict=True):
        if isinstance(item, str):
            reason = _tier_reason(Tier(item), ev)
        elif strength := decision.strengths.get(item.variant, 0):
            reason = f"{_plural(strength, item.domain + ' tag')}{_listed(ev.entries(item.domain))}"
            if item.home:
                reason += f"; home domain of {kind.value} nodes"
            own = registry.variants[item.variant].integrations
            added = [kit for kit in own if kit in decision.kit_reasons]
            if added and item.variant != decision.chosen:
                reason += f"; adds its kits ({', '.join(added)}) beside {decision.chosen}"
        else:
            reason = f"no {item.domain} tags"
        rows.append((ranked, reason))
    for spec in registry.variants.values():
        if not spec.supports(kind):
            fits = " or ".join(t.value for t in spec.supported_node_types)
            reason = f"does not support {kind.value} nodes (fits {fits})"
            if spec.domain is not None and ev.by_category.get(spec.domain.name):
                added = [kit for kit in spec.integrations if kit in decision.kit_reasons]
                outcome = f"add its kits ({', '.join(added)})" if added else "were ignored"
                reason += f"; its tags{_listed(ev.entries(spec.domain.name))} {outcome}"
            rows.append((RankedVariant(spec.name, 0.0), reason))
    return result, rows


def explain_kits(
    node_type: NodeType | str,
    operations: Iterable[str] | str | None = (),
    features: Iterable[str] | str | None = (),
    *,
    registry: Registry | None = None,
) -> list[tuple[str, str]]:
    """The kits ``select`` adds beside the variant's own, each with why, in ``kits_added``
    order."""
    decision = _decide(registry or default_registry(), node_type, operations, features)
    return list(decision.kit_reasons.items())
