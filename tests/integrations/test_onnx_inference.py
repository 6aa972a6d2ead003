"""The ONNX Runtime kit against small real models, built with onnx.helper at test time and
checked against numpy computing the same function."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from onnx import TensorProto, helper, numpy_helper
from prometheus_client import CollectorRegistry

from integrations import onnx_inference
from integrations.onnx_inference import (
    CPU_PROVIDER,
    InferenceError,
    InferenceModel,
    InferenceOverloadedError,
    InferenceTimeoutError,
    InputMismatchError,
    OnnxClosedError,
    OnnxLoadError,
    OnnxModelSource,
    OnnxSessionCache,
    choose_providers,
    default_cache,
)

Array = npt.NDArray[Any]
F32 = np.float32


def _model_bytes(
    nodes: list[Any],
    inputs: list[Any],
    outputs: list[Any],
    initializers: list[Any] = [],  # noqa: B006 (never mutated)
) -> bytes:
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what every onnxruntime >= 1.20 reads
    return bytes(model.SerializeToString())


@dataclass(frozen=True)
class Dense:
    """y = relu(x @ w + b), x of shape (batch, 8), y (batch, 4), or ``batch`` fixed."""

    data: bytes
    w: Array
    b: Array

    def expected(self, x: Array) -> Array:
        result: Array = np.maximum(x @ self.w + self.b, 0).astype(F32)
        return result


def _dense(seed: int = 0, batch: str | int = "batch") -> Dense:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((8, 4)).astype(F32)
    b = rng.standard_normal(4).astype(F32)
    data = _model_bytes(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["z"]),
            helper.make_node("Relu", ["z"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    return Dense(data, w, b)


DENSE = _dense()
# One row of this table per index; an index out of range fails session.run, not validation.
TABLE = np.arange(40, dtype=F32).reshape(10, 4)


def _gather() -> bytes:
    return _model_bytes(
        [helper.make_node("Gather", ["table", "i"], ["y"], axis=0)],
        [helper.make_tensor_value_info("i", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(TABLE, "table")],
    )


def _total() -> bytes:
    """The sum of the whole batch: an output without a batch dimension."""
    return _model_bytes(
        [helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )


def _pair() -> bytes:
    """y = a + b, two inputs sharing the symbolic dimensions "batch" and "n"."""
    return _model_bytes(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", "n"]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", "n"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])],
    )


def _x(rows: int, seed: int = 1) -> Array:
    return np.random.default_rng(seed).standard_normal((rows, 8)).astype(F32)


def _close(got: Array, want: Array) -> None:
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _sample(model: InferenceModel, name: str, labels: dict[str, str] | None = None) -> float:
    value = model.registry.get_sample_value(name, {"model": model.name, **(labels or {})})
    return value or 0.0


async def _shut(model: InferenceModel) -> None:
    """Close within seconds: a batcher that failed to stop must fail the test, not hang it."""
    async with asyncio.timeout(5):
        await model.close()
    assert asyncio.all_tasks() == {asyncio.current_task()}


@pytest.fixture
def dense_path(tmp_path: Path) -> Path:
    path = tmp_path / "dense.onnx"
    path.write_bytes(DENSE.data)
    return path


@pytest.fixture
def cache() -> OnnxSessionCache:
    return OnnxSessionCache()


async def test_run_and_predict_match_numpy(dense_path: Path, cache: OnnxSessionCache) -> None:
    model = InferenceModel(OnnxModelSource(path=dense_path), cache=cache)
    x = _x(5)
    [y] = await model.run({"x": x})
    assert y.shape == (5, 4)
    _close(y, DENSE.expected(x))
    [row] = await model.predict({"x": x[2]})
    assert row.shape == (4,)
    _close(row, DENSE.expected(x)[2])
    assert model.inputs[0].shape == (None, 8)
    assert model.inputs[0].dtype == np.float32
    await _shut(model)


async def test_short_calls_run_on_the_loop_and_long_ones_in_a_thread(
    cache: OnnxSessionCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[int] = []
    timed_run = onnx_inference._timed_run

    def recording(session: Any, feeds: Mapping[str, Array]) -> tuple[list[Array], float]:
        threads.append(threading.get_ident())
        return timed_run(session, feeds)

    monkeypatch.setattr(onnx_inference, "_timed_run", recording)
    loop_thread = threading.get_ident()
    for inline_below_ms, on_loop in ((0.0, [False, False, False]), (1e6, [False, True, True])):
        threads.clear()
        model = InferenceModel(
            OnnxModelSource(data=DENSE.data), cache=cache, inline_below_ms=inline_below_ms
        )
        for rows in (1, 3, 7):  # the first call runs in a thread, to learn how long calls take
            x = _x(rows, seed=rows)
            [y] = await model.run({"x": x})
            _close(y, DENSE.expected(x))
        assert [thread == loop_thread for thread in threads] == on_loop


async def test_concurrent_predicts_get_their_own_rows_in_real_batches(
    cache: OnnxSessionCache,
) -> None:
    model = InferenceModel(OnnxModelSource(data=DENSE.data), cache=cache, max_batch_size=16)
    x = _x(100)
    results = await asyncio.gather(*(model.predict({"x": row}) for row in x))
    want = DENSE.expected(x)
    for index, [row] in enumerate(results):
        _close(row, want[index])
    batches = _sample(model, "onnx_inference_batch_size_count")
    assert _sample(model, "onnx_inference_batch_size_sum") == 100
    assert batches < 100  # some run held more than one sample
    assert _sample(model, "onnx_inference_batch_size_bucket", {"le": "1.0"}) < batches
    assert _sample(model, "onnx_inference_batch_size_bucket", {"le": "16.0"}) == batches
    assert _sample(model, "onnx_inference_duration_seconds_count", {"call": "predict"}) == (batches)
    await _shut(model)


async def test_samples_of_different_shapes_are_batched_apart(cache: OnnxSessionCache) -> None:
    model = InferenceModel(OnnxModelSource(data=_pair()), cache=cache, max_wait_ms=20)
    rng = np.random.default_rng(3)
    samples = [
        {"a": rng.standard_normal(n).astype(F32), "b": rng.standard_normal(n).astype(F32)}
        for n in (2, 3, 2, 5, 3, 2)
    ]
    results = await asyncio.gather(*(model.predict(s) for s in samples))
    for sample, [y] in zip(samples, results, strict=True):
        _close(y, sample["a"] + sample["b"])
    assert _sample(model, "onnx_inference_batch_size_count") == 3  # lengths 2, 3 and 5
    await _shut(model)


async def test_concurrent_first_calls_load_once(cache: OnnxSessionCache) -> None:
    model = InferenceModel(OnnxModelSource(data=DENSE.data), cache=cache)
    assert not model.loaded
    with pytest.raises(InferenceError, match="not loaded"):
        _ = model.inputs
    x = _x(20)
    results = await asyncio.gather(*(model.predict({"x": row}) for row in x))
    assert model.loaded
    assert cache.loads == 1
    assert len(cache) == 1
    _close(np.stack([row for [row] in results]), DENSE.expected(x))
    await _shut(model)


async def test_models_of_one_file_and_version_share_a_session(
    dense_path: Path, cache: OnnxSessionCache
) -> None:
    first = InferenceModel(OnnxModelSource(path=dense_path), cache=cache, name="first")
    second = InferenceModel(OnnxModelSource(path=dense_path), cache=cache, name="second")
    await asyncio.gather(first.load(), second.load())
    assert first.session is second.session
    assert cache.loads == 1
    newer = InferenceModel(OnnxModelSource(path=dense_path, version="2"), cache=cache)
    await newer.load()
    assert newer.session is not first.session
    assert cache.loads == 2
    assert cache.evict(OnnxModelSource(path=dense_path)) == 1
    assert len(cache) == 1


async def test_models_without_a_cache_share_the_process_wide_one(dense_path: Path) -> None:
    source = OnnxModelSource(path=dense_path, version="process-wide")
    first, second = InferenceModel(source), InferenceModel(source)
    await first.load()
    await second.load()
    assert first.session is second.session
    assert default_cache().evict(source) == 1


async def test_bytes_source_works_like_a_path(dense_path: Path, cache: OnnxSessionCache) -> None:
    from_path = InferenceModel(OnnxModelSource(path=dense_path), cache=cache)
    from_bytes = InferenceModel(OnnxModelSource(data=DENSE.data), cache=cache)
    x = _x(6)
    [a] = await from_path.run({"x": x})
    [b] = await from_bytes.run({"x": x})
    np.testing.assert_array_equal(a, b)
    assert cache.loads == 2  # keyed by path and by digest: not the same source


async def test_missing_path_fails_naming_it(tmp_path: Path, cache: OnnxSessionCache) -> None:
    missing = tmp_path / "nowhere" / "model.onnx"
    model = InferenceModel(OnnxModelSource(path=missing), cache=cache)
    with pytest.raises(OnnxLoadError, match="no such file") as caught:
        await model.predict({"x": _x(1)[0]})
    assert str(missing) in str(caught.value)
    assert not model.loaded
    assert _sample(model, "onnx_inference_errors_total", {"kind": "load"}) == 1


async def test_garbage_bytes_fail_to_load(cache: OnnxSessionCache) -> None:
    model = InferenceModel(OnnxModelSource(data=b"not an onnx model at all"), cache=cache)
    with pytest.raises(OnnxLoadError, match="bytes"):
        await model.load()
    assert cache.loads == 0
    assert len(cache) == 0


def test_source_takes_exactly_one_of_path_and_data(dense_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        OnnxModelSource()
    with pytest.raises(ValueError, match="exactly one"):
        OnnxModelSource(path=dense_path, data=b"x")
    assert OnnxModelSource(data=b"a").key != OnnxModelSource(data=b"b").key


# feeds for run, for predict, and what the two messages must say was given
BAD_INPUTS: dict[str, tuple[dict[str, Any], dict[str, Any], str, str]] = {
    "float64": (
        {"x": _x(3).astype(np.float64)},
        {"x": _x(1)[0].astype(np.float64)},
        "got float64 (3, 8)",
        "got float64 (8,)",
    ),
    "wrong rank": ({"x": _x(1)[0]}, {"x": _x(1)}, "got float32 (8,)", "got float32 (1, 8)"),
    "fixed dim": (
        {"x": np.zeros((3, 9), F32)},
        {"x": np.zeros(9, F32)},
        "got float32 (3, 9)",
        "got float32 (9,)",
    ),
    "missing": ({}, {}, "missing input(s) 'x'", "missing input(s) 'x'"),
    "extra": (
        {"x": _x(3), "z": _x(3)},
        {"x": _x(1)[0], "z": _x(1)[0]},
        "unexpected input(s) 'z'",
        "unexpected input(s) 'z'",
    ),
    "not an array": (
        {"x": [[0.0] * 8]},
        {"x": [0.0] * 8},
        "got a list, not a numpy array",
        "got a list, not a numpy array",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=str)
async def test_bad_inputs_are_refused_with_what_was_expected(
    case: str, cache: OnnxSessionCache
) -> None:
    model = InferenceModel(OnnxModelSource(data=DENSE.data), cache=cache)
    feeds, sample, got_batch, got_sample = BAD_INPUTS[case]
    with pytest.raises(InputMismatchError, match="float32 \\(batch, 8\\)") as caught:
        await model.run(feeds)
    assert got_batch in str(caught.value)
    with pytest.raises(InputMismatchError, match="float32 \\(8,\\)") as caught:
        await model.predict(sample)
    assert got_sample in str(caught.value)
    assert caught.value.input_name in ("x", "z")
    assert _sample(model, "onnx_inference_errors_total", {"kind": "input_mismatch"}) == 2
    assert _sample(model, "onnx_inference_batch_size_count") == 0


async def test_inputs_must_agree_on_a_symbolic_dimension(cache: OnnxSessionCache) -> None:
    model = InferenceModel(OnnxModelSource(data=_pair()), cache=cache)
    with pytest.raises(InputMismatchError, match="dimension 'n' is 3 in input 'a' but 4"):
        await model.predict({"a": np.zeros(3, F32), "b": np.zeros(4, F32)})
    with pytest.raises(InputMismatchError, match="dimension 'batch' is 2 in input 'a' but 1"):
        await model.run({"a": np.zeros((2, 3), F32), "b": np.zeros((1, 3), F32)})


async def test_a_bad_sample_fails_only_its_caller(cache: OnnxSessionCache) -> None:
    model = InferenceModel(OnnxModelSource(data=DENSE.data), cache=cache, max_wait_ms=20)
    x = _x(8)
    samples: list[dict[str, Array]] = [{"x": row} for row in x]
    samples[3] = {"x": x[3].astype(np.float64)}
    samples[6] = {"x": np.zeros(9, F32)}
    results = await asyncio.gather(
        *(model.predict(sample) for sample in samples), return_exceptions=True
    )
    want = DENSE.expected(x)
    for index, result in enumerate(results):
        if index in (3, 6):
            assert isinstance(result, InputMismatchError), result
        else:
            assert isinstance(result, list), result
            _close(result[0], want[index])
    # The six good samples ran together.
    assert _sample(model, "onnx_inference_batch_size_count") == 1
    assert _sample(model, "onnx_inference_batch_size_sum") == 6
    await _shut(model)


async def test_a_failed_run_fails_every_caller_in_its_batch(cache: OnnxSessionCache) -> None:
    model = InferenceModel(
        OnnxModelSource(data=_gather()), cache=cache, max_batch_size=5, max_wait_ms=1000
    )
    indices = [np.array(i, np.int64) for i in (1, 2, 99, 3, 4)]  # 99: out of the table
    results = await asyncio.gather(
        *(model.predict({"i": i}) for i in indices), return_exceptions=True
    )
    for result in results:
        assert type(result) is InferenceError, result
        assert "inference failed for a batch of 5" in str(result)
        assert result.__cause__ is not None
    assert results[0] is not results[1]  # one exception each: no shared traceback
    assert _sample(model, "onnx_inference_errors_total", {"kind": "inference"}) == 5
    [row] = await model.predict({"i": np.array(7, np.int64)})  # the batcher lives on
    np.testing.assert_array_equal(row, TABLE[7])
    await _shut(model)


async def test_an_output_without_a_batch_dimension_cannot_be_split(cache: OnnxSessionCache) -> None:
    model = InferenceModel(OnnxModelSource(data=_total()), cache=cache, max_wait_ms=20)
    x = _x(2)
    results = await asyncio.gather(
        *(model.predict({"x": row}) for row in x), return_exceptions=True
    )
    for result in results:
        assert isinstance(result, InferenceError)
        assert "first dimension is not the batch" in str(result)
    [total] = await model.run({"x": x})
    np.testing.assert_allclose(total, x.sum(), rtol=1e-5)
    await _shut(model)


async def test_a_batch_fixed_at_one_runs_each_sample_alone(cache: OnnxSessionCache) -> None:
    single = _dense(batch=1)
    model = InferenceModel(OnnxModelSource(data=single.data), cache=cache)
    x = _x(10)
    results = await asyncio.gather(*(model.predict({"x": row}) for row in x))
    _close(np.stack([row for [row] in results]), single.expected(x))
    assert _sample(model, "onnx_inference_batch_size_count") == 10
    assert _sample(model, "onnx_inference_batch_size_sum") == 10
    with pytest.raises(InputMismatchError, match="float32 \\(1, 8\\)"):
        await model.run({"x": x})
    await _shut(model)


async def test_a_batch_fixed_above_one_takes_run_only(cache: OnnxSessionCache) -> None:
    fixed = _dense(batch=4)
    model = InferenceModel(OnnxModelSource(data=fixed.data), cache=cache)
    with pytest.raises(InferenceError, match=r"fixed first dimension of 4.*use run"):
        await model.predict({"x": _x(1)[0]})
    x = _x(4)
    [y] = await model.run({"x": x})
    _close(y, fixed.expected(x))


def test_choose_providers_keeps_available_ones_and_ends_with_cpu() -> None:
    available = ort.get_available_providers()
    default = choose_providers()
    assert default[-1] == CPU_PROVIDER
    assert default.count(CPU_PROVIDER) == 1
    assert set(default) <= set(available)
    assert ("CUDAExecutionProvider" in default) == ("CUDAExecutionProvider" in available)
    assert choose_providers(["NoSuchExecutionProvider"]) == [CPU_PROVIDER]
    assert choose_providers([]) == [CPU_PROVIDER]
    other = next((p for p in available if p != CPU_PROVIDER), None)
    if other is not None:
        assert choose_providers(["Nope", other, other]) == [other, CPU_PROVIDER]
        # Nothing runs on a provider listed after the CPU, which takes every operator.
        assert choose_providers([CPU_PROVIDER, other]) == [CPU_PROVIDER]


async def test_the_reported_provider_is_the_one_in_use(cache: OnnxSessionCache) -> None:
    model = InferenceModel(OnnxModelSource(data=DENSE.data), cache=cache)
    with pytest.raises(InferenceError, match="not loaded"):
        _ = model.provider
    await model.load()
    assert model.provider == model.session.get_providers()[0]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert model.provider == CPU_PROVIDER


async def test_close_fails_waiting_and_later_calls_and_leaves_no_task(
    cache: OnnxSessionCache,
) -> None:
    model = InferenceModel(
        OnnxModelSource(data=DENSE.data), cache=cache, max_batch_size=64, max_wait_ms=60_000
    )
    await model.load()
    x = _x(3)
    waiting = [asyncio.create_task(model.predict({"x": row})) for row in x]
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in waiting)  # held for a batch that will not fill
    async with asyncio.timeout(5):  # a regression here would leave the callers waiting
        await model.close()
        for task in waiting:
            with pytest.raises(OnnxClosedError, match="is closed"):
                await task
    with pytest.raises(OnnxClosedError):
        await model.predict({"x": x[0]})
    with pytest.raises(OnnxClosedError):
        await model.run({"x": x})
    await _shut(model)  # again: a no-op, and no task is left
    assert _sample(model, "onnx_inference_errors_total", {"kind": "closed"}) == 5


async def test_a_batcher_cancelled_from_outside_fails_its_callers_and_restarts(
    cache: OnnxSessionCache,
) -> None:
    model = InferenceModel(
        OnnxModelSource(data=DENSE.data), cache=cache, max_batch_size=2, max_wait_ms=60_000
    )
    await model.load()
    x = _x(2)
    waiting = asyncio.create_task(model.predict({"x": x[0]}))
    await asyncio.sleep(0.05)
    [batcher] = [t for t in asyncio.all_tasks() if t.get_name() == "model-batcher"]
    batcher.cancel()  # as when the event loop shuts down
    async with asyncio.timeout(5):
        with pytest.raises(InferenceError, match="batcher was cancelled"):
            await waiting
        # A full batch does not wait: these two run at once, on a new batcher.
        results = await asyncio.gather(*(model.predict({"x": row}) for row in x))
    _close(np.stack([row for [row] in results]), DENSE.expected(x))
    await _shut(model)


async def test_a_cancelled_caller_leaves_the_others_served(cache: OnnxSessionCache) -> None:
    model = InferenceModel(OnnxModelSource(data=DENSE.data), cache=cache, max_wait_ms=50)
    await model.load()
    x = _x(4)
    tasks = [asyncio.create_task(model.predict({"x": row})) for row in x]
    await asyncio.sleep(0)
    tasks[1].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[1], asyncio.CancelledError)
    want = DENSE.expected(x)
    for index in (0, 2, 3):
        result = done[index]
        assert isinstance(result, list)
        _close(result[0], want[index])
    assert _sample(model, "onnx_inference_batch_size_sum") == 3
    await _shut(model)


async def test_a_shared_registry_keeps_models_apart(cache: OnnxSessionCache) -> None:
    registry = CollectorRegistry()
    first = InferenceModel(
        OnnxModelSource(data=DENSE.data), cache=cache, registry=registry, name="a"
    )
    second = InferenceModel(
        OnnxModelSource(data=DENSE.data), cache=cache, registry=registry, name="b"
    )
    await first.run({"x": _x(2)})
    for _ in range(3):
        await second.run({"x": _x(2)})
    count = "onnx_inference_duration_seconds_count"
    assert registry.get_sample_value(count, {"model": "a", "call": "run"}) == 1
    assert registry.get_sample_value(count, {"model": "b", "call": "run"}) == 3


# Built once: hypothesis runs each example on a loop of its own, and the models share it.
PROPERTY_CACHE = OnnxSessionCache()


@settings(max_examples=25, deadline=None)
@given(
    x=st.integers(1, 6).flatmap(
        lambda rows: arrays(
            F32,
            (rows, 8),
            elements=st.floats(-100, 100, allow_nan=False, allow_infinity=False, width=32),
        )
    ),
    inline_below_ms=st.sampled_from([0.0, 1000.0]),
)
def test_run_matches_numpy_for_any_batch(x: Array, inline_below_ms: float) -> None:
    model = InferenceModel(
        OnnxModelSource(data=DENSE.data), cache=PROPERTY_CACHE, inline_below_ms=inline_below_ms
    )
    [y] = asyncio.run(model.run({"x": x}))
    want = np.maximum(x.astype(np.float64) @ DENSE.w + DENSE.b, 0)
    # float32 sums in another order: the error scales with the terms, not with the result.
    scale = float((np.abs(x) @ np.abs(DENSE.w)).max() + np.abs(DENSE.b).max())
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6 * scale)
    assert PROPERTY_CACHE.loads == 1


# --- issue 13: the queue of waiting calls is bounded, and each call has a timeout -------------

N_SLOW = 768


def _slow() -> bytes:
    """y = x @ w @ w ... (eight 768x768 products per sample): at least ~70 ms of real work
    even on a fast core, against timeouts of tens of milliseconds."""
    w = (np.random.default_rng(0).standard_normal((N_SLOW, N_SLOW)) / N_SLOW**0.5).astype(F32)
    names = ["x", *(f"h{i}" for i in range(7)), "y"]
    return _model_bytes(
        [helper.make_node("MatMul", [a, "w"], [b]) for a, b in itertools.pairwise(names)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", N_SLOW, N_SLOW])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", N_SLOW, N_SLOW])],
        [numpy_helper.from_array(w, "w")],
    )


def _held(cache: OnnxSessionCache, **kwargs: Any) -> InferenceModel:
    """A model whose predict calls wait in its queue: a batch that never fills, a long wait."""
    kwargs.setdefault("max_batch_size", 4096)
    return InferenceModel(
        OnnxModelSource(data=DENSE.data), cache=cache, max_wait_ms=60_000, **kwargs
    )


async def test_the_default_queue_refuses_calls_beyond_its_bound(cache: OnnxSessionCache) -> None:
    """Issue 13: waiting predict calls queued without limit. Now 1,024 wait and the next one
    fails at once."""
    model = _held(cache)
    await model.load()
    x = _x(1)[0]
    waiting = [asyncio.create_task(model.predict({"x": x})) for _ in range(1024)]
    await asyncio.sleep(0)
    async with asyncio.timeout(2):
        with pytest.raises(InferenceError, match=r"overloaded: 1024 calls .* \(max_queue\)"):
            await model.predict({"x": x})
    assert not any(task.done() for task in waiting)  # the queued ones are still served later
    assert model.waiting == 1024
    assert _sample(model, "onnx_inference_errors_total", {"kind": "overloaded"}) == 1
    await _shut(model)
    for task in waiting:
        with pytest.raises(OnnxClosedError):
            await task


async def test_a_full_queue_fails_fast_with_a_typed_error_and_frees_as_it_drains(
    cache: OnnxSessionCache,
) -> None:
    model = InferenceModel(
        OnnxModelSource(data=DENSE.data),
        cache=cache,
        max_batch_size=3,
        max_wait_ms=60_000,
        max_queue=3,
    )
    await model.load()
    x = _x(4)
    first = [asyncio.create_task(model.predict({"x": row})) for row in x[:2]]
    await asyncio.sleep(0)
    with pytest.raises(InferenceOverloadedError) as info:
        await asyncio.gather(model.predict({"x": x[2]}), model.predict({"x": x[3]}))
    assert info.value.limit == 3
    # The third call filled the batch, which ran: the queue is free again.
    async with asyncio.timeout(5):
        served = await asyncio.gather(*first)
    _close(np.stack([row for [row] in served]), DENSE.expected(x[:2]))
    await _shut(model)


async def test_a_call_waiting_past_its_timeout_fails_typed_and_leaves_the_queue(
    cache: OnnxSessionCache,
) -> None:
    model = _held(cache, max_queue=1, timeout_ms=100)
    await model.load()
    x = _x(1)[0]
    started = asyncio.get_running_loop().time()
    with pytest.raises(InferenceTimeoutError, match=r"longer than 100 ms \(timeout_ms\)") as info:
        await model.predict({"x": x})
    assert isinstance(info.value, TimeoutError)  # the node maps TimeoutError to its timeout
    assert 0.1 <= asyncio.get_running_loop().time() - started < 2
    # Its place in the queue was given back: with max_queue=1 the next call is admitted.
    with pytest.raises(InferenceTimeoutError):
        await model.predict({"x": x})
    assert _sample(model, "onnx_inference_errors_total", {"kind": "timeout"}) == 2
    assert _sample(model, "onnx_inference_errors_total", {"kind": "overloaded"}) == 0
    await _shut(model)


async def test_a_slow_inference_times_out_predict_and_run(cache: OnnxSessionCache) -> None:
    model = InferenceModel(
        OnnxModelSource(data=_slow()), cache=cache, intra_op_threads=1, timeout_ms=30
    )
    await model.load()
    x = np.ones((N_SLOW, N_SLOW), dtype=F32)
    with pytest.raises(InferenceTimeoutError):
        await model.predict({"x": x})  # the batch is running in its thread when time runs out
    with pytest.raises(InferenceTimeoutError):
        await model.run({"x": x[np.newaxis]})
    assert _sample(model, "onnx_inference_errors_total", {"kind": "timeout"}) == 2
    assert _sample(model, "onnx_inference_errors_total", {"kind": "inference"}) == 0
    await _shut(model)


async def test_run_calls_in_threads_count_against_the_queue(cache: OnnxSessionCache) -> None:
    model = InferenceModel(
        OnnxModelSource(data=_slow()), cache=cache, intra_op_threads=1, max_queue=1
    )
    await model.load()
    x = np.ones((1, N_SLOW, N_SLOW), dtype=F32)
    running = asyncio.create_task(model.run({"x": x}))
    await asyncio.sleep(0)  # it is in its worker thread now (the first call always is)
    with pytest.raises(InferenceOverloadedError):
        await model.run({"x": x})
    with pytest.raises(InferenceOverloadedError):
        await model.predict({"x": x[0]})
    async with asyncio.timeout(30):
        [y] = await running
    assert y.shape == (1, N_SLOW, N_SLOW)
    await _shut(model)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_queue": 0}, "max_queue"),
        ({"timeout_ms": 0}, "timeout_ms"),
        ({"timeout_ms": float("nan")}, "timeout_ms"),
    ],
)
def test_bad_bounds_are_refused_naming_them(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        InferenceModel(OnnxModelSource(data=DENSE.data), **kwargs)


async def test_the_session_cache_keeps_at_most_max_sessions() -> None:
    cache = OnnxSessionCache(max_sessions=2)
    models = [
        InferenceModel(OnnxModelSource(data=DENSE.data, version=str(v)), cache=cache)
        for v in range(3)
    ]
    for model in models:
        await model.load()
    assert (len(cache), cache.loads) == (2, 3)
    x = _x(2)
    [y] = await models[0].run({"x": x})  # evicted from the cache, still held by its model
    _close(y, DENSE.expected(x))
    again = InferenceModel(OnnxModelSource(data=DENSE.data, version="0"), cache=cache)
    await again.load()
    assert (len(cache), cache.loads) == (2, 4)
    with pytest.raises(ValueError, match="max_sessions"):
        OnnxSessionCache(max_sessions=0)
