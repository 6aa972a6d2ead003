"""The idempotent producer under retries (issue 13): connections dropped after the broker
wrote a batch and before the client heard so. The producer sends the batch again; the broker
must keep it once."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque

from integrations.kafka import UNKNOWN_OFFSET, Producer
from integrations.local_kafka import local_broker
from tests.integrations.test_kafka import create_topic, read_topic

PRODUCE = 0  # the Kafka API key of a Produce request


class DroppingProxy:
    """Forwards Kafka connections to a broker, frame by frame. While ``drops`` remain, the
    response to a Produce request is not forwarded: the connection is closed instead, so the
    broker has written the batch and the client retries it."""

    def __init__(self) -> None:
        self.drops = 0
        self.dropped = 0
        self.target_port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        broker_in, broker_out = await asyncio.open_connection("127.0.0.1", self.target_port)
        in_flight: deque[int] = deque()  # api keys; a connection's responses come in order

        async def requests() -> None:
            while True:
                frame = await read_frame(client_in)
                in_flight.append(int.from_bytes(frame[4:6], "big"))
                broker_out.write(frame)
                await broker_out.drain()

        async def responses() -> None:
            while True:
                frame = await read_frame(broker_in)
                if in_flight.popleft() == PRODUCE and self.drops > 0:
                    self.drops -= 1
                    self.dropped += 1
                    return  # the connection drops with the broker's answer unsent
                client_out.write(frame)
                await client_out.drain()

        pumps = [asyncio.ensure_future(requests()), asyncio.ensure_future(responses())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)  # a closed side ends both
            for writer in (client_out, broker_out):
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            self._tasks.discard(task)


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(4)
    return header + await reader.readexactly(int.from_bytes(header, "big"))


async def test_retried_batches_are_written_once() -> None:
    proxy = DroppingProxy()
    port = await proxy.start()
    try:
        # Clients learn the proxy's address from the broker's metadata, so every connection
        # (bootstrap and leader) goes through it.
        with local_broker(advertised_port=port) as broker:
            proxy.target_port = broker.port
            bootstrap = f"127.0.0.1:{port}"
            # Blocking clients run off the loop: the proxy serves them on it.
            topic = await asyncio.to_thread(create_topic, bootstrap)
            keys = [b"%04d" % i for i in range(600)]
            async with Producer(bootstrap, linger_ms=2, extra={"retry.backoff.ms": 20}) as producer:
                proxy.drops = 3
                futures = []
                for key in keys:
                    futures.append(producer.send_nowait(topic, b"v", key=key))
                    if len(futures) % 100 == 0:
                        await producer.flush()  # several requests, so several can be dropped
                await producer.flush()
                deliveries = [f.result() for f in futures]
            assert proxy.dropped == 3  # three acknowledged batches were sent again
            messages = await asyncio.to_thread(read_topic, bootstrap, topic, len(keys), 5)
    finally:
        await proxy.stop()
    written = Counter(m.key() for m in messages)
    assert [k for k, n in written.items() if n > 1] == []  # no duplicates
    assert set(written) == set(keys)  # nothing lost
    assert [m.key() for m in messages] == keys  # in order
    # A retried batch the broker already had is acknowledged without its offsets.
    known = [d.offset for d in deliveries if d.offset != UNKNOWN_OFFSET]
    assert len(known) < len(keys)
    assert len(set(known)) == len(known)
    assert set(known) <= set(range(len(keys)))
