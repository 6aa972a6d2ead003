"""An event publisher interface, with a logging publisher (the default sink) and a bounded
in-memory one for tests."""

from __future__ import annotations

import json
import logging
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Event:
    """Something that happened in the node, with a unique id and a UTC timestamp."""

    type: str
    payload: Mapping[str, object]
    id: str = field(default_factory=_new_id)
    occurred_at: datetime = field(default_factory=_now)

    def to_dict(self) -> dict[str, object]:
        """A plain dict for serialisation (timestamp in ISO 8601)."""
        return {
            "id": self.id,
            "type": self.type,
            "occurred_at": self.occurred_at.isoformat(),
            "payload": dict(self.payload),
        }


class EventPublisher(Protocol):
    """Where a node's events go: implement this for your broker."""

    async def publish(self, topic: str, event: Event) -> None: ...


class InMemoryEventPublisher:
    """Keeps the latest ``max_events`` events, in order: for tests.

    Older events are dropped as new ones arrive (and counted in ``dropped``), so a node left
    running with it cannot grow without bound.
    """

    def __init__(self, max_events: int = 10_000) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, got {max_events}")
        self.published: deque[tuple[str, Event]] = deque(maxlen=max_events)
        self.dropped = 0

    async def publish(self, topic: str, event: Event) -> None:
        if len(self.published) == self.published.maxlen:
            self.dropped += 1
        self.published.append((topic, event))

    def events_for(self, topic: str) -> list[Event]:
        """The events published to ``topic``, in order."""
        return [event for t, event in self.published if t == topic]


class LoggingEventPublisher:
    """Writes each event as one JSON line to a stdlib logger, at INFO."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger(__name__)

    async def publish(self, topic: str, event: Event) -> None:
        self._logger.info(json.dumps({"topic": topic, **event.to_dict()}, default=str))
