"""Fault-matrix rows over the whole chain (tests/chain.py, the dairy of tests/dairy.py):
crashes repeated while readings flow and while alerts are open, and the database down for
days.

- the broker SIGKILLed and restarted five times (three before the losses begin, two with
  their alerts open). The agent runs ``confirm: consumer``, the documented setting for a
  broker that may crash: Mosquitto acknowledges a message it holds only in memory, so the
  agent keeps each reading until recp detect confirms it stored it (docs/mqtt-contract.md);
- ``recp detect`` SIGKILLed and restarted five times, the same way;
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
CRASH_LIVE_DAYS = 5.0  # room for five restarts and the alerts to open in between


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
    """SIGKILL ``part`` three times before the losses begin and twice with their alerts
    open, restarting it each time; then run on for half a day and check the end state."""
    chain.fit_lead_in()
    chain.start()
    live = chain.serve_from
    kills = []
    for at in (0.3, 0.8, 1.3):  # the losses begin at 1.83
        chain.wait_sim(live + at * DAY)
        kills.append(chain.sim_time())
        chain.kill_part(part)
        time.sleep(1.0)
        chain.start_part(part)
    alerts_open(chain)
    for _ in range(2):
        kills.append(chain.sim_time())
        chain.kill_part(part)
        time.sleep(1.0)
        chain.start_part(part)
        chain.wait_sim(chain.sim_time() + 0.3 * DAY)
    # the plant must still be serving: the last kill was not after the scenario's end
    assert kills[-1] < live + CRASH_LIVE_DAYS * DAY - 0.5 * DAY, kills
    chain.wait_sim(min(kills[-1] + DAY, live + CRASH_LIVE_DAYS * DAY))
    chain.finish()
    result = chain.reconcile()
    dropped = agent_dropped(chain)
    at = ", ".join(f"{(t - live) / DAY:.1f}" for t in kills)
    matrix_row(fault, result, dropped, note=f"{note}; killed at live day {at}")
    assert not dropped, dropped
    check_end_state(chain, result)


def test_broker_sigkill_repeated_loses_and_doubles_nothing(
    chain_factory: Callable[..., Any], matrix_row: Callable[..., Any],
) -> None:
    chain = chain_factory(dairy(CRASH_LIVE_DAYS), lead_in_days=LEAD_IN_DAYS)
    site = yaml.safe_load(chain.paths["site"].read_text())
    site["mqtt"]["confirm"] = "consumer"
    chain.paths["site"].write_text(yaml.safe_dump(site, sort_keys=False))
    crash_repeatedly(chain, "broker", matrix_row, "broker SIGKILL x5",
                     "restarted after 1 s each time: 3 kills while readings flow, 2 with "
                     "the losses' alerts open; agent with confirm: consumer")


def test_detect_sigkill_repeated_loses_and_doubles_nothing(
    chain_factory: Callable[..., Any], matrix_row: Callable[..., Any],
) -> None:
    chain = chain_factory(dairy(CRASH_LIVE_DAYS), lead_in_days=LEAD_IN_DAYS)
    crash_repeatedly(chain, "detect", matrix_row, "recp detect SIGKILL x5",
                     "restarted after 1 s each time: 3 kills while readings flow, 2 with "
                     "the losses' alerts open; agent confirms on PUBACK")


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
