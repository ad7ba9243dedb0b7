"""A batch cancelled mid-way (the broker lost: the session's tasks are cancelled) leaves
its worker thread running; the next batch, often the same messages delivered again on the
new session, must not run beside it on the same dedup marks, pipelines and spool."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

from test_service_batch import Discard
from test_service_units import TOPIC, _spec, reading

from detectors.service.service import DetectService


def test_next_batch_waits_for_the_cancelled_batch_thread(tmp_path: Path) -> None:
    svc = DetectService(_spec(tmp_path), writer=Discard())
    inner = svc._handle_sync
    running: list[int] = []
    overlaps: list[int] = []
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()

    def slow(messages: list[tuple[str, bytes]], now: float) -> Any:
        with lock:
            running.append(1)
            overlaps.append(len(running))
        began = time.monotonic()
        try:
            time.sleep(0.5 if not spans else 0.0)  # the first batch is slow
            return inner(messages, now)
        finally:
            spans.append((began, time.monotonic()))
            with lock:
                running.pop()

    svc._handle_sync = slow  # type: ignore[method-assign]
    batch = [(TOPIC, reading(seq=s, ts=1_767_225_600.0 + 60 * s)) for s in range(1, 51)]

    async def go() -> None:
        first = asyncio.create_task(svc.handle(batch))
        await asyncio.sleep(0.1)  # its thread is running
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        await svc.handle(batch)  # delivered again on the new session

    asyncio.run(go())
    svc.spool.close()
    assert len(spans) == 2
    assert overlaps == [1, 1], "two batches ran at once in worker threads"
    # the redelivered batch began after the cancelled one's thread ended
    assert spans[1][0] >= spans[0][1]
    key = ("dairy", "m1", "s1")
    assert svc.dedup.done(key) == 50
