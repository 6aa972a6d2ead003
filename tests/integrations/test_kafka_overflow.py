"""The producer's overflow (issue 13, defect 6): what librdkafka's queue has no room for waits
in a bounded overflow, and expires under the same delivery timeout."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import Iterator

import pytest

from integrations.kafka import (
    BatchDeliveryError,
    KafkaError,
    Producer,
    ProducerQueueFullError,
)
from integrations.local_kafka import local_kafka
from tests.integrations.test_kafka import create_topic, read_topic

# Nothing listens on port 1: every message stays undelivered until it times out.
NOWHERE = "127.0.0.1:1"
QUIET = {"log_level": 0}
TINY_QUEUE = {"queue.buffering.max.messages": 10, **QUIET}


@pytest.fixture(scope="module")
def kafka_bootstrap() -> Iterator[str]:
    with local_kafka() as bootstrap:
        yield bootstrap


async def test_a_burst_of_send_nowait_is_bounded_and_refused_when_full() -> None:
    producer = Producer(
        NOWHERE, max_overflow_messages=100, delivery_timeout_ms=60_000, extra=TINY_QUEUE
    )
    await producer.start()
    try:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            accepted: list[asyncio.Future[object]] = []
            refused: list[ProducerQueueFullError] = []
            for i in range(50_000):
                try:
                    accepted.append(producer.send_nowait("nowhere", b"x" * 200, key=b"%d" % i))
                except ProducerQueueFullError as exc:
                    if len(refused) < 1:
                        refused.append(exc)
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert len(accepted) <= 10 + 100  # librdkafka's queue plus the overflow's bound
        assert grown < 2_000_000, f"the heap grew by {grown} bytes"
        [error] = refused
        assert "max_overflow_messages=100" in str(error)
        assert error.retriable
        assert isinstance(error, KafkaError)
    finally:
        await producer.stop(timeout_s=0.1)  # purges what the dead broker never took


async def test_the_overflow_is_bounded_in_bytes_too() -> None:
    producer = Producer(NOWHERE, max_overflow_bytes=1_000, extra=TINY_QUEUE)
    await producer.start()
    try:
        held = 0
        errors: list[ProducerQueueFullError] = []
        for _ in range(100):
            try:
                producer.send_nowait("nowhere", b"y" * 100).cancel()
                held += 1
            except ProducerQueueFullError as exc:
                errors.append(exc)
        assert errors
        assert "max_overflow_bytes=1000" in str(errors[0])
    finally:
        await producer.stop(timeout_s=0.1)
        assert held <= 10 + 10


async def test_messages_in_the_overflow_expire_under_the_delivery_timeout() -> None:
    # 60 sends, 10 fit librdkafka's queue: before the fix the overflow was handed to
    # librdkafka one queueful per timeout, so the last failed some 6 timeouts late.
    producer = Producer(NOWHERE, delivery_timeout_ms=500, extra=TINY_QUEUE)
    async with producer:
        started = time.monotonic()
        futures = [producer.send_nowait("nowhere", b"%d" % i) for i in range(60)]
        results = await asyncio.gather(*futures, return_exceptions=True)
        elapsed = time.monotonic() - started
    assert all(isinstance(r, KafkaError) for r in results), results
    assert {r.code for r in results if isinstance(r, KafkaError)} == {"_MSG_TIMED_OUT"}
    # librdkafka scans for timed-out messages once a second, hence the slack above 0.5 s.
    assert elapsed < 3.0, f"the last send failed {elapsed:.1f} s after it was made"


async def test_awaiting_senders_wait_for_room_and_all_get_through(kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap)
    producer = Producer(kafka_bootstrap, linger_ms=1, max_overflow_messages=5, extra=TINY_QUEUE)
    async with producer:
        sends = [asyncio.ensure_future(producer.send(topic, b"%d" % i)) for i in range(300)]
        await asyncio.sleep(0)  # every send has tried once: the queue and overflow are full
        with pytest.raises(ProducerQueueFullError):
            producer.send_nowait(topic, b"refused")
        deliveries = await asyncio.gather(*sends)
    assert len({d.offset for d in deliveries}) == 300
    assert len(read_topic(kafka_bootstrap, topic, 300)) == 300


async def test_a_sender_waiting_for_room_gives_up_after_the_delivery_timeout() -> None:
    producer = Producer(NOWHERE, delivery_timeout_ms=500, max_overflow_messages=0, extra=TINY_QUEUE)
    async with producer:
        queued = [producer.send_nowait("nowhere", b"%d" % i) for i in range(10)]
        started = time.monotonic()
        with pytest.raises(KafkaError) as caught:
            await producer.send("nowhere", b"waits")
        assert caught.value.code == "_MSG_TIMED_OUT"
        assert time.monotonic() - started < 3.0
        await asyncio.gather(*queued, return_exceptions=True)


async def test_send_batch_fails_what_the_overflow_has_no_room_for() -> None:
    producer = Producer(NOWHERE, delivery_timeout_ms=500, max_overflow_messages=5, extra=TINY_QUEUE)
    async with producer:
        with pytest.raises(BatchDeliveryError) as caught:
            await producer.send_batch("nowhere", [b"%d" % i for i in range(100)])
    codes = [error.code for _, _, error in caught.value.failed]
    assert len(codes) == 100
    assert codes.count("_QUEUE_FULL") == 100 - 10 - 5
    assert set(codes) == {"_QUEUE_FULL", "_MSG_TIMED_OUT"}


def test_overflow_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_overflow_messages must be 0 or more"):
        Producer(NOWHERE, max_overflow_messages=-1)
    with pytest.raises(ValueError, match="max_overflow_bytes must be 0 or more"):
        Producer(NOWHERE, max_overflow_bytes=-1)
    with pytest.raises(ValueError, match="delivery_timeout_ms must be at least 1"):
        Producer(NOWHERE, delivery_timeout_ms=0)
