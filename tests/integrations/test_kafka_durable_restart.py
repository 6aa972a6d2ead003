"""The Kafka kit across a broker restart with durable storage: Tansu keeping its log in S3
(a real S3 API, served by ``moto``'s server), killed (SIGKILL) under load and started again
on the same port. Nothing acknowledged is lost, nothing is written twice, and the producer
and consumer that were running recover by themselves."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import boto3
import pytest
from moto.server import ThreadedMotoServer

from integrations.kafka import Consumer, Producer, Record
from integrations.local_kafka import LocalBroker, local_broker
from tests.integrations.test_kafka import FAST_GROUP, create_topic, unique

BUCKET = "tansu"
MESSAGES = 400


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def s3_env() -> Iterator[dict[str, str]]:
    """A local S3 endpoint with an empty bucket, as the environment Tansu reads it from."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=BUCKET)
    try:
        yield env
    finally:
        server.stop()


@pytest.fixture
def broker(s3_env: dict[str, str]) -> Iterator[LocalBroker]:
    with local_broker(f"s3://{BUCKET}/", env=s3_env) as running:
        yield running


async def test_a_broker_killed_under_load_loses_nothing_acknowledged(broker: LocalBroker) -> None:
    bootstrap = broker.bootstrap
    topic = create_topic(bootstrap, partitions=2)
    received: list[bytes] = []
    halfway = asyncio.Event()
    everything = asyncio.Event()

    async def keep(record: Record) -> None:
        received.append(record.value)
        if len(received) >= MESSAGES // 4:
            halfway.set()
        if len(set(received)) >= MESSAGES:
            everything.set()

    reader = Consumer(bootstrap, unique("group"), [topic], **FAST_GROUP)
    async with Producer(bootstrap, linger_ms=2) as producer, reader:
        reading = asyncio.create_task(reader.run(keep, stop=everything))
        values = [f"m{i:04d}".encode() for i in range(MESSAGES)]
        first, second = values[: MESSAGES // 2], values[MESSAGES // 2 :]
        acked = await asyncio.gather(*(producer.send(topic, v, key=v) for v in first))
        await asyncio.wait_for(halfway.wait(), timeout=30)

        # Killed with sends in flight; they wait in the producer until it is back.
        in_flight = [asyncio.ensure_future(producer.send(topic, v, key=v)) for v in second]
        broker.kill()
        await asyncio.sleep(1.0)
        broker.start()
        acked += await asyncio.wait_for(asyncio.gather(*in_flight), timeout=60)

        await asyncio.wait_for(everything.wait(), timeout=60)
        await reading
    assert len(acked) == MESSAGES
    # Every acknowledged message was read by the consumer that lived through the restart...
    assert sorted(set(received)) == sorted(values)
    # ...and the log holds each exactly once: the idempotent producer's retries wrote none twice.
    assert sorted(await read_all(bootstrap, topic, MESSAGES)) == sorted(values)


async def read_all(bootstrap: str, topic: str, count: int) -> list[bytes]:
    """Everything in ``topic``, read from the start by a group of its own."""
    seen: list[bytes] = []

    async def keep(record: Record) -> None:
        seen.append(record.value)

    async with Consumer(bootstrap, unique("group"), [topic], **FAST_GROUP) as reader:
        await reader.run(keep, max_records=count + 1, idle_timeout_s=5)
    return seen


async def test_what_was_acknowledged_before_a_restart_is_read_after_it(
    broker: LocalBroker,
) -> None:
    bootstrap = broker.bootstrap
    topic = create_topic(bootstrap)
    values = [f"v{i}".encode() for i in range(50)]
    async with Producer(bootstrap) as producer:
        await asyncio.gather(*(producer.send(topic, v, key=b"k") for v in values))
    broker.stop()
    broker.start()
    seen: list[bytes] = []

    async def keep(record: Record) -> None:
        seen.append(record.value)

    async with Consumer(bootstrap, unique("group"), [topic], **FAST_GROUP) as reader:
        await reader.run(keep, max_records=len(values), idle_timeout_s=20)
    assert seen == values  # one partition, one key: in order, too
