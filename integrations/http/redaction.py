"""Keeping a request's credentials out of what the HTTP kit prints.

A URL may carry credentials (``https://user:password@host``, ``?api_key=...``). ``redact_url``
is what every error message, error attribute and repr of the kit shows instead of a URL;
``secrets_in`` and ``scrub`` remove a request's credentials from text the kit did not write
(aiohttp's exception messages, which contain the URL).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final
from urllib.parse import quote, quote_plus

import yarl

__all__ = [
    "REDACTED",
    "SENSITIVE_QUERY_KEYS",
    "SENSITIVE_QUERY_KEY_PARTS",
    "is_sensitive_key",
    "redact_url",
    "scrub",
    "secrets_in",
]

REDACTED: Final = "***"
# A query key is sensitive when, lower-cased, it contains one of these (``api_key``,
# ``X-Amz-Signature``, ``access_token``, ``client_secret``, ``password``, ``oauth_...``) or
# equals one of SENSITIVE_QUERY_KEYS (short names too common as parts of harmless keys).
# Redacting a harmless value costs a little debugging; leaking a credential costs more.
SENSITIVE_QUERY_KEY_PARTS: Final = (
    "key",
    "token",
    "secret",
    "passw",
    "pwd",
    "auth",
    "signature",
    "credential",
    "session",
    "cookie",
    "jwt",
    "private",
)
SENSITIVE_QUERY_KEYS: Final = frozenset({"sig", "code", "pass", "sas", "otp", "nonce"})


def is_sensitive_key(key: str) -> bool:
    lowered = key.lower()
    return lowered in SENSITIVE_QUERY_KEYS or any(p in lowered for p in SENSITIVE_QUERY_KEY_PARTS)


def redact_url(url: str | yarl.URL) -> str:
    """``url`` fit for a log line, an error or a repr: userinfo and the values of sensitive
    query keys become ``***``, the fragment is dropped. A URL that does not parse is
    replaced whole, since where its secrets are cannot be told."""
    try:
        parsed = url if isinstance(url, yarl.URL) else yarl.URL(url)
        if parsed.raw_user is not None or parsed.raw_password is not None:
            parsed = parsed.with_user(REDACTED).with_password(None)
        if any(is_sensitive_key(key) for key in parsed.query):
            parsed = parsed.with_query(
                [(k, REDACTED if is_sensitive_key(k) else v) for k, v in parsed.query.items()]
            )
        return str(parsed.with_fragment(None))
    except (TypeError, ValueError):
        return "<unparseable URL, redacted>"


def secrets_in(url: str, params: Mapping[str, str] | None) -> list[str]:
    """Every credential this request's URL and params carry, in each form it may be printed
    in (as given, decoded, percent- or plus-encoded), longest first."""
    found: set[str] = set()
    try:
        parsed = yarl.URL(url)
        values = [parsed.user, parsed.password, parsed.raw_user, parsed.raw_password]
        values += [v for k, v in parsed.query.items() if is_sensitive_key(k)]
        query = parsed.raw_query_string
    except (TypeError, ValueError):
        values, query = [], ""
    for pair in query.split("&"):
        key, _, raw = pair.partition("=")
        if is_sensitive_key(key):
            values.append(raw)
    values += [v for k, v in (params or {}).items() if is_sensitive_key(str(k))]
    for value in values:
        if value:
            found.update({value, quote(value, safe=""), quote_plus(value, safe="")})
    found.discard("")
    return sorted(found, key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with each of ``secrets`` (longest first, as ``secrets_in`` orders them)
    replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text
