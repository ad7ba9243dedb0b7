"""Savings verification (IPMVP Option B/C): adjusted baseline, avoided consumption, Guideline 14.

A baseline (:func:`detectors.baseline.fit_baseline`: time of week, outdoor temperature,
production) is fitted on the baseline period and projected over the reporting period with
the reporting period's own temperature and production: the *adjusted baseline*, what the
meter would have used without the intervention. Then

* avoided consumption = sum(adjusted baseline - actual) over the reporting intervals where
  both are known (IPMVP "avoided energy use");
* normalised savings = a second model fitted on the reporting period, and both models run
  on the baseline period's conditions: the saving under fixed (baseline) conditions;
* its uncertainty = ASHRAE Guideline 14-2014's fractional savings uncertainty at 68, 80 and
  90 % confidence (:mod:`detectors.mv`), with the autocorrelation-corrected n';
* a verdict: Guideline 14 thresholds on the baseline fit (CV(RMSE), NMBE), the savings
  uncertainty rule (below 50 % of the savings at 68 %) and data sufficiency (period lengths,
  coverage, every time-of-week slot seen).

:func:`prepare` turns raw readings (a counter, or consumption per row) and the drivers into
one regular grid; :func:`compute_savings` does the rest and returns a :class:`Savings`.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from . import mv
from .arrays import FloatArray, IntArray, as_timestamps, as_values
from .baseline import BaselineConfig, BaselineModel, fit_baseline, tz_offsets
from .caltrack_hourly import (
    CaltrackHourlyConfig,
    CaltrackHourlyModel,
    fit_caltrack_hourly,
    month_names,
    week_hours_and_months,
)
from .clean import clean_counter, resample_gauge
from .meter import MeterInfo

HOUR_S = 3600
DAY_S = 86400
ValueKind = Literal["counter", "interval", "rate"]
Method = Literal["hourly", "daily", "caltrack-daily", "caltrack-hourly"]
Model = BaselineModel | CaltrackHourlyModel
METHODS: dict[str, str] = {
    "hourly": "hourly: hour-of-week levels, heating/cooling degree terms with searched balance "
    "points (CalTRACK hourly's terms) and production terms, least squares on the baseline hours",
    "caltrack-hourly": "caltrack-hourly (CalTRACK 2.0 hourly method, as eemeter 4.1.1): a "
    "model per calendar month, weighted least squares on the month (weight 1) and its two "
    "neighbours (weight 1/2); 168 hour-of-week levels; hours of the week occupied when more "
    "than 65 % of their residuals from an HDD(50 degF)/CDD(65 degF) fit are positive; "
    "piecewise-linear temperature bins (edges 30, 45, 55, 65, 75, 90 degF, merged until "
    "each holds 20 hours) apart for occupied and unoccupied hours; data sufficiency: a "
    "365-day baseline",
    "daily": "daily (CalTRACK 2.0 daily method with our significance rule): daily totals "
    "(a day with an unknown hour is unknown), heating/cooling degree days of the daily mean "
    "temperature, balance points searched over 30-90 degF (-1.1-32.2 C) in 1 degF steps, "
    "intercept-only, HDD, CDD and HDD+CDD candidates (and production terms) chosen by "
    "adjusted R2, intercept not negative, slopes positive and significant at p < 0.1 (our "
    "rule; CalTRACK 2.0 has none), at least 10 days and 20 degF-days of degree days; data "
    "sufficiency: a 365-day baseline with 90 % of its days valid",
    "caltrack-daily": "caltrack-daily (CalTRACK 2.0 daily method as the spec states it): "
    "daily totals (a day with at least half its hours known, the unknown ones filled with "
    "the mean of the known), heating/cooling degree days of the daily mean temperature, "
    "balance points searched over 30-90 degF (-1.1-32.2 C) in 1 degF steps, "
    "intercept-only, HDD, CDD and HDD+CDD candidates chosen by adjusted R2, intercept and "
    "slopes not negative (no p-value rule), at least 10 days and 20 degF-days of degree "
    "days; data sufficiency: a 365-day baseline with 90 % of its days valid",
}


class SavingsError(ValueError):
    """The inputs cannot give a savings figure at all (the message says why and what to do)."""


# --------------------------------------------------------------------------- periods


@dataclass(frozen=True)
class Period:
    """[start, end) in UTC epoch seconds."""

    start_s: int
    end_s: int

    @classmethod
    def parse(cls, text: str, name: str = "period", timezone: str = "UTC") -> Period:
        """``START..END``: ISO dates or date-times; a date-only END includes that day.

        Dates and date-times without an offset are local time in ``timezone`` (a plant's
        day starts at its local midnight); ``Z`` or an offset is taken as written.
        """
        _zone(timezone)
        parts = text.split("..")
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise SavingsError(
                f"--{name} {text!r}: expected START..END, e.g. 2026-01-05..2026-02-15"
            )
        try:
            start = parse_local(parts[0], timezone)
            end = parse_local(parts[1], timezone, end=True)
        except ValueError:
            raise SavingsError(
                f"--{name} {text!r}: START and END must be ISO dates or date-times "
                "(2026-01-05 or 2026-01-05T06:00:00Z)"
            ) from None
        if end <= start:
            raise SavingsError(f"--{name} {text!r}: END must be after START")
        return cls(start, end)

    @property
    def days(self) -> float:
        return (self.end_s - self.start_s) / DAY_S

    def label(self) -> str:
        return f"{_iso(self.start_s)}..{_iso(self.end_s)}"

    def local_label(self, timezone: str) -> str:
        """``2026-01-05 00:00 to 2026-02-16 00:00 Europe/Vienna`` for people."""
        zone = _zone(timezone)

        def f(t: int) -> str:
            return dt.datetime.fromtimestamp(t, zone).strftime("%Y-%m-%d %H:%M")

        return f"{f(self.start_s)} to {f(self.end_s)} {timezone}"

    def contains(self, t_s: IntArray) -> np.ndarray:
        return (t_s >= self.start_s) & (t_s < self.end_s)


def parse_local(text: str, timezone: str = "UTC", *, end: bool = False) -> int:
    """Epoch seconds of an ISO date or date-time; no offset means local ``timezone`` time.

    With ``end``, a date without a time means the end of that day (next local midnight).
    """
    zone = _zone(timezone)
    raw = text.strip()
    value = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    if end and len(raw) <= 10:
        value += dt.timedelta(days=1)
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    return int(value.timestamp())


def _zone(timezone: str) -> dt.tzinfo:
    """The zone of an IANA name; ``SavingsError`` naming the problem for an unknown one."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if timezone == "UTC":
        return dt.timezone.utc
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise SavingsError(
            f"unknown time zone {timezone!r}; use an IANA name such as 'Europe/Vienna' or 'UTC'"
        ) from None


# --------------------------------------------------------------------------- input grid


@dataclass(frozen=True)
class Series:
    """One meter's consumption and drivers on one regular grid (interval starts, UTC)."""

    t_s: IntArray
    interval_s: int
    consumption: FloatArray  # counter units per interval, NaN unknown
    meter: MeterInfo
    temperature: FloatArray | None = None  # mean outdoor degC per interval
    production: FloatArray | None = None  # units produced per interval
    timezone: str = "UTC"


@dataclass(frozen=True)
class Readings:
    """Raw readings of one column: timestamps, values and what the values mean.

    ``kind``: ``counter`` (cumulative reading), ``interval`` (the quantity used during the
    interval starting at the row's timestamp) or ``rate`` (a mean rate per hour, units/h).
    """

    t_s: IntArray
    values: FloatArray
    kind: ValueKind = "counter"
    meter: MeterInfo | None = None  # rollover and rated maximum of a counter


def prepare(
    consumption: Readings,
    *,
    meter: MeterInfo,
    start_s: int,
    end_s: int,
    interval_s: int = HOUR_S,
    timezone: str = "UTC",
    temperature: Readings | None = None,
    production: Readings | None = None,
    fill_days: bool = False,
) -> Series:
    """Put a meter's readings and its drivers on one grid over [start, end).

    Hourly (or finer) grids are UTC-aligned; a daily grid is made of local days in
    ``timezone`` (sums of hours for quantities, means of the hourly means for temperature),
    as a daily baseline expects. A day with any unknown hour of consumption or production
    is unknown; with ``fill_days`` (CalTRACK 2.2.2.1) a day with at least half its hours
    of consumption is known, its unknown hours filled with the mean of its known ones. Its
    temperature is unknown when fewer than half its hours have one (CalTRACK 2.2.2.3).
    """
    if interval_s not in (DAY_S,) and not (60 <= interval_s <= HOUR_S and HOUR_S % interval_s == 0):
        raise SavingsError(f"interval must be 86400 s (daily) or divide an hour, got {interval_s}")
    step = HOUR_S if interval_s == DAY_S else interval_s
    lo = start_s // step * step
    hi = -(-end_s // step) * step
    t = lo + step * np.arange((hi - lo) // step, dtype=np.int64)
    y = _quantity(consumption, meter, step, lo, hi)
    temp = None
    if temperature is not None:
        temp = resample_gauge(
            temperature.t_s, temperature.values, interval_s=step, start_s=lo, end_s=hi
        ).mean
    prod = _quantity(production, production.meter, step, lo, hi) if production else None
    return grid_series(t, interval_s, y, meter, temp, prod, timezone, fill_days=fill_days)


def grid_series(
    t: IntArray,
    interval_s: int,
    consumption: FloatArray,
    meter: MeterInfo,
    temperature: FloatArray | None,
    production: FloatArray | None,
    timezone: str,
    *,
    fill_days: bool = False,
) -> Series:
    """Columns on the hourly (or finer) grid ``t`` -> the :class:`Series` of ``interval_s``.

    A daily interval folds the hours into local days (:func:`prepare` says how), so every
    input (CSV, InfluxDB, VictoriaMetrics, the embedded store) makes its days alike."""
    if interval_s == DAY_S:
        how = "filled" if fill_days else "sum"
        t, parts = _to_local_days(
            t, timezone, [(consumption, how), (temperature, "mean"), (production, "sum")]
        )
        consumption = parts[0] if parts[0] is not None else consumption
        temperature, production = parts[1], parts[2]
    return Series(t, interval_s, consumption, meter, temperature, production, timezone)


def _quantity(r: Readings, meter: MeterInfo | None, step: int, lo: int, hi: int) -> FloatArray:
    if r.kind == "counter":
        return clean_counter(
            r.t_s, r.values, meter=meter, interval_s=step, start_s=lo, end_s=hi
        ).consumption
    if r.kind == "rate":
        mean = resample_gauge(r.t_s, r.values, interval_s=step, start_s=lo, end_s=hi).mean
        return mean * (step / HOUR_S)
    # consumption per row: add up the rows falling in each interval
    n = (hi - lo) // step
    idx = (r.t_s - lo) // step
    ok = (idx >= 0) & (idx < n)
    out = np.zeros(n)
    seen = np.zeros(n, dtype=np.int64)
    bad = np.zeros(n, dtype=np.int64)
    np.add.at(out, idx[ok], np.nan_to_num(r.values[ok]))
    np.add.at(seen, idx[ok], 1)
    np.add.at(bad, idx[ok], (~np.isfinite(r.values[ok])).astype(np.int64))
    out[(seen == 0) | (bad > 0)] = np.nan
    return out


def _to_local_days(
    t: IntArray, timezone: str, columns: list[tuple[FloatArray | None, str]]
) -> tuple[IntArray, list[FloatArray | None]]:
    """Hourly columns -> local days: the day's first hour as its timestamp."""
    local_day = (t + tz_offsets(t, timezone)) // DAY_S
    days, first, counts = np.unique(local_day, return_index=True, return_counts=True)
    # keep complete local days only (23 or 25 hours on DST days)
    hours = np.array([_day_hours(int(d), timezone) for d in days])
    keep = counts == hours
    out: list[FloatArray | None] = []
    for col, how in columns:
        if col is None:
            out.append(None)
            continue
        finite = np.add.reduceat(np.isfinite(col).astype(np.int64), first)
        total = np.add.reduceat(np.nan_to_num(col), first)
        if how == "sum":
            val = np.where(finite == counts, total, np.nan)
        elif how == "filled":  # the day's mean hour times its hours, from half of them on
            with np.errstate(invalid="ignore", divide="ignore"):
                val = np.where(2 * finite >= counts, total / np.maximum(finite, 1) * counts,
                               np.nan)  # fmt: skip
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                val = np.where(2 * finite >= counts, total / np.maximum(finite, 1), np.nan)
        out.append(val[keep])
    return t[first][keep], out


def _day_hours(local_day: int, timezone: str) -> int:
    if timezone == "UTC":
        return 24
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(timezone)
    d = dt.date(1970, 1, 1) + dt.timedelta(days=local_day)
    a = dt.datetime(d.year, d.month, d.day, tzinfo=zone)
    e = d + dt.timedelta(days=1)
    b = dt.datetime(e.year, e.month, e.day, tzinfo=zone)
    return round((b.timestamp() - a.timestamp()) / HOUR_S)


# --------------------------------------------------------------------------- savings


@dataclass(frozen=True)
class Savings:
    """Everything a savings verification found; :meth:`to_dict` is ``savings.json``."""

    meter: MeterInfo
    baseline: Period
    reporting: Period
    model: Model
    t_s: IntArray  # grid over both periods
    actual: FloatArray
    adjusted: FloatArray  # baseline model's prediction on every interval
    fitted_mask: np.ndarray  # baseline intervals the model used
    reporting_mask: np.ndarray  # reporting intervals with actual and adjusted known
    avoided: float
    adjusted_total: float
    actual_total: float
    halfwidth: dict[float, float | None]
    cumulative: FloatArray  # cumulative avoided over reporting_mask intervals
    cumulative_halfwidth: FloatArray  # 90 % band of the cumulative savings
    normalised: float | None
    normalised_note: str
    baseline_coverage: float
    reporting_coverage: float
    n_eff: float
    verdict: mv.Verdict
    thresholds: mv.Thresholds
    currency: str = "EUR"
    timezone: str = "UTC"
    method: str = "hourly"
    temperature: FloatArray | None = None
    production: FloatArray | None = None
    warnings: tuple[str, ...] = field(default=())

    @property
    def fraction(self) -> float | None:
        return self.avoided / self.adjusted_total if self.adjusted_total else None

    @property
    def method_description(self) -> str:
        text = METHODS.get(self.method, self.method)
        tow = self.model.time_of_week
        if self.method in ("daily", "caltrack-daily") and self.model.uses_production:
            text += "; with production terms (CalTRACK has none)"
        if self.method == "daily" and tow != "none":
            text += f"; with {'day of week' if tow == 'week' else 'workday/weekend'} levels"
        if self.method == "hourly" and tow == "daytype":
            text += "; workday/weekend x hour levels instead of hour of week"
        if self.method == "caltrack-hourly" and self.model.uses_production:
            text += "; with production terms in every month's model (CalTRACK has none)"
        return text

    def fsu(self, confidence: float) -> float | None:
        return mv.fsu(self.halfwidth.get(confidence), self.avoided)

    def to_dict(self) -> dict[str, Any]:
        s = self.model.stats
        m = self.meter
        unit = m.unit

        def money(q: float | None) -> float | None:
            return None if q is None else _round(m.cost(q))

        def co2(q: float | None) -> float | None:
            return None if q is None else _round(m.co2_kg(q))

        uncertainty = {
            f"{round(100 * c)}%": {
                "halfwidth": _round(u),
                "fsu_pct": _round(None if (f := self.fsu(c)) is None else 100 * f),
                "low": _round(None if u is None else self.avoided - u),
                "high": _round(None if u is None else self.avoided + u),
            }
            for c, u in self.halfwidth.items()
        }
        return {
            "format": "recp-savings/1",
            "meter": m.id,
            "resource": m.resource,
            "unit": unit,
            "currency": self.currency,
            "baseline_period": self.baseline.label(),
            "reporting_period": self.reporting.label(),
            "timezone": self.timezone,
            "method": self.method,
            "method_description": self.method_description,
            "interval_s": self.model.interval_s,
            "savings": {
                "avoided": _round(self.avoided),
                "adjusted_baseline": _round(self.adjusted_total),
                "actual": _round(self.actual_total),
                "fraction_pct": _round(None if self.fraction is None else 100 * self.fraction),
                "cost": money(self.avoided),
                "co2_kg": co2(self.avoided),
                "normalised": _round(self.normalised),
                "normalised_cost": money(self.normalised),
                "normalised_note": self.normalised_note,
                "uncertainty": uncertainty,
            },
            "guideline14": {
                "cv_rmse_pct": _round(s.cv_rmse_pct),
                "nmbe_pct": _round(s.nmbe_pct),
                "r2": _round(s.r2),
                "adj_r2": _round(s.adj_r2),
                "n": s.n,
                "n_params": s.n_params,
                "residual_lag1": _round(s.residual_lag1),
                "n_effective": _round(self.n_eff),
                "reporting_intervals": int(self.reporting_mask.sum()),
                "thresholds": {
                    "cv_rmse_max_pct": self.thresholds.cv_rmse_max_pct,
                    "nmbe_max_pct": self.thresholds.nmbe_max_pct,
                    "fsu68_max_pct": 100 * self.thresholds.fsu68_max,
                    "min_coverage_pct": 100 * self.thresholds.min_coverage,
                    "min_baseline_days": self.thresholds.min_baseline_days,
                },
            },
            "data": {
                "baseline_coverage_pct": _round(100 * self.baseline_coverage),
                "reporting_coverage_pct": _round(100 * self.reporting_coverage),
                "baseline_days": _round(self.baseline.days),
                "reporting_days": _round(self.reporting.days),
            },
            "verdict": self.verdict.to_dict(),
            "model": self.model.to_dict(),
            "model_description": self.model.describe(),
        }


def compute_savings(
    series: Series,
    baseline: Period,
    reporting: Period,
    *,
    config: BaselineConfig | None = None,
    thresholds: mv.Thresholds | None = None,
    currency: str = "EUR",
    progress: Callable[[str], None] | None = None,
    method: Method | None = None,
) -> Savings:
    """Fit, project, compare; raises :class:`SavingsError` when no figure can be given.

    ``method``: "hourly", "daily" or "caltrack-daily" (:func:`fit_baseline` with
    ``config``; by default from the series' interval; caltrack-daily needs daily data with
    temperature and :meth:`BaselineConfig.caltrack_daily`) or "caltrack-hourly"
    (:func:`fit_caltrack_hourly` on hourly data with temperature; ``config`` gives only the
    time zone).
    """
    say = progress or (lambda _msg: None)
    t = as_timestamps("t_s", series.t_s)
    y = as_values("consumption", series.consumption, t.size)
    T = series.temperature
    P = series.production
    meter = series.meter
    if reporting.start_s < baseline.end_s:
        raise SavingsError(
            f"the reporting period ({reporting.label()}) must start after the baseline period "
            f"ends ({baseline.label()})"
        )
    b = baseline.contains(t)
    r = reporting.contains(t)
    if not b.any() or not np.isfinite(y[b]).any():
        raise SavingsError(
            f"no consumption data in the baseline period {baseline.label()} "
            f"(the data covers {_span(t, series.interval_s)})"
        )
    if not r.any() or not np.isfinite(y[r]).any():
        raise SavingsError(
            f"no consumption data in the reporting period {reporting.label()} "
            f"(the data covers {_span(t, series.interval_s)})"
        )
    for name, col in (("temperature", T), ("production", P)):
        if col is not None and not np.isfinite(col[b]).any():
            raise SavingsError(f"the {name} column has no data in the baseline period")
    if config is None:
        config = (
            BaselineConfig.caltrack_daily(
                series.timezone, significance=method != "caltrack-daily"
            )
            if series.interval_s == DAY_S
            else BaselineConfig(interval_s=series.interval_s, timezone=series.timezone)
        )
    cfg = config
    if method is None:
        method = "daily" if cfg.interval_s == DAY_S else "hourly"
    if method == "caltrack-hourly":
        _weather_method_inputs(series, method, HOUR_S, "hours")
    if method == "caltrack-daily":
        _caltrack_daily_inputs(series, cfg)
    if thresholds is None:
        thresholds = {
            "daily": mv.Thresholds.caltrack_daily,
            "caltrack-daily": mv.Thresholds.caltrack_daily,
            "caltrack-hourly": mv.Thresholds.caltrack_hourly,
        }.get(method, lambda: mv.Thresholds.for_interval(cfg.interval_s))()
    th = thresholds
    say("fitting the baseline")
    model: Model
    try:
        model = _fit(method == "caltrack-hourly", t, y, T, P, b, meter.id, meter.unit, cfg,
                     series.timezone)  # fmt: skip
    except ValueError as exc:
        raise SavingsError(f"cannot fit a baseline: {exc}") from None
    say("projecting the adjusted baseline")
    # CalTRACK hourly: each hour's hour of week and local month, worked out once for the
    # projection, the months without a model and the normalised savings
    groups = (week_hours_and_months(t, model.timezone)
              if isinstance(model, CaltrackHourlyModel) else None)  # fmt: skip
    adjusted = _predict(model, t, T, P, groups)
    fitted = b & np.isfinite(y)
    if T is not None:
        fitted &= np.isfinite(T)
    if P is not None:
        fitted &= np.isfinite(P)
    rm = r & np.isfinite(y) & np.isfinite(adjusted)
    month_notes: list[str] = []
    if isinstance(model, CaltrackHourlyModel):
        assert groups is not None
        month_notes = _months_without_model(model, groups[1], r, y, rm)
    m = int(rm.sum())
    avoided = float(np.sum(adjusted[rm] - y[rm]))
    adjusted_total = float(np.sum(adjusted[rm]))
    actual_total = float(np.sum(y[rm]))
    s = model.stats
    n_eff = mv.effective_n(s.n, s.residual_lag1)
    halfwidth: dict[float, float | None] = {}
    for c in mv.CONFIDENCES:
        halfwidth[c] = (
            None
            if s.cv_rmse_pct is None
            else mv.savings_halfwidth(
                cv_rmse_pct=s.cv_rmse_pct,
                n=s.n,
                n_params=s.n_params,
                rho=s.residual_lag1,
                m=m,
                adjusted_total=adjusted_total,
                confidence=c,
            )
        )
    cumulative = np.cumsum(adjusted[rm] - y[rm])
    band = _cumulative_band(adjusted[rm], s.cv_rmse_pct, s.n, s.n_params, s.residual_lag1)
    say("normalised savings")
    normalised, note = _normalised(model, t, y, T, P, b, r, cfg, series.timezone, groups)
    baseline_cov = s.n / max(int(b.sum()), 1)
    reporting_cov = m / max(int(r.sum()), 1)
    fsu68 = mv.fsu(halfwidth[0.68], avoided)
    result = mv.verdict(
        thresholds=th,
        cv_rmse_pct=s.cv_rmse_pct,
        nmbe_pct=s.nmbe_pct,
        r2=s.r2,
        fsu68=fsu68,
        savings=avoided,
        baseline_days=baseline.days,
        reporting_days=reporting.days,
        baseline_coverage=baseline_cov,
        reporting_coverage=reporting_cov,
        empty_groups=s.empty_groups,
        n_eff=n_eff,
        n_params=s.n_params,
    )
    extra = month_notes + _extrapolation_warnings(T, P, b, rm)
    if extra:
        result = mv.Verdict(result.passed, result.reasons, result.warnings + tuple(extra))
    keep = b | r
    return Savings(
        meter=meter,
        baseline=baseline,
        reporting=reporting,
        model=model,
        t_s=t[keep],
        actual=y[keep],
        adjusted=adjusted[keep],
        fitted_mask=fitted[keep],
        reporting_mask=rm[keep],
        avoided=avoided,
        adjusted_total=adjusted_total,
        actual_total=actual_total,
        halfwidth=halfwidth,
        cumulative=cumulative,
        cumulative_halfwidth=band,
        normalised=normalised,
        normalised_note=note,
        baseline_coverage=baseline_cov,
        reporting_coverage=reporting_cov,
        n_eff=n_eff,
        verdict=result,
        thresholds=th,
        currency=currency,
        timezone=series.timezone,
        method=method,
        temperature=None if T is None else T[keep],
        production=None if P is None else P[keep],
    )



def _fit(
    caltrack_hourly: bool,
    t: np.ndarray,
    y: FloatArray,
    T: FloatArray | None,
    P: FloatArray | None,
    rows: np.ndarray,
    meter: str,
    unit: str,
    cfg: BaselineConfig,
    timezone: str,
) -> Model:
    """Fit the method's model on ``rows`` (CalTRACK hourly's month models, or ours)."""
    temperature = None if T is None else T[rows]
    production = None if P is None else P[rows]
    if caltrack_hourly:
        assert temperature is not None
        return fit_caltrack_hourly(
            t[rows], y[rows], temperature=temperature, production=production, meter=meter,
            unit=unit, config=CaltrackHourlyConfig(timezone=timezone),
        )  # fmt: skip
    return fit_baseline(
        t[rows], y[rows], temperature=temperature, production=production, meter=meter,
        unit=unit, config=cfg,
    )  # fmt: skip

def _predict(
    model: Model,
    t: IntArray,
    T: FloatArray | None,
    P: FloatArray | None,
    groups: tuple[IntArray, IntArray] | None = None,
) -> FloatArray:
    """The model's prediction at ``t`` with the inputs it uses (CalTRACK hourly: with the
    hours' ``groups`` when the caller has them)."""
    temperature = T if model.uses_temperature else None
    production = P if model.uses_production else None
    if isinstance(model, CaltrackHourlyModel):
        return model.predict(t, temperature, production, groups=groups)
    return model.predict(t, temperature, production)


def _cumulative_band(
    adjusted: FloatArray, cv_pct: float | None, n: int, p: int, rho: float
) -> FloatArray:
    """90 % half-width of the savings summed up to each reporting interval."""
    k = np.arange(1, adjusted.size + 1, dtype=np.float64)
    n_eff = mv.effective_n(n, rho)
    if cv_pct is None or n_eff - p <= 0 or adjusted.size == 0:
        return np.full(adjusted.size, np.nan)
    t = mv.t_quantile(0.95, n_eff - p)
    e = np.abs(np.cumsum(adjusted))
    factor = mv.GUIDELINE14_FACTOR * t * cv_pct / 100.0
    return np.asarray(factor * e * np.sqrt((n / n_eff) * (1 + 2 / n_eff) / k), dtype=np.float64)


def _normalised(
    model: Model,
    t: IntArray,
    y: FloatArray,
    T: FloatArray | None,
    P: FloatArray | None,
    b: np.ndarray,
    r: np.ndarray,
    cfg: BaselineConfig,
    timezone: str = "UTC",
    groups: tuple[IntArray, IntArray] | None = None,
) -> tuple[float | None, str]:
    """Baseline model minus a reporting-period model, both on the baseline's conditions.

    The reporting-period model is of the same method (CalTRACK hourly: its months' models
    cover only the calendar months the reporting period and their neighbours saw;
    ``groups``: the hours' hour of week and local month, of all of ``t``)."""
    days = float(r.sum()) * cfg.interval_s / DAY_S
    if cfg.interval_s < DAY_S and days < 28 and cfg.time_of_week == "week":
        # a short reporting period cannot fill every hour of the week several times
        cfg = BaselineConfig(
            interval_s=cfg.interval_s, timezone=cfg.timezone, time_of_week="daytype"
        )
    post: Model
    try:
        post = _fit(isinstance(model, CaltrackHourlyModel), t, y, T, P, r, model.meter,
                    model.unit, cfg, timezone)  # fmt: skip
    except ValueError as exc:
        return None, f"no reporting-period model: {exc}"
    tb = t[b]
    tb_T = None if T is None else T[b]
    tb_P = None if P is None else P[b]
    tb_groups = None if groups is None else (groups[0][b], groups[1][b])
    pre = _predict(model, tb, tb_T, tb_P, tb_groups)
    postp = _predict(post, tb, tb_T, tb_P, tb_groups)
    ok = np.isfinite(pre) & np.isfinite(postp)
    if not ok.any():
        return None, "the reporting-period model cannot be run on the baseline's conditions"
    share = float(ok.mean())
    value = float(np.sum(pre[ok] - postp[ok]))
    note = (
        f"baseline-period conditions ({ok.sum()} intervals, {100 * share:.0f} % of the "
        f"baseline period); reporting-period model: {post.describe()}"
    )
    return value, note


def _weather_method_inputs(series: Series, method: str, interval_s: int, fits: str) -> None:
    """A CalTRACK method needs its interval (``fits``) and an outdoor temperature; say so
    in plain words."""
    if series.interval_s != interval_s:
        raise SavingsError(
            f"--method {method} fits {fits}; this series has {series.interval_s} s intervals"
        )
    if series.temperature is None:
        raise SavingsError(
            f"--method {method} is a weather model: give the outdoor temperature "
            "(--temperature COL, degC)"
        )


def _caltrack_daily_inputs(series: Series, cfg: BaselineConfig) -> None:
    """CalTRACK daily needs days, an outdoor temperature and CalTRACK's own model terms."""
    _weather_method_inputs(series, "caltrack-daily", DAY_S, "local days")
    if cfg.time_of_week != "none":
        raise SavingsError(
            f"--time-of-week {cfg.time_of_week} does not apply to --method caltrack-daily: "
            "CalTRACK daily has one intercept (use --method daily for day-of-week levels)"
        )
    if cfg.min_t > 0:
        raise SavingsError(
            "--method caltrack-daily has no significance rule (CalTRACK 2.0 removed it); "
            "--method daily has it"
        )


def _months_without_model(
    model: CaltrackHourlyModel, months: IntArray, r: np.ndarray, y: FloatArray,
    rm: np.ndarray,
) -> list[str]:
    """A reporting period (partly) in calendar months the baseline has no model for
    (``months``: each hour's local calendar month)."""
    missing = {mm for mm in range(1, 13) if model.months[mm - 1] is None}
    hit = r & np.isfinite(y) & np.isin(months, list(missing))
    unseen = r & np.isfinite(y) & ~hit & ~rm
    notes = []
    used = set(months[rm].tolist())
    thin = [
        mm for mm in model.months
        if mm is not None and mm.month in used
        and mm.hours < sum(a is not None for a in mm.intercepts) + 2
    ]  # fmt: skip
    if thin:
        notes.append(
            "month models fitted on about one hour per hour of the week ("
            + ", ".join(f"{month_names([mm.month])}: {mm.hours} h" for mm in thin)
            + "): their temperature slopes cannot be told from the hour-of-week levels"
        )
    if unseen.any():
        notes.append(
            f"{100 * unseen.sum() / max(int(r.sum()), 1):.0f} % of the reporting hours have "
            "no baseline prediction (an hour of the week their month's model never saw, or "
            "no temperature): left out"
        )
    if not hit.any():
        return notes
    if not rm.any():
        raise SavingsError(
            f"the baseline period has no data in the reporting period's calendar months "
            f"({month_names(months[r])}) nor their neighbours, so CalTRACK hourly has no "
            f"model for them (it has for {month_names([m.month for m in model.months if m])}); "
            "use a 365-day baseline or --method hourly"
        )
    return [
        f"{100 * hit.sum() / max(int(r.sum()), 1):.0f} % of the reporting hours are in "
        f"calendar months without a baseline model ({month_names(months[hit])}): left out",
        *notes,
    ]


def _extrapolation_warnings(
    T: FloatArray | None, P: FloatArray | None, b: np.ndarray, rm: np.ndarray
) -> list[str]:
    out = []
    for name, col, unit in (("outdoor temperature", T, "degC"), ("production", P, "units")):
        if col is None:
            continue
        base = col[b & np.isfinite(col)]
        rep = col[rm & np.isfinite(col)]
        if base.size == 0 or rep.size == 0:
            continue
        lo, hi = float(base.min()), float(base.max())
        span = max(hi - lo, 1e-9)
        outside = (rep < lo - 0.05 * span) | (rep > hi + 0.05 * span)
        if outside.mean() > 0.1:
            out.append(
                f"{100 * outside.mean():.0f} % of the reporting intervals have {name} outside "
                f"the baseline's range ({lo:.4g}..{hi:.4g} {unit}): the model extrapolates"
            )
    return out


# --------------------------------------------------------------------------- helpers


def _iso(t_s: float) -> str:
    return dt.datetime.fromtimestamp(t_s, dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


def _span(t: IntArray, interval_s: int) -> str:
    if t.size == 0:
        return "nothing"
    return f"{_iso(int(t[0]))}..{_iso(int(t[-1]) + interval_s)}"


def _round(x: float | None, digits: int = 6) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")
