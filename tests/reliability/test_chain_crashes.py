"""Fault-matrix rows over the whole chain (tests/chain.py, the dairy of tests/dairy.py):
crashes repeated while readings flow and while alerts are open, and the database down for
days.

- the broker SIGKILLed and restarted four times (twice before the losses begin, twice
  with their alerts open). The agent runs ``confirm: consumer``, the documented setting for a
  broker that may crash: Mosquitto acknowledges a message it holds only in memory, so the
  agent keeps each reading until recp detect confirms it stored it (docs/mqtt-contract.md);
- ``recp detect`` SIGKILLed and restarted four times, the same way (three when the
  machine is so loaded that a restart takes a simulated day: one before the losses);
- VictoriaMetrics down for three and a half simulated days: recp detect spools everything
  meanwhile and writes it once when the database is back.

Each: every reading the plant served stored once, the agent's sequence numbers complete,
nothing dropped, both losses alerted, no alert raised twice.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from chain import wait_until
from dairy import LEAD_IN_DAYS, PLANT, check_end_state

pytestmark = pytest.mark.integration

DAY = 86400.0
CRASH_LIVE_DAYS = 8.0  # room for four restarts and the alerts to open in between


def agent_dropped(chain: Any) -> dict[str, int]:
    """What the agent dropped on purpose, by reason (its last health message)."""
    health = chain.watch.json(f"recp/v1/{chain.site}/_agent/health")
    return dict(health.get("outbox", {}).get("dropped") or {})


def alerts_open(chain: Any) -> None:
    """Wait until both losses' alerts are open."""
    wait_until(lambda: {a["meter"] for a in chain.watch.alerts if a["event"] == "open"}
               >= {"el_main", "water_main"}, 90, "the losses' alerts", chain.tails)


def dairy(live_days: float) -> dict[str, Any]:
    """The dairy plant with ``live_days`` of live serving after the lead-in."""
    plant = copy.deepcopy(PLANT)
    plant["days"] = LEAD_IN_DAYS + live_days + 1
    return plant


def crash_repeatedly(chain: Any, part: str, matrix_row: Callable[..., Any],
                     fault: str, note: str) -> None:
    """SIGKILL ``part`` and restart it: twice before the losses begin (once when the
    machine is so loaded that the first restart ran past the second's time) and twice
    with their alerts open; then run on for a day and check the end state.

    The plant keeps serving while a part is down; a restart of recp detect takes 5-15 s
    wall on the loaded 2-core machine (half a simulated day or more), hence the spare days.
    """
    chain.fit_lead_in()
    chain.start()
    live = chain.serve_from
    end = live + CRASH_LIVE_DAYS * DAY
    kills: list[float] = []

    def crash() -> None:
        kills.append(chain.sim_time())
        chain.kill_part(part)
        time.sleep(1.0)
        chain.start_part(part)

    for at in (0.3, 1.0):  # the losses begin at 1.83
        if chain.sim_time() < live + 1.5 * DAY:
            chain.wait_sim(live + at * DAY)
            crash()
    alerts_open(chain)
    for _ in range(2):
        crash()
        chain.wait_sim(min(chain.sim_time() + 0.2 * DAY, end - 0.5 * DAY))
    before = [t for t in kills if t < live + 1.83 * DAY]
    # the plant must still be serving after the last restart
    assert kills[-1] < end - 0.5 * DAY and len(kills) >= 3 and before, kills
    chain.wait_sim(min(kills[-1] + DAY, end - 0.2 * DAY))
    chain.finish()
    result = chain.reconcile()
    dropped = agent_dropped(chain)
    at = ", ".join(f"{(t - live) / DAY:.1f}" for t in kills)
    matrix_row(fault.format(n=len(kills)), result, dropped,
               note=f"{note}; killed at live day {at} (the losses begin at 1.8)")
    assert not dropped, dropped
    check_end_state(chain, result)


def test_broker_sigkill_repeated_loses_and_doubles_nothing(
    chain_factory: Callable[..., Any], matrix_row: Callable[..., Any],
) -> None:
    chain = chain_factory(dairy(CRASH_LIVE_DAYS), lead_in_days=LEAD_IN_DAYS)
    site = yaml.safe_load(chain.paths["site"].read_text())
    site["mqtt"]["confirm"] = "consumer"
    chain.paths["site"].write_text(yaml.safe_dump(site, sort_keys=False))
    crash_repeatedly(chain, "broker", matrix_row, "broker SIGKILL x{n}",
                     "restarted after 1 s each time, while readings flow, before the "
                     "losses and with their alerts open; agent with confirm: consumer")


def test_detect_sigkill_repeated_loses_and_doubles_nothing(
    chain_factory: Callable[..., Any], matrix_row: Callable[..., Any],
) -> None:
    chain = chain_factory(dairy(CRASH_LIVE_DAYS), lead_in_days=LEAD_IN_DAYS)
    crash_repeatedly(chain, "detect", matrix_row, "recp detect SIGKILL x{n}",
                     "restarted after 1 s each time, while readings flow, before the "
                     "losses and with their alerts open; agent confirms on PUBACK")


def test_database_down_for_days_loses_and_doubles_nothing(
    chain_factory: Callable[..., Any], matrix_row: Callable[..., Any],
) -> None:
    """VictoriaMetrics stopped for 3.5 simulated days (the losses begin meanwhile): the
    spool holds every reading of that stretch, all written once when it is back."""
    live_days = 5.0
    chain = chain_factory(dairy(live_days), lead_in_days=LEAD_IN_DAYS)
    chain.fit_lead_in()
    chain.start()
    live = chain.serve_from
    chain.wait_sim(live + 0.5 * DAY)
    chain.stop_part("vm")
    depth = 0
    while chain.sim_time() < live + 4.0 * DAY:
        depth = max(depth, int(chain.detect_health().get("spool_depth", 0) or 0))
        time.sleep(0.5)
    chain.start_part("vm")
    chain.wait_sim(live + live_days * DAY)
    chain.finish()
    result = chain.reconcile()
    dropped = agent_dropped(chain)
    matrix_row("database down 3.5 days", result, dropped,
               note=f"VictoriaMetrics stopped for 3.5 simulated days (the losses begin "
                    f"meanwhile); recp detect's spool held up to {depth} points")
    assert depth > 500, depth  # the spool really held the outage
    assert not dropped, dropped
    check_end_state(chain, result)
