"""Settling asyncio futures whose waiter may have gone (cancelled) or whose failure is
reported elsewhere."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["consume_exception", "fail", "settle"]


def settle(fut: asyncio.Future[Any], result: object, error: BaseException | None) -> None:
    """Resolve ``fut`` with ``result``, or fail it with ``error``, unless it is done."""
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


def fail(fut: asyncio.Future[Any], error: BaseException) -> None:
    """Fail ``fut`` with ``error`` unless it is done."""
    if not fut.done():
        fut.set_exception(error)


def consume_exception(fut: asyncio.Future[Any]) -> None:
    """Mark a future's exception as seen: the failure is reported elsewhere."""
    if not fut.cancelled():
        fut.exception()
