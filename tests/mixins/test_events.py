"""Events, the publisher protocol, and the in-memory and logging publishers."""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import UTC, datetime

import pytest

from mixins.events import Event, EventPublisher, InMemoryEventPublisher, LoggingEventPublisher


async def publish_all(publisher: EventPublisher, *items: tuple[str, Event]) -> None:
    for topic, event in items:
        await publisher.publish(topic, event)


def test_an_event_gets_a_unique_id_and_a_utc_timestamp() -> None:
    before = datetime.now(UTC)
    first, second = Event("user.created", {"id": 1}), Event("user.created", {"id": 2})
    after = datetime.now(UTC)
    assert first.id != second.id
    assert len(first.id) == 32
    int(first.id, 16)  # a uuid4 hex
    assert first.occurred_at.tzinfo is UTC
    assert before <= first.occurred_at <= after


def test_an_event_is_frozen_and_serialises_to_a_plain_dict() -> None:
    at = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    event = Event("user.created", {"id": 1}, id="e-1", occurred_at=at)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.type = "other"  # type: ignore[misc]
    assert event.to_dict() == {
        "id": "e-1",
        "type": "user.created",
        "occurred_at": "2024-05-01T12:00:00+00:00",
        "payload": {"id": 1},
    }


async def test_in_memory_publisher_keeps_events_in_order_by_topic() -> None:
    publisher = InMemoryEventPublisher()
    a, b, c = Event("a", {}), Event("b", {}), Event("c", {})
    await publish_all(publisher, ("users", a), ("orders", b), ("users", c))
    assert list(publisher.published) == [("users", a), ("orders", b), ("users", c)]
    assert publisher.events_for("users") == [a, c]
    assert publisher.events_for("payments") == []


async def test_in_memory_publisher_keeps_only_the_latest_events() -> None:
    publisher = InMemoryEventPublisher(max_events=3)
    events = [Event(f"e{i}", {}) for i in range(50_000)]
    await publish_all(publisher, *(("t", event) for event in events))
    assert [event for _, event in publisher.published] == events[-3:]
    assert publisher.dropped == len(events) - 3
    with pytest.raises(ValueError, match="max_events"):
        InMemoryEventPublisher(max_events=0)


async def test_logging_publisher_writes_one_json_line_per_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    at = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    event = Event("user.created", {"id": 1, "when": at}, id="e-1", occurred_at=at)
    with caplog.at_level(logging.INFO, logger="mixins.events"):
        await publish_all(LoggingEventPublisher(), ("users", event))
    [record] = caplog.records
    assert record.levelno == logging.INFO
    assert json.loads(record.getMessage()) == {
        "topic": "users",
        "id": "e-1",
        "type": "user.created",
        "occurred_at": "2024-05-01T12:00:00+00:00",
        "payload": {"id": 1, "when": "2024-05-01 12:00:00+00:00"},
    }


async def test_logging_publisher_uses_the_given_logger(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("my_node.events")
    with caplog.at_level(logging.INFO, logger="my_node.events"):
        await LoggingEventPublisher(logger).publish("t", Event("x", {}))
    assert [record.name for record in caplog.records] == ["my_node.events"]
