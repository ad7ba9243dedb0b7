"""What the detectors need to know about a meter: its unit, limits, price and CO2 factor."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from collector.quantities import QUANTITIES

# Factor from the first unit to the second, for the units a rate and its counter may use.
_UNIT_FACTORS: dict[tuple[str, str], float] = {
    ("kg", "t"): 0.001,
    ("t", "kg"): 1000.0,
    ("Wh", "kWh"): 0.001,
    ("kWh", "Wh"): 1000.0,
    ("kWh", "MWh"): 0.001,
    ("MWh", "kWh"): 1000.0,
    ("l", "m3"): 0.001,
    ("m3", "l"): 1000.0,
}
# Rate units whose numerator is not written out (power in kW integrates to kWh).
_RATE_NUMERATORS = {"kW": "kWh", "W": "Wh", "MW": "MWh"}


@dataclass(frozen=True)
class MeterInfo:
    """One meter as the detectors see it; every quantity is in the counter's unit.

    ``max_rate_per_h`` is the rated maximum in counter units per hour (None: unknown);
    ``rollover`` the value at which the counter register wraps (None: never, or unknown).
    """

    id: str
    unit: str
    resource: str = ""
    price_per_unit: float | None = None
    co2_kg_per_unit: float | None = None
    rollover: float | None = None
    max_rate_per_h: float | None = None

    def cost(self, quantity: float) -> float | None:
        """Money for ``quantity`` counter units, None without a price."""
        return None if self.price_per_unit is None else quantity * self.price_per_unit

    def co2_kg(self, quantity: float) -> float | None:
        """CO2 in kg for ``quantity`` counter units, None without a factor."""
        return None if self.co2_kg_per_unit is None else quantity * self.co2_kg_per_unit

    @classmethod
    def from_manifest(cls, meter_id: str, entry: Mapping[str, Any]) -> MeterInfo:
        """From one entry of the virtual plant's ``meters.json`` (same keys as the site file).

        The rated maximum is given for the rate column (kg/h for a counter in t, say) and is
        converted to counter units per hour here.
        """
        unit = entry.get("counter_unit")
        if not unit:
            raise ValueError(f"meter {meter_id} has no counter (counter_unit is empty)")
        max_rate = entry.get("max_rate")
        rate = entry.get("rate")
        per_h = None
        if max_rate is not None and rate:
            per_h = float(max_rate) * rate_to_counter_factor(QUANTITIES[rate].unit, unit)
        rollover = entry.get("rollover")
        return cls(
            id=meter_id,
            unit=unit,
            resource=entry.get("resource", ""),
            price_per_unit=entry.get("price_per_unit"),
            co2_kg_per_unit=entry.get("co2_kg_per_unit"),
            rollover=float(rollover) if rollover else None,
            max_rate_per_h=per_h,
        )


def rate_to_counter_factor(rate_unit: str, counter_unit: str) -> float:
    """Factor turning a rate (``kg/h``, ``kW``) into counter units (``t``, ``kWh``) per hour."""
    numerator = _RATE_NUMERATORS.get(rate_unit)
    if numerator is None:
        if not rate_unit.endswith("/h"):
            raise ValueError(f"rate unit {rate_unit!r} is not per hour; give max_rate_per_h")
        numerator = rate_unit[:-2]
    if numerator == counter_unit:
        return 1.0
    try:
        return _UNIT_FACTORS[(numerator, counter_unit)]
    except KeyError:
        raise ValueError(
            f"cannot convert a rate in {rate_unit} to counter units of {counter_unit}; "
            "give max_rate_per_h in counter units per hour"
        ) from None
