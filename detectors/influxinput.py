"""``recp savings`` input from InfluxDB: what ``recp detect`` stored (docs/influx-schema.md).

Consumption is the ``consumption`` measurement's ``actual`` field of one meter (interval
consumption in the counter's unit, the service's 15-minute grid), summed into hours (an hour
with a missing interval is unknown), read with the same query as ``recp baseline fit``
(:mod:`detectors.service.baselines`). Production is the ``actual`` of a production meter of
the same site (units per interval). Outdoor temperature is a field of the ``reading``
measurement (``outdoor_temperature_c``), averaged per hour by the database.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np

from .arrays import FloatArray, IntArray
from .history import Row
from .meter import MeterInfo
from .savings import HOUR_S, SavingsError, Series, grid_series
from .service.baselines import to_interval


def parse_target(text: str) -> tuple[str, str]:
    """``influx:SITE/METER`` -> (site, meter)."""
    body = text.removeprefix("influx:")
    site, _, meter = body.partition("/")
    if not site or not meter or "/" in meter:
        raise SavingsError(f"{text!r}: an InfluxDB input is influx:SITE/METER, e.g. "
                           "influx:dairy/steam_main")  # fmt: skip
    return site, meter


def _place(t: IntArray, v: FloatArray, lo: int, n: int, how: str) -> FloatArray:
    """Values at hour starts -> an hourly grid of n hours from lo (sum or mean per hour)."""
    out = np.full(n, np.nan)
    idx = (t - lo) // HOUR_S
    ok = (idx >= 0) & (idx < n)
    if not ok.any():
        return out
    total = np.bincount(idx[ok], np.nan_to_num(v[ok]), n)
    count = np.bincount(idx[ok], minlength=n)
    bad = np.bincount(idx[ok], (~np.isfinite(v[ok])).astype(np.float64), n) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        value = total if how == "sum" else total / np.maximum(count, 1)
    out[(count > 0) & ~bad] = value[(count > 0) & ~bad]
    return out


def series_from_rows(
    rows: list[Row],
    meter: str,
    *,
    start_s: int,
    end_s: int,
    interval_s: int = HOUR_S,
    timezone: str = "UTC",
    production: str | None = None,
    temperature: tuple[IntArray, FloatArray] | None = None,
    info: MeterInfo | None = None,
    fill_days: bool = False,
) -> Series:
    """Rows of ``consumption.actual`` (and temperature) -> the grid ``compute_savings`` takes.

    ``fill_days``: a local day with at least half its hours known is known, as
    :func:`detectors.savings.prepare` has it (CalTRACK 2.2.2.1)."""
    by_meter: dict[str, list[Row]] = {}
    for r in sorted(rows, key=lambda r: (r.meter, r.t_s)):
        by_meter.setdefault(r.meter, []).append(r)
    mine = by_meter.get(meter)
    if not mine:
        found = ", ".join(sorted(by_meter)) or "no meter at all"
        raise SavingsError(f"InfluxDB has no consumption of {meter} in the periods ({found})")
    lo = start_s // HOUR_S * HOUR_S
    n = (-(-end_s // HOUR_S) * HOUR_S - lo) // HOUR_S
    t = lo + HOUR_S * np.arange(n, dtype=np.int64)
    y = _place(*to_interval(mine, HOUR_S), lo, n, "sum")
    prod = None
    if production is not None:
        prows = by_meter.get(production)
        if not prows:
            raise SavingsError(f"InfluxDB has no consumption of the production meter {production}")
        prod = _place(*to_interval(prows, HOUR_S), lo, n, "sum")
    temp = None
    if temperature is not None:
        if temperature[0].size == 0:
            raise SavingsError("InfluxDB has no outdoor temperature readings in the periods")
        temp = _place(temperature[0], temperature[1], lo, n, "mean")
    meter_info = info or MeterInfo(meter, mine[0].unit)
    return grid_series(t, interval_s, y, meter_info, temp, prod, timezone, fill_days=fill_days)


def query_series(
    spec: Any,
    site: str,
    meter: str,
    start_s: int,
    end_s: int,
    *,
    interval_s: int = HOUR_S,
    timezone: str = "UTC",
    production: str | None = None,
    temperature_field: str | None = None,
    price: float | None = None,
    co2: float | None = None,
    fill_days: bool = False,
) -> Series:
    """Read one meter from the analytics file's database (``spec``: an ``AnalyticsSpec``;
    InfluxDB 2 or VictoriaMetrics by ``influx.flavor``)."""
    from .history import open_history

    start = dt.datetime.fromtimestamp(start_s, dt.timezone.utc)
    end = dt.datetime.fromtimestamp(end_s, dt.timezone.utc)
    wanted = [meter] + ([production] if production else [])
    history = open_history(spec)
    rows = history.consumption(site, start, end, wanted)
    temperature = None
    if temperature_field:
        temperature = history.hourly_means(site, temperature_field, start, end)
    unit = next((r.unit for r in rows if r.meter == meter), "")
    settings = spec.site(site)
    info = MeterInfo(
        meter,
        unit,
        price_per_unit=price if price is not None else settings.price_per_unit.get(unit),
        co2_kg_per_unit=co2 if co2 is not None else settings.co2_kg_per_unit.get(unit),
    )
    return series_from_rows(rows, meter, start_s=start_s, end_s=end_s, interval_s=interval_s,
                            timezone=timezone, production=production,
                            temperature=temperature, info=info,
                            fill_days=fill_days)  # fmt: skip
