"""The producer's bounded overflow: messages librdkafka's queue had no room for, held in send
order until it has."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple

import confluent_kafka as ck

from integrations.kafka.errors import (
    KafkaError,
    ProducerQueueFullError,
    message_timed_out,
)

__all__ = ["Overflow", "PendingDelivery", "Report"]

# A delivery callback as librdkafka calls it.
Report = Callable[[ck.KafkaError | None, ck.Message], None]


class PendingDelivery(NamedTuple):
    """A message waiting in the overflow for room in librdkafka's queue."""

    topic: str
    value: bytes
    key: bytes | None
    headers: Sequence[tuple[str, bytes]]
    report: Report  # its delivery callback once produced
    abandoned: Callable[[], bool]  # the sender gave up on it: drop it unsent
    fail: Callable[[KafkaError], None]  # it can never be sent
    expires: float  # monotonic time after which it fails as timed out


class Overflow:
    """Messages waiting, in send order, for room in librdkafka's queue: at most
    ``max_messages`` and ``max_bytes`` (value bytes), each for at most ``timeout_ms``."""

    def __init__(self, name: str, max_messages: int, max_bytes: int, timeout_ms: int) -> None:
        if max_messages < 0:
            raise ValueError(
                f"max_overflow_messages must be 0 or more (0: no overflow), got {max_messages}"
            )
        if max_bytes < 0:
            raise ValueError(
                f"max_overflow_bytes must be 0 or more (0: no overflow), got {max_bytes}"
            )
        self._name = name
        self._pending: deque[PendingDelivery] = deque()
        self._bytes = 0
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._timeout_ms = timeout_ms
        self._room = asyncio.Event()  # set while there is room
        self._room.set()

    def __len__(self) -> int:
        return len(self._pending)

    def has_room(self, size: int) -> bool:
        """Whether a message of ``size`` value bytes fits."""
        return len(self._pending) < self.max_messages and self._bytes + size <= self.max_bytes

    def full(self, topic: str) -> ProducerQueueFullError:
        """The error for a message to ``topic`` that does not fit."""
        return ProducerQueueFullError(
            f"{self._name}: cannot queue a message to {topic}: librdkafka's queue and the "
            f"overflow (max_overflow_messages={self.max_messages}, max_overflow_bytes="
            f"{self.max_bytes}) are full; await send() or flush() to wait for room",
            code="_QUEUE_FULL",
            retriable=True,
        )

    def expiry(self) -> float:
        """The ``expires`` of a message held from now on."""
        return time.monotonic() + self._timeout_ms / 1000

    def hold(self, pending: PendingDelivery) -> None:
        """Keep a message until librdkafka's queue has room (the caller checked there is room
        here)."""
        self._pending.append(pending)
        self._bytes += len(pending.value)
        if not self.has_room(0):
            self._room.clear()

    async def wait_for_room(self, timeout_s: float) -> None:
        """Wait until a message leaves the overflow, or ``timeout_s`` passed."""
        self._room.clear()  # a larger message than the room freed so far waits again
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._room.wait(), timeout_s)

    def drain(
        self,
        produce: Callable[[PendingDelivery], bool],
        expired: Callable[[PendingDelivery], None],
    ) -> None:
        """Hand the held messages, in order, to ``produce`` until it returns False (no room
        in librdkafka's queue). A message its sender abandoned fails unsent; one held longer
        than the timeout fails as timed out, after ``expired`` was told."""
        pending_messages = self._pending
        now = time.monotonic() if pending_messages else 0.0
        while pending_messages:
            pending = pending_messages[0]
            if pending.abandoned():  # the caller gave up on it (cancelled): do not send it
                self._release()
                pending.fail(KafkaError(f"{self._name}: cancelled before it was sent"))
                continue
            if pending.expires <= now:
                # Held in send order, so every expired message is at the head.
                self._release()
                expired(pending)
                pending.fail(message_timed_out(self._name, pending.topic, self._timeout_ms))
                continue
            if not produce(pending):
                return
            self._release()

    def fail_all(self, why: str) -> None:
        """Fail every held message with ``why``."""
        while self._pending:
            pending = self._release()
            pending.fail(KafkaError(f"{self._name}: {why}"))

    def _release(self) -> PendingDelivery:
        pending = self._pending.popleft()
        self._bytes -= len(pending.value)
        if not self._room.is_set() and self.has_room(0):
            self._room.set()
        return pending
