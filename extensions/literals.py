"""String literals for the files the template renders, exact for any text a person types.

Jinja's ``tojson`` is not enough: it writes characters outside the Basic Multilingual Plane as
surrogate pairs, which TOML rejects and Python and YAML read back as two wrong characters.
"""

from __future__ import annotations

import yaml

# Escapes Python and TOML basic strings share.
_SHORT_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def python_str(text: str) -> str:
    """A double-quoted, ASCII-only Python literal that evaluates to ``text``."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[char])
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


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
