"""The vocabulary of measured quantities: every published value has one of these names.

A name carries its unit (``energy_kwh``, ``flow_m3_h``), so a number never travels without
it. Device profiles map registers onto these names; the virtual plant produces them; the
detectors read them. A name outside this table is a configuration error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum


class Resource(str, Enum):
    """What a meter measures."""

    ELECTRICITY = "electricity"
    WATER = "water"
    STEAM = "steam"
    PRODUCTION = "production"
    WEATHER = "weather"
    CLOCK = "clock"  # a time source (a PLC's real-time clock), not a meter


class Kind(str, Enum):
    """How a value behaves over time."""

    COUNTER = "counter"  # cumulative, only grows (until rollover or meter reset)
    GAUGE = "gauge"  # instantaneous value
    STATE = "state"  # on/off or enumerated status


@dataclass(frozen=True)
class Quantity:
    """One named quantity with its unit and behaviour."""

    name: str
    unit: str
    kind: Kind
    description: str


def _q(name: str, unit: str, kind: Kind, description: str) -> Quantity:
    return Quantity(name, unit, kind, description)


C, G, S = Kind.COUNTER, Kind.GAUGE, Kind.STATE

QUANTITIES: dict[str, Quantity] = {
    q.name: q
    for q in (
        # electricity
        _q("energy_kwh", "kWh", C, "active energy imported"),
        _q("energy_export_kwh", "kWh", C, "active energy exported"),
        _q("reactive_energy_kvarh", "kvarh", C, "reactive energy imported"),
        _q("power_kw", "kW", G, "total active power"),
        _q("reactive_power_kvar", "kvar", G, "total reactive power"),
        _q("apparent_power_kva", "kVA", G, "total apparent power"),
        _q("power_factor", "1", G, "total power factor"),
        _q("frequency_hz", "Hz", G, "supply frequency"),
        _q("voltage_l1_v", "V", G, "phase 1 to neutral voltage"),
        _q("voltage_l2_v", "V", G, "phase 2 to neutral voltage"),
        _q("voltage_l3_v", "V", G, "phase 3 to neutral voltage"),
        _q("current_l1_a", "A", G, "phase 1 current"),
        _q("current_l2_a", "A", G, "phase 2 current"),
        _q("current_l3_a", "A", G, "phase 3 current"),
        _q("power_l1_kw", "kW", G, "phase 1 active power"),
        _q("power_l2_kw", "kW", G, "phase 2 active power"),
        _q("power_l3_kw", "kW", G, "phase 3 active power"),
        # water and other liquids
        _q("volume_m3", "m3", C, "volume passed"),
        _q("flow_m3_h", "m3/h", G, "volume flow"),
        # steam
        _q("mass_kg", "kg", C, "steam mass passed"),
        _q("mass_t", "t", C, "steam mass passed"),
        _q("mass_flow_kg_h", "kg/h", G, "steam mass flow"),
        _q("mass_flow_t_h", "t/h", G, "steam mass flow"),
        _q("heat_kwh", "kWh", C, "heat (energy) carried by the medium"),
        _q("pressure_bar", "bar", G, "gauge pressure"),
        _q("temperature_c", "degC", G, "medium temperature"),
        # production
        _q("produced_units", "units", C, "good units produced"),
        _q("production_rate_units_h", "units/h", G, "production rate"),
        _q("line_running", "1", S, "production line running (1) or stopped (0)"),
        # weather
        _q("outdoor_temperature_c", "degC", G, "outdoor air temperature"),
        _q("outdoor_humidity_pct", "%", G, "outdoor relative humidity"),
        # time source (a PLC's real-time clock, the virtual plant's simulated clock)
        _q("clock_unix_ms", "ms", G, "the device's time, milliseconds since 1970-01-01 UTC"),
        _q("clock_rate", "s/s", G, "seconds the device's clock advances per real second"),
        # device status
        _q("status_code", "1", S, "device status or error register"),
    )
}


def get(name: str) -> Quantity:
    """Return the quantity called ``name`` or raise ``KeyError`` naming the known ones."""
    try:
        return QUANTITIES[name]
    except KeyError:
        raise KeyError(
            f"unknown quantity {name!r}; known quantities: {', '.join(sorted(QUANTITIES))}"
        ) from None


def _slug(unit: str) -> str:
    return unit.lower().replace("/", "_")


# The units of the contract's counters, by the suffix that names them (`_kwh`, `_m3`, `_t`).
COUNTER_UNIT_SUFFIXES: dict[str, str] = {
    _slug(q.unit): q.unit
    for q in QUANTITIES.values()
    if q.kind is Kind.COUNTER and q.name.endswith("_" + _slug(q.unit))
}

# What a meter counting in a unit measures (kWh may be heat: say so with --resource steam).
UNIT_RESOURCES: dict[str, Resource] = {
    "kWh": Resource.ELECTRICITY,
    "kvarh": Resource.ELECTRICITY,
    "m3": Resource.WATER,
    "kg": Resource.STEAM,
    "t": Resource.STEAM,
    "units": Resource.PRODUCTION,
}


def counter_unit_in_name(name: str) -> tuple[str, str] | None:
    """(suffix, unit) when a column name ends in a counter unit (`total_kwh`, `Verbrauch kWh`,
    `volume [m3]`), else None: an exported column carries its unit the way our names do."""
    words = [w for w in re.split(r"[^0-9a-z]+", name.lower()) if w]
    if len(words) < 2 or words[-1] not in COUNTER_UNIT_SUFFIXES:
        return None
    return words[-1], COUNTER_UNIT_SUFFIXES[words[-1]]
