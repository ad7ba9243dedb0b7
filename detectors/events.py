"""Events: what every detector reports, quantified in the meter's unit, money and CO2."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from enum import Enum


class EventType(str, Enum):
    """What was found."""

    SPIKE = "spike"
    STUCK = "stuck"
    LEVEL_SHIFT = "level_shift"  # steam-trap-like step in consumption
    BASE_LOAD_RISE = "base_load_rise"  # night / non-production consumption up (leaks)
    DRIFT = "drift"  # gradual rise (fouling)
    OVERSPEND = "overspend"  # actual above the baseline, accumulated (CUSUM)
    GAP = "gap"  # data missing
    COUNTER_RESET = "counter_reset"  # meter reset or replaced
    ROLLOVER = "rollover"  # counter wrapped (informational)
    IMPOSSIBLE_RATE = "impossible_rate"  # above the meter's rated maximum


class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    ALARM = "alarm"


@dataclass(frozen=True)
class Event:
    """One detection on one meter. ``end`` is None while the event is still open.

    ``excess`` is the extra quantity in the meter's counter unit (``unit``: kWh, m3, kg);
    ``cost`` and ``co2_kg`` follow from the meter's price and emission factor when known.
    """

    meter: str
    type: EventType
    start: dt.datetime  # UTC
    end: dt.datetime | None
    severity: Severity
    excess: float
    unit: str
    cost: float | None = None
    co2_kg: float | None = None
    explanation: str = ""
    score: float = 0.0  # detector-specific strength, higher is more anomalous

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None and value.utcoffset() != dt.timedelta(0):
                raise ValueError(f"Event.{name} must be a UTC datetime, got {value!r}")
        if self.end is not None and self.end < self.start:
            raise ValueError("Event.end is before Event.start")

    @property
    def is_open(self) -> bool:
        return self.end is None

    def overlaps(self, other: Event) -> bool:
        """Same meter and type, and the time spans touch or overlap."""
        if (self.meter, self.type) != (other.meter, other.type):
            return False
        far = dt.datetime.max.replace(tzinfo=dt.timezone.utc)
        return self.start <= (other.end or far) and other.start <= (self.end or far)


_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ALARM: 2}


def _add(a: float | None, b: float | None) -> float | None:
    return None if a is None and b is None else (a or 0.0) + (b or 0.0)


def merge(events: list[Event]) -> list[Event]:
    """Merge overlapping events of the same meter and type; quantities add up."""
    out: list[Event] = []
    for ev in sorted(events, key=lambda e: (e.meter, e.type.value, e.start)):
        if out and out[-1].overlaps(ev):
            last = out[-1]
            end = None if last.end is None or ev.end is None else max(last.end, ev.end)
            out[-1] = replace(
                last,
                end=end,
                severity=max(last.severity, ev.severity, key=_RANK.__getitem__),
                excess=last.excess + ev.excess,
                cost=_add(last.cost, ev.cost),
                co2_kg=_add(last.co2_kg, ev.co2_kg),
                score=max(last.score, ev.score),
                explanation=last.explanation
                if ev.explanation in last.explanation
                else f"{last.explanation} {ev.explanation}".strip(),
            )
        else:
            out.append(ev)
    return sorted(out, key=lambda e: (e.start, e.meter))
