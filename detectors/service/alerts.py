"""Events from streaming detector output, with hysteresis: an event opens once, closes once.

Each rule says, for one interval of one meter, whether its event is *active*. Opening needs
the stronger condition (a spike's robust z of ``spike_open`` and ``spike_min_rel`` above
usual); staying open the weaker one (z of ``spike_close``). An event closes only after
``close_after`` quiet intervals in a row, so a value fluctuating around a threshold does
not flap. Level shift and drift carry their own hysteresis (a closing CUSUM, confirm
days): their alarm state is used as is. The tracker's state is JSON-able, so a restart
from a checkpoint neither forgets an open event nor raises it again.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass
from typing import Any

from ..events import Event, EventType, Severity
from ..meter import MeterInfo

DAY_S = 86400


@dataclass(frozen=True)
class AlertSettings:
    spike_open: float = 6.0
    spike_close: float = 3.0
    spike_min_rel: float = 0.4
    stuck_hours: float = 2.0
    close_after: int = 2
    drift_min_rel: float = 0.05


@dataclass
class OpenEvent:
    type: str
    start_s: int
    last_end_s: int  # end of the last active interval
    excess: float = 0.0
    score: float = 0.0
    severity: str = Severity.WARNING.value
    quiet: int = 0
    explanation: str = ""
    published: bool = False
    # level shift: the earliest and latest moment it can have begun (start_s: the start of
    # the first night that showed it)
    earliest_start_s: int | None = None
    latest_start_s: int | None = None


@dataclass(frozen=True)
class Transition:
    """``kind``: open, update or close."""

    kind: str
    site: str
    event_id: str
    event: Event
    resource: str


@dataclass(frozen=True)
class Observation:
    """One rule's view of one interval."""

    active: bool
    increment: float = 0.0
    score: float = 0.0
    start_s: int | None = None
    severity: Severity = Severity.WARNING
    text: str = ""


def _f(x: Any) -> float:
    v = float(x)
    return v if math.isfinite(v) else math.nan


def observe(kind: str, is_open: bool, t_s: int, interval_s: int, value: float, score: float,
            diag: Any, s: AlertSettings, unit: str) -> Observation:
    """Apply the rule of detector ``kind`` to one interval."""
    if kind == "spike":
        expected = _f(diag[0])
        if not (math.isfinite(value) and math.isfinite(expected)):
            return Observation(False)
        above = value - expected
        strong = score >= s.spike_open and value >= (1.0 + s.spike_min_rel) * expected
        active = (score >= s.spike_close and above > 0) if is_open else strong
        return Observation(active, max(above, 0.0) if active else 0.0, score, t_s,
                           text=f"{value:.4g} {unit} against {expected:.4g} usual")
    if kind == "stuck":
        hours = score
        active = hours > 0 if is_open else hours >= s.stuck_hours
        start = _f(diag[0])
        return Observation(active, 0.0, hours, int(start) if math.isfinite(start) else t_s,
                           text=f"counter standing still for {hours:.1f} h")
    if kind == "level_shift":
        alarm = _f(diag[0]) == 1.0
        start, step, ref = _f(diag[1]), _f(diag[2]), _f(diag[3])
        inc = step * interval_s / 3600.0 if alarm and math.isfinite(step) else 0.0
        sev = Severity.ALARM if alarm and (not ref > 0 or step >= 0.5 * ref) else Severity.WARNING
        return Observation(
            alarm, max(inc, 0.0), score, int(start) if math.isfinite(start) else t_s, sev,
            f"night base load up {step:.4g} {unit}/h from {ref:.4g} {unit}/h",
        )  # fmt: skip
    if kind == "drift":
        alarm = _f(diag[0]) == 1.0
        dev = _f(diag[1])
        inc = value * dev / (1.0 + dev) if alarm and math.isfinite(value) and dev > 0 else 0.0
        sev = Severity.ALARM if dev >= 3 * s.drift_min_rel else Severity.WARNING
        return Observation(alarm, inc, score, t_s, sev,
                           f"consumption drifting up, {100 * dev:+.0f} % against reference")
    raise ValueError(f"no alert rule for detector {kind!r}")


def event_type(kind: str, resource: str) -> EventType:
    if kind == "level_shift":
        return EventType.LEVEL_SHIFT if resource == "steam" else EventType.BASE_LOAD_RISE
    return EventType(kind)


def _utc(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc)


NIGHTS_KEPT = 21  # the level shift's recent nights, for its onset (an excursion is shorter)


def night_step_onset(nights: list[tuple[int, float]], change_s: int, ref: float,
                     night_s: int) -> tuple[int, int, int]:
    """(earliest moment, first night, latest moment): when a step seen in the nights began.

    ``nights``: (start, weather-normalised mean rate) of the recent nights, oldest first;
    ``change_s``: the start of the night where the detector's CUSUM left zero. That night
    may precede the step: a night a little above the reference plus the CUSUM's allowance
    (half the smallest step worth finding) starts the excursion and is counted in. Which
    of the excursion's nights belong to the step is re-decided with the step's estimated
    size instead (the change point maximising the sum of night - reference - step/2 from
    it on, twice: the step re-estimated from the nights kept). A step first seen in night
    N began after the end of the night before (the last at the reference level) and
    before the end of N: the nights are all this detector sees. The first night is the
    start of N."""
    run = [(t, v - ref) for t, v in nights if t >= change_s and math.isfinite(v)]
    if not run or not math.isfinite(ref):
        return change_s - DAY_S + night_s, change_s, change_s + night_s
    first = 0
    for _ in range(2):
        step = sum(d for _, d in run[first:]) / (len(run) - first)
        tails = [sum(d - 0.5 * step for _, d in run[j:]) for j in range(len(run))]
        first = max(range(len(run)), key=lambda j: (tails[j], -j))
    start = run[first][0]
    before = [t for t, _ in nights if t < start]
    return (max(before) if before else start - DAY_S) + night_s, start, start + night_s


class EventTracker:
    """The open events of one meter, one per detector at most."""

    def __init__(self, site: str, meter: str, settings: AlertSettings,
                 night_s: int = 4 * 3600) -> None:
        self.site = site
        self.meter = meter
        self.settings = settings
        self.night_s = night_s  # the level shift's night window, seconds
        self.open: dict[str, OpenEvent] = {}
        self.nights: list[tuple[int, float]] = []  # level shift: (night start, rate)

    def _event(self, kind: str, ev: OpenEvent, info: MeterInfo, resource: str,
               closed: bool, currency: str) -> Event:
        cost = info.cost(ev.excess)
        since = f"since {_utc(ev.start_s):%Y-%m-%d %H:%M} UTC"
        if ev.earliest_start_s is not None and ev.latest_start_s is not None:
            # a night-time step: first seen in a night, when it began is a range
            since = (f"first seen in the night from {_utc(ev.start_s):%Y-%m-%d %H:%M} UTC; "
                     f"began between {_utc(ev.earliest_start_s):%Y-%m-%d %H:%M} and "
                     f"{_utc(ev.latest_start_s):%Y-%m-%d %H:%M} UTC (seen in the night "
                     "window only)")
        text = (f"{event_type(kind, resource).value} on {self.meter} {since}: "
                f"{ev.explanation}; {ev.excess:.4g} {info.unit} extra"
                + (f", {cost:.2f} {currency}" if cost is not None else ""))
        return Event(
            meter=self.meter, type=event_type(kind, resource), start=_utc(ev.start_s),
            end=_utc(ev.last_end_s) if closed else None, severity=Severity(ev.severity),
            excess=ev.excess, unit=info.unit, cost=cost, co2_kg=info.co2_kg(ev.excess),
            explanation=text, score=ev.score,
        )  # fmt: skip

    def event_id(self, kind: str, ev: OpenEvent, resource: str) -> str:
        return f"{self.site}/{self.meter}/{event_type(kind, resource).value}/{ev.start_s}"

    def step(self, kind: str, t_s: int, interval_s: int, value: float, score: float,
             diag: Any, info: MeterInfo, resource: str, currency: str) -> list[Transition]:
        """Feed one interval's detector output; return what changed."""
        ev = self.open.get(kind)
        obs = observe(kind, ev is not None, t_s, interval_s, value, score, diag,
                      self.settings, info.unit)
        out: list[Transition] = []
        if kind == "level_shift" and math.isfinite(_f(diag[7])):  # a night completed
            self.nights = [*self.nights[1 - NIGHTS_KEPT:], (int(diag[7]), _f(diag[5]))]
        if ev is None:
            if not obs.active:
                return out
            start = min(obs.start_s if obs.start_s is not None else t_s, t_s)
            earliest = latest = None
            if kind == "level_shift":
                earliest, start, latest = (min(x, t_s) for x in night_step_onset(
                    self.nights, start, _f(diag[3]), self.night_s))
            ev = OpenEvent(kind, start, t_s + interval_s, obs.increment, obs.score,
                           obs.severity.value, 0, obs.text, earliest_start_s=earliest,
                           latest_start_s=latest)
            self.open[kind] = ev
            out.append(self._transition("open", kind, ev, info, resource, currency))
            ev.published = True
            return out
        if obs.active:
            ev.quiet = 0
            ev.last_end_s = t_s + interval_s
            ev.excess += obs.increment
            ev.score = max(ev.score, obs.score)
            if obs.severity is Severity.ALARM:
                ev.severity = Severity.ALARM.value
            if obs.text:
                ev.explanation = obs.text
            out.append(self._transition("update", kind, ev, info, resource, currency))
            return out
        ev.quiet += 1
        if ev.quiet >= self.settings.close_after:
            del self.open[kind]
            out.append(self._transition("close", kind, ev, info, resource, currency))
        return out

    def _transition(self, what: str, kind: str, ev: OpenEvent, info: MeterInfo,
                    resource: str, currency: str) -> Transition:
        return Transition(what, self.site, self.event_id(kind, ev, resource),
                          self._event(kind, ev, info, resource, what == "close", currency),
                          resource)

    def snapshot(self) -> dict[str, Any]:
        return {k: asdict(v) for k, v in self.open.items()}

    def restore(self, state: dict[str, Any], nights: list[Any] | None = None) -> None:
        self.open = {k: OpenEvent(**v) for k, v in state.items()}
        self.nights = [(int(t), float(v)) for t, v in nights or []]
