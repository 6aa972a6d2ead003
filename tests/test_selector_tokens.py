"""Compound and misspelt feature tags: read by their words, or as a close misspelling."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rapidfuzz.distance import DamerauLevenshtein

from selector import load_registry, select
from selector.vocabulary import Lexicon, canonical_spelling, split_tokens

REGISTRY = load_registry()
LEXICON = REGISTRY.lexicon
SPELLINGS = sorted(LEXICON.spellings())
# Words a vocabulary spelling is made of that are not spellings themselves (store, letter, ...).
PARTS = sorted({w for s in SPELLINGS for w in s.split("_") if len(w) > 1} - set(SPELLINGS))
# Everyday words of requirement lists, each within the correction distance of a vocabulary word.
ENGLISH = ["status", "states", "translation", "tracer", "cached", "report", "bucket", "driver"]

CASES_FILE = Path(__file__).parent / "data" / "selector_robust_tag_cases.jsonl"
CASES = [json.loads(line) for line in CASES_FILE.read_text(encoding="utf-8").splitlines() if line]


def test_the_robust_tag_cases_are_present() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_robust_tag_case(case: dict[str, Any]) -> None:
    result = select(case["node_type"], case["operations"], case["features"])
    assert result.variant == case["expected"], result.rationale
    for phrase in case.get("rationale", []):
        assert phrase in result.rationale
    assert len(result.warnings) == len(case["warnings"]), result.warnings
    for phrase in case["warnings"]:
        assert any(phrase in warning for warning in result.warnings), result.warnings
    scored = {alt.variant: alt.score for alt in result.alternatives}
    for variant, strength in case.get("domain_signals", {}).items():
        assert scored[variant] == strength


@pytest.mark.parametrize(
    ("typed", "tokens"),
    [
        ("sql_store", ["sql", "store"]),
        ("Kafka Topic", ["kafka", "topic"]),
        ("vision-model", ["vision", "model"]),
        ("kafkaTopicReader", ["kafka", "topic", "reader"]),
        ("PostgreSQLReplication", ["postgre", "sql", "replication"]),
        ("http2Gateway", ["http2", "gateway"]),
        ("a.b/c d__e", ["a", "b", "c", "d", "e"]),
        ("  ", []),
    ],
)
def test_split_tokens(typed: str, tokens: list[str]) -> None:
    assert split_tokens(typed) == tokens


@given(st.text(max_size=40))
def test_splitting_is_idempotent(typed: str) -> None:
    tokens = split_tokens(typed)
    assert split_tokens("_".join(tokens)) == tokens
    assert all(token and token == token.lower() for token in tokens)


def test_every_vocabulary_spelling_reads_as_itself() -> None:
    for spelling in SPELLINGS:
        reading = LEXICON.read(spelling)
        assert reading.meaning == LEXICON.lookup(spelling), spelling
        assert reading.note is None, spelling


@given(st.sampled_from(PARTS))
def test_a_word_of_the_vocabulary_is_never_corrected(word: str) -> None:
    note = LEXICON.read(word).note
    assert note is None or "did you mean" not in note


@pytest.mark.parametrize("word", ENGLISH)
def test_an_english_word_is_never_corrected(word: str) -> None:
    reading = LEXICON.read(word)
    assert reading.meaning is None
    assert reading.note is None


@given(st.sampled_from(SPELLINGS), st.data())
def test_a_correction_is_close_and_of_an_unknown_word(spelling: str, data: st.DataObject) -> None:
    """Whatever one edit of a spelling reads as, a correction stays within the rule."""
    at = data.draw(st.integers(0, len(spelling) - 1))
    letter = data.draw(st.sampled_from("abcdefghijklmnopqrstuvwxyz"))
    typed = spelling[:at] + letter + spelling[at + 1 :]
    reading = LEXICON.read(typed)
    if reading.note is None or "did you mean" not in reading.note:
        return
    assert reading.meaning is not None
    typed_spelling = canonical_spelling(typed)
    suggestion = reading.label.split(" (", 1)[1].rstrip(")")
    assert len(typed_spelling) >= 5 or any(len(t) >= 5 for t in split_tokens(typed))
    assert LEXICON.lookup(suggestion) == reading.meaning
    if suggestion in typed_spelling.split("_"):
        return  # a compound read by a corrected word
    limit = 1 if len(typed_spelling) < 8 else 2
    assert DamerauLevenshtein.distance(typed_spelling, suggestion) <= limit


def _lexicon(**words: tuple[str, ...]) -> Lexicon:
    """A lexicon with one category per word, so every word has its own meaning."""
    return Lexicon({f"c{i}": ("test", {w: words[w]}) for i, w in enumerate(words)})


def test_a_transposition_is_one_edit() -> None:
    lexicon = _lexicon(qwzxv=())
    reading = lexicon.read("qwzvx")
    assert reading.meaning is not None
    assert reading.meaning.entry == "qwzxv"


def test_short_tags_are_never_corrected() -> None:
    assert LEXICON.read("kfka").meaning is None  # four letters, one edit from kafka
    assert LEXICON.read("ami").meaning is None  # not api


def test_two_edits_only_from_eight_characters() -> None:
    assert _lexicon(qwzxvbnm=()).read("qwzxvbyy").meaning is not None
    assert _lexicon(qwzxvb=()).read("qwzxyy").meaning is None
    assert _lexicon(qwzxvb=()).read("qwzxvy").meaning is not None


def test_a_tie_between_two_entries_resolves_nothing() -> None:
    lexicon = _lexicon(qwzxva=(), qwzxvb=())
    reading = lexicon.read("qwzxvc")
    assert reading.meaning is None
    assert reading.note is None


def test_spellings_of_one_entry_at_the_same_distance_are_not_a_tie() -> None:
    lexicon = _lexicon(qwzxva=("qwzxvb",))
    reading = lexicon.read("qwzxvc")
    assert reading.meaning is not None
    assert reading.meaning.entry == "qwzxva"


def test_readings_are_memoised_in_a_bounded_cache() -> None:
    lexicon = _lexicon(qwzxva=())
    lexicon.read("qwzxvq")
    lexicon.read("qwzxvq")
    info = lexicon.read.cache_info()
    assert info.hits == 1
    assert info.maxsize is not None
    assert info.maxsize <= 4096


def test_words_of_different_domains_signal_nothing_and_say_why() -> None:
    result = select("effect", ["a"], ["postgres_api"])
    assert result.variant == "minimal"
    assert result.matched_features == {}
    assert result.warnings == (
        "feature tag 'postgres_api' ignored: its words point to different places "
        "(postgres: database, api: api)",
    )


def test_a_domain_word_decides_over_tier_and_shared_words() -> None:
    result = select("effect", ["a"], ["kafka_retry_cache", "logging_alerting"])
    assert result.matched_features == {
        "kafka_retry_cache": "kafka",
        "logging_alerting": "production",
    }
    assert "kafka_retry_cache (kafka)" in result.rationale


def test_a_compound_of_a_kit_word_asks_for_the_kit() -> None:
    result = select("effect", ["a"], ["postgres", "outbox-relay-table"])
    assert "outbox" in result.kits_added
    assert "outbox_relay_table (outbox_relay)" in result.rationale


def test_misspelling_warnings_do_not_repeat() -> None:
    result = select("effect", ["a"], ["postgress", "postgress"])
    assert len(result.warnings) == 1
