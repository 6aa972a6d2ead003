"""ONNX Runtime kit: cached sessions loaded lazily, strict input checks and micro-batching.

An ``InferenceModel`` wraps one ONNX Runtime session. The session is created on first use (or by
``load()``) in a worker thread, since parsing and optimising a model takes from milliseconds to
seconds, and it is kept in a ``OnnxSessionCache`` keyed by the model (its path, or the sha256 of its
bytes), its version and the session settings, so that models built from the same file share one
session, and concurrent first calls load it once.

Inputs are checked against the model's declared names, shapes and dtypes before anything runs
(``InputMismatchError`` says which input, what the model expects and what it got), because ONNX
Runtime's own errors name neither and, inside a batch, would fail every caller.

``run`` sends whole batches as they are. ``predict`` takes one sample and groups concurrent
callers into one ``session.run`` (up to ``max_batch_size`` samples, waiting at most
``max_wait_ms`` for more to come): one call on 32 rows costs a fraction of 32 calls on one row.

Where a call runs is measured, not guessed. The hop to a worker thread and back is dear next
to a short inference, because ONNX Runtime's own threads keep the cores busy while the two
threads wake each other. So a call whose expected time (from the model's recent calls) is under
``inline_below_ms`` (2 ms by default) runs on the event loop, blocking it no longer than that,
about as long as a garbage collection pause; longer ones run in a worker thread (ONNX Runtime
releases the GIL, so the loop goes on serving meanwhile). The first call always runs in a
thread, to learn the time. A node whose other requests cannot wait 2 ms lowers it
(``INFERENCE_INLINE_BELOW_MS``).

Bounds. At most ``max_queue`` calls wait for inference at a time (``predict`` calls queued for a
batch, plus ``run`` calls waiting for or in a worker thread); one more fails at once with
``InferenceOverloadedError`` rather than join a queue that only grows while the model is behind.
Each call gives up after ``timeout_ms`` (its wait in the queue plus the inference) with
``InferenceTimeoutError``, a ``TimeoutError``; a call that timed out leaves the queue at once. A
``session.run`` already under way cannot be interrupted: it finishes in its thread and its
result is dropped. Loading the model (the first call, or ``load()``) is not under the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, NoReturn

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from prometheus_client import CollectorRegistry, Counter, Histogram

from integrations.support import (
    DependencyUnavailableError,
    MetricsPerRegistry,
)

Array = npt.NDArray[Any]

CPU_PROVIDER = "CPUExecutionProvider"
DEFAULT_PROVIDERS = ("CUDAExecutionProvider", CPU_PROVIDER)

# ONNX Runtime's tensor type names, as NodeArg.type spells them. Types numpy lacks (bfloat16,
# float8) are left out: such inputs get their shape checked, not their dtype.
_DTYPES: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(bool)": np.dtype(np.bool_),
    "tensor(string)": np.dtype(object),
}

_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    10,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Weight of the newest call in the running estimate of a call's time per row.
_EWMA_WEIGHT = 0.2

_log = logging.getLogger(__name__)


class InferenceError(Exception):
    """Base of this kit's errors; raised as such when a ``session.run`` fails."""


class InputMismatchError(InferenceError):
    """An input's name, rank, shape or dtype is not what the model declares. Raised before
    anything runs, and only to the caller who sent it."""

    def __init__(self, model: str, detail: str, *, input_name: str | None = None) -> None:
        super().__init__(f"model {model!r}: {detail}")
        self.model = model
        self.input_name = input_name


class OnnxLoadError(InferenceError):
    """The model could not be loaded: no such file, or not a valid ONNX model."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"cannot load the ONNX model from {where}: {reason}")
        self.where = where


class InferenceOverloadedError(InferenceError, DependencyUnavailableError):
    """``max_queue`` calls are already waiting: this one is refused at once, nothing queued.
    Retry later (an HTTP service answers 503 with Retry-After)."""

    def __init__(self, model: str, limit: int) -> None:
        super().__init__(
            f"model {model!r} is overloaded: {limit} calls are already waiting for inference "
            "(max_queue); refused without waiting, retry later"
        )
        self.model = model
        self.limit = limit


class InferenceTimeoutError(InferenceError, TimeoutError):
    """A call took longer than ``timeout_ms``, waiting plus inference; its result, if the
    inference still finishes, is dropped."""

    def __init__(self, model: str, timeout_s: float) -> None:
        super().__init__(
            f"model {model!r}: the call took longer than {timeout_s * 1000:g} ms (timeout_ms), "
            "waiting for inference and running it"
        )
        self.model = model
        self.timeout_s = timeout_s


class OnnxClosedError(InferenceError):
    """The model was closed: ``close()`` fails the calls still waiting and every later one."""

    def __init__(self, model: str) -> None:
        super().__init__(f"model {model!r} is closed: no more inference is accepted")
        self.model = model


def choose_providers(requested: Sequence[str] | None = None) -> list[str]:
    """The requested execution providers that this ONNX Runtime build offers, in the order
    asked, ending with ``CPUExecutionProvider``.

    The default asks for CUDA first, so the same node uses a GPU where ``onnxruntime-gpu`` and
    a GPU are present and the CPU elsewhere. Providers after the CPU are dropped: the CPU
    provider takes every operator, so they would never get one.
    """
    available = set(ort.get_available_providers())
    wanted = list(DEFAULT_PROVIDERS if requested is None else requested)
    chosen: list[str] = []
    for provider in wanted:
        if provider == CPU_PROVIDER:
            break
        if provider in available and provider not in chosen:
            chosen.append(provider)
        elif provider not in available and requested is not None:
            _log.warning(
                "execution provider %s is not available in this onnxruntime build "
                "(available: %s); skipping it",
                provider,
                ", ".join(sorted(available)),
            )
    chosen.append(CPU_PROVIDER)
    return chosen


@dataclass(frozen=True)
class OnnxModelSource:
    """Where a model comes from: a file (``path``) or its serialized bytes (``data``), exactly
    one. ``version`` is part of the cache key: bump it when the file at ``path`` changes, or a
    cached session of the old file is used."""

    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)
    version: str = "1"

    def __post_init__(self) -> None:
        if (self.path is None) == (self.data is None):
            raise ValueError("OnnxModelSource takes exactly one of path and data")
        if self.path is not None and not isinstance(self.path, Path):
            object.__setattr__(self, "path", Path(self.path))

    @cached_property
    def key(self) -> tuple[str, str]:
        """What identifies the model in a cache: its absolute path, or ``sha256:`` and the
        digest of its bytes; and its version."""
        if self.path is not None:
            return (str(self.path.resolve()), self.version)
        assert self.data is not None
        return ("sha256:" + hashlib.sha256(self.data).hexdigest(), self.version)

    def describe(self) -> str:
        if self.path is not None:
            return f"path {str(self.path)!r}"
        assert self.data is not None
        return f"bytes ({len(self.data)} bytes, {self.key[0][:19]}...)"


@dataclass(frozen=True)
class InputSpec:
    """One declared model input. ``shape`` has None for a symbolic or unknown dimension
    (``dim_names`` keeps the symbolic names); ``dtype`` is None for a type numpy lacks.

    An input declared with no dimensions (a scalar, or no shape at all: ONNX Runtime reports
    both alike) has only its dtype checked.
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype[Any] | None
    dim_names: tuple[str | None, ...] = ()
    onnx_type: str = ""

    @property
    def is_tensor(self) -> bool:
        return self.onnx_type.startswith("tensor(")

    def describe(self, *, sample: bool = False) -> str:
        """Like ``float32 (batch, 8)``; with ``sample``, without the batch dimension."""
        labels = self.dim_names or (None,) * len(self.shape)
        dims = [
            str(size) if size is not None else (label or "?")
            for size, label in zip(self.shape, labels, strict=True)
        ]
        if sample:
            dims = dims[1:]
        dtype = str(self.dtype) if self.dtype is not None else self.onnx_type
        if not self.shape:
            return f"{dtype} (any shape)"
        return f"{dtype} ({', '.join(dims)}{',' if len(dims) == 1 else ''})"


def _input_specs(session: Any) -> list[InputSpec]:
    specs = []
    for arg in session.get_inputs():
        shape: list[int | None] = []
        labels: list[str | None] = []
        for dim in arg.shape or ():
            # Exporters write -1 or 0 for "any size" as well as a symbolic name.
            fixed = isinstance(dim, int) and dim > 0
            shape.append(dim if fixed else None)
            labels.append(dim if isinstance(dim, str) and dim else None)
        specs.append(
            InputSpec(
                name=arg.name,
                shape=tuple(shape),
                dtype=_DTYPES.get(arg.type),
                dim_names=tuple(labels),
                onnx_type=arg.type,
            )
        )
    return specs


def _open_session(source: OnnxModelSource, providers: Sequence[str], intra_op_threads: int) -> Any:
    """Create the session; runs in a worker thread."""
    options = ort.SessionOptions()
    if intra_op_threads > 0:
        options.intra_op_num_threads = intra_op_threads
    if source.path is not None:
        if not source.path.is_file():
            raise OnnxLoadError(source.describe(), "no such file")
        model: str | bytes = str(source.path)
    else:
        assert source.data is not None
        model = source.data
    try:
        return ort.InferenceSession(model, options, providers=list(providers))
    except Exception as exc:
        raise OnnxLoadError(source.describe(), str(exc).strip() or type(exc).__name__) from exc


_CacheKey = tuple[tuple[str, str], tuple[str, ...], int]


class OnnxSessionCache:
    """Sessions by model, version, providers and thread count, for the life of the process
    unless evicted. Loading is guarded per key, so concurrent first calls load once; ``loads``
    counts the sessions created. At most ``max_sessions`` are kept: loading one more drops the
    least recently used (models holding it keep it; a later model loads it again)."""

    def __init__(self, max_sessions: int = 8) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {max_sessions}")
        self.max_sessions = max_sessions
        self._sessions: dict[_CacheKey, Any] = {}
        self._locks: dict[_CacheKey, asyncio.Lock] = {}
        self.loads = 0

    def __len__(self) -> int:
        return len(self._sessions)

    async def get(
        self, source: OnnxModelSource, providers: Sequence[str], *, intra_op_threads: int = 0
    ) -> Any:
        """The session for ``source`` on ``providers``, loaded in a worker thread if not
        cached yet. Raises ``OnnxLoadError``; a failed load is not cached."""
        key = (source.key, tuple(providers), intra_op_threads)
        session: Any = self._sessions.get(key)
        if session is not None:
            # Most recently used last: dicts keep insertion order.
            self._sessions[key] = self._sessions.pop(key)
            return session
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                session = self._sessions.get(key)
                if session is None:
                    started = time.perf_counter()
                    session = await asyncio.to_thread(
                        _open_session, source, providers, intra_op_threads
                    )
                    self.loads += 1
                    self._sessions[key] = session
                    while len(self._sessions) > self.max_sessions:
                        del self._sessions[next(iter(self._sessions))]
                    _log.info(
                        "loaded ONNX model from %s (version %s) on %s in %.3fs",
                        source.describe(),
                        source.version,
                        session.get_providers()[0],
                        time.perf_counter() - started,
                    )
        finally:
            # Once the session is cached, calls find it without the lock, so the lock goes:
            # kept, it would stay bound to this event loop, and the process-wide cache outlives
            # loops (one per test, say).
            if self._locks.get(key) is lock and not lock.locked():
                del self._locks[key]
        return session

    def evict(self, source: OnnxModelSource) -> int:
        """Forget the sessions of ``source`` (that model and version, on any providers);
        return how many. Models already holding one keep it."""
        keys = [k for k in self._sessions if k[0] == source.key]
        for key in keys:
            del self._sessions[key]
        return len(keys)

    def clear(self) -> None:
        self._sessions.clear()


_DEFAULT_CACHE = OnnxSessionCache()


def default_cache() -> OnnxSessionCache:
    """The process-wide cache used by models given no ``cache``."""
    return _DEFAULT_CACHE


@dataclass(frozen=True)
class InferenceMetrics:
    latency: Histogram
    batch_size: Histogram
    errors: Counter


def _build_metrics(registry: CollectorRegistry) -> InferenceMetrics:
    return InferenceMetrics(
        latency=Histogram(
            "onnx_inference_duration_seconds",
            "Time of each session.run, in seconds, by call: `run` (whole batches sent by "
            "the caller) or `predict` (micro-batches of samples).",
            ["model", "call"],
            registry=registry,
            buckets=_LATENCY_BUCKETS,
        ),
        batch_size=Histogram(
            "onnx_inference_batch_size",
            "Samples per session.run made by predict.",
            ["model"],
            registry=registry,
            buckets=_BATCH_BUCKETS,
        ),
        errors=Counter(
            "onnx_inference_errors_total",
            "Failed calls by kind: input_mismatch, load, inference, closed, overloaded, timeout.",
            ["model", "kind"],
            registry=registry,
        ),
    )


# One set of metrics per registry, shared by the models that use it (told apart by their
# `model` label): prometheus-client refuses to register a metric name twice.
_METRICS = MetricsPerRegistry(_build_metrics)


_NOT_A_TENSOR = -2  # InputCheck.rank: a sequence or map input, passed through unchecked
_ANY_SHAPE = -1  # InputCheck.rank: declared without dimensions, dtype checked only


@dataclass(frozen=True, slots=True)
class InputCheck:
    """An input's spec reduced to what ``validate`` compares, for whole batches or samples."""

    spec: InputSpec
    dtype: np.dtype[Any] | None
    rank: int
    fixed: tuple[tuple[int, int], ...]  # (axis, size)
    labelled: tuple[tuple[int, str], ...]  # (axis, symbolic name)

    @classmethod
    def of(cls, spec: InputSpec, *, sample: bool) -> InputCheck:
        if not spec.is_tensor:
            return cls(spec, None, _NOT_A_TENSOR, (), ())
        if not spec.shape:
            return cls(spec, spec.dtype, _ANY_SHAPE, (), ())
        skip = 1 if sample else 0
        shape, labels = spec.shape[skip:], spec.dim_names[skip:]
        fixed = tuple((axis, size) for axis, size in enumerate(shape) if size is not None)
        labelled = tuple((axis, label) for axis, label in enumerate(labels) if label)
        return cls(spec, spec.dtype, len(shape), fixed, labelled)


# eq=False: a waiting call is removed from the queue by identity (its sample is arrays).
@dataclass(slots=True, eq=False)
class InferenceRequest:
    sample: Mapping[str, Array]
    future: asyncio.Future[list[Array]]
    enqueued: float


_Batching = Literal["batch", "single", "none"]


class InferenceModel:
    """One ONNX model; ``await model.predict(sample)`` or ``await model.run(feeds)``.

    ``predict`` takes one sample: each input without its batch dimension (``x`` of shape
    ``(8,)`` for a model input ``(batch, 8)``) and returns each output's row for it. Batching
    needs every input's first dimension to be symbolic (or -1); a model whose first dimensions
    are fixed at 1 gets one ``session.run`` per sample, in turn; any other model only ``run``.

    ``max_queue`` and ``timeout_ms`` bound the calls waiting and each call's time (see the
    module docstring); ``timeout_ms=None`` waits without limit.

    ``name`` labels the metrics and the errors. Without a ``registry`` the metrics get a
    registry of their own; without a ``cache`` sessions go to the process-wide one.
    """

    def __init__(
        self,
        source: OnnxModelSource,
        *,
        providers: Sequence[str] | None = None,
        intra_op_threads: int = 0,
        max_batch_size: int = 32,
        max_wait_ms: float = 2.0,
        inline_below_ms: float = 2.0,
        max_queue: int = 1024,
        timeout_ms: float | None = 10_000.0,
        cache: OnnxSessionCache | None = None,
        name: str = "model",
        registry: CollectorRegistry | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_wait_ms < 0 or inline_below_ms < 0:
            raise ValueError("max_wait_ms and inline_below_ms must not be negative")
        if intra_op_threads < 0:
            raise ValueError(f"intra_op_threads must not be negative, got {intra_op_threads}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        if timeout_ms is not None and not 0 < timeout_ms < float("inf"):
            raise ValueError(
                f"timeout_ms must be a finite number > 0, or None for no limit; got {timeout_ms}"
            )
        self.source = source
        self.name = name
        self.providers = choose_providers(providers)
        self.intra_op_threads = intra_op_threads
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.inline_below_s = inline_below_ms / 1000
        self.max_queue = max_queue
        self.timeout_s = None if timeout_ms is None else timeout_ms / 1000
        self._cache = cache if cache is not None else _DEFAULT_CACHE
        self._registry = registry if registry is not None else CollectorRegistry()
        metrics = _METRICS.get(self._registry)
        self._run_latency = metrics.latency.labels(name, "run")
        self._batch_latency = metrics.latency.labels(name, "predict")
        self._batch_sizes = metrics.batch_size.labels(name)
        self._errors = metrics.errors
        self._session: Any = None
        self._specs: list[InputSpec] = []
        self._names: frozenset[str] = frozenset()
        self._checks: list[InputCheck] = []
        self._batch_input: str | None = None
        self._sample_checks: list[InputCheck] = []
        self._batching: _Batching = "none"
        self._batching_reason = ""
        self._row_seconds = float("inf")  # running estimate of a call's time per row
        self._pending: deque[InferenceRequest] = deque()
        self._runs_waiting = 0  # run() calls waiting for or in a worker thread
        # Set when a call is queued / when a full batch is; bound to a loop on first wait.
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._batcher: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def registry(self) -> CollectorRegistry:
        return self._registry

    @property
    def waiting(self) -> int:
        """Calls waiting for inference now, the number ``max_queue`` bounds."""
        return len(self._pending) + self._runs_waiting

    @property
    def loaded(self) -> bool:
        return self._session is not None

    @property
    def session(self) -> Any:
        """The ``onnxruntime.InferenceSession``, for what this class does not cover."""
        if self._session is None:
            raise InferenceError(
                f"model {self.name!r} is not loaded: call `await model.load()` first"
            )
        return self._session

    @property
    def provider(self) -> str:
        """The execution provider the session actually uses first (for health checks)."""
        return str(self.session.get_providers()[0])

    @property
    def inputs(self) -> list[InputSpec]:
        """The model's declared inputs, in order."""
        if self._session is None:
            self.session  # noqa: B018 (raises the not-loaded error)
        return list(self._specs)

    async def load(self) -> None:
        """Load the session (from the cache, or into it); a no-op once loaded."""
        if self._session is not None:
            return
        if self._closed:
            raise OnnxClosedError(self.name)
        try:
            session = await self._cache.get(
                self.source, self.providers, intra_op_threads=self.intra_op_threads
            )
        except OnnxLoadError:
            self._errors.labels(self.name, "load").inc()
            raise
        if self._session is None:
            self._specs = _input_specs(session)
            self._names = frozenset(spec.name for spec in self._specs)
            self._checks = [InputCheck.of(spec, sample=False) for spec in self._specs]
            self._batch_input = next((s.name for s in self._specs if s.is_tensor and s.shape), None)
            self._sample_checks = [InputCheck.of(spec, sample=True) for spec in self._specs]
            self._batching, self._batching_reason = _batching_of(self._specs)
            self._session = session

    def validate(self, feeds: Mapping[str, Array], *, sample: bool = False) -> None:
        """Raise ``InputMismatchError`` unless ``feeds`` match the model's inputs: the same
        names, and arrays of the declared dtype, rank and fixed sizes, each symbolic dimension
        one size across inputs. With ``sample``, each array lacks the batch dimension. Call
        after ``load()``."""
        if feeds.keys() != self._names:
            self._wrong_names(feeds, sample)
        sizes: dict[str, tuple[int, str]] = {}
        # Runs on the event loop for every call, so it is kept to a few comparisons.
        for check in self._sample_checks if sample else self._checks:
            value = feeds[check.spec.name]
            if check.rank == _NOT_A_TENSOR:
                continue
            if not isinstance(value, np.ndarray):
                got = f"a {type(value).__name__}, not a numpy array"
                self._mismatch(check.spec, got, sample)
            dtype = check.dtype
            # numpy's str arrays are as good as object arrays for ONNX strings.
            if dtype is not None and value.dtype != dtype and dtype.kind + value.dtype.kind != "OU":
                self._mismatch(check.spec, _shown(value), sample)
            if check.rank == _ANY_SHAPE:
                continue
            shape = value.shape
            if len(shape) != check.rank:
                self._mismatch(check.spec, _shown(value), sample)
            for axis, size in check.fixed:
                if shape[axis] != size:
                    self._mismatch(check.spec, _shown(value), sample)
            for axis, label in check.labelled:
                seen = sizes.setdefault(label, (shape[axis], check.spec.name))
                if seen[0] != shape[axis]:
                    raise InputMismatchError(
                        self.name,
                        f"dimension {label!r} is {seen[0]} in input {seen[1]!r} but "
                        f"{shape[axis]} in input {check.spec.name!r}; inputs must agree on it",
                        input_name=check.spec.name,
                    )

    def _wrong_names(self, feeds: Mapping[str, Array], sample: bool) -> NoReturn:
        specs = self.inputs
        missing = [s.name for s in specs if s.name not in feeds]
        extra = sorted(str(n) for n in feeds if n not in self._names)
        problems = []
        if missing:
            problems.append(f"missing input(s) {', '.join(map(repr, missing))}")
        if extra:
            problems.append(f"unexpected input(s) {', '.join(map(repr, extra))}")
        declared = "; ".join(f"{s.name!r}: {s.describe(sample=sample)}" for s in specs)
        raise InputMismatchError(
            self.name,
            f"{' and '.join(problems)}; the model takes {declared}",
            input_name=(missing or extra)[0],
        )

    def _mismatch(self, spec: InputSpec, got: str, sample: bool) -> NoReturn:
        expected = spec.describe(sample=sample)
        if sample:
            expected = f"one sample, {expected} (the model's {spec.describe()} without its batch)"
        raise InputMismatchError(
            self.name, f"input {spec.name!r} expects {expected}; got {got}", input_name=spec.name
        )

    async def run(self, feeds: Mapping[str, Array]) -> list[Array]:
        """One ``session.run`` on ``feeds`` as given (whole batches), after checking them;
        the outputs in the model's order."""
        # This path is kept short: on a small model it costs as much as the inference.
        if self._session is None or self._closed:
            await self._ready()
        try:
            self.validate(feeds)
        except InputMismatchError:
            self._errors.labels(self.name, "input_mismatch").inc()
            raise
        rows = _rows(feeds, self._batch_input)
        try:
            if self._row_seconds * rows < self.inline_below_s:
                # On the loop, shorter than inline_below_ms: nothing waits, nothing to time out.
                outputs, seconds = _timed_run(self._session, feeds)
            else:
                outputs, seconds = await self._run_in_thread(feeds)
            self._learn(seconds, rows)
        except (InferenceTimeoutError, InferenceOverloadedError):
            raise
        except Exception as exc:
            self._errors.labels(self.name, "inference").inc()
            raise InferenceError(f"model {self.name!r}: inference failed: {exc}") from exc
        self._run_latency.observe(seconds)
        return outputs

    async def _run_in_thread(self, feeds: Mapping[str, Array]) -> tuple[list[Array], float]:
        self._admit()
        self._runs_waiting += 1
        try:
            # Cancelled by the timeout before a thread takes it, the job leaves the executor's
            # queue too; one already running finishes, and only its result is dropped.
            async with asyncio.timeout(self.timeout_s):
                return await _in_thread(_timed_run, self._session, feeds)
        except TimeoutError:
            raise self._timed_out() from None
        finally:
            self._runs_waiting -= 1

    def _admit(self) -> None:
        if self.waiting >= self.max_queue:
            self._errors.labels(self.name, "overloaded").inc()
            raise InferenceOverloadedError(self.name, self.max_queue)

    def _timed_out(self) -> InferenceTimeoutError:
        self._errors.labels(self.name, "timeout").inc()
        assert self.timeout_s is not None
        return InferenceTimeoutError(self.name, self.timeout_s)

    async def predict(self, sample: Mapping[str, Array]) -> list[Array]:
        """The outputs for one sample (see the class docstring), each without its batch
        dimension. Concurrent calls share ``session.run`` calls; a bad sample fails its own
        call only, before batching; a failed ``session.run`` fails every call in it."""
        if self._session is None or self._closed:
            await self._ready()
        if self._batching == "none":
            raise InferenceError(
                f"model {self.name!r} cannot take single samples: {self._batching_reason}; "
                "use run() with whole batches"
            )
        try:
            self.validate(sample, sample=True)
        except InputMismatchError:
            self._errors.labels(self.name, "input_mismatch").inc()
            raise
        self._admit()
        loop = asyncio.get_running_loop()
        if self._batcher is None:
            self._batcher = loop.create_task(self._batch_loop(), name=f"{self.name}-batcher")
        future: asyncio.Future[list[Array]] = loop.create_future()
        request = InferenceRequest(sample, future, loop.time())
        self._pending.append(request)
        self._wakeup.set()
        if len(self._pending) >= self._batch_limit():
            self._full.set()
        try:
            # The timeout cancels the future, so the batcher skips it if it has not taken it.
            async with asyncio.timeout(self.timeout_s):
                return await future
        except TimeoutError:
            if future.done() and not future.cancelled():
                return future.result()  # delivered as the time ran out
            raise self._timed_out() from None
        finally:
            if future.cancelled():
                # Out of the queue now (timed out, or its caller cancelled), not when the
                # batcher reaches it: it must not hold a place under max_queue.
                with contextlib.suppress(ValueError):
                    self._pending.remove(request)

    async def close(self) -> None:
        """Stop batching: the ``session.run`` under way finishes and delivers, calls still
        queued and any later call fail with ``OnnxClosedError``. The session stays in the
        cache (other models may share it; ``OnnxSessionCache.evict`` drops it)."""
        self._closed = True
        self._fail_pending()
        batcher, self._batcher = self._batcher, None
        if batcher is None:
            return
        self._wakeup.set()
        self._full.set()
        try:
            await batcher
        except asyncio.CancelledError:
            # Our own caller being cancelled must not leave the batcher behind.
            batcher.cancel()
            raise
        self._fail_pending()

    def _fail_pending(self) -> None:
        while self._pending:
            request = self._pending.popleft()
            if request.future.done():
                continue
            if self._closed:
                self._errors.labels(self.name, "closed").inc()
                request.future.set_exception(OnnxClosedError(self.name))
            else:
                self._errors.labels(self.name, "inference").inc()
                error = InferenceError(f"model {self.name!r}: the batcher was cancelled")
                request.future.set_exception(error)

    async def _ready(self) -> None:
        if self._session is None:
            await self.load()
        if self._closed:  # checked after the load too: close() may have come meanwhile
            self._errors.labels(self.name, "closed").inc()
            raise OnnxClosedError(self.name)

    def _batch_limit(self) -> int:
        return self.max_batch_size if self._batching == "batch" else 1

    async def _call(self, feeds: Mapping[str, Array], rows: int) -> tuple[list[Array], float]:
        """``session.run`` inline or in a worker thread (see the module docstring); the
        outputs and the time the run itself took."""
        if self._row_seconds * rows < self.inline_below_s:
            outputs, seconds = _timed_run(self._session, feeds)
        else:
            outputs, seconds = await _in_thread(_timed_run, self._session, feeds)
        self._learn(seconds, rows)
        return outputs, seconds

    def _learn(self, seconds: float, rows: int) -> None:
        per_row = seconds / max(rows, 1)
        if self._row_seconds == float("inf"):
            self._row_seconds = per_row
        else:
            self._row_seconds += _EWMA_WEIGHT * (per_row - self._row_seconds)

    async def _batch_loop(self) -> None:
        try:
            await self._batch_forever()
        finally:
            # Whether by close() or by a cancellation from outside (the loop shutting down):
            # nobody may be left waiting, and a later predict starts a new batcher.
            if self._batcher is asyncio.current_task():
                self._batcher = None
            self._fail_pending()

    async def _batch_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            limit = self._batch_limit()
            # Wait for the batch to fill until the oldest call has waited max_wait_s; calls
            # queued while the previous batch ran have waited already.
            deadline = self._pending[0].enqueued + self.max_wait_s
            if len(self._pending) < limit and deadline > loop.time() and not self._closed:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await self._full.wait()
            batch: list[InferenceRequest] = []
            while self._pending and len(batch) < limit:
                request = self._pending.popleft()
                if not request.future.done():  # its caller was cancelled
                    batch.append(request)
            if len(self._pending) < limit:
                self._full.clear()
            if batch:
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[InferenceRequest]) -> None:
        # Samples stack only with others of the same shapes (inputs of variable length).
        groups: dict[tuple[tuple[int, ...], ...], list[InferenceRequest]] = {}
        for request in batch:
            shapes = tuple(np.shape(request.sample[spec.name]) for spec in self._specs)
            groups.setdefault(shapes, []).append(request)
        for group in groups.values():
            try:
                await self._run_group(group)
            except Exception as exc:
                # A bug here must fail its callers, not the batcher.
                self._errors.labels(self.name, "inference").inc(len(group))
                _fail(group, f"model {self.name!r}: {exc}", exc)

    async def _run_group(self, group: list[InferenceRequest]) -> None:
        rows = len(group)
        feeds = {
            spec.name: (
                group[0].sample[spec.name][np.newaxis]
                if rows == 1
                else np.stack([request.sample[spec.name] for request in group])
            )
            for spec in self._specs
        }
        try:
            outputs, seconds = await self._call(feeds, rows)
        except Exception as exc:
            self._errors.labels(self.name, "inference").inc(rows)
            message = f"model {self.name!r}: inference failed for a batch of {rows}: {exc}"
            _fail(group, message, exc)
            return
        except asyncio.CancelledError:
            _fail(group, f"model {self.name!r}: the batcher was cancelled during the run", None)
            raise
        self._batch_latency.observe(seconds)
        self._batch_sizes.observe(rows)
        for index, output in enumerate(outputs):
            shape = np.shape(output)
            if shape[:1] != (rows,):
                self._errors.labels(self.name, "inference").inc(rows)
                message = (
                    f"model {self.name!r}: output {index} has shape {shape} for a batch of "
                    f"{rows}: its first dimension is not the batch, so predict cannot split it "
                    "(use run())"
                )
                _fail(group, message, None)
                return
        for row, request in enumerate(group):
            if not request.future.done():
                request.future.set_result([output[row] for output in outputs])


async def _in_thread(
    function: Callable[[Any, Mapping[str, Array]], tuple[list[Array], float]],
    session: Any,
    feeds: Mapping[str, Array],
) -> tuple[list[Array], float]:
    # run_in_executor rather than asyncio.to_thread: the same default executor without
    # copying the context, which the call does not read, so each hop is shorter.
    return await asyncio.get_running_loop().run_in_executor(None, function, session, feeds)


def _timed_run(session: Any, feeds: Mapping[str, Array]) -> tuple[list[Array], float]:
    started = time.perf_counter()
    outputs: list[Array] = session.run(None, feeds)
    return outputs, time.perf_counter() - started


def _fail(group: list[InferenceRequest], message: str, cause: BaseException | None) -> None:
    # One exception per caller: a shared one would collect every caller's traceback.
    for request in group:
        if not request.future.done():
            exc = InferenceError(message)
            exc.__cause__ = cause
            request.future.set_exception(exc)


def _rows(feeds: Mapping[str, Array], batch_input: str | None) -> int:
    """How many rows a call has, by the first dimension of its first shaped input."""
    if batch_input is None:
        return 1
    shape = feeds[batch_input].shape
    return int(shape[0]) if shape else 1


def _batching_of(specs: list[InputSpec]) -> tuple[_Batching, str]:
    """How predict can batch: ``batch`` (every input's first dimension free), ``single``
    (first dimensions fixed at 1) or ``none``, with why."""
    firsts = []
    for spec in specs:
        if not spec.is_tensor or not spec.shape:
            return "none", f"input {spec.name!r} declares no batch dimension"
        firsts.append(spec.shape[0])
    if all(first is None for first in firsts):
        return "batch", ""
    if all(first in (None, 1) for first in firsts):
        return "single", ""
    fixed = next(s for s in specs if s.shape[0] not in (None, 1))
    return "none", f"input {fixed.name!r} has a fixed first dimension of {fixed.shape[0]}"


def _shown(value: Array) -> str:
    return f"{value.dtype} {tuple(value.shape)}"
