"""What the Kafka kit hands its callers: consumed records and delivery receipts."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "UNKNOWN_OFFSET",
    "BatchDelivery",
    "Delivery",
    "Record",
    "dead_letter_headers",
    "record_headers",
]

UNKNOWN_OFFSET = -1


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where the broker stored an acknowledged message. ``offset`` is UNKNOWN_OFFSET (-1)
    when the broker acknowledged a retried batch it already had (the first answer was lost
    on the way) without saying where: the message is stored, once."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class BatchDelivery:
    """A batch (``Producer.send_batch``) whose every message the broker acknowledged."""

    topic: str
    count: int


@dataclass(frozen=True, slots=True)
class Record:
    """A consumed message. A tombstone (null value) arrives as ``b""``, a null header value
    as ``b""``."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


def dead_letter_headers(record: Record, error: BaseException) -> list[tuple[str, bytes]]:
    """The record's own headers plus where it came from and why it failed."""
    return [
        *record.headers,
        ("dlq.error", f"{type(error).__name__}: {error}".encode()),
        ("dlq.topic", record.topic.encode()),
        ("dlq.partition", str(record.partition).encode()),
        ("dlq.offset", str(record.offset).encode()),
    ]


def record_headers(
    headers: list[tuple[str, str | bytes | None]] | dict[str, str | bytes | None],
) -> tuple[tuple[str, bytes], ...]:
    """librdkafka's message headers as a Record holds them."""
    items = headers.items() if isinstance(headers, dict) else headers
    return tuple(
        (name, b"" if value is None else value.encode() if isinstance(value, str) else value)
        for name, value in items
    )
