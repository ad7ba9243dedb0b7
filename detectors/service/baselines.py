"""``recp baseline fit``: fit each meter's baseline from the consumption stored in InfluxDB.

Reads the ``consumption`` measurement's ``actual`` field (``docs/influx-schema.md``) of one
site over a baseline period, sums the service's intervals into the baseline's interval
(an hour by default; an hour with a missing or unknown interval is left out), fits
:func:`detectors.baseline.fit_baseline` per meter and writes ``<baselines.dir>/<site>/
<meter>.json``, which ``recp detect`` loads for meters it meets from then on (restart it
to take a refit baseline into use).

A meter whose analytics file names baseline inputs (``temperature_meter``,
``production_meter``; :mod:`.inputs`) is fitted with them, from what the service stored:
outdoor temperature as hourly means of the temperature meter's ``reading`` field (an
interval gets the mean of its hours, a sub-hour interval its hour's), production as the
production meter's ``consumption.actual`` summed like the meter's own. The core's own
selection (:func:`detectors.baseline.fit_baseline`: every combination of degree terms on
the balance-point grid and production terms, by adjusted R2 and significance) then decides
which terms the model keeps.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..baseline import BaselineConfig, BaselineModel, fit_baseline
from ..history import Row, open_history
from ..history.flux import flux, rows_from_records
from .config import AnalyticsSpec
from .inputs import Links

__all__ = ["Row", "fit_site", "flux", "query_rows", "query_temperatures", "rows_from_records",
           "save"]

HOUR_S = 3600


def to_interval(rows: list[Row], interval_s: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum one meter's rows into ``interval_s`` buckets; a bucket with a gap is NaN."""
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0)
    steps = [b.t_s - a.t_s for a, b in itertools.pairwise(rows) if b.t_s > a.t_s]
    step = min(steps) if steps else interval_s
    per_bucket = max(1, interval_s // max(step, 1))
    sums: dict[int, list[float]] = {}
    for r in rows:
        sums.setdefault(r.t_s // interval_s * interval_s, []).append(r.value)
    ts = np.array(sorted(sums), dtype=np.int64)
    ys = np.array([
        math.fsum(v) if len(v) == per_bucket and all(math.isfinite(x) for x in v) else math.nan
        for v in (sums[t] for t in ts.tolist())
    ])  # fmt: skip
    return ts, ys


def temperature_on(ts: np.ndarray, interval_s: int, hourly: tuple[np.ndarray, np.ndarray]
                   ) -> np.ndarray:
    """Mean outdoor temperature per interval starting at ``ts`` from hourly means (epoch
    seconds of hour starts, degrees C): the mean of its hours; NaN without any."""
    ht, hv = hourly
    if interval_s <= HOUR_S:
        means = dict(zip(ht.tolist(), hv.tolist(), strict=True))
        return np.array([means.get(t // HOUR_S * HOUR_S, math.nan) for t in ts.tolist()])
    sums: dict[int, list[float]] = {}
    for t, v in zip(ht.tolist(), hv.tolist(), strict=True):
        if math.isfinite(v):
            sums.setdefault(t // interval_s * interval_s, []).append(v)
    return np.array([math.fsum(sums[t]) / len(sums[t]) if t in sums else math.nan
                     for t in ts.tolist()])


def production_on(ts: np.ndarray, interval_s: int, rows: list[Row]) -> np.ndarray:
    """Units produced per interval starting at ``ts``, from the production meter's stored
    interval consumption (NaN where it has a gap)."""
    pt, pv = to_interval(sorted(rows, key=lambda r: r.t_s), interval_s)
    got = dict(zip(pt.tolist(), pv.tolist(), strict=True))
    return np.array([got.get(t, math.nan) for t in ts.tolist()])


def fit_site(rows: list[Row], config: BaselineConfig, links: dict[str, Links] | None = None,
             temperatures: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
             ) -> dict[str, BaselineModel | str]:
    """meter -> fitted model, or the reason it could not be fitted.

    ``links``: the meters' baseline inputs (:meth:`.inputs.Inputs.of`); ``temperatures``:
    hourly means per temperature meter. The production meter's rows are among ``rows``.
    """
    by_meter: dict[str, list[Row]] = {}
    for r in sorted(rows, key=lambda r: (r.meter, r.t_s)):
        by_meter.setdefault(r.meter, []).append(r)
    out: dict[str, BaselineModel | str] = {}
    for meter, mrows in by_meter.items():
        ts, ys = to_interval(mrows, config.interval_s)
        link = (links or {}).get(meter)
        kwargs: dict[str, Any] = {}
        if link is not None and link.temperature is not None:
            hourly = (temperatures or {}).get(link.temperature.meter)
            temp = (temperature_on(ts, config.interval_s, hourly) if hourly is not None
                    else np.full(ts.size, math.nan))
            if not np.isfinite(temp).any():
                out[meter] = (f"no outdoor temperature ({link.temperature.meter}."
                              f"{link.temperature.value}) stored in the period")
                continue
            kwargs["temperature"] = temp
        if link is not None and link.production is not None:
            prod = production_on(ts, config.interval_s,
                                 by_meter.get(link.production.meter, []))
            if not np.isfinite(prod).any():
                out[meter] = (f"no production ({link.production.meter} consumption) "
                              "stored in the period")
                continue
            kwargs["production"] = prod
        try:
            out[meter] = fit_baseline(ts, ys, meter=meter, unit=mrows[0].unit, config=config,
                                      **kwargs)
        except ValueError as exc:
            out[meter] = str(exc)
    return out


def save(spec: AnalyticsSpec, site: str, model: BaselineModel) -> Path:
    folder = spec.config.baselines.dir
    if folder is None:
        raise ValueError("set baselines.dir in the analytics file to store baselines")
    path = spec.path(folder) / site / f"{model.meter}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(model.to_json(indent=1), encoding="utf-8")
    tmp.replace(path)
    return path


def query_temperatures(spec: AnalyticsSpec, site: str, sources: Iterable[Any],
                       start: dt.datetime, end: dt.datetime
                       ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Hourly means of each temperature source's ``reading`` field, per source meter
    (from the analytics file's database: ``influx.flavor``)."""
    history = open_history(spec)
    return {src.meter: history.hourly_means(site, src.value, start, end, [src.meter])
            for src in sources}


def query_rows(spec: AnalyticsSpec, site: str, start: dt.datetime, end: dt.datetime,
               meters: Iterable[str] = ()) -> list[Row]:
    """One site's stored interval consumption (timeout from influx.timeout_s; a failure is
    a :class:`detectors.history.HistoryError` of one line)."""
    return open_history(spec).consumption(site, start, end, meters)
