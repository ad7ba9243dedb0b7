"""recp detect's wait for a broker's answer (SUBACK, PUBACK) is bounded even while
messages keep arriving: an answer that never comes must end the session, not hold it."""

from __future__ import annotations

import asyncio
import time

import pytest

from detectors.service.service import Inbox, _while_alive


async def _trickle(inbox: Inbox, every_s: float, per: int = 1) -> None:
    """Messages keep arriving (``per`` at a time), as in the stalled broker-restart run."""
    while True:
        await asyncio.sleep(every_s)
        inbox.count += per


async def _never() -> None:
    await asyncio.Event().wait()  # a PUBACK that never comes


async def _answer_after(s: float) -> str:
    await asyncio.sleep(s)
    return "puback"


def _run(coro: object, inbox: Inbox, every_s: float, per: int = 1) -> object:
    async def main() -> object:
        feeder = asyncio.create_task(_trickle(inbox, every_s, per))
        try:
            # the outer bound only keeps a broken wait from hanging the test run
            return await asyncio.wait_for(coro, 20.0)  # type: ignore[arg-type]
        finally:
            feeder.cancel()
    return asyncio.run(main())


def test_answer_that_never_comes_times_out_in_total_while_messages_arrive() -> None:
    inbox = Inbox()
    began = time.monotonic()
    with pytest.raises(TimeoutError, match=r"no PUBACK for t/1.*without it"):
        _run(_while_alive(_never(), inbox, 0.2, "no PUBACK for t/1", most_s=1.0), inbox, 0.02)
    assert 0.9 <= time.monotonic() - began < 10.0  # generous: a loaded, shared machine
    assert inbox.count > 10  # messages did keep arriving throughout


def test_an_answer_behind_a_long_backlog_is_waited_for() -> None:
    """Mosquitto sends a SUBACK or PUBACK only after the session's whole backlog: however
    many messages come first (before, more than 2 x receive_maximum + 1,000 ended the
    session, and --workers 2 reconnected into the same backlog again and again)."""
    inbox = Inbox()
    got = _run(_while_alive(_answer_after(1.5), inbox, 0.2, "no SUBACK", most_s=30.0),
               inbox, 0.01, per=100)
    assert got == "puback"
    assert inbox.count > 2000  # (well above what a small receive_maximum allowed)


def test_silence_still_counts_as_a_dead_broker() -> None:
    inbox = Inbox()
    with pytest.raises(TimeoutError, match=r"^no PUBACK$"):
        _run(_while_alive(_never(), inbox, 0.2, "no PUBACK"), inbox, 60.0)


def test_a_late_answer_behind_arriving_messages_is_still_taken() -> None:
    inbox = Inbox()
    got = _run(_while_alive(_answer_after(1.0), inbox, 0.2, "no PUBACK", most_s=30.0), inbox, 0.02)
    assert got == "puback"
