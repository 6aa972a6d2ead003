"""String literals for the files the template renders, exact for any text a person types.

Jinja's ``tojson`` is not enough: it writes characters outside the Basic Multilingual Plane as
surrogate pairs, which TOML rejects and Python and YAML read back as two wrong characters.
"""

from __future__ import annotations

import unicodedata

import yaml

# Escapes Python and TOML basic strings share.
_SHORT_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def python_str(text: str) -> str:
    """A double-quoted Python literal that evaluates to ``text``.

    Source files are UTF-8, so printable text stays as typed (an em dash, an accent, an emoji);
    only quotes, backslashes and what a reader could not see are escaped: control and format
    characters, line and paragraph separators, spaces other than the plain one.
    """
    out = ['"']
    for char in text:
        code = ord(char)
        if char in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def display_width(text: str) -> int:
    """Columns ``text`` takes in a terminal, as ruff measures a line for E501: wide and
    full-width characters (CJK, most emoji) take two, combining marks and zero-width
    characters none. The standard library's East Asian Width table is enough for ruff's rule;
    no maintained Python package is needed for it."""
    width = 0
    for char in text:
        if unicodedata.combining(char) or unicodedata.category(char) in {"Mn", "Me", "Cf"}:
            continue
        width += 2 if unicodedata.east_asian_width(char) in {"W", "F"} else 1
    return width


def non_ascii(text: str) -> list[str]:
    """The distinct non-ASCII characters of ``text``, in order of first use."""
    return list(dict.fromkeys(char for char in text if not char.isascii()))


def toml_str(text: str) -> str:
    """A TOML basic string for ``text``: control characters escaped, the rest kept as is."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[char])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def yaml_str(text: str) -> str:
    """A double-quoted YAML scalar for ``text``, as PyYAML writes it (escapes included)."""
    dumped: str = yaml.safe_dump(text, default_style='"', width=2**31, allow_unicode=False)
    return dumped.removesuffix("\n...\n").strip()
