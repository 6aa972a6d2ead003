"""Helpers shared by the mixin tests."""

from __future__ import annotations

import asyncio


async def wait_set(event: asyncio.Event, timeout_s: float = 2.0) -> None:
    """Wait for ``event``; a regression that never sets it fails the test instead of hanging."""
    async with asyncio.timeout(timeout_s):
        await event.wait()
