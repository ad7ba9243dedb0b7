"""The hand-over of events to the Grafana annotator: every opening and closing of a batch
that a checkpoint covers is in that checkpoint (as a job posted or waiting), also when
the batch's session was cancelled while its worker thread still ran."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from test_service_units import FlakyWriter, _spec, _spike_batches

from detectors.service.service import DetectService

GRAFANA = "grafana: {url: 'http://127.0.0.1:9', token_env: RECP_TEST_GRAFANA_TOKEN}\n"


def _service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DetectService:
    monkeypatch.setenv("RECP_TEST_GRAFANA_TOKEN", "glsa_test")
    svc = DetectService(_spec(tmp_path, GRAFANA), writer=FlakyWriter(0))
    assert svc.annotator is not None
    return svc


def test_checkpoint_during_a_cancelled_batch_keeps_its_annotations(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 5: a checkpoint begun while a cancelled batch's thread still ran handed the
    annotations over before waiting for the state lock, then saved a snapshot covering
    that batch (its replay rows forgotten) without the batch's openings: after a crash
    those annotations were never posted."""
    batches, spike = _spike_batches()
    svc = _service(tmp_path, monkeypatch)
    for b in batches[:spike]:
        asyncio.run(svc.handle(b))
    assert svc.annotator is not None and svc.annotator.depth == 0
    inner = svc._handle_sync

    def slow(messages: list[tuple[str, bytes]], now: float) -> Any:
        time.sleep(0.4)
        return inner(messages, now)

    svc._handle_sync = slow  # type: ignore[method-assign]

    async def lost_broker_then_checkpoint() -> None:
        task = asyncio.create_task(svc.handle(batches[spike]))
        await asyncio.sleep(0.1)  # its thread is running
        task.cancel()  # the session ends (broker connection dropped) ...
        # ... and the periodic checkpoint (another task) begins while the thread runs on
        await svc.save_checkpoint()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(lost_broker_then_checkpoint())
    svc.spool.close()  # SIGKILL: nothing else runs
    state = json.loads(Path(svc.spec.checkpoint_path).read_text())
    assert state["replay_through"] >= spike + 1  # the checkpoint covers the batch ...
    pending = [(j["event_id"], j["closed"]) for j in state["grafana"]["pending"]]
    opened = f"dairy/m1/spike/{1767225600 + 3 * 86400 + 36000}"
    # ... and so holds its opening and closing (the batch spans both), once each
    assert pending == [(opened, False), (opened, True)]


def test_each_transition_is_queued_once(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches, a replay after a restart and checkpoints between them: each opening and
    closing goes to the annotator once per time it is derived, never twice for one batch."""
    batches, spike = _spike_batches()
    svc = _service(tmp_path, monkeypatch)
    for b in batches[: spike + 8]:
        asyncio.run(svc.handle(b))
        asyncio.run(svc.save_checkpoint())
    assert svc.annotator is not None
    jobs = [(j["event_id"], j["closed"]) for j in svc.annotator.snapshot()["pending"]]
    opened = f"dairy/m1/spike/{1767225600 + 3 * 86400 + 36000}"
    assert jobs == [(opened, False), (opened, True)]
    svc.spool.close()
