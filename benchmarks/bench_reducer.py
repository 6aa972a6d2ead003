"""reducer: a rendered kafka_heavy reducer folding events from its topic, exactly once, against
a local Tansu broker.

Workload: 20,000 events (``AddInput`` JSON, one value each) published before the node starts,
then ``node.consume()``: batches of up to 500 events, each batch one Kafka transaction that
holds its changelog entry (the state and the offsets it resumes at) and the group's offsets.
``events_per_s`` counts from the first folded event to the last, so the group join (several
seconds on Tansu, the broker's own delay) is left out and reported as ``join_s``. No raw
counterpart: a raw client does not fold, and the transactions are what the figure is about.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from benchmarks.bench_common import environ, median, quiet_stdout, render_node

EVENTS = 20_000


async def _fold_once(rendered: Any, bootstrap: str, events: int) -> tuple[float, float]:
    prefix = f"bench_{uuid.uuid4().hex[:10]}"
    env_prefix = rendered.package.upper()
    with environ(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        **{
            f"{env_prefix}_KAFKA_TOPIC_PREFIX": prefix,
            f"{env_prefix}_KAFKA_STATE_TOPIC": f"{prefix}.state",
            f"{env_prefix}_KAFKA_GROUP_ID": prefix,
            f"{env_prefix}_KAFKA_TRANSACTIONAL_ID": prefix,
        },
    ):
        settings = rendered.module("config").Settings()
    models = rendered.module("models")
    producer_class = rendered.module("integrations.kafka").Producer
    node: Any = rendered.node_class(settings)
    await node.start()
    try:
        event = models.FetchItemInput(values=[1.0]).model_dump_json().encode()
        async with producer_class(bootstrap) as producer:
            await producer.send_batch(
                node.resources.topic("fetch_item"), [event] * events, keys=[b"k"] * events
            )
        started = time.perf_counter()
        consuming = asyncio.ensure_future(node.consume(max_records=events, idle_timeout_s=60))
        # The node signals no first fold; its state, read every millisecond, is the clock.
        while node.state.count == 0 and not consuming.done():  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        first_at, first_count = time.perf_counter(), node.state.count
        assert await consuming == events
        assert node.state.count == events, f"{node.state.count} folds of {events} events"
        elapsed = time.perf_counter() - first_at
    finally:
        await node.stop()
    return (events - first_count) / elapsed, first_at - started


def bench_reducer(quick: bool) -> dict[str, float]:
    """Events a kafka_heavy reducer folds per second, exactly once."""
    from integrations.local_kafka import local_kafka

    events = 2_000 if quick else EVENTS
    runs = 1 if quick else 3
    rendered = render_node("kafka_heavy", "reducer")
    rates: list[float] = []
    joins: list[float] = []
    with quiet_stdout(), local_kafka() as bootstrap:
        for _ in range(runs):
            rate, join = asyncio.run(_fold_once(rendered, bootstrap, events))
            rates.append(rate)
            joins.append(join)
    return {"events_per_s": round(median(rates)), "join_s": round(median(joins), 2)}
