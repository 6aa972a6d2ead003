"""Literals written into rendered Python, TOML and YAML read back as exactly the typed text."""

from __future__ import annotations

import ast
import tomllib

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from extensions.literals import display_width, python_str, toml_str, yaml_str

# Any text a person can type or paste: every code point but lone surrogates, which cannot be
# encoded in a file at all.
any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80)


@settings(max_examples=500)
@given(any_text)
def test_python_literal_round_trips(text: str) -> None:
    literal = python_str(text)
    assert ast.literal_eval(literal) == text
    # Printable text stays as typed; what a reader could not see is escaped.
    kept = [char for char in text if char.isprintable() and char not in '"\\']
    assert all(char in literal for char in kept)
    assert all(char.isprintable() for char in literal)


def test_python_literal_escapes_only_what_it_must() -> None:
    assert (
        python_str("Orders \u2014 fast \U0001f680 caf\xe9")
        == '"Orders \u2014 fast \U0001f680 caf\xe9"'
    )
    assert python_str('a"b\\c\n') == '"a\\"b\\\\c\\n"'
    assert python_str("\u2028\u2029\xa0\u200b\x00") == '"\\u2028\\u2029\\xa0\\u200b\\x00"'


def test_display_width_counts_columns_as_ruff_does() -> None:
    assert display_width("plain") == 5
    assert display_width("\u65e5\u672c") == 4  # wide
    assert display_width("\U0001f680") == 2  # emoji presentation
    assert display_width("e\u0301") == 1  # combining accent
    assert display_width("\u2014") == 1  # em dash, ambiguous width: one column outside CJK


@settings(max_examples=500)
@given(any_text)
def test_toml_string_round_trips(text: str) -> None:
    assert tomllib.loads(f"value = {toml_str(text)}\n")["value"] == text


@settings(max_examples=500)
@given(any_text)
def test_yaml_scalar_round_trips(text: str) -> None:
    assert yaml.safe_load(f"value: {yaml_str(text)}\n")["value"] == text


def test_awkward_examples() -> None:
    for text in ["{{ x }} {% if %}", "a\\b\"c'd", "line\nbreak\ttab", "\x00\x7f\x85", "𐀀 é"]:
        assert ast.literal_eval(python_str(text)) == text
        assert tomllib.loads(f"v = {toml_str(text)}")["v"] == text
        assert yaml.safe_load(f"v: {yaml_str(text)}")["v"] == text
