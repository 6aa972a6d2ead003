"""A relay in a process of its own, for tests that SIGKILL it: it publishes one batch, says
``published <event ids>`` once the broker acknowledged it, and then blocks before marking the
events sent, so the kill lands between the broker's acknowledgement and the mark.

Usage: python -m tests.integrations.outbox_relay_child DSN BOOTSTRAP TABLE
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from integrations.kafka import Producer
from integrations.outbox import OutboxEvent, OutboxRelay
from integrations.postgres import Database


async def main(dsn: str, bootstrap: str, table: str) -> None:
    async def block_before_mark(events: Sequence[OutboxEvent]) -> None:
        print("published", *(event.event_id for event in events), flush=True)
        await asyncio.Event().wait()  # the SIGKILL comes here

    async with Database(dsn, min_size=1, max_size=2) as database, Producer(bootstrap) as producer:
        relay = OutboxRelay(database, producer, table=table, after_publish=block_before_mark)
        await relay.relay_once()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
