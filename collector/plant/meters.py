"""Simulated meters: how much of a resource a meter sees, and what its registers show.

A meter's *rate* (kW, m3/h, kg/h, units/h) is set at the start of every step from the plant
drivers; its *counters* integrate the rate. What the registers show goes through the
device profile, so counters wrap where the real register would.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from ..configfile import ConfigError, Problem
from ..profiles import Profile, ResolvedPoint
from ..quantities import Kind, Resource
from .config import Batch, Load, Meter, Plant
from .drivers import Drivers

# counter quantity -> factor from the resource's canonical total (kWh, m3, kg, units)
COUNTER_FACTORS: dict[str, float] = {
    "energy_kwh": 1.0,
    "volume_m3": 1.0,
    "mass_kg": 1.0,
    "mass_t": 0.001,
    "produced_units": 1.0,
}
# rate quantity -> factor from the canonical rate (kW, m3/h, kg/h, units/h)
RATE_FACTORS: dict[str, float] = {
    "power_kw": 1.0,
    "flow_m3_h": 1.0,
    "mass_flow_kg_h": 1.0,
    "mass_flow_t_h": 0.001,
    "production_rate_units_h": 1.0,
}
PRIMARY_COUNTERS: dict[Resource, tuple[str, ...]] = {
    Resource.ELECTRICITY: ("energy_kwh",),
    Resource.WATER: ("volume_m3",),
    Resource.STEAM: ("mass_kg", "mass_t"),
    Resource.PRODUCTION: ("produced_units",),
}
STEAM_KWH_PER_KG = 0.75  # heat carried by saturated steam above feed water, roughly
STEAM_SETPOINT_BAR = 8.0


def primary_counter(meter: Meter, profile: Profile, file: str) -> ResolvedPoint | None:
    """The point holding the meter's main counter, or None for sensors."""
    names = PRIMARY_COUNTERS.get(profile.resource)
    if names is None:
        return None
    points = {p.name: p for p in profile.resolved()}
    for name in names:
        if name in points:
            return points[name]
    raise ConfigError(
        [
            Problem(
                file,
                None,
                f"meters[{meter.id}].profile",
                f"profile {meter.profile!r} has no {' or '.join(names)} point, "
                f"so it cannot serve as a {profile.resource.value} meter",
            )
        ]
    )


def typical_peak(load: Load, plant: Plant, share: float) -> float:
    """A rough peak rate, used as the default rated maximum."""
    peak = load.base + load.running + load.per_unit * plant.production.rate_units_h * share
    peak += sum(b.rate for b in load.batches)
    if load.heating:
        peak += load.heating.per_degc * 20
    if load.cooling:
        peak += load.cooling.per_degc * 15
    return peak


@dataclass
class MeterState:
    """What a meter has counted so far (canonical units) and its current rates."""

    true_total: float = 0.0  # everything that flowed through, metered or not
    metered_total: float = 0.0  # what the meter counted (resets, stuck spells included)
    reactive_total: float = 0.0  # kvarh, electricity only
    rate: float = 0.0  # rate during the current step, losses included
    normal_rate: float = 0.0  # rate without any injected loss
    frozen: dict[str, float] | None = None  # register values while the meter is stuck
    wraps: dict[str, int] = field(default_factory=dict)  # rollovers seen per counter point


class MeterModel:
    """One meter: its load model and how it presents values through its profile."""

    def __init__(self, meter: Meter, profile: Profile, plant: Plant, file: str):
        self.cfg = meter
        self.id = meter.id
        self.profile = profile
        self.resource = profile.resource
        self.points = profile.resolved()
        # (name, rollover) per point, computed once: values() runs for every sample
        self._layout = [
            (p.name, p.rollover if p.kind is Kind.COUNTER else None) for p in self.points
        ]
        self.primary = primary_counter(meter, profile, file)
        self.primary_factor = COUNTER_FACTORS[self.primary.name] if self.primary else 1.0
        self.primary_rollover = self.primary.rollover if self.primary else None
        self.share = meter.share
        load = meter.load
        self.load = load
        self.max_rate = load.max_rate or max(1.0, 3 * typical_peak(load, plant, meter.share))
        if self.resource is Resource.PRODUCTION and load.max_rate is None:
            self.max_rate = 3 * plant.production.rate_units_h * meter.share
        self._rng = random.Random(f"{plant.seed}/meter/{meter.id}")
        self._aux = random.Random(f"{plant.seed}/aux/{meter.id}")
        self._phi = math.exp(-plant.step_s / 600.0)
        self._noise = 0.0
        self.state = MeterState(metered_total=meter.initial / self.primary_factor)
        self.drivers: Drivers | None = None

    # -- load ---------------------------------------------------------------------------
    def production_part(self, d: Drivers) -> float:
        """The part of the rate that production drives (what overspend scales)."""
        load = self.load
        part = 0.0
        if d.running:
            part += load.running
        part += load.per_unit * d.production_rate * self.share
        for b in load.batches:
            if b.during.value == "production" and d.running and self._in_batch(b, d):
                part += b.rate
        return part

    @staticmethod
    def _in_batch(b: Batch, d: Drivers) -> bool:
        return (d.minute_of_day - b.offset_min) % b.every_min < b.duration_min

    def normal_rate(self, d: Drivers) -> float:
        """Rate without injected losses; draws exactly one random number per step."""
        self._noise = self._phi * self._noise + math.sqrt(1 - self._phi**2) * self._rng.gauss(
            0.0, 1.0
        )
        if self.resource is Resource.PRODUCTION:
            return d.production_rate * self.share
        if self.resource is Resource.WEATHER:
            return 0.0
        load = self.load
        rate = load.base + self.production_part(d)
        for b in load.batches:
            if b.during.value != "production" and d.matches(b.during) and self._in_batch(b, d):
                rate += b.rate
        if load.heating:
            rate += load.heating.per_degc * max(0.0, load.heating.balance_c - d.temperature_c)
        if load.cooling:
            rate += load.cooling.per_degc * max(0.0, d.temperature_c - load.cooling.balance_c)
        return max(0.0, rate * (1 + load.noise * self._noise))

    # -- presentation -------------------------------------------------------------------
    def power_factor(self, rate: float) -> float:
        return 0.78 + 0.17 * min(1.0, 3 * rate / self.max_rate)

    def values(self, d: Drivers, elapsed_s: float) -> dict[str, float]:
        """Register values, in point units, ``elapsed_s`` into the current step.

        Counters are wrapped where the register would roll over; a stuck meter shows what
        it showed when it stuck.
        """
        st = self.state
        if st.frozen is not None:
            return dict(st.frozen)
        hours = elapsed_s / 3600.0
        metered = st.metered_total + st.rate * hours
        rate = st.rate
        aux = self._aux
        q: dict[str, float] = {"status_code": 0.0}
        if self.resource is Resource.ELECTRICITY:
            pf = self.power_factor(rate)
            reactive = rate * math.tan(math.acos(pf))
            q.update(
                energy_kwh=metered,
                energy_export_kwh=0.0,
                reactive_energy_kvarh=st.reactive_total + reactive * hours,
                power_kw=rate,
                reactive_power_kvar=reactive,
                apparent_power_kva=rate / pf,
                power_factor=pf,
                frequency_hz=50.0 + aux.gauss(0.0, 0.02),
            )
            for i, share in enumerate((0.34, 0.33, 0.33), start=1):
                volts = 230.0 + aux.gauss(0.0, 1.2)
                q[f"voltage_l{i}_v"] = volts
                q[f"power_l{i}_kw"] = rate * share
                q[f"current_l{i}_a"] = rate * share * 1000.0 / (volts * pf)
        elif self.resource is Resource.WATER:
            q.update(volume_m3=metered, flow_m3_h=rate, temperature_c=12.0 + aux.gauss(0, 0.1))
        elif self.resource is Resource.STEAM:
            pressure = STEAM_SETPOINT_BAR - 1.5 * min(1.0, rate / self.max_rate)
            pressure += aux.gauss(0.0, 0.05)
            # saturation temperature from absolute pressure, within a degree or two
            temp = 100.0 * (pressure + 1.013) ** 0.25 + aux.gauss(0.0, 0.2)
            q.update(
                mass_kg=metered,
                mass_t=metered * COUNTER_FACTORS["mass_t"],
                mass_flow_kg_h=rate,
                mass_flow_t_h=rate * RATE_FACTORS["mass_flow_t_h"],
                heat_kwh=metered * STEAM_KWH_PER_KG,
                pressure_bar=pressure,
                temperature_c=temp,
            )
        elif self.resource is Resource.PRODUCTION:
            q.update(
                produced_units=metered,
                production_rate_units_h=rate,
                line_running=1.0 if d.running else 0.0,
            )
        else:
            q.update(
                outdoor_temperature_c=d.temperature_c + aux.gauss(0.0, 0.05),
                outdoor_humidity_pct=d.humidity_pct,
            )
        out: dict[str, float] = {}
        for name, rollover in self._layout:
            value = q.get(name, 0.0)
            out[name] = value % rollover if rollover else value
        return out

    def advance(self, hours: float, metering: bool) -> None:
        """Integrate the current rate over one step."""
        st = self.state
        st.true_total += st.rate * hours
        if metering:
            st.metered_total += st.rate * hours
            if self.resource is Resource.ELECTRICITY:
                pf = self.power_factor(st.rate)
                st.reactive_total += st.rate * math.tan(math.acos(pf)) * hours
