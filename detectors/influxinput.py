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
from collections.abc import Iterable
from typing import Any

import numpy as np

from .arrays import FloatArray, IntArray
from .meter import MeterInfo
from .savings import DAY_S, HOUR_S, SavingsError, Series, _to_local_days
from .service.baselines import Row, to_interval


def parse_target(text: str) -> tuple[str, str]:
    """``influx:SITE/METER`` -> (site, meter)."""
    body = text.removeprefix("influx:")
    site, _, meter = body.partition("/")
    if not site or not meter or "/" in meter:
        raise SavingsError(f"{text!r}: an InfluxDB input is influx:SITE/METER, e.g. "
                           "influx:dairy/steam_main")  # fmt: skip
    return site, meter


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def temperature_flux(bucket: str, site: str, field: str, start: dt.datetime,
                     end: dt.datetime, meters: Iterable[str] = ()) -> str:  # fmt: skip
    """Hourly means of one ``reading`` field of a site (every meter that has it, or
    ``meters``)."""
    pick = list(meters)
    meter_filter = (" and (" + " or ".join(f"r.meter == {_q(m)}" for m in pick) + ")"
                    if pick else "")
    return (
        f"from(bucket: {_q(bucket)})\n"
        f"  |> range(start: {start.isoformat()}, stop: {end.isoformat()})\n"
        f'  |> filter(fn: (r) => r._measurement == "reading" and r._field == {_q(field)}'
        f" and r.site == {_q(site)}{meter_filter})\n"
        "  |> group()\n"
        '  |> aggregateWindow(every: 1h, fn: mean, createEmpty: false, timeSrc: "_start")\n'
    )


def gauge_from_records(records: Iterable[Any]) -> tuple[IntArray, FloatArray]:
    """(UTC epoch seconds, values) of FluxRecords (anything with ``.values``)."""
    ts, vs = [], []
    for rec in records:
        v = rec.values
        if v.get("_value") is None:
            continue
        ts.append(int(v["_time"].timestamp()))
        vs.append(float(v["_value"]))
    return np.asarray(ts, dtype=np.int64), np.asarray(vs, dtype=np.float64)


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
) -> Series:
    """Rows of ``consumption.actual`` (and temperature) -> the grid ``compute_savings`` takes."""
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
    if interval_s == DAY_S:
        t, parts = _to_local_days(t, timezone, [(y, "sum"), (temp, "mean"), (prod, "sum")])
        y = parts[0] if parts[0] is not None else y
        temp, prod = parts[1], parts[2]
    meter_info = info or MeterInfo(meter, mine[0].unit)
    return Series(t, interval_s, y, meter_info, temp, prod, timezone)


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
) -> Series:
    """Query the analytics file's InfluxDB (``spec``: an ``AnalyticsSpec``) for one meter."""
    from influxdb_client import InfluxDBClient

    from .service.baselines import query_rows

    start = dt.datetime.fromtimestamp(start_s, dt.timezone.utc)
    end = dt.datetime.fromtimestamp(end_s, dt.timezone.utc)
    wanted = [meter] + ([production] if production else [])
    rows = query_rows(spec, site, start, end, wanted)
    temperature = None
    if temperature_field:
        cfg = spec.config.influx
        with InfluxDBClient(url=spec.influx_url, token=spec.influx_token or "", org=cfg.org,
                            timeout=int(cfg.timeout_s * 1000)) as client:  # fmt: skip
            text = temperature_flux(cfg.bucket, site, temperature_field, start, end)
            temperature = gauge_from_records(client.query_api().query_stream(text, org=cfg.org))
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
                            temperature=temperature, info=info)  # fmt: skip
