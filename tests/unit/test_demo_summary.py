"""recp demo's verdict: which events found which injected losses, and what is a false alarm."""

from __future__ import annotations

import pytest

from collector.demo.summary import format_verdict, judge

DAY = 86400.0
T0 = 1_788_739_200.0  # 2026-09-07T00:00Z


def ev(meter: str, kind: str, start: float, end: float | None = None, cost: float = 10.0,
       raised: float | None = None):
    return {"id": f"{meter}/{kind}/{start}", "meter": meter, "type": kind, "start_s": start,
            "end_s": end, "excess": 1.0, "cost": cost, "unit": "m3", "raised_s": raised}


def truth(meter: str, kind: str, start: float, end: float | None = None):
    iso = __import__("collector.contract", fromlist=["format_ts"]).format_ts
    return {"id": f"{meter}/{kind}/0", "meter": meter, "type": kind, "start": iso(start),
            "end": iso(end) if end else None, "excess": 5.0, "cost": 20.0, "unit": "m3"}


def test_a_loss_is_found_by_any_loss_event_on_its_meter_in_its_window():
    t = [truth("water", "leak", T0 + 2 * DAY)]
    v = judge(t, [ev("water", "overspend", T0 + 2 * DAY + 3600)], now_s=T0 + 7 * DAY,
              meters=4, days=7)
    assert v.found_all and not v.false_alarms and v.ok
    assert "found  water" in "\n".join(format_verdict(v))


def test_wrong_meter_or_long_before_or_after_the_loss_is_not_a_find():
    t = [truth("water", "leak", T0 + 3 * DAY, T0 + 4 * DAY)]
    events = [ev("steam", "overspend", T0 + 3 * DAY),          # another meter
              ev("water", "overspend", T0, T0 + DAY),          # over before the loss
              ev("water", "spike", T0 + 5.5 * DAY)]            # a day after it ended
    v = judge(t, events, now_s=T0 + 7 * DAY, meters=4, days=7)
    assert not v.found_all and not v.ok
    assert len(v.false_alarms) == 3
    assert "MISSED" in "\n".join(format_verdict(v))


def test_an_alarm_raised_during_the_loss_counts_though_dated_earlier():
    t = [truth("steam", "steam_trap", T0 + 3 * DAY, T0 + 5 * DAY)]
    early = ev("steam", "level_shift", T0, T0 + 6 * DAY, raised=T0 + 3 * DAY + 7200)
    before = ev("steam", "overspend", T0, T0 + DAY / 2, raised=T0 + 3600)
    v = judge(t, [early, before], now_s=T0 + 7 * DAY, meters=4, days=7)
    assert v.matches[0].found == [early]
    assert v.false_alarms == [before]


def test_data_quality_events_history_and_production_are_not_judged():
    t = [truth("water", "leak", T0 + 2 * DAY)]
    events = [ev("water", "overspend", T0 + 2 * DAY),
              ev("water", "stuck", T0 + DAY),                  # data quality, not a loss
              ev("water", "spike", T0 - 3 * DAY),              # during the history
              ev("prod", "base_load_rise", T0 + DAY)]          # the production counter
    v = judge(t, events, now_s=T0 + 7 * DAY, meters=4, days=7, since_s=T0,
              consumption={"water", "steam"})
    assert v.found_all and v.false_alarms == []


def test_the_agreed_rate_is_one_false_alarm_per_meter_and_month():
    t: list[dict] = []
    one = [ev("water", "spike", T0 + DAY)]
    assert judge(t, one, now_s=T0 + 30 * DAY, meters=4, days=30).ok  # limit 4
    assert not judge(t, one, now_s=T0 + 7 * DAY, meters=4, days=7).ok  # limit 0


def test_a_night_time_steps_alert_shows_when_it_began_as_a_range(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The service dates a base-load step at the earliest moment it can have begun and
    says the range; the demo's alert line shows that range, not a bare 'since'."""
    from collector.demo.run import Demo, Options, Screen

    demo = Demo(Options(), Screen(plain=True))
    demo.on_alert({"event": "open", "type": "level_shift", "meter": "steam_main",
                   "resource": "steam", "start": "2026-09-10T03:00:00.000Z", "excess": 118.3,
                   "unit": "kg", "cost": 6.5, "currency": "EUR",
                   "explanation": "level_shift on steam_main began between 2026-09-10 03:00 "
                                  "and 2026-09-11 03:00 UTC (seen in the night window only)"})
    demo.on_alert({"event": "open", "type": "overspend", "meter": "water_main",
                   "resource": "water", "start": "2026-09-08T21:00:00.000Z", "excess": 1.5,
                   "unit": "m3", "cost": 6.0, "currency": "EUR", "explanation": "used more"})
    out = capsys.readouterr().out
    assert ("ALERT  steam_main: level_shift began between 2026-09-10 03:00 and 2026-09-11 "
            "03:00 (118.3 kg, 6 EUR so far)") in out
    assert "ALERT  water_main: overspend since 2026-09-08 21:00 (1.5 m3, 6 EUR so far)" in out
