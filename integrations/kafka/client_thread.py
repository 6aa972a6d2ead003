"""The thread that runs a librdkafka client's blocking calls off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, ParamSpec, TypeVar

from integrations.kafka.errors import (
    KafkaError,
)
from integrations.kafka.futures import (
    settle,
)

__all__ = ["ClientThread"]

P = ParamSpec("P")
T = TypeVar("T")
_Job = tuple[Callable[[], object], "asyncio.Future[Any]"]


class ClientThread:
    """One thread running a client's blocking calls in order, off the event loop.

    One thread per client serialises the calls, which librdkafka's consumer needs anyway. It
    is owned (not the loop's default executor), so ``stop()`` joins it; the thread reports its
    exit to the loop, so that join never blocks the loop.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._exited: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._exited = loop.create_future()
        self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
        self._thread.start()

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` on the worker thread. Cancelling the caller does not stop a call that
        already runs; its result is dropped."""
        if self._thread is None or self._loop is None:
            raise KafkaError(f"{self._name} is not started")
        fut: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put((partial(fn, *args, **kwargs), fut))
        return await fut

    def _main(self) -> None:
        loop, exited = self._loop, self._exited
        assert loop is not None
        assert exited is not None
        try:
            while (job := self._jobs.get()) is not None:
                fn, fut = job
                result: object = None
                error: BaseException | None = None
                try:
                    result = fn()
                except BaseException as exc:  # handed to the awaiting coroutine
                    error = exc
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    loop.call_soon_threadsafe(settle, fut, result, error)
        finally:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, exited, None, None)

    async def stop(self) -> None:
        """Let the calls already queued finish, then end and join the thread."""
        if self._thread is None or self._exited is None:
            return
        self._jobs.put(None)
        await asyncio.shield(self._exited)
        self._thread.join()
        self._thread = None
