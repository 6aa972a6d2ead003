"""What a call of the HTTP kit's client returns: a response read in full."""

from __future__ import annotations

import json as jsonlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["HttpResponse"]


@dataclass(frozen=True, slots=True, repr=False)
class HttpResponse:
    """A fully read response: the connection is back in the pool before the caller sees it."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def __repr__(self) -> str:
        # Headers (Set-Cookie) and body may hold secrets; a repr ends up in logs.
        return f"HttpResponse(status={self.status}, body=<{len(self.body)} bytes>)"

    def json(self) -> Any:
        return jsonlib.loads(self.body)

    def text(self) -> str:
        content_type = self.headers.get("Content-Type", "")
        _, found, charset = content_type.partition("charset=")
        encoding = charset.split(";")[0].strip().strip('"') if found else "utf-8"
        try:
            return self.body.decode(encoding, errors="replace")
        except LookupError:  # an unknown charset name
            return self.body.decode("utf-8", errors="replace")
