"""Literals written into rendered Python, TOML and YAML read back as exactly the typed text."""

from __future__ import annotations

import ast
import tomllib

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from extensions.literals import python_str, toml_str, yaml_str

# Any text a person can type or paste: every code point but lone surrogates, which cannot be
# encoded in a file at all.
any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80)


@settings(max_examples=500)
@given(any_text)
def test_python_literal_round_trips(text: str) -> None:
    literal = python_str(text)
    assert literal.isascii()
    assert ast.literal_eval(literal) == text


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
