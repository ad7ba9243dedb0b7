"""When a night-time step began: a range, stated (the service's level shift).

The demo's steam trap fails open at 03:00 UTC, the end of its night window (23:00-03:00
UTC). The service dated the event at the start of the night where the detector's CUSUM
left zero: 23:00 the next evening (20 h after the failure), or, when the night before the
failure sat a little above the reference plus the CUSUM's allowance, 23:00 the evening
before (4 h before the failure). Which nights belong to the step is now decided with its
estimated size, so the event is dated at the first night that showed it; and as the
nights are all this detector sees, it says the step began after the end of the last night
at the reference level and before the end of that first night."""

from __future__ import annotations

import datetime as dt
import math

from detectors.anomaly import LevelShiftDetector
from detectors.meter import MeterInfo
from detectors.service.alerts import AlertSettings, EventTracker, night_step_onset
from detectors.streaming import Point

H = 3600
DAY = 86400
FAIL = int(dt.datetime(2026, 9, 10, 3, tzinfo=dt.timezone.utc).timestamp())


def utc(text: str) -> int:
    return int(dt.datetime.fromisoformat(text + "+00:00").timestamp())


def run(night_before: float) -> list[tuple[str, str, str]]:
    """Steam per hour: 40 kg/h (a little noise), 400 by day; a trap adds 120 kg/h from
    FAIL; the night before FAIL lifted by ``night_before`` kg/h. (open start, text)."""
    det = LevelShiftDetector(23.0, 3.0, interval_s=H)
    tracker = EventTracker("dairy", "steam_main", AlertSettings(), night_s=4 * H)
    info = MeterInfo(id="steam_main", unit="kg", resource="steam", price_per_unit=0.055)
    opened = []
    t0 = FAIL - 24 * DAY - 3 * H  # midnight
    for t in range(t0, FAIL + 3 * DAY, H):
        hour = (t // H) % 24
        x = 40.0 + (1.0 if (t // H) % 7 == 0 else -0.5) + (360.0 if 6 <= hour < 20 else 0.0)
        if FAIL - 4 * H <= t < FAIL:
            x += night_before
        if t >= FAIL:
            x += 120.0
        score = det.update_one(Point(t, x))
        for tr in tracker.step("level_shift", t, H, x, score, det.diagnostics, info, "steam",
                               "EUR"):
            if tr.kind == "open":
                e = tr.event
                opened.append((f"{e.start:%m-%d %H:%M}", e.explanation, f"{t}"))
    return opened


SAYS = ("first seen in the night from 2026-09-10 23:00 UTC; began between 2026-09-10 03:00 "
        "and 2026-09-11 03:00 UTC (seen in the night window only)")


def test_a_step_at_the_end_of_the_night_window_says_when_it_can_have_begun() -> None:
    (start, text, _), = run(0.0)
    assert start == "09-10 23:00", text  # the first night that shows it
    assert SAYS in text, text  # before: 'since 2026-09-10 23:00 UTC', 20 h after the failure


def test_a_night_lifted_before_the_step_is_not_counted_in() -> None:
    (start, text, _), = run(6.0)  # above reference + allowance (40 + 4 kg/h)
    assert start == "09-10 23:00", text  # before: 09-09 23:00, 4 h before the failure
    assert SAYS in text, text


def test_night_step_onset() -> None:
    nights = [(utc(f"2026-09-0{d}T23:00"), v) for d, v in
              ((5, 40.0), (6, 41.0), (7, 46.0), (8, 160.0), (9, 158.0))]
    # the CUSUM left zero on the 7th (46 > 40 + 4): the step is 120, the 7th not part of it
    assert night_step_onset(nights, utc("2026-09-07T23:00"), 40.0, 4 * H) == (
        utc("2026-09-08T03:00"), utc("2026-09-08T23:00"), utc("2026-09-09T03:00"))
    # a small step is what it is: from the first night of the run
    small = [(t, v) for t, v in nights[:3]] + [(nights[3][0], 47.0)]
    assert night_step_onset(small, utc("2026-09-07T23:00"), 40.0, 4 * H) == (
        utc("2026-09-07T03:00"), utc("2026-09-07T23:00"), utc("2026-09-08T03:00"))
    # a night missing (too few readings): the earliest is the end of the last one seen
    gap = [nights[0], nights[1], nights[3], nights[4]]
    assert night_step_onset(gap, utc("2026-09-08T23:00"), 40.0, 4 * H)[0] == utc(
        "2026-09-07T03:00")
    # nothing known: the night the detector named
    assert night_step_onset([], utc("2026-09-08T23:00"), math.nan, 4 * H) == (
        utc("2026-09-08T03:00"), utc("2026-09-08T23:00"), utc("2026-09-09T03:00"))
