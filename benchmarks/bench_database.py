"""database_heavy: a rendered database_heavy effect node's operation versus a raw asyncpg pool
running the same SQL, against the same embedded PostgreSQL.

Workload per round and side: 10,000 single-row inserts at concurrency 32, then 100 batches of
1,000 rows at concurrency 4. The node side calls ``node.store_item(StoreItemInput(...))``:
the runtime (lifecycle, request context, metrics, circuit breaker, a log line) and the
handler, whose transaction inserts a batch row, the values (``executemany``, or COPY from
1,000 rows) and reads them back. The raw side runs those statements in a transaction of its
own on an asyncpg pool of the same size. Both tables are emptied before each phase.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import asyncpg

from benchmarks.bench_common import (
    Run,
    interleaved,
    median,
    node_settings,
    paired_ratio,
    percentile,
    quiet_stdout,
    render_node,
    run_concurrently,
)

SINGLES = 10_000
SINGLE_CONCURRENCY = 32
BATCHES = 100
BATCH_ROWS = 1_000
BATCH_CONCURRENCY = 4
BULK_ROWS = 1_000  # the handler's threshold for COPY
OPERATION = "store_item"
LABEL = "bench"


async def _raw_store(pool: asyncpg.Pool, values: list[float]) -> tuple[int, float]:
    """The handler's transaction, as plain asyncpg."""
    async with pool.acquire() as conn, conn.transaction():
        batch_id = await conn.fetchval(
            "INSERT INTO batches (operation, label) VALUES ($1, $2) RETURNING id",
            OPERATION,
            LABEL,
        )
        rows = [(batch_id, position, value) for position, value in enumerate(values)]
        if len(rows) >= BULK_ROWS:
            await conn.copy_records_to_table(
                "records", records=rows, columns=["batch_id", "position", "value"]
            )
        else:
            await conn.executemany(
                "INSERT INTO records (batch_id, position, value) VALUES ($1, $2, $3)", rows
            )
        stored = await conn.fetch("SELECT value FROM records WHERE batch_id = $1", batch_id)
    return len(stored), math.fsum(row["value"] for row in stored)


async def _measure(quick: bool) -> dict[str, float]:
    from integrations.local_postgres import local_postgres

    singles = 200 if quick else SINGLES
    batches = 4 if quick else BATCHES
    rounds = 1 if quick else 5
    rendered = render_node("database_heavy", "effect")
    models = rendered.module("models")
    with local_postgres() as dsn:
        settings = node_settings(rendered, DATABASE_URL=dsn)
        node: Any = rendered.node_class(settings)
        await node.start()
        pool = await asyncpg.create_pool(
            dsn,
            min_size=settings.database_pool_min_size,
            max_size=settings.database_pool_max_size,
            command_timeout=settings.database_command_timeout_s,
            server_settings={"application_name": "bench_raw"},
        )
        try:
            batch_values = [float(i) for i in range(BATCH_ROWS)]

            async def empty() -> None:
                await pool.execute("TRUNCATE records, batches")

            async def node_single(i: int) -> None:
                await node.store_item(models.StoreItemInput(values=[float(i)], label=LABEL))

            async def raw_single(i: int) -> None:
                await _raw_store(pool, [float(i)])

            async def node_batch(i: int) -> None:
                await node.store_item(models.StoreItemInput(values=batch_values, label=LABEL))

            async def raw_batch(i: int) -> None:
                await _raw_store(pool, batch_values)

            async def node_singles() -> Run:
                await empty()
                return await run_concurrently(singles, SINGLE_CONCURRENCY, node_single)

            async def raw_singles() -> Run:
                await empty()
                return await run_concurrently(singles, SINGLE_CONCURRENCY, raw_single)

            async def node_batches() -> Run:
                await empty()
                return await run_concurrently(batches, BATCH_CONCURRENCY, node_batch)

            async def raw_batches() -> Run:
                await empty()
                return await run_concurrently(batches, BATCH_CONCURRENCY, raw_batch)

            # Warm up both sides (connections, prepared statements) before timing.
            await run_concurrently(SINGLE_CONCURRENCY * 4, SINGLE_CONCURRENCY, node_single)
            await run_concurrently(SINGLE_CONCURRENCY * 4, SINGLE_CONCURRENCY, raw_single)
            node_s, raw_s = await interleaved(rounds, node_singles, raw_singles)
            node_b, raw_b = await interleaved(rounds, node_batches, raw_batches)
        finally:
            await pool.close()
            await node.stop()
    calls = singles + batches
    node_total = median([s.seconds + b.seconds for s, b in zip(node_s, node_b, strict=True)])
    raw_total = median([s.seconds + b.seconds for s, b in zip(raw_s, raw_b, strict=True)])
    node_single_s = median([run.seconds for run in node_s])
    raw_single_s = median([run.seconds for run in raw_s])
    node_batch_s = median([run.seconds for run in node_b])
    raw_batch_s = median([run.seconds for run in raw_b])
    return {
        "node_per_s": round(calls / node_total),
        "raw_per_s": round(calls / raw_total),
        "ratio": paired_ratio(
            [s.seconds + b.seconds for s, b in zip(node_s, node_b, strict=True)],
            [s.seconds + b.seconds for s, b in zip(raw_s, raw_b, strict=True)],
        ),
        "p95_ms": round(median([percentile(r.latencies, 95) for r in node_s]) * 1000, 2),
        "raw_p95_ms": round(median([percentile(r.latencies, 95) for r in raw_s]) * 1000, 2),
        "single_node_per_s": round(singles / node_single_s),
        "single_raw_per_s": round(singles / raw_single_s),
        "single_ratio": paired_ratio(
            [run.seconds for run in node_s], [run.seconds for run in raw_s]
        ),
        "batch_node_rows_per_s": round(batches * BATCH_ROWS / node_batch_s),
        "batch_raw_rows_per_s": round(batches * BATCH_ROWS / raw_batch_s),
        "batch_ratio": paired_ratio(
            [run.seconds for run in node_b], [run.seconds for run in raw_b]
        ),
    }


def bench_database(quick: bool) -> dict[str, float]:
    """Node operation versus raw asyncpg on single-row inserts and 1,000-row batches."""
    with quiet_stdout():
        return asyncio.run(_measure(quick))
