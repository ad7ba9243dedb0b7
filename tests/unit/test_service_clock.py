"""recp detect's pipeline when an edge clock steps back (issue 5): the readings stamped
behind the newest one are left out until their time passes it; the consumption meanwhile
lands in one flagged interval, is kept in the totals and raises no false spike."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable

import pytest
from test_service_units import T0, rate_kw

from detectors.clean import Quality
from detectors.service.alerts import Transition
from detectors.service.pipeline import Interval, MeterPipeline, Settings

DAY = 86400
POLL = 60
REAL_SPIKE = f"dairy/m1/spike/{T0 + 3 * DAY + 36000}"  # rate_kw's spike on day 4


def run(step_s: int, at_s: int, end_s: int, *, max_rate: float | None = None,
        restore_mid_step: bool = False
        ) -> tuple[list[Interval], list[Transition], MeterPipeline]:
    """A meter polled every minute; from ``at_s`` on its readings are stamped ``step_s``
    behind real time (the clock stepped back). ``max_rate``: a rated maximum (kWh/h)."""
    pipe = MeterPipeline("dairy", "m1", "electricity", Settings())
    pipe.poll_s = POLL
    if max_rate is not None:
        pipe.counter = "energy_kwh"
        pipe.info = dataclasses.replace(pipe.info, unit="kWh", max_rate_per_h=max_rate)
    e, t = 1000.0, T0
    intervals: list[Interval] = []
    transitions: list[Transition] = []
    while t < T0 + end_s:
        stamped = t - step_s if t >= T0 + at_s else t
        pipe.add(stamped, {"energy_kwh": e})
        iv, tr = pipe.complete()
        intervals += iv
        transitions += tr
        if restore_mid_step and t == T0 + at_s + step_s // 2:  # a checkpoint mid-step
            snap = json.loads(json.dumps(pipe.snapshot()))
            pipe = MeterPipeline.restore(snap, Settings())
        e += rate_kw(t) * POLL / 3600
        t += POLL
    return intervals, transitions, pipe


def _opened(transitions: list[Transition]) -> list[str]:
    return [t.event_id for t in transitions if t.kind == "open"]


AT = 9 * DAY + 12 * 3600 + 440  # day 10, 12:07:20 (not on a poll or interval boundary)


@pytest.mark.parametrize("step_s", [90, 630, 3630, 7230])
@pytest.mark.parametrize("restore_mid_step", [False, True])
def test_backward_clock_step_keeps_consumption_and_raises_no_spike(
        step_s: int, restore_mid_step: bool) -> None:
    end = AT + 4 * 3600
    stepped, transitions, pipe = run(step_s, AT, end, restore_mid_step=restore_mid_step)
    assert _opened(transitions) == [REAL_SPIKE]
    assert pipe.clock_steps == 1 and pipe.stepped == 0 and pipe.step_spans == []
    # no consumption lost: the intervals hold the counter's rise from the first reading to
    # the last boundary, which the meter passed step_s later in real time
    last = stepped[-1].t_s + 900
    got = math.fsum(i.actual for i in stepped)
    assert got == pytest.approx(counter_at(last + step_s) - 1000.0, abs=1e-6), [
        i for i in stepped if i.flags]
    # the lump is in flagged intervals, which raise nothing; a step of an hour or more
    # also holds the intervals after it (a day: to the end of this run) from scoring
    flagged = [i for i in stepped if i.flags & Quality.CLOCK_STEP]
    if step_s - POLL < 3600:  # held once a reading is an hour behind the newest one
        assert 1 <= len(flagged) <= 2
    else:
        assert flagged == [i for i in stepped if i.t_s >= flagged[0].t_s]
        assert flagged[0].t_s <= T0 + AT < flagged[0].t_s + 900
    assert all(not i.scores["spike"] > 0 for i in flagged)  # NaN in: no score
    assert sum(i.actual for i in flagged) > step_s / 3600 * 20  # the step's consumption


def counter_at(t_real: float) -> float:
    """The simulated counter at a real time (linear between polls, as cleaning spreads)."""
    e, t = 1000.0, T0
    while t + POLL <= t_real:
        e += rate_kw(t) * POLL / 3600
        t += POLL
    return e + rate_kw(t) * (t_real - t) / 3600


@pytest.mark.parametrize(("at_s", "step_s"), [(9 * DAY + 3600 + 440, 1830), (AT, 450)])
def test_backward_clock_step_on_a_meter_with_a_rated_maximum_raises_no_spike(
        at_s: int, step_s: int) -> None:
    """Cases where, before the fix, the step's lump opened a false spike."""
    _, transitions, pipe = run(step_s, at_s, at_s + 4 * 3600, max_rate=500.0)
    assert _opened(transitions) == [REAL_SPIKE]
    assert pipe.clock_steps == 1


def test_late_arrival_with_a_lower_counter_is_no_clock_step() -> None:
    pipe = MeterPipeline("dairy", "m1", "electricity", Settings())
    for t, v in ((T0, 10.0), (T0 + 60, 11.0), (T0 + 180, 13.0), (T0 + 120, 12.0),
                 (T0 + 240, 14.0)):
        pipe.add(t, {"energy_kwh": v})
    assert pipe.clock_steps == 0 and pipe.step_spans == []
    assert [t for t, _ in sorted(pipe.buf)] == [T0 + 60 * i for i in range(5)]


def test_several_readings_in_one_second_are_no_clock_step() -> None:
    """An agent polling every 0.1 s stamps several readings within one whole second."""
    pipe = MeterPipeline("dairy", "m1", "electricity", Settings())
    for i in range(60):
        pipe.add(T0 + 0.1 * i, {"energy_kwh": 10.0 + i})
    assert pipe.clock_steps == 0 and pipe.stepped == 0 and len(pipe.buf) == 60


def run_offset(offset: Callable[[int], int], end_s: int, *, restore_at: int | None = None,
               gap: tuple[int, int] | None = None
               ) -> tuple[list[Interval], list[Transition], MeterPipeline]:
    """A meter polled every minute, each reading stamped ``offset(t)`` from real time;
    none in the real time ``gap`` (start, end)."""
    pipe = MeterPipeline("dairy", "m1", "electricity", Settings())
    pipe.poll_s = POLL
    e, t = 1000.0, T0
    intervals: list[Interval] = []
    transitions: list[Transition] = []
    while t < T0 + end_s:
        if gap is None or not gap[0] <= t - T0 < gap[1]:
            pipe.add(t + offset(t - T0), {"energy_kwh": e})
            iv, tr = pipe.complete()
            intervals += iv
            transitions += tr
        if restore_at is not None and t == T0 + restore_at:
            pipe = MeterPipeline.restore(json.loads(json.dumps(pipe.snapshot())), Settings())
        e += rate_kw(t) * POLL / 3600
        t += POLL
    return intervals, transitions, pipe


WRONG = (9 * DAY + 12 * 3600, 9 * DAY + 28 * 3600)  # real time: the clock is 6 h wrong


@pytest.mark.parametrize("by_s", [6 * 3600, -6 * 3600])
@pytest.mark.parametrize("restore", [False, True])
def test_a_clock_wrong_for_hours_raises_no_spike(by_s: int, restore: bool) -> None:
    """Issue 5, the clock row of the fault matrix: the edge clock set 6 h wrong for 16 h,
    then right again. Readings stamped 6 h off put the day's load into the night's slots,
    which opened false spikes. A step of an interval or more (forward: a long pair over
    which the counter rose as in one poll; back: a reading behind the newest with a
    higher counter) holds the meter's intervals from scoring for a day: stored, flagged
    CLOCK_STEP, not scored. The real spike (day 4) still opens; consumption is kept."""
    def offset(t: int) -> int:
        return by_s if WRONG[0] <= t < WRONG[1] else 0

    end = WRONG[1] + 3 * DAY
    intervals, transitions, pipe = run_offset(
        offset, end, restore_at=WRONG[0] + 3 * 3600 if restore else None)
    assert _opened(transitions) == [REAL_SPIKE]
    assert pipe.clock_steps == 2
    held = [i.t_s - T0 for i in intervals if i.flags & Quality.CLOCK_STEP]
    # held from the first step until a day after the second
    second = WRONG[1] + (by_s if by_s > 0 else 0)
    assert held[0] <= WRONG[0] + max(by_s, 0) and held[-1] >= second + DAY - 3600
    # scored again after the hold
    assert not intervals[-1].flags & Quality.CLOCK_STEP
    assert math.isfinite(intervals[-1].scores["spike"])
    # nothing of the counter lost: measured plus a gap's estimate is its rise
    total = math.fsum(i.actual for i in intervals if math.isfinite(i.actual)) + math.fsum(
        i.gap_estimate for i in intervals if math.isfinite(i.gap_estimate))
    assert total == pytest.approx(counter_at(intervals[-1].t_s + 900) - 1000.0, rel=1e-6)


@pytest.mark.parametrize("hours", [1, 6, 30])
def test_a_real_outage_is_no_clock_step(hours: int) -> None:
    """No readings for some hours (the agent or its box down), the counter rising all the
    while: a gap, not a clock step, and scoring goes on after it."""
    gap = (9 * DAY + 12 * 3600, 9 * DAY + 12 * 3600 + hours * 3600)
    intervals, transitions, pipe = run_offset(lambda t: 0, gap[1] + DAY, gap=gap)
    assert pipe.clock_steps == 0 and pipe.hold_until == 0
    assert not any(i.flags & Quality.CLOCK_STEP for i in intervals)
    assert _opened(transitions) == [REAL_SPIKE]
