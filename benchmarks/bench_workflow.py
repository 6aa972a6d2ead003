"""workflow: the workflow kit of a rendered workflow orchestrator node.

``transition_us``: one state transition with its in-memory bookkeeping, as a run makes it
(``integrations.workflow.next_state`` over the lifecycle's transitions, memoised per state and
event, plus the engine's transition counter); ``transition_uncached_us`` is python-statemachine
answering the same (a machine built and sent the event), which ``next_state`` memoises.

``workflows_per_s``: the node's operation (``node.fetch_item``), which runs a two-step
workflow (``count`` and ``total`` in parallel) persisted in the embedded
PostgreSQL: lock, claim, a write per step, unlock. 2,000 instances at concurrency 16.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from benchmarks.bench_common import (
    Run,
    best_of,
    median,
    node_settings,
    percentile,
    quiet_stdout,
    render_node,
    run_concurrently,
)

WORKFLOWS = 2_000
CONCURRENCY = 16
# A run's transitions in order: created, completed; and the failure path.
TRANSITIONS = [
    ("pending", "start"),
    ("running", "succeed"),
    ("running", "compensate"),
    ("compensating", "finish_compensation"),
    ("compensating", "fail"),
]


def _transition_figures(workflow: Any, engine: Any, quick: bool) -> dict[str, float]:
    next_state = workflow.next_state
    count = engine.count_transition  # the per-transition counter (cached labelled child)
    repeats = 3 if quick else 7
    number = 200 if quick else 5_000

    def transitions() -> None:
        for state, event in TRANSITIONS:
            count(event, next_state(state, event, instance_id="bench"))

    def uncached() -> None:
        for state, event in TRANSITIONS:
            machine = workflow.WorkflowLifecycle(start_value=state)
            machine.send(event)

    cached_s = best_of(repeats, transitions, number=number) / len(TRANSITIONS)
    uncached_s = best_of(repeats, uncached, number=max(1, number // 100)) / len(TRANSITIONS)
    return {
        "transition_us": round(cached_s * 1e6, 2),
        "transition_uncached_us": round(uncached_s * 1e6, 1),
    }


async def _measure(quick: bool) -> dict[str, float]:
    from integrations.local_postgres import local_postgres

    workflows = 100 if quick else WORKFLOWS
    rendered = render_node("workflow", "orchestrator")
    models = rendered.module("models")
    handlers = rendered.module("handlers")
    workflow = rendered.module("integrations.workflow")
    with local_postgres() as dsn:
        node: Any = rendered.node_class(node_settings(rendered, DATABASE_URL=dsn))
        await node.start()
        try:
            engine = node.resources.engine("fetch_item", handlers.STEPS)
            figures = _transition_figures(workflow, engine, quick)

            async def one(i: int) -> None:
                # An id per call: equal requests without one are one instance (a retry).
                request = models.FetchItemInput(
                    values=[1.0, 2.0, 3.0], instance_id=uuid.uuid4().hex
                )
                output = await node.fetch_item(request)
                if set(output.steps) != {"count", "total"}:
                    raise AssertionError(f"expected the steps count and total, got {output.steps}")

            await run_concurrently(CONCURRENCY * 2, CONCURRENCY, one)
            runs: list[Run] = [
                await run_concurrently(workflows, CONCURRENCY, one)
                for _ in range(1 if quick else 3)
            ]
        finally:
            await node.stop()
    seconds = median([run.seconds for run in runs])
    return {
        **figures,
        "workflows_per_s": round(workflows / seconds),
        "workflow_p95_ms": round(median([percentile(r.latencies, 95) for r in runs]) * 1000, 2),
    }


def bench_workflow(quick: bool) -> dict[str, float]:
    """In-memory transition time, and persisted two-step workflows per second."""
    with quiet_stdout():
        return asyncio.run(_measure(quick))
