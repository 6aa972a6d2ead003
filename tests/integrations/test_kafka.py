"""The Kafka kit against a real broker: Tansu (local, in memory) or $KAFKA_BOOTSTRAP_SERVERS."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import confluent_kafka as ck
import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # where the stubs declare it (admin re-exports it)

from integrations import local_kafka as local_kafka_module
from integrations.kafka import (
    BatchDelivery,
    BatchDeliveryError,
    Compression,
    Consumer,
    Delivery,
    HandlerError,
    KafkaError,
    Producer,
    Record,
    TransactionalPipeline,
)
from integrations.local_kafka import local_kafka

# Short group timeouts: joins and rebalances are the slow part of these tests.
FAST_GROUP: dict[str, Any] = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 300}


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    with local_kafka() as bootstrap:
        yield bootstrap


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create_topic(bootstrap: str, partitions: int = 1) -> str:
    name = unique("topic")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        future.result(timeout=10)
    return name


def consumer(bootstrap: str, topics: Sequence[str], **kwargs: Any) -> Consumer:
    group = kwargs.pop("group_id", None) or unique("group")
    return Consumer(bootstrap, group, topics, **{**FAST_GROUP, **kwargs})


def read_topic(bootstrap: str, topic: str, count: int, timeout_s: float = 10.0) -> list[ck.Message]:
    """Every message of ``topic`` (expecting ``count``), read by partition assignment: no group
    join, so it is quick."""
    reader = ck.Consumer(
        {"bootstrap.servers": bootstrap, "group.id": unique("reader"), "enable.auto.commit": False}
    )
    try:
        partitions = reader.list_topics(topic, timeout=10).topics[topic].partitions
        reader.assign([ck.TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in partitions])
        messages: list[ck.Message] = []
        deadline = time.monotonic() + timeout_s
        while len(messages) < count and time.monotonic() < deadline:
            messages += [m for m in reader.consume(count, 0.2) if m.error() is None]
        return messages
    finally:
        reader.close()


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets, asked by a fresh client of that group (no join)."""
    client = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        partitions = client.list_topics(topic, timeout=10).topics[topic].partitions
        offsets = client.committed([ck.TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in offsets}
    finally:
        client.close()


async def produce(bootstrap: str, topic: str, values: Sequence[bytes]) -> list[Delivery]:
    async with Producer(bootstrap) as producer:
        futures = [producer.send_nowait(topic, v, key=v) for v in values]
        await producer.flush()
        return [f.result() for f in futures]


def sample(producer_or_consumer: Producer | Consumer, name: str, **labels: str) -> float:
    value = producer_or_consumer.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# Producing and consuming ----------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "lz4", "snappy", "zstd"])
async def test_round_trip_exact_bytes_key_and_headers(
    kafka_bootstrap: str, compression: Compression
) -> None:
    topic = create_topic(kafka_bootstrap)
    value = bytes(range(256)) * 40  # compressible, every byte value
    headers = [("trace", b"\x00\xffid"), ("kind", b"test"), ("trace", b"second")]
    async with Producer(kafka_bootstrap, compression=compression) as producer:
        assert producer.config["compression.type"] == compression
        first = await producer.send(topic, value, key=b"k\x00", headers=headers)
        second = await producer.send(topic, b"", key=None)
    assert first == Delivery(topic, 0, first.offset)
    assert first.offset >= 0
    assert second.offset > first.offset

    received: list[Record] = []

    async def handle(record: Record) -> None:
        received.append(record)

    async with consumer(kafka_bootstrap, [topic]) as c:
        assert await c.run(handle, max_records=2, idle_timeout_s=10) == 2
    assert received[0] == Record(topic, 0, first.offset, b"k\x00", value, tuple(headers))
    assert received[1] == Record(topic, 0, second.offset, None, b"", ())


async def test_send_nowait_keeps_order_when_the_local_queue_is_full(kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap)
    # A 10-message librdkafka queue: most sends wait in the producer's own overflow queue.
    extra = {"queue.buffering.max.messages": 10}
    async with Producer(kafka_bootstrap, extra=extra, linger_ms=1) as producer:
        futures = [producer.send_nowait(topic, str(i).encode()) for i in range(500)]
        assert not futures[-1].done()
        await producer.flush()
        offsets = [f.result().offset for f in futures]
    assert offsets == sorted(offsets)
    assert len(set(offsets)) == 500
    messages = read_topic(kafka_bootstrap, topic, 500)
    assert [m.value() for m in messages] == [str(i).encode() for i in range(500)]


async def test_delivery_failure_raises_kafka_error_and_is_counted() -> None:
    # Nothing listens on port 1: the message times out undelivered.
    threads = threading.active_count()
    producer = Producer("127.0.0.1:1", delivery_timeout_ms=300, extra={"log_level": 0})
    async with producer:
        with pytest.raises(KafkaError, match="delivery to nowhere failed") as caught:
            await producer.send("nowhere", b"lost")
        assert caught.value.code == "_MSG_TIMED_OUT"
        assert sample(producer, "kafka_errors_total", topic="nowhere", kind="delivery") == 1
        assert sample(producer, "kafka_produced_messages_total", topic="nowhere") == 0
    assert threading.active_count() == threads  # stop() joined every thread start() started


async def test_stop_purges_what_it_cannot_deliver_without_raising() -> None:
    threads = threading.active_count()
    producer = Producer("127.0.0.1:1", delivery_timeout_ms=60_000, extra={"log_level": 0})
    await producer.start()
    pending = producer.send_nowait("nowhere", b"never")
    started = time.monotonic()
    await producer.stop(timeout_s=0.3)
    assert time.monotonic() - started < 5
    with pytest.raises(KafkaError, match="Purged"):
        await pending
    assert threading.active_count() == threads
    with pytest.raises(KafkaError, match="not started"):
        producer.send_nowait("nowhere", b"late")


async def test_send_batch_delivers_every_message_in_order_with_its_key(
    kafka_bootstrap: str,
) -> None:
    topic = create_topic(kafka_bootstrap)
    values = [f"v{i}".encode() for i in range(1_500)]
    keys = [f"k{i % 7}".encode() for i in range(1_500)]
    async with Producer(kafka_bootstrap) as producer:
        receipt = await producer.send_batch(topic, values, keys=keys)
        empty = await producer.send_batch(topic, [])
        assert sample(producer, "kafka_produced_messages_total", topic=topic) == 1_500
        assert sample(producer, "kafka_produced_bytes_total", topic=topic) == sum(map(len, values))
    assert receipt == BatchDelivery(topic, 1_500)
    assert empty == BatchDelivery(topic, 0)
    messages = read_topic(kafka_bootstrap, topic, 1_500)
    assert [(m.key(), m.value()) for m in messages] == list(zip(keys, values, strict=True))


async def test_send_batch_waits_in_order_when_the_local_queue_is_full(kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap)
    extra = {"queue.buffering.max.messages": 10}
    async with Producer(kafka_bootstrap, extra=extra, linger_ms=1) as producer:
        first = producer.send_batch(topic, [f"a{i}".encode() for i in range(300)])
        second = producer.send_batch(topic, [f"b{i}".encode() for i in range(300)])
        single = producer.send_nowait(topic, b"c")
        await producer.flush()
        assert (await first).count == 300
        assert (await second).count == 300
        assert (await single).offset == 600
    expected = [f"a{i}".encode() for i in range(300)] + [f"b{i}".encode() for i in range(300)]
    messages = read_topic(kafka_bootstrap, topic, 601)
    assert [m.value() for m in messages] == [*expected, b"c"]


async def test_send_batch_names_the_messages_it_could_not_deliver(kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap)
    too_big = b"x" * 20_000  # over this producer's message.max.bytes
    extra = {"message.max.bytes": 10_000}
    async with Producer(kafka_bootstrap, extra=extra) as producer:
        pending = producer.send_batch(topic, [b"one", too_big, b"three"], keys=[b"1", b"2", b"3"])
        await producer.flush()
        with pytest.raises(BatchDeliveryError, match="1 of 3 message") as caught:
            await pending
        assert sample(producer, "kafka_produced_messages_total", topic=topic) == 2
        assert sample(producer, "kafka_errors_total", topic=topic, kind="produce") == 1
    assert caught.value.delivered == 2
    [(key, value, error)] = caught.value.failed
    assert (key, value, error.code) == (b"2", too_big, "MSG_SIZE_TOO_LARGE")
    assert [m.value() for m in read_topic(kafka_bootstrap, topic, 2)] == [b"one", b"three"]


async def test_send_batch_failed_delivery_is_reported_per_message() -> None:
    producer = Producer("127.0.0.1:1", delivery_timeout_ms=300, extra={"log_level": 0})
    async with producer:
        with pytest.raises(BatchDeliveryError) as caught:
            await producer.send_batch("nowhere", [b"a", b"b"])
        assert sample(producer, "kafka_errors_total", topic="nowhere", kind="delivery") == 2
    assert caught.value.delivered == 0
    assert sorted(value for _, value, _ in caught.value.failed) == [b"a", b"b"]
    assert {error.code for _, _, error in caught.value.failed} == {"_MSG_TIMED_OUT"}


async def test_send_batch_refuses_keys_that_do_not_match_the_values(kafka_bootstrap: str) -> None:
    async with Producer(kafka_bootstrap) as producer:
        with pytest.raises(ValueError, match="keys has 1 entries for 2 values"):
            producer.send_batch("t", [b"a", b"b"], keys=[b"k"])


def test_extra_cannot_weaken_the_guarantees() -> None:
    with pytest.raises(ValueError, match=r"enable\.idempotence"):
        Producer("127.0.0.1:1", extra={"enable.idempotence": False})
    with pytest.raises(ValueError, match=r"enable\.auto\.commit"):
        Consumer("127.0.0.1:1", "g", ["t"], extra={"enable.auto.commit": True})


# Idempotence and transactions -----------------------------------------------------------------


async def test_transactional_processor_commits_outputs_and_input_offsets(
    kafka_bootstrap: str,
) -> None:
    source = create_topic(kafka_bootstrap, partitions=2)
    sink = create_topic(kafka_bootstrap)
    values = [f"event-{i}".encode() for i in range(30)]
    deliveries = await produce(kafka_bootstrap, source, values)

    producer = Producer(kafka_bootstrap, transactional_id=unique("txn"))
    config = producer.config
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert config["transactional.id"] == producer.transactional_id

    async def transform(record: Record) -> list[tuple[str, bytes | None, bytes]]:
        return [(sink, record.key, record.value.upper())]

    group = unique("group")
    async with producer, consumer(kafka_bootstrap, [source], group_id=group, max_batch=7) as c:
        processor = TransactionalPipeline(c, producer)
        assert await processor.run(transform, max_records=30, idle_timeout_s=10) == 30

    outputs = read_topic(kafka_bootstrap, sink, 30)
    assert sorted(m.value() or b"" for m in outputs) == sorted(v.upper() for v in values)
    expected = Counter(d.partition for d in deliveries)
    # Offsets committed by the transactions, read by a fresh client in the group.
    assert committed_offsets(kafka_bootstrap, group, source) == {
        p: max(d.offset for d in deliveries if d.partition == p) + 1 for p in expected
    }


async def test_transactional_processor_aborts_and_raises_when_transform_fails(
    kafka_bootstrap: str,
) -> None:
    source = create_topic(kafka_bootstrap)
    sink = create_topic(kafka_bootstrap)
    await produce(kafka_bootstrap, source, [b"a", b"b", b"boom", b"c"])

    async def transform(record: Record) -> list[tuple[str, bytes | None, bytes]]:
        if record.value == b"boom":
            raise ValueError("cannot transform")
        return [(sink, None, record.value)]

    group = unique("group")
    producer = Producer(kafka_bootstrap, transactional_id=unique("txn"))
    async with producer, consumer(kafka_bootstrap, [source], group_id=group) as c:
        with pytest.raises(HandlerError, match="cannot transform") as caught:
            await TransactionalPipeline(c, producer).run(transform, idle_timeout_s=10)
        assert caught.value.record.value == b"boom"
        assert sample(c, "kafka_errors_total", topic=source, kind="transaction") == 1
    # The aborted batch's offsets were not committed.
    assert committed_offsets(kafka_bootstrap, group, source) == {0: ck.OFFSET_INVALID}


async def test_a_processor_error_aborts_the_batch_and_the_next_run_reads_it_again(
    kafka_bootstrap: str,
) -> None:
    source = create_topic(kafka_bootstrap)
    sink = create_topic(kafka_bootstrap)
    dlq = create_topic(kafka_bootstrap)
    values = [b"a", b"b", b"c", b"d"]
    await produce(kafka_bootstrap, source, values)

    class NotNowError(Exception):
        """Stands for "the processor cannot work now" (its state unreadable, stopping)."""

    available = False

    async def transform(record: Record) -> list[tuple[str, bytes | None, bytes]]:
        if record.value == b"c" and not available:
            raise NotNowError("state cannot be read back")
        return [(sink, None, record.value)]

    group = unique("group")
    producer = Producer(kafka_bootstrap, transactional_id=unique("txn"))
    async with producer:
        async with consumer(kafka_bootstrap, [source], group_id=group, dead_letter_topic=dlq) as c:
            pipeline = TransactionalPipeline(c, producer, processor_errors=(NotNowError,))
            with pytest.raises(NotNowError):
                await pipeline.run(transform, idle_timeout_s=10)
        # Not the records' fault: none dead-lettered, no offset committed, nothing produced.
        assert committed_offsets(kafka_bootstrap, group, source) == {0: ck.OFFSET_INVALID}
        available = True
        async with consumer(kafka_bootstrap, [source], group_id=group, dead_letter_topic=dlq) as c:
            pipeline = TransactionalPipeline(c, producer, processor_errors=(NotNowError,))
            assert await pipeline.run(transform, max_records=4, idle_timeout_s=10) == 4
    assert sorted(m.value() or b"" for m in read_topic(kafka_bootstrap, sink, 4)) == values
    assert read_topic(kafka_bootstrap, dlq, 1, timeout_s=1) == []


# Poison messages and crashes ------------------------------------------------------------------


async def test_poison_message_goes_to_the_dead_letter_topic(kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap)
    dlq = create_topic(kafka_bootstrap)
    values = [f"m{i}".encode() for i in range(12)]
    async with Producer(kafka_bootstrap) as producer:
        for v in values:
            producer.send_nowait(topic, v, key=v, headers=[("origin", b"test")])
        await producer.flush()

    handled: list[bytes] = []

    async def handle(record: Record) -> None:
        if record.value == b"m5":
            raise ValueError("cannot parse m5")
        handled.append(record.value)

    group = unique("group")
    async with consumer(kafka_bootstrap, [topic], group_id=group, dead_letter_topic=dlq) as c:
        assert await c.run(handle, max_records=12, idle_timeout_s=10) == 12
        assert sample(c, "kafka_dead_lettered_total", topic=topic) == 1
        assert sample(c, "kafka_errors_total", topic=topic, kind="handler") == 1

    assert handled == [v for v in values if v != b"m5"]  # each other record exactly once
    [dead] = read_topic(kafka_bootstrap, dlq, 1)
    assert dead.value() == b"m5"
    assert dead.key() == b"m5"
    assert dict(dead.headers() or []) == {
        "origin": b"test",
        "dlq.error": b"ValueError: cannot parse m5",
        "dlq.topic": topic.encode(),
        "dlq.partition": b"0",
        "dlq.offset": b"5",
    }
    assert committed_offsets(kafka_bootstrap, group, topic) == {0: 12}  # moved past it


async def test_poison_message_without_dead_letter_topic_raises(kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap)
    await produce(kafka_bootstrap, topic, [b"ok-0", b"ok-1", b"bad", b"ok-3"])
    handled: list[bytes] = []

    async def handle(record: Record) -> None:
        if record.value == b"bad":
            raise ValueError("bad record")
        handled.append(record.value)

    group = unique("group")
    async with consumer(kafka_bootstrap, [topic], group_id=group) as c:
        with pytest.raises(HandlerError, match="bad record") as caught:
            await c.run(handle, idle_timeout_s=10)
        assert caught.value.record.offset == 2
    assert handled == [b"ok-0", b"ok-1"]
    # The records before it are committed; it is not skipped.
    assert committed_offsets(kafka_bootstrap, group, topic) == {0: 2}


async def test_consumer_killed_before_commit_loses_nothing(kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap)
    values = [f"v{i}".encode() for i in range(20)]
    await produce(kafka_bootstrap, topic, values)
    group = unique("group")

    first_run: list[bytes] = []
    stuck = asyncio.Event()

    async def handle_then_hang(record: Record) -> None:
        if len(first_run) == 13:  # mid-batch (batches of at most 5)
            stuck.set()
            await asyncio.Event().wait()  # hangs until killed
        first_run.append(record.value)

    first = consumer(kafka_bootstrap, [topic], group_id=group, max_batch=5)
    await first.start()
    task = asyncio.create_task(first.run(handle_then_hang))
    await asyncio.wait_for(stuck.wait(), 15)
    task.cancel()  # the kill: mid-batch, before that batch's commit
    with pytest.raises(asyncio.CancelledError):
        await task
    await first.stop()
    assert first_run == values[:13]
    committed = committed_offsets(kafka_bootstrap, group, topic)[0]
    assert 0 <= committed < 13  # the batch in progress was not committed

    second_run: list[bytes] = []

    async def handle(record: Record) -> None:
        second_run.append(record.value)

    async with consumer(kafka_bootstrap, [topic], group_id=group) as second:
        await second.run(handle, max_records=20 - committed, idle_timeout_s=10)
    assert second_run == values[committed:]  # processed but uncommitted ones come again
    assert set(first_run) | set(second_run) == set(values)  # nothing lost


# Groups -----------------------------------------------------------------------------------------


async def test_two_consumers_share_the_partitions(kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap, partitions=4)
    group = unique("group")
    seen: dict[str, list[bytes]] = {"a": [], "b": []}
    stop = asyncio.Event()
    all_seen = asyncio.Event()

    def handler(name: str) -> Any:
        async def handle(record: Record) -> None:
            seen[name].append(record.value)
            if len(seen["a"]) + len(seen["b"]) == 200:
                all_seen.set()

        return handle

    async with (
        consumer(kafka_bootstrap, [topic], group_id=group, poll_timeout_s=0.05) as a,
        consumer(kafka_bootstrap, [topic], group_id=group, poll_timeout_s=0.05) as b,
    ):
        runs = [
            asyncio.create_task(a.run(handler("a"), stop=stop)),
            asyncio.create_task(b.run(handler("b"), stop=stop)),
        ]
        deadline = time.monotonic() + 20
        while not (a.assignment() and b.assignment() and len(a.assignment() + b.assignment()) == 4):
            assert time.monotonic() < deadline, (a.assignment(), b.assignment())
            await asyncio.sleep(0.05)
        assert not set(a.assignment()) & set(b.assignment())
        assert set(a.assignment()) | set(b.assignment()) == {(topic, p) for p in range(4)}

        values = [f"x{i}".encode() for i in range(200)]
        await produce(kafka_bootstrap, topic, values)
        await asyncio.wait_for(all_seen.wait(), 15)
        await asyncio.sleep(0.3)  # a duplicate would show up now
        stop.set()
        processed = await asyncio.gather(*runs)

    assert sorted(seen["a"] + seen["b"]) == sorted(values)  # each exactly once
    assert seen["a"]
    assert seen["b"]
    assert processed == [len(seen["a"]), len(seen["b"])]


# Metrics ----------------------------------------------------------------------------------------


async def test_metrics_and_lag(kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap, partitions=2)
    async with Producer(kafka_bootstrap) as producer:
        futures = [producer.send_nowait(topic, b"x" * 10, key=str(i).encode()) for i in range(8)]
        await producer.flush()
        deliveries = [f.result() for f in futures]
        assert sample(producer, "kafka_produced_messages_total", topic=topic) == 8
        assert sample(producer, "kafka_produced_bytes_total", topic=topic) == 80
        assert sample(producer, "kafka_produced_messages_total", topic="other") == 0
    backlog = Counter((topic, d.partition) for d in deliveries)

    async def handle(record: Record) -> None:
        pass

    async with consumer(kafka_bootstrap, [topic]) as c:
        assert sorted(await c.wait_for_assignment()) == [(topic, 0), (topic, 1)]
        expected = {tp: backlog.get(tp, 0) for tp in [(topic, 0), (topic, 1)]}
        # Lag comes from the latest fetch response of each partition; under load the first
        # fetch of a partition may still be on its way, so give it a bounded moment.
        for _ in range(200):
            if await c.lag() == expected:
                break
            await asyncio.sleep(0.05)
        assert await c.lag() == expected
        assert sample(c, "kafka_consumer_lag", topic=topic, partition="0") == backlog[(topic, 0)]
        assert await c.run(handle, max_records=8, idle_timeout_s=10) == 8
        assert await c.lag() == {(topic, 0): 0, (topic, 1): 0}
        assert sample(c, "kafka_consumer_lag", topic=topic, partition="1") == 0
        assert sample(c, "kafka_consumed_messages_total", topic=topic) == 8
        assert sample(c, "kafka_consumed_bytes_total", topic=topic) == 80


# The local broker -------------------------------------------------------------------------------


def test_local_kafka_uses_configured_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError("no broker should be started")

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setattr(subprocess, "Popen", no_process)
    with local_kafka() as bootstrap:
        assert bootstrap == "kafka-1:9092,kafka-2:9092"


def test_local_kafka_reports_a_broker_that_dies(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'address already in use' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setattr(local_kafka_module, "tansu_binary", lambda: fake)
    with (
        pytest.raises(local_kafka_module.LocalKafkaError, match="address already in use"),
        local_kafka(),
    ):
        pass
