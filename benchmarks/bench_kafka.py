"""kafka_heavy: a rendered kafka_heavy effect node's producer versus raw confluent-kafka with
the same settings, against the same local Tansu broker.

Workload per round and side: 100,000 messages of 200 bytes, produced and acknowledged. The
node side is the producer the node's operations publish through (``node.resources.producer``,
started by ``node.start()``): ``send_batch`` of 1,000 messages at a time (one future and one
delivery callback per batch), ``flush()``, then every batch's receipt checked. The raw side
is a ``confluent_kafka.Producer`` built from that producer's own configuration (idempotent,
acks=all, linger, batch size, lz4), with one delivery callback for all messages (set in its
configuration) that counts acknowledgements and failures, and ``flush()``.

For reference only: ``raw_nocb_per_s`` is the raw client without any delivery callback (it
cannot tell a failed message from a delivered one); ``raw_msgcb_per_s`` passes the callback
with each ``produce()``, as anything must that tells one batch's reports from another's
(confluent-kafka has no per-message opaque): that argument alone costs the raw client
about a tenth of its throughput, and it is the floor of ``send_batch``.

``op_per_s`` is the node's operation itself (``node.fetch_item``: runtime, handler, JSON
event, awaiting its acknowledgement) at concurrency 256, for reference: the path a single
request takes, not a bulk producer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import confluent_kafka as ck

from benchmarks.bench_common import (
    interleaved,
    median,
    node_settings,
    paired_ratio,
    quiet_stdout,
    ratio,
    render_node,
    run_concurrently,
)

MESSAGES = 100_000
SIZE = 200
BATCH = 1_000  # messages per send_batch call
OP_CALLS = 10_000
OP_CONCURRENCY = 256
FLUSH_TIMEOUT_S = 60.0


class _RawProducer:
    """The raw client, built once (like the node's producer) with the node's configuration.

    With ``callback`` one delivery callback (this object's ``_delivered``, for all messages)
    counts acknowledgements and failures; without it nothing tells a failed message from a
    delivered one.
    """

    def __init__(
        self, conf: dict[str, object], *, callback: bool, per_message: bool = False
    ) -> None:
        # Its log lines go to Python logging, as the node's producer sends them (not stderr).
        settings = {**conf, "logger": logging.getLogger("bench.raw_producer")}
        if callback and not per_message:
            settings["on_delivery"] = self._delivered
        self.callback = callback
        self.per_message = per_message
        self.client = ck.Producer(settings)
        self.acked = 0
        self.failed = 0

    def _delivered(self, err: ck.KafkaError | None, msg: ck.Message) -> None:
        if err is None:
            self.acked += 1
        else:
            self.failed += 1

    def produce(self, topic: str, count: int) -> float:
        """Seconds to produce ``count`` messages and have them all acknowledged."""
        payload = b"x" * SIZE
        self.acked = self.failed = 0
        produce, poll = self.client.produce, self.client.poll
        extra = (None, -1, self._delivered) if self.per_message else ()
        started = time.perf_counter()
        for index in range(count):
            try:
                produce(topic, payload, *extra)
            except BufferError:  # librdkafka's queue is full: let it drain
                poll(0.005)
                produce(topic, payload, *extra)
            if index % 1024 == 0:
                poll(0)
        left = self.client.flush(FLUSH_TIMEOUT_S)
        seconds = time.perf_counter() - started
        if left or (self.callback and (self.failed or self.acked != count)):
            raise RuntimeError(
                f"raw producer: {left} undelivered, {self.acked} acked, {self.failed} failed"
            )
        return seconds

    def close(self) -> None:
        self.client.flush(FLUSH_TIMEOUT_S)
        self.client.close()


async def _node_produce(producer: Any, topic: str, count: int) -> float:
    values = [b"x" * SIZE] * BATCH
    send = producer.send_batch
    started = time.perf_counter()
    batches = [send(topic, values) for _ in range(count // BATCH)]
    await producer.flush(FLUSH_TIMEOUT_S)
    delivered = sum(receipt.count for receipt in await asyncio.gather(*batches))
    seconds = time.perf_counter() - started
    if delivered != count:
        raise RuntimeError(f"node producer: {delivered} of {count} acknowledged")
    return seconds


async def _measure(quick: bool) -> dict[str, float]:
    from integrations.local_kafka import local_kafka

    messages = 5_000 if quick else MESSAGES
    op_calls = 300 if quick else OP_CALLS
    rounds = 1 if quick else 11
    rendered = render_node("kafka_heavy", "effect")
    models = rendered.module("models")
    with local_kafka() as bootstrap:
        settings = node_settings(rendered, KAFKA_BOOTSTRAP_SERVERS=bootstrap)
        node: Any = rendered.node_class(settings)
        await node.start()
        producer = node.resources.producer
        conf = producer.config
        raw = _RawProducer(conf, callback=True)
        raw_nocb = _RawProducer(conf, callback=False)
        raw_msgcb = _RawProducer(conf, callback=True, per_message=True)
        try:
            node_topic, raw_topic = "bench.node", "bench.raw"
            # Creates the topics and warms the clients' connections.
            await _node_produce(producer, node_topic, 1_000)
            raw.produce(raw_topic, 1_000)
            raw_nocb.produce(raw_topic, 1_000)
            raw_msgcb.produce(raw_topic, 1_000)

            async def node_round() -> float:
                return await _node_produce(producer, node_topic, messages)

            async def raw_round() -> float:
                return raw.produce(raw_topic, messages)

            node_runs, raw_runs = await interleaved(rounds, node_round, raw_round)
            nocb = median([raw_nocb.produce(raw_topic, messages) for _ in range(rounds)])
            msgcb = median([raw_msgcb.produce(raw_topic, messages) for _ in range(rounds)])

            async def op_call(i: int) -> None:
                await node.fetch_item(models.FetchItemInput(values=[float(i)]))

            await run_concurrently(OP_CONCURRENCY, OP_CONCURRENCY, op_call)
            op_run = await run_concurrently(op_calls, OP_CONCURRENCY, op_call)
        finally:
            # Before the broker stops: a client left open keeps reconnecting to it.
            raw.close()
            raw_nocb.close()
            raw_msgcb.close()
            await node.stop()
    node_s, raw_s = median(node_runs), median(raw_runs)
    return {
        "node_per_s": round(messages / node_s),
        "raw_per_s": round(messages / raw_s),
        "ratio": paired_ratio(node_runs, raw_runs),
        "raw_nocb_per_s": round(messages / nocb),
        "ratio_nocb": ratio(nocb, node_s),
        "raw_msgcb_per_s": round(messages / msgcb),
        "op_per_s": round(op_calls / op_run.seconds),
    }


def bench_kafka(quick: bool) -> dict[str, float]:
    """Node producer versus raw confluent-kafka on 100,000 acknowledged 200-byte messages."""
    with quiet_stdout():
        return asyncio.run(_measure(quick))
