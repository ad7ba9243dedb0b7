"""Fault-matrix rows, the whole chain with real parts only: virtual plant -> recp agent ->
Mosquitto -> recp detect -> VictoriaMetrics (tests/chain.py).

A small dairy runs a day per 10 s. Its first four weeks are a lead-in, written as CSV and
used offline to fit each meter's hourly baseline; the plant then serves the next days with
its clock as the agent's time source, and a leak and a base-load rise begin on the second
live day. Afterwards every counter read the plant served is in the database exactly once,
the agent's sequence numbers are complete, and both losses came out as alerts and as events
in the database, each alert raised once. Both rows run in the default test run too (the
short subset of the matrix for CI).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from chain import iso, utc, wait_until
from dairy import LEAD_IN_DAYS, LIVE_DAYS, PLANT, START, check_end_state

pytestmark = pytest.mark.integration

@pytest.mark.default_run
def test_every_plant_reading_once_and_the_losses_alerted(
    chain_factory: Callable[..., Any], matrix_row: Callable[..., Any],
) -> None:
    began = time.monotonic()
    chain = chain_factory(PLANT, lead_in_days=LEAD_IN_DAYS)
    fitted = chain.fit_lead_in()
    assert set(fitted) == {"el_main", "water_main"}
    chain.start()
    end = utc(START) + (LEAD_IN_DAYS + LIVE_DAYS) * 86400
    chain.wait_sim(end, timeout=120)
    chain.finish()
    result = chain.reconcile()
    took = time.monotonic() - began
    print(f"\nchain test: {took:.0f} s wall, live {iso(chain.serve_from)} .. {iso(end)}")
    matrix_row("none (baseline)", result,
               note=f"{LIVE_DAYS} live days, a leak and a base-load rise from the second; "
                    "both must be alerted once")
    check_end_state(chain, result)


@pytest.mark.default_run
def test_database_outage_detect_crash_and_broker_restart_lose_nothing(
    chain_factory: Callable[..., Any], matrix_row: Callable[..., Any],
) -> None:
    """The same run with faults: the database stopped for half a simulated day, the broker
    restarted, recp detect SIGKILLed after the losses' alerts opened and started again."""
    began = time.monotonic()
    chain = chain_factory(PLANT, lead_in_days=LEAD_IN_DAYS)
    chain.fit_lead_in()
    chain.start()
    live = chain.serve_from
    day = 86400.0
    chain.wait_sim(live + 0.5 * day)
    chain.stop_part("vm")
    chain.wait_sim(live + 1.1 * day)
    chain.start_part("vm")
    chain.wait_sim(live + 1.5 * day)
    chain.stop_part("broker")  # graceful: it saves its sessions; the agent keeps readings
    chain.wait_sim(live + 1.7 * day)
    chain.start_part("broker")
    # both losses began at 20:00 on the second day: wait for their alerts, then crash
    wait_until(lambda: {a["meter"] for a in chain.watch.alerts if a["event"] == "open"}
               >= {"el_main", "water_main"}, 60, "the losses' alerts", chain.tails)
    chain.kill_part("detect")
    chain.start_part("detect")
    chain.wait_sim(utc(START) + (LEAD_IN_DAYS + LIVE_DAYS) * day)
    chain.finish()
    result = chain.reconcile()
    print(f"\nchain with faults: {time.monotonic() - began:.0f} s wall")
    matrix_row("database stopped 0.6 d, broker stopped and started, detect SIGKILL", result,
               note="the database stopped for 0.6 simulated day, the broker stopped "
                    "gracefully for 0.2 day, recp detect SIGKILLed once the losses' alerts "
                    "were open")
    check_end_state(chain, result)
