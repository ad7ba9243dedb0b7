"""recp detect's pipeline when an edge clock steps back (issue 5): the readings stamped
behind the newest one are left out until their time passes it; the consumption meanwhile
lands in one flagged interval, is kept in the totals and raises no false spike."""

from __future__ import annotations

import dataclasses
import json
import math

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


@pytest.mark.parametrize("step_s", [90, 630, 3630])
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
    # the lump is in flagged intervals, which raise nothing
    flagged = [i for i in stepped if i.flags & Quality.CLOCK_STEP]
    assert 1 <= len(flagged) <= 2
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
