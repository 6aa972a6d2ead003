"""Delivery-report bookkeeping of the producer: what awaits a report, reports to settle on
the event loop, counts for the metrics, and the one callback of a batch."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Sequence

import confluent_kafka as ck

from integrations.kafka.errors import (
    BatchDeliveryError,
    KafkaError,
)
from integrations.kafka.metrics import (
    KafkaMetrics,
)
from integrations.kafka.overflow import (
    Report,
)
from integrations.kafka.records import (
    BatchDelivery,
)

__all__ = ["DeliveryBatch", "DeliveryLedger"]

# Bound once: the delivery callbacks use it once per message.
_get_ident = threading.get_ident


class DeliveryLedger:
    """Messages handed to librdkafka whose report is not settled yet (``inflight``), reports
    served on another thread (during flush and transactions) waiting to be settled on the
    loop, and acknowledged/failed counts not yet added to the metrics: they are added once
    per poll rather than per message, because a labelled increment costs a lock."""

    def __init__(self, metrics: KafkaMetrics) -> None:
        self.metrics = metrics
        self.inflight = 0
        self.loop_thread = 0  # the event loop's thread, whose reports settle directly
        # deque append/popleft are thread-safe.
        self._deferred: deque[tuple[Report, ck.KafkaError | None, ck.Message]] = deque()
        self._acked: dict[str, list[int]] = {}
        self._failed: dict[str, int] = {}

    def defer(self, report: Report, err: ck.KafkaError | None, msg: ck.Message) -> None:
        """(Any thread) Keep a report for the loop to settle."""
        self._deferred.append((report, err, msg))

    def has_deferred(self) -> bool:
        return bool(self._deferred)

    def settle_deferred(self) -> None:
        """(Loop thread) Run the deferred reports."""
        deferred = self._deferred
        while deferred:
            try:
                report, err, msg = deferred.popleft()
            except IndexError:
                break
            report(err, msg)

    def acked(self, topic: str, messages: int, size: int) -> None:
        counts = self._acked.get(topic)
        if counts is None:
            counts = self._acked[topic] = [0, 0]
        counts[0] += messages
        counts[1] += size

    def failed(self, topic: str) -> None:
        self._failed[topic] = self._failed.get(topic, 0) + 1

    def publish(self) -> None:
        """Add the counts kept so far to the metrics."""
        if self._acked:
            for topic, (messages, size) in self._acked.items():
                self.metrics.produced_messages.labels(topic).inc(messages)
                self.metrics.produced_bytes.labels(topic).inc(size)
            self._acked.clear()
        if self._failed:
            for topic, count in self._failed.items():
                self.metrics.errors.labels(topic, "delivery").inc(count)
            self._failed.clear()


class DeliveryBatch:
    """The one future and the one delivery callback of a ``send_batch``.

    Counts reports rather than holding a future per message: this is what makes a batch
    cheaper than as many ``send_nowait`` calls. The callback runs once per message, so it
    does as little as it can; the bookkeeping waits for the last report.
    """

    __slots__ = (
        "_failed",
        "_ledger",
        "_loop_thread",
        "_size",
        "_unreported",
        "count",
        "future",
        "topic",
        "unsent",
    )

    def __init__(
        self,
        ledger: DeliveryLedger,
        topic: str,
        values: Sequence[bytes],
        future: asyncio.Future[BatchDelivery],
    ) -> None:
        self._ledger = ledger
        self._loop_thread = ledger.loop_thread
        self.topic = topic
        self.count = len(values)
        self.future = future
        self._size = sum(map(len, values))
        self._unreported = self.count  # reports (or unsent failures) still to come
        self.unsent = 0  # messages that never reached librdkafka
        self._failed: list[tuple[bytes | None, bytes, KafkaError]] = []

    def report(self, err: ck.KafkaError | None, msg: ck.Message) -> None:
        """librdkafka's delivery callback, for every message of the batch."""
        if _get_ident() != self._loop_thread:
            self._ledger.defer(self.report, err, msg)  # settled on the loop
            return
        if err is not None:
            self._ledger.failed(self.topic)
            error = KafkaError.wrap(f"delivery to {self.topic} failed", err)
            self._failed.append((msg.key(), msg.value() or b"", error))
            self._size -= len(msg)
        self._unreported -= 1
        if not self._unreported:
            self._complete()

    def fail_unsent(self, key: bytes | None, value: bytes, error: KafkaError) -> None:
        """A message of the batch that never reached librdkafka."""
        self._failed.append((key, value, error))
        self._size -= len(value)
        self.unsent += 1
        self._unreported -= 1
        if not self._unreported:
            self._complete()

    def _complete(self) -> None:
        ledger = self._ledger
        ledger.inflight -= self.count - self.unsent
        delivered = self.count - len(self._failed)
        if delivered:
            ledger.acked(self.topic, delivered, self._size)
        if self.future.done():  # cancelled by the sender
            return
        if self._failed:
            self.future.set_exception(BatchDeliveryError(self.topic, self.count, self._failed))
        else:
            self.future.set_result(BatchDelivery(self.topic, self.count))
