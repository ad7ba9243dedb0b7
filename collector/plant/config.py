"""The plant file (``kind: plant``): meters, their loads, the schedule, weather and losses.

Rates are in the meter's rate unit (kW for electricity, m3/h for water, kg/h for steam,
units/h for production); counters in the matching quantity (kWh, m3, kg, units).
Times in the file are UTC (``2026-01-05T00:00:00Z``); shifts and breaks are local
wall-clock times in the plant's ``timezone``.
"""

from __future__ import annotations

import datetime as dt
import re
from enum import Enum
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, Field, field_validator, model_validator

from ..configfile import Strict

_ID = r"^[a-z][a-z0-9_]{0,47}$"
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        raise ValueError("give the time zone, e.g. 2026-01-05T00:00:00Z for UTC")
    return value.astimezone(dt.timezone.utc)


UtcTime = Annotated[dt.datetime, AfterValidator(_utc)]


def _clock_range(text: str) -> tuple[int, int]:
    """``"06:00-14:00"`` -> minutes after midnight (start, end); end may pass midnight."""
    m = _CLOCK.match(text.strip())
    if not m:
        raise ValueError(f"expected a clock range like 06:00-14:00, got {text!r}")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 24 or h2 > 24 or m1 > 59 or m2 > 59:
        raise ValueError(f"{text!r} is not a valid time range")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if end <= start:
        end += 24 * 60  # a night shift ending after midnight
    return start, end


ClockRange = Annotated[str, AfterValidator(lambda s: (_clock_range(s), s)[1])]


class Weather(Strict):
    """Outdoor temperature: yearly and daily cycles plus slow random weather."""

    mean_c: float = 10.0
    annual_amplitude_c: float = Field(9.0, ge=0)
    daily_amplitude_c: float = Field(4.0, ge=0)
    noise_c: float = Field(2.0, ge=0, description="spread of the multi-day weather swings")


class Schedule(Strict):
    """When production runs: shifts on workdays, minus breaks and holidays."""

    workdays: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS[:5]))
    shifts: list[ClockRange] = Field(default_factory=lambda: ["06:00-14:00", "14:00-22:00"])
    breaks: list[ClockRange] = Field(default_factory=list)
    holidays: list[dt.date] = Field(default_factory=list)


class Production(Strict):
    """The plant's output while running."""

    rate_units_h: float = Field(1000.0, gt=0)
    noise: float = Field(0.05, ge=0, le=0.5, description="relative spread of the rate")


class When(str, Enum):
    """Part of the time a load component or loss is active."""

    ALWAYS = "always"
    PRODUCTION = "production"  # while the line runs
    NON_PRODUCTION = "non_production"
    WORKDAY = "workday"  # on working days (any hour)


class Batch(Strict):
    """Repeating batch load: dyeing batches, cleaning-in-place (CIP) cycles."""

    every_min: float = Field(gt=0)
    duration_min: float = Field(gt=0)
    rate: float = Field(gt=0)
    offset_min: float = Field(0.0, ge=0, description="minutes after local midnight of a cycle")
    during: When = When.PRODUCTION

    @model_validator(mode="after")
    def _fits(self) -> Batch:
        if self.duration_min > self.every_min:
            raise ValueError("duration_min must not exceed every_min")
        return self


class DegreeTerm(Strict):
    """Weather-dependent load: ``per_degc`` for every degree beyond ``balance_c``."""

    balance_c: float
    per_degc: float = Field(ge=0)


class Load(Strict):
    """How much a meter's resource is used, as a rate in the meter's rate unit."""

    base: float = Field(0.0, ge=0, description="always on")
    running: float = Field(0.0, ge=0, description="extra while production runs")
    per_unit: float = Field(0.0, ge=0, description="per unit produced (rate unit * h / unit)")
    heating: DegreeTerm | None = None
    cooling: DegreeTerm | None = None
    batches: list[Batch] = Field(default_factory=list)
    noise: float = Field(0.03, ge=0, le=0.5, description="relative spread, slowly varying")
    max_rate: float | None = Field(
        None, gt=0, description="rated maximum of the meter (default: 3x the typical peak)"
    )


class Meter(Strict):
    """One simulated meter, served on a TCP port under a unit id."""

    id: str = Field(pattern=_ID)
    name: str = ""
    profile: str
    port: int = Field(ge=0, le=65535)
    unit_id: int = Field(1, ge=1, le=247)
    framing: Literal["tcp", "rtu"] = Field(
        "tcp",
        description="tcp: Modbus TCP; rtu: RTU frames over TCP, as a transparent serial "
        "gateway sends them (every meter on the port must say the same)",
    )
    load: Load = Load()
    share: float = Field(
        1.0, gt=0, le=1, description="production counters: share of the plant's output"
    )
    initial: float = Field(0.0, ge=0, description="counter reading at the start")
    price_per_unit: float | None = Field(None, ge=0, description="money per counter unit")
    co2_kg_per_unit: float | None = Field(None, ge=0, description="CO2 per counter unit")


class LossType(str, Enum):
    """What can be injected. The first group adds real consumption (with an excess)."""

    LEAK = "leak"  # water: constant extra flow
    BASE_LOAD_RISE = "base_load_rise"  # electricity: compressed-air leaks, equipment left on
    STEAM_TRAP = "steam_trap"  # steam: a trap failed open, a constant step
    DRIFT = "drift"  # gradual fouling: extra grows linearly to fraction * load
    OVERSPEND = "overspend"  # production-driven load up by factor (specific consumption)
    SPIKES = "spikes"  # short bursts of extra consumption
    STUCK = "stuck"  # registers freeze; consumption goes unmetered
    ROLLOVER = "rollover"  # the counter register wraps around at `at`
    RESET = "reset"  # meter reset or replacement: counter jumps to `to`
    DROPOUT = "dropout"  # the meter does not answer
    EXCEPTION = "exception"  # the meter answers with a Modbus exception code


# the exception codes a served meter can answer with (pymodbus' ExcCodes; any other code
# would be answered as 4, device failure)
MODBUS_EXCEPTION_CODES = (1, 2, 3, 4, 5, 6, 7, 8, 10, 11)

RATE_LOSSES = {LossType.LEAK, LossType.BASE_LOAD_RISE, LossType.STEAM_TRAP}
WINDOW_TYPES = RATE_LOSSES | {
    LossType.DRIFT,
    LossType.OVERSPEND,
    LossType.SPIKES,
    LossType.STUCK,
    LossType.DROPOUT,
    LossType.EXCEPTION,
}
INSTANT_TYPES = {LossType.ROLLOVER, LossType.RESET}


class Loss(Strict):
    """One injected loss or fault on one meter."""

    meter: str
    type: LossType
    start: UtcTime | None = None
    end: UtcTime | None = Field(None, description="omit for a loss still open at the end")
    at: UtcTime | None = Field(None, description="for rollover and reset")
    rate: float | None = Field(None, gt=0, description="leak, base_load_rise, steam_trap")
    when: When = When.ALWAYS
    fraction: float | None = Field(None, gt=0, le=5, description="drift: final extra share")
    factor: float | None = Field(None, gt=1, le=5, description="overspend: load multiplier")
    count: int | None = Field(None, ge=1, le=10000, description="spikes: how many")
    magnitude: float | None = Field(None, gt=1, le=100, description="spikes: rate multiplier")
    duration_min: float = Field(5.0, gt=0, description="spikes: length of each")
    to: float = Field(0.0, ge=0, description="reset: counter value after the reset")
    probability: float = Field(1.0, gt=0, le=1, description="dropout/exception: share of polls")
    code: int = Field(4, ge=1, le=255, description="exception: Modbus exception code")
    note: str = ""

    @field_validator("code")
    @classmethod
    def _servable_code(cls, code: int) -> int:
        if code not in MODBUS_EXCEPTION_CODES:
            *head, last = MODBUS_EXCEPTION_CODES
            raise ValueError(f"a Modbus exception code: {', '.join(map(str, head))} or {last}")
        return code

    @model_validator(mode="after")
    def _params(self) -> Loss:
        t = self.type
        if t in WINDOW_TYPES:
            if self.start is None:
                raise ValueError(f"{t.value} needs start")
            if self.end is not None and self.end <= self.start:
                raise ValueError("end must be after start")
            if self.at is not None:
                raise ValueError(f"{t.value} takes start/end, not at")
        if t in INSTANT_TYPES:
            if self.at is None:
                raise ValueError(f"{t.value} needs at")
            if self.start is not None or self.end is not None:
                raise ValueError(f"{t.value} happens at one instant: give at, not start/end")
        needs = {
            **{lt: "rate" for lt in RATE_LOSSES},
            LossType.DRIFT: "fraction",
            LossType.OVERSPEND: "factor",
            LossType.SPIKES: "count",
        }
        field = needs.get(t)
        if field and getattr(self, field) is None:
            raise ValueError(f"{t.value} needs {field}")
        if t is LossType.SPIKES and self.magnitude is None:
            raise ValueError("spikes needs magnitude (rate multiplier, e.g. 4)")
        if t is LossType.SPIKES and self.end is None:
            raise ValueError("spikes needs an end")
        return self


class ClockStep(Strict):
    """The served clock set forward or back at a simulated moment, as when someone adjusts
    a PLC's clock: from ``at`` on it reads ``by_s`` more (negative: less) than before. The
    plant's own time, its meters and its record of reads are not moved."""

    at: UtcTime
    by_s: float = Field(description="seconds added to the clock's reading (negative: back)")


class ClockDevice(Strict):
    """The plant's simulated clock served as a Modbus time source (an agent can stamp its
    readings with it: site file ``clock.source: device``)."""

    port: int = Field(ge=0, le=65535, description="TCP port (may be a meters' gateway port)")
    unit_id: int = Field(1, ge=1, le=247)
    profile: str = Field("recp_clock", description="a time source profile")
    steps: list[ClockStep] = Field(
        default_factory=list, description="clock steps (fault injection), in simulated time")

    def offset_s(self, t: float) -> float:
        """How far the served clock is from the plant's time at simulated time ``t``."""
        return sum(s.by_s for s in self.steps if s.at.timestamp() <= t)


class Plant(Strict):
    """A virtual plant (``kind: plant``)."""

    kind: Literal["plant"]
    name: str = Field(pattern=_ID)
    description: str = ""
    timezone: str = "UTC"
    start: UtcTime
    days: float | None = Field(30.0, gt=0, description="scenario length; null runs for ever")
    seed: int = 1
    step_s: float = Field(60.0, ge=1, le=3600, description="simulation step in seconds")
    speed: float = Field(
        8640.0, ge=0, description="simulated seconds per wall second when serving (1: real time)"
    )
    host: str = "127.0.0.1"
    weather: Weather = Weather()
    schedule: Schedule = Schedule()
    production: Production = Production()
    meters: list[Meter] = Field(min_length=1)
    losses: list[Loss] = Field(default_factory=list)
    clock: ClockDevice | None = Field(
        None, description="serve the simulated time as a Modbus time source")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {name!r} (use e.g. Europe/Vienna or UTC)"
            ) from None
        return name

    @model_validator(mode="after")
    def _cross_checks(self) -> Plant:
        ids = [m.id for m in self.meters]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"meter ids must be unique; repeated: {', '.join(dup)}")
        seen: dict[tuple[int, int], str] = {}
        framing: dict[int, tuple[str, str]] = {}
        for m in self.meters:
            other = framing.setdefault(m.port, (m.framing, m.id))
            if other[0] != m.framing:
                raise ValueError(
                    f"meters {other[1]} and {m.id} share port {m.port} but not its framing "
                    f"({other[0]} vs {m.framing})"
                )
            key = (m.port, m.unit_id)
            if key in seen:
                raise ValueError(
                    f"meters {seen[key]} and {m.id} both use port {m.port} unit {m.unit_id}"
                )
            seen[key] = m.id
        if self.clock is not None and (self.clock.port, self.clock.unit_id) in seen:
            raise ValueError(
                f"clock: port {self.clock.port} unit {self.clock.unit_id} is meter "
                f"{seen[(self.clock.port, self.clock.unit_id)]}"
            )
        for i, loss in enumerate(self.losses):
            if loss.meter not in ids:
                raise ValueError(
                    f"losses[{i}].meter: no meter {loss.meter!r}; meters: {', '.join(ids)}"
                )
        return self

    @property
    def end(self) -> dt.datetime | None:
        if self.days is None:
            return None
        return self.start + dt.timedelta(days=self.days)
