"""The dairy the fault-matrix rows over the chain run (tests/reliability/): four weeks of
lead-in to fit the baselines, then live days in which a leak and a base-load rise begin,
and the end state every row without dropped readings must reach (:func:`check_end_state`).
"""

from __future__ import annotations

from typing import Any

from chain import utc

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
