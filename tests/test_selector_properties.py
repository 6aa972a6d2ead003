"""Properties of the selector that must hold for every input, checked with hypothesis."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from selector import NodeType, default_registry, select

REGISTRY = default_registry()
SPELLINGS = sorted(REGISTRY.lexicon.spellings())
DOMAIN_TAGS = {
    spec.domain.name: sorted(spec.signals) for spec in REGISTRY.domains if spec.domain is not None
}

node_types = st.sampled_from(list(NodeType))
operations = st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True), max_size=12)
known_tags = st.sampled_from(SPELLINGS)
any_tags = st.lists(st.one_of(known_tags, st.text(max_size=12)), max_size=10)


@given(node_types, operations, any_tags)
def test_selection_is_deterministic_and_never_raises_on_tags(
    node_type: NodeType, ops: list[str], tags: list[str]
) -> None:
    first = select(node_type, ops, tags)
    again = select(node_type.value, list(ops), list(tags))
    assert first == again
    assert REGISTRY.get(first.variant).supports(node_type)
    assert first.alternatives[0].variant == first.variant
    assert 0.0 <= first.confidence <= 1.0
    compatible = {spec.name for spec in REGISTRY.compatible(node_type)}
    assert {alt.variant for alt in first.alternatives} == compatible


@given(node_types, operations, st.lists(known_tags, max_size=8))
def test_case_and_separators_do_not_change_the_answer(
    node_type: NodeType, ops: list[str], tags: list[str]
) -> None:
    shouted = [tag.upper().replace("_", "-") for tag in tags]
    spaced = [tag.replace("_", " ") for tag in tags]
    expected = select(node_type, ops, tags).variant
    assert select(node_type, ops, shouted).variant == expected
    assert select(node_type, ops, spaced).variant == expected


@settings(max_examples=300)
@given(node_types, operations, st.lists(known_tags, max_size=8), st.data())
def test_adding_a_domain_tag_never_lowers_that_domain_rank(
    node_type: NodeType, ops: list[str], tags: list[str], data: st.DataObject
) -> None:
    spec = data.draw(st.sampled_from([s for s in REGISTRY.domains if s.supports(node_type)]))
    assert spec.domain is not None
    added = data.draw(st.sampled_from(DOMAIN_TAGS[spec.domain.name]))

    def rank(features: list[str]) -> int:
        order = [alt.variant for alt in select(node_type, ops, features).alternatives]
        return order.index(spec.name)

    assert rank([*tags, added]) <= rank(tags)


def test_every_variant_is_reachable() -> None:
    reached = set()
    for spec in REGISTRY.variants.values():
        node_type = spec.supported_node_types[0]
        if spec.domain is not None:
            features = sorted(spec.signals)[:3]
            ops = ["a"]
        else:
            features = {"minimal": [], "standard": ["logging"], "production": ["retry", "tracing"]}[
                spec.name
            ]
            ops = ["a"]
        reached.add(select(node_type, ops, features).variant)
    assert reached == set(REGISTRY.variants)


@given(node_types, st.lists(st.sampled_from(SPELLINGS), max_size=6))
def test_operation_count_decides_production_when_no_domain(
    node_type: NodeType, tags: list[str]
) -> None:
    result = select(node_type, [f"op{i}" for i in range(6)], tags)
    matched_domains = {
        c for c in result.matched_features.values() if c not in {"production", "basic", "shared"}
    }
    compatible_domains = {
        s.domain.name for s in REGISTRY.domains if s.domain and s.supports(node_type)
    }
    if not matched_domains & compatible_domains:
        assert result.variant == "production"
