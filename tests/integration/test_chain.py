"""The whole chain, real parts only: virtual plant -> recp agent -> Mosquitto -> recp detect
-> VictoriaMetrics (tests/chain.py).

A small dairy runs a day per 10 s. Its first four weeks are a lead-in, written as CSV and
used offline to fit each meter's hourly baseline; the plant then serves the next days with
its clock as the agent's time source, and a leak and a base-load rise begin on the second
live day. Afterwards every counter read the plant served is in the database exactly once,
the agent's sequence numbers are complete, and both losses came out as alerts and as events
in the database, each alert raised once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from chain import iso, utc, wait_until

pytestmark = pytest.mark.integration

LEAD_IN_DAYS = 28
LIVE_DAYS = 3.5
START = "2026-02-02T00:00:00Z"  # a Monday; the live part begins Monday 2 March
LOSSES_START = "2026-03-03T20:00:00Z"
PLANT: dict[str, Any] = {
    "kind": "plant",
    "name": "chain_dairy",
    "timezone": "UTC",
    "start": START,
    "days": LEAD_IN_DAYS + LIVE_DAYS + 1,
    "seed": 11,
    "step_s": 300,
    "speed": 8640,
    "schedule": {"workdays": ["mon", "tue", "wed", "thu", "fri"],
                 "shifts": ["06:00-14:00", "14:00-22:00"]},
    "production": {"rate_units_h": 1000, "noise": 0.05},
    "meters": [
        {"id": "el_main", "profile": "schneider_pm5560", "port": 5020, "unit_id": 1,
         "load": {"base": 55, "running": 140, "noise": 0.04}, "initial": 1843302,
         "price_per_unit": 0.21},
        {"id": "water_main", "profile": "endress_hauser_promag_w400", "port": 5021,
         "unit_id": 1, "load": {"base": 0.4, "running": 5.5, "noise": 0.05},
         "initial": 1000, "price_per_unit": 3.4},
    ],
    "losses": [
        {"meter": "water_main", "type": "leak", "start": LOSSES_START, "rate": 0.8},
        {"meter": "el_main", "type": "base_load_rise", "start": LOSSES_START, "rate": 40},
    ],
}
# what each injected loss may come out as
FOUND_AS = {"leak": {"overspend", "base_load_rise"},
            "base_load_rise": {"overspend", "base_load_rise"}}


def check_end_state(chain: Any, result: Any) -> None:
    """Nothing lost, nothing doubled, sequence numbers complete, every loss alerted once."""
    for m in result.meters.values():
        assert m.produced > 100, m  # two readings an hour or more for 3.5 days
        assert m.lost == 0 and m.duplicated == 0, m
        assert m.produced == m.matched == m.stored == m.published, m
        assert not m.seq_missing and m.seq_twice == 0, m
    # every injected loss: an alert opened on its meter after it began, and an event stored
    truth = chain.truth()
    losses = [e for e in truth["events"] if e["type"] in FOUND_AS]
    assert {e["meter"] for e in losses} == {"el_main", "water_main"}
    closed = {a["id"]: utc(a["end"]) for a in result.alerts
              if a["event"] == "close" and a.get("end")}
    for loss in losses:
        # an event of a fitting type on the loss's meter, open while the loss runs: begun
        # at most a day before it (an overspend starts where its CUSUM began to climb)
        began = utc(loss["start"])
        opened = [a for a in result.alerts if a["event"] == "open"
                  and a["meter"] == loss["meter"] and a["type"] in FOUND_AS[loss["type"]]
                  and utc(a["start"]) >= began - 86400 and closed.get(a["id"], 1e12) > began]
        assert opened, (loss["id"], loss["start"], [(a["event"], a["id"], a["start"])
                                                     for a in result.alerts])
        assert result.events_stored.get(loss["meter"], set()) & FOUND_AS[loss["type"]], (
            loss, result.events_stored)
    assert not result.alerts_twice
    assert not chain.watch.dead  # no reading was dead-lettered


def test_every_plant_reading_once_and_the_losses_alerted(
    chain_factory: Callable[..., Any],
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
    print(f"\nchain test: {took:.0f} s wall, live {iso(chain.serve_from)} .. {iso(end)}\n"
          + result.table())
    check_end_state(chain, result)


def test_database_outage_detect_crash_and_broker_restart_lose_nothing(
    chain_factory: Callable[..., Any],
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
    print(f"\nchain with faults: {time.monotonic() - began:.0f} s wall\n" + result.table())
    check_end_state(chain, result)
