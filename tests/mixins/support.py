"""Helpers shared by the mixin tests."""

from __future__ import annotations

import asyncio


async def wait_set(event: asyncio.Event, timeout_s: float = 2.0) -> None:
    """Wait for ``event``; a regression that never sets it fails the test instead of hanging."""
    async with asyncio.timeout(timeout_s):
        await event.wait()


class Sleeps:
    """Records the waits instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


class Flaky:
    """Raises the given errors in turn, then returns "done"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"
