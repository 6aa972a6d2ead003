"""The librdkafka settings the Kafka kit's delivery guarantees rest on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

__all__ = [
    "CONNECTION_PREFIXES",
    "CONSUMER_FIXED",
    "PRODUCER_FIXED",
    "Compression",
    "checked_extra",
]

Compression = Literal["none", "gzip", "lz4", "snappy", "zstd"]

# Settings a client's `extra` may not override.
PRODUCER_FIXED = frozenset({"enable.idempotence", "acks", "request.required.acks"})
CONSUMER_FIXED = frozenset({"enable.auto.commit", "enable.auto.offset.store", "group.id"})
# Connection settings a consumer's `extra` shares with the dead-letter producer it builds.
CONNECTION_PREFIXES = ("security.", "sasl.", "ssl.", "socket.", "client.", "broker.")


def checked_extra(extra: Mapping[str, object] | None, fixed: frozenset[str]) -> dict[str, object]:
    """A copy of ``extra``; ValueError if it sets any of ``fixed``."""
    conf = dict(extra or {})
    overridden = sorted(fixed & conf.keys())
    if overridden:
        raise ValueError(f"extra may not set {', '.join(overridden)}: this client relies on it")
    return conf
