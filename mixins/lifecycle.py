"""Start, graceful stop that drains in-flight calls, readiness versus liveness."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import StrEnum

Hook = Callable[[], Awaitable[None]]


class LifecyclePhase(StrEnum):
    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class ShuttingDownError(Exception):
    """A call arrived while the node is stopping or stopped."""


class Lifecycle:
    """Start and stop hooks, and a count of in-flight calls that ``stop`` waits for."""

    def __init__(self) -> None:
        self.phase = LifecyclePhase.CREATED
        self._in_flight = 0
        self._on_start: list[Hook] = []
        self._on_stop: list[Hook] = []
        self._drained = asyncio.Event()
        self._drained.set()
        self._stopped = asyncio.Event()
        self._drained_in_time = True
        # Holds no state of its own, so one serves every call.
        self._admission = InFlightCall(self)

    def on_start(self, hook: Hook) -> Hook:
        """Run ``hook`` on start, after those registered before it. Usable as a decorator."""
        self._on_start.append(hook)
        return hook

    def on_stop(self, hook: Hook) -> Hook:
        """Run ``hook`` on stop, before those registered before it. Usable as a decorator."""
        self._on_stop.append(hook)
        return hook

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def is_live(self) -> bool:
        return self.phase is not LifecyclePhase.STOPPED

    @property
    def is_ready(self) -> bool:
        return self.phase is LifecyclePhase.RUNNING

    async def start(self) -> None:
        """Run the start hooks in order, then take traffic. If a hook raises, the phase stays
        starting and the error propagates."""
        if self.phase is not LifecyclePhase.CREATED:
            raise RuntimeError(f"cannot start a lifecycle that is {self.phase.value}")
        self.phase = LifecyclePhase.STARTING
        for hook in self._on_start:
            await hook()
        self.phase = LifecyclePhase.RUNNING

    def admit(self) -> InFlightCall:
        """Count a call as in flight for the ``with`` block; refuse it (ShuttingDownError) once
        stopping has begun. Synchronous, so a node's hot path pays no coroutine for it."""
        return self._admission

    @contextlib.asynccontextmanager
    async def track(self) -> AsyncIterator[None]:
        """``admit`` as an async context manager."""
        with self.admit():
            yield

    def _enter_call(self) -> None:
        if self.phase in (LifecyclePhase.STOPPING, LifecyclePhase.STOPPED):
            raise ShuttingDownError(f"the node is {self.phase.value} and takes no new calls")
        if not self._in_flight:
            self._drained.clear()
        self._in_flight += 1

    def _leave_call(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._drained.set()

    async def stop(self, timeout_s: float = 10.0) -> bool:
        """Refuse new calls, wait up to ``timeout_s`` for in-flight ones, then run the stop
        hooks in reverse order. True if every in-flight call finished in time.

        Every stop hook runs even if one raises; their errors are raised together afterwards.
        A second call waits for the first stop and returns its result.
        """
        if self.phase in (LifecyclePhase.STOPPING, LifecyclePhase.STOPPED):
            await self._stopped.wait()
            return self._drained_in_time
        self.phase = LifecyclePhase.STOPPING
        try:
            async with asyncio.timeout(timeout_s):
                await self._drained.wait()
        except TimeoutError:
            self._drained_in_time = False
        errors: list[Exception] = []
        for hook in reversed(self._on_stop):
            try:
                await hook()
            except Exception as exc:
                errors.append(exc)
        self.phase = LifecyclePhase.STOPPED
        self._stopped.set()
        if errors:
            raise ExceptionGroup("on_stop hooks failed", errors)
        return self._drained_in_time


class InFlightCall:
    """The ``with`` block of an admitted call (see ``Lifecycle.admit``); the count lives in the
    lifecycle, so one instance serves every call, concurrent ones included.

    A class rather than a ``contextlib.contextmanager`` generator: it runs on every operation
    call, and a generator-based context manager costs several times as much.
    """

    __slots__ = ("_lifecycle",)

    def __init__(self, lifecycle: Lifecycle) -> None:
        self._lifecycle = lifecycle

    def __enter__(self) -> None:
        self._lifecycle._enter_call()

    def __exit__(self, *_exc: object) -> None:
        self._lifecycle._leave_call()
