"""Small asyncio helpers shared by the agent's tasks (Python 3.10 and later).

Loops stop on an event rather than by cancellation alone: before Python 3.12,
``asyncio.wait_for`` (used inside pymodbus and aiomqtt) can swallow a cancellation that
arrives just as the awaited call completes, and a loop that lost its cancellation runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    from asyncio import TaskGroup
else:  # pragma: no cover - exercised on Python 3.10
    from taskgroup import TaskGroup

__all__ = ["TaskGroup", "event_loop_name", "run", "stop_task", "wait_event"]

log = logging.getLogger("recp.aio")
T = TypeVar("T")


def event_loop_name() -> str:
    """"uvloop" when it is installed and not turned off with RECP_EVENT_LOOP=asyncio."""
    if os.environ.get("RECP_EVENT_LOOP", "").lower() == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``, on uvloop when available (the optional ``uvloop`` extra): it
    roughly halves the agent's CPU per Modbus request (docs/decisions.md)."""
    if event_loop_name() == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


async def wait_event(event: asyncio.Event, timeout: float | None,
                     also: asyncio.Event | None = None) -> bool:
    """Wait until ``event`` (or ``also``) is set or ``timeout`` seconds pass; True if set."""
    if event.is_set() or (also is not None and also.is_set()):
        return True
    waits = [asyncio.ensure_future(event.wait())]
    if also is not None:
        waits.append(asyncio.ensure_future(also.wait()))
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
    return event.is_set() or (also is not None and also.is_set())


async def stop_task(task: asyncio.Task[Any], grace_s: float) -> None:
    """Wait up to ``grace_s`` for ``task`` to finish by itself, then cancel it until it does."""
    if not task.done():
        await asyncio.wait({task}, timeout=grace_s)
    attempts = 0
    while not task.done():
        attempts += 1
        if attempts > 1:
            log.warning("task %s ignored cancellation; cancelling again", task.get_name())
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    with contextlib.suppress(asyncio.CancelledError):
        exc = task.exception()
        if exc is not None:
            raise exc
