"""ml_inference: a rendered ml_inference effect node's model versus raw
``InferenceSession.run``, on an MLP built here with ``onnx.helper``.

The MLP (float32, ReLU between layers, a symbolic batch dimension) is the first of
``CANDIDATE_LAYERS`` whose raw single-row inference takes at least 100 microseconds on this
machine (512-1024-512 takes some 120 on a small 2-core VM). Workload per round and side:
2,000 single-row inferences, then 200 batches of 32 rows, one call at a time. The node side
calls ``node.resources.model.run(feeds)`` (input checks, inline-or-thread choice, metrics);
the raw side calls ``run`` on the very same ``InferenceSession``, so both use one session and
one thread pool.

``op_rows_per_s`` is the node's operation (``node.fetch_item``: runtime, handler, pydantic
models, ``model.predict``, whose micro-batcher groups concurrent calls) at concurrency 32, for
reference against ``raw_batch_rows_per_s``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from benchmarks.bench_common import (
    interleaved,
    median,
    node_settings,
    paired_ratio,
    percentile,
    quiet_stdout,
    render_node,
    run_concurrently,
)

CANDIDATE_LAYERS = [(512, 1024, 512), (512, 2048, 512), (1024, 2048, 1024)]
MIN_SINGLE_S = 100e-6
SINGLES = 2_000
BATCHES = 200
BATCH_ROWS = 32
OP_CALLS = 2_000
OP_CONCURRENCY = 32


def build_mlp(layers: tuple[int, ...], seed: int = 0) -> bytes:
    """An ONNX MLP: ``input`` (batch, layers[0]) -> ... -> ``output`` (batch, layers[-1])."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    weights: list[onnx.TensorProto] = []
    previous = "input"
    last = len(layers) - 2
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(layers)):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        weights.append(numpy_helper.from_array(w, f"w{index}"))
        weights.append(numpy_helper.from_array(np.zeros(fan_out, np.float32), f"b{index}"))
        nodes.append(helper.make_node("MatMul", [previous, f"w{index}"], [f"mm{index}"]))
        added = "output" if index == last else f"add{index}"
        nodes.append(helper.make_node("Add", [f"mm{index}", f"b{index}"], [added]))
        if index != last:
            nodes.append(helper.make_node("Relu", [added], [f"relu{index}"]))
            previous = f"relu{index}"
    graph = helper.make_graph(
        nodes,
        "bench_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", layers[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", layers[-1]])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime the kit supports
    onnx.checker.check_model(model)
    serialized: bytes = model.SerializeToString()
    return serialized


def _single_seconds(model: bytes, width: int) -> float:
    """The fastest of 200 raw single-row inferences."""
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((1, width), dtype=np.float32)
    for _ in range(30):
        session.run(None, {"input": x})
    samples = []
    for _ in range(200):
        started = time.perf_counter()
        session.run(None, {"input": x})
        samples.append(time.perf_counter() - started)
    # The fastest run, not the median: the machine's speed drifts during a benchmark run, and
    # the model must take at least MIN_SINGLE_S in its fastest moments too.
    return min(samples)


def _choose_model(quick: bool) -> tuple[tuple[int, ...], bytes]:
    for layers in CANDIDATE_LAYERS:
        model = build_mlp(layers)
        if quick or _single_seconds(model, layers[0]) >= MIN_SINGLE_S:
            return layers, model
    return layers, model


async def _measure(quick: bool, workdir: Path) -> dict[str, float]:
    singles = 50 if quick else SINGLES
    batches = 10 if quick else BATCHES
    op_calls = 128 if quick else OP_CALLS
    rounds = 1 if quick else 11
    layers, model_bytes = _choose_model(quick)
    width = layers[0]
    model_path = workdir / "mlp.onnx"
    model_path.write_bytes(model_bytes)
    rendered = render_node("ml_inference", "effect")
    models = rendered.module("models")
    settings = node_settings(rendered, MODEL_PATH=str(model_path))
    node: Any = rendered.node_class(settings)
    await node.start()
    try:
        model = node.resources.model
        await model.load()
        session = model.session
        rng = np.random.default_rng(2)
        single = {"input": rng.random((1, width), dtype=np.float32)}
        batch = {"input": rng.random((BATCH_ROWS, width), dtype=np.float32)}
        clock = time.perf_counter

        async def node_side() -> tuple[float, float, list[float]]:
            latencies = []
            started = clock()
            for _ in range(singles):
                call_started = clock()
                await model.run(single)
                latencies.append(clock() - call_started)
            middle = clock()
            for _ in range(batches):
                await model.run(batch)
            return middle - started, clock() - middle, latencies

        async def raw_side() -> tuple[float, float, list[float]]:
            latencies = []
            started = clock()
            for _ in range(singles):
                call_started = clock()
                session.run(None, single)
                latencies.append(clock() - call_started)
            middle = clock()
            for _ in range(batches):
                session.run(None, batch)
            return middle - started, clock() - middle, latencies

        # Warm-up; the node's model also learns how long a call takes (inline or thread).
        for _ in range(3):
            await node_side()
            await raw_side()
        node_runs, raw_runs = await interleaved(rounds, node_side, raw_side)

        values = [float(v) for v in rng.random(width)]

        async def op_call(i: int) -> None:
            await node.fetch_item(models.FetchItemInput(values=values))

        await run_concurrently(OP_CONCURRENCY * 4, OP_CONCURRENCY, op_call)
        op_run = await run_concurrently(op_calls, OP_CONCURRENCY, op_call)
    finally:
        await node.stop()
    rows = singles + batches * BATCH_ROWS
    node_total = median([s + b for s, b, _ in node_runs])
    raw_total = median([s + b for s, b, _ in raw_runs])
    raw_single = median([s for s, _, _ in raw_runs])
    raw_batch = median([b for _, b, _ in raw_runs])
    return {
        "node_per_s": round(rows / node_total),
        "raw_per_s": round(rows / raw_total),
        "ratio": paired_ratio([s + b for s, b, _ in node_runs], [s + b for s, b, _ in raw_runs]),
        "p95_ms": round(median([percentile(lat, 95) for _, _, lat in node_runs]) * 1000, 3),
        "raw_p95_ms": round(median([percentile(lat, 95) for _, _, lat in raw_runs]) * 1000, 3),
        "raw_single_us": round(raw_single / singles * 1e6, 1),
        "single_ratio": paired_ratio([s for s, _, _ in node_runs], [s for s, _, _ in raw_runs]),
        "batch_ratio": paired_ratio([b for _, b, _ in node_runs], [b for _, b, _ in raw_runs]),
        "raw_batch_rows_per_s": round(batches * BATCH_ROWS / raw_batch),
        "op_rows_per_s": round(op_calls / op_run.seconds),
        "hidden_width": layers[1],
    }


def bench_ml(quick: bool) -> dict[str, float]:
    """Node model versus raw InferenceSession.run on single rows and batches of 32."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="onex-bench-ml-") as tmp, quiet_stdout():
        return asyncio.run(_measure(quick, Path(tmp)))
