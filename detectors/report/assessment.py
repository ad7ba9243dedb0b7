"""The RECP assessment of a site and period: where each resource goes and what is lost.

Input is a folder in the layout of ``recp simulate --csv`` (``<meter>.csv`` files and
``meters.json``). Every counter is cleaned onto one 15-minute UTC grid; production (the
``production`` meter's counter and ``line_running``) and outdoor temperature (the
``weather`` sensor) come from the same folder when present. Per meter:

* consumption, cost and CO2 over the period;
* base load: the median rate while the line stands still (``line_running`` = 0), or, with
  no production data, the 10th percentile of the rates; its share of the consumption is
  base rate x hours with data / consumption;
* specific consumption (ISO 50006 ratio EnPI): consumption per unit produced, week by week,
  and its trend (least-squares slope in % of the mean per week);
* loss events from :func:`detectors.anomaly.detect_anomalies` (spikes, base-load rises and
  level shifts, drift), each with excess, cost and CO2, ranked by money across the site.

The savings potential is the money of every loss event in the period; events still open at
the end are also annualised (their mean excess rate over a year).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..anomaly import detect_anomalies
from ..arrays import FloatArray, IntArray
from ..baseline import tz_offsets
from ..clean import Consumption, clean_counter, resample_gauge
from ..csvinput import CsvInputError, Manifest, header, load_manifest, read_columns
from ..events import Event, EventType
from ..meter import MeterInfo

GRID_S = 900
WEEK_S = 7 * 86400
LOSS_TYPES = {
    EventType.SPIKE,
    EventType.LEVEL_SHIFT,
    EventType.BASE_LOAD_RISE,
    EventType.DRIFT,
    EventType.OVERSPEND,
}


@dataclass(frozen=True)
class MeterSummary:
    meter: MeterInfo
    total: float
    coverage: float  # share of intervals with known consumption
    base_rate_per_h: float | None
    base_share: float | None
    specific: float | None  # counter units per unit produced
    weekly_t_s: IntArray
    weekly_specific: FloatArray
    trend_pct_per_week: float | None
    daily_t_s: IntArray
    daily: FloatArray
    faults: tuple[Event, ...]  # stuck meter, gaps, resets: data quality, not losses

    @property
    def cost(self) -> float | None:
        return self.meter.cost(self.total)

    @property
    def co2_kg(self) -> float | None:
        return self.meter.co2_kg(self.total)


@dataclass(frozen=True)
class Assessment:
    site: str
    start_s: int
    end_s: int
    timezone: str
    currency: str
    meters: tuple[MeterSummary, ...]
    events: tuple[Event, ...]  # loss events, most expensive first
    produced: float | None
    produced_unit: str

    @property
    def potential_cost(self) -> float:
        return float(sum(e.cost or 0.0 for e in self.events))

    def annualised_cost(self) -> float:
        """Open losses (still running at the end) at their mean cost rate for a year."""
        total = 0.0
        for e in self.events:
            if e.cost is None:
                continue
            end = self.end_s if e.end is None else e.end.timestamp()
            if end < self.end_s - GRID_S:
                continue
            hours = (end - e.start.timestamp()) / 3600.0
            if hours >= 1.0:
                total += e.cost / hours * 8760.0
        return total

    def resources(self) -> dict[str, list[MeterSummary]]:
        out: dict[str, list[MeterSummary]] = {}
        for m in self.meters:
            out.setdefault(m.meter.resource or "other", []).append(m)
        return out


def _counter(man: Manifest, mid: str, start: int, end: int) -> tuple[MeterInfo, Consumption]:
    entry = man.meters[mid]
    meter = MeterInfo.from_manifest(mid, entry)
    path = man.folder / f"{mid}.csv"
    ts, cols = read_columns(path, [entry["counter"]])
    c = clean_counter(ts, cols[entry["counter"]], meter=meter, interval_s=GRID_S,
                      start_s=start, end_s=end)  # fmt: skip
    return meter, c


def assess(
    folder: Path,
    start_s: int | None = None,
    end_s: int | None = None,
    *,
    timezone: str = "UTC",
    currency: str = "EUR",
    progress: Callable[[str], None] | None = None,
) -> Assessment:
    """Build the assessment of a plant CSV folder over [start, end) (default: all of it)."""
    say = progress or (lambda _m: None)
    man = load_manifest(folder)
    if man is None:
        raise CsvInputError(folder / "meters.json", None, "not found: is this a plant CSV folder?")
    start = start_s if start_s is not None else man.start_s
    end = end_s if end_s is not None else man.end_s
    if start is None or end is None:
        raise CsvInputError(folder / "truth.json", None, "no time span: give --from and --to")
    start = start // GRID_S * GRID_S
    end = -(-end // GRID_S) * GRID_S
    if end <= start:
        raise CsvInputError(folder, None, "the period is empty (--to must be after --from)")
    n = (end - start) // GRID_S
    t = start + GRID_S * np.arange(n, dtype=np.int64)
    offset = int(tz_offsets(np.array([start], dtype=np.int64), timezone)[0])

    active = production = temperature = None
    produced_unit = "units"
    pid = man.first_of("production")
    if pid is not None:
        entry = man.meters[pid]
        produced_unit = entry.get("counter_unit") or "units"
        production = _counter(man, pid, start, end)[1].consumption
        path = folder / f"{pid}.csv"
        if "line_running" in header(path):
            ts, cols = read_columns(path, ["line_running"])
            active = resample_gauge(ts, cols["line_running"], interval_s=GRID_S,
                                    start_s=start, end_s=end).mean  # fmt: skip
    wid = man.first_of("weather")
    if wid is not None:
        path = folder / f"{wid}.csv"
        ts, cols = read_columns(path, ["outdoor_temperature_c"])
        temperature = resample_gauge(ts, cols["outdoor_temperature_c"], interval_s=GRID_S,
                                     start_s=start, end_s=end).mean  # fmt: skip

    summaries: list[MeterSummary] = []
    events: list[Event] = []
    ids = [m for m, e in man.meters.items()
           if e.get("counter") and e.get("resource") not in ("production", "weather")]  # fmt: skip
    for mid in ids:
        say(mid)
        meter, cons = _counter(man, mid, start, end)
        x = cons.consumption
        found = detect_anomalies(cons, meter, active=active, production=production,
                                 temperature=temperature, utc_offset_s=offset,
                                 currency=currency)  # fmt: skip
        losses = [e for e in found if e.type in LOSS_TYPES and e.excess > 0]
        faults = [e for e in found if e.type not in LOSS_TYPES]
        faults += [e for e in cons.events if e.type is not EventType.ROLLOVER]
        events += losses
        summaries.append(_summary(meter, t, x, active, production, offset, tuple(faults)))
    events.sort(key=lambda e: (-(e.cost or 0.0), -e.excess))
    produced = float(np.nansum(production)) if production is not None else None
    return Assessment(
        site=man.plant or folder.resolve().name,
        start_s=start,
        end_s=end,
        timezone=timezone,
        currency=currency,
        meters=tuple(summaries),
        events=tuple(events),
        produced=produced,
        produced_unit=produced_unit,
    )


def _base_rate(x: FloatArray, known: np.ndarray, active: FloatArray | None) -> float | None:
    """Median over the line's standstills (>= 2 h each) of their mean rate per hour.

    Means over whole standstills rather than single intervals, so that a coarse counter
    (one step every few intervals) does not read as zero.
    """
    if active is None:
        return None
    idle = known & (active == 0)
    edges = np.diff(np.concatenate(([0], idle.astype(np.int8), [0])))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    means = [
        float(np.sum(x[a:b])) / ((b - a) * GRID_S / 3600.0)
        for a, b in zip(starts, stops, strict=True)
        if (b - a) * GRID_S >= 2 * 3600
    ]
    return float(np.median(means)) if means else None


def _summary(
    meter: MeterInfo,
    t: IntArray,
    x: FloatArray,
    active: FloatArray | None,
    production: FloatArray | None,
    offset: int,
    faults: tuple[Event, ...],
) -> MeterSummary:
    known = np.isfinite(x)
    total = float(np.nansum(x))
    rate = x * (3600.0 / GRID_S)
    base = _base_rate(x, known, active)
    if base is None and known.sum() >= 8:
        base = float(np.percentile(rate[known], 10))
    hours = known.sum() * GRID_S / 3600.0
    share = base * hours / total if base is not None and total > 0 else None
    specific = None
    wt = np.zeros(0, dtype=np.int64)
    weekly = np.zeros(0)
    trend = None
    if production is not None:
        ok = known & np.isfinite(production)
        p_total = float(np.sum(production[ok]))
        specific = float(np.sum(x[ok])) / p_total if p_total > 0 else None
        week = (t - t[0]) // WEEK_S
        n_weeks = int(week[-1]) + 1 if t.size else 0
        wt = t[0] + WEEK_S * np.arange(n_weeks, dtype=np.int64)
        cons_w = np.bincount(week[ok], x[ok], n_weeks)
        prod_w = np.bincount(week[ok], production[ok], n_weeks)
        full = np.bincount(week, minlength=n_weeks) == WEEK_S // GRID_S
        with np.errstate(divide="ignore", invalid="ignore"):
            weekly = np.where(full & (prod_w > 0), cons_w / prod_w, np.nan)
        good = np.isfinite(weekly)
        if good.sum() >= 3:
            idx = np.flatnonzero(good).astype(np.float64)
            slope = float(np.polyfit(idx, weekly[good], 1)[0])
            mean = float(np.mean(weekly[good]))
            trend = 100.0 * slope / mean if mean > 0 else None
    # local days for the daily plot
    day = (t + offset) // 86400
    days, first, counts = np.unique(day, return_index=True, return_counts=True)
    finite = np.add.reduceat(known.astype(np.int64), first)
    sums = np.add.reduceat(np.nan_to_num(x), first)
    daily = np.where((finite == counts) & (counts == 86400 // GRID_S), sums, np.nan)
    return MeterSummary(
        meter=meter,
        total=total,
        coverage=float(known.mean()) if known.size else 0.0,
        base_rate_per_h=base,
        base_share=None if share is None else min(share, 1.0),
        specific=specific,
        weekly_t_s=wt,
        weekly_specific=weekly,
        trend_pct_per_week=trend,
        daily_t_s=days * 86400 - offset,
        daily=daily,
        faults=faults,
    )


# --------------------------------------------------------------------------- HTML


def assessment_html(a: Assessment) -> str:
    """The assessment as one self-contained page: pictures first, tables after."""
    from ..arrays import fmt_utc
    from . import plots
    from .html import cards, esc, fmt, img, page, table

    cur = a.currency
    body: list[str] = []
    total_cost = sum(m.cost or 0.0 for m in a.meters)
    total_co2 = sum(m.co2_kg or 0.0 for m in a.meters)
    days = (a.end_s - a.start_s) / 86400
    body.append(
        cards(
            [
                (fmt(total_cost, unit=cur), f"resource cost in {days:.0f} days"),
                (fmt(total_co2 / 1000, unit="t CO2"), "emissions"),
                (str(len(a.events)), "loss events found"),
                (fmt(a.potential_cost, unit=cur), "lost in the period (savings potential)"),
                (fmt(a.annualised_cost(), unit=f"{cur}/year"), "if the open losses continue"),
            ]
        )
    )
    # where the money goes
    ms = sorted(a.meters, key=lambda m: -(m.cost or 0.0))
    if any(m.cost for m in ms):
        body.append("<h2>Where the money goes</h2>")
        body.append(
            img(
                plots.hbars(
                    [m.meter.id for m in ms],
                    [m.cost or 0.0 for m in ms],
                    [plots.RESOURCE_COLOURS.get(m.meter.resource, "#888") for m in ms],
                    title=f"Resource cost per meter, {fmt_utc(a.start_s)[:10]} to "
                    f"{fmt_utc(a.end_s)[:10]}",
                    xlabel=cur,
                    annotations=[
                        f"{fmt(m.cost, unit=cur)}  ({fmt(m.total, unit=m.meter.unit)}, base load "
                        + ("-" if m.base_share is None else f"{100 * m.base_share:.0f} %")
                        + ")"
                        for m in ms
                    ],
                ),
                "cost per meter",
            )
        )
    # losses
    body.append("<h2>Losses found, most expensive first</h2>")
    if a.events:
        top = list(a.events[:12])
        body.append(
            img(
                plots.hbars(
                    [f"{e.meter}: {e.type.value.replace('_', ' ')}" for e in top],
                    [e.cost or 0.0 for e in top],
                    [plots.RESOURCE_COLOURS.get(_resource(a, e.meter), "#888") for e in top],
                    title="Loss events by money lost in the period",
                    xlabel=cur,
                    annotations=[
                        f"{fmt(e.cost, unit=cur)}  ({fmt(e.excess, unit=e.unit)}, "
                        f"{fmt(e.co2_kg, unit='kg CO2')})"
                        for e in top
                    ],
                ),
                "loss events ranked by cost",
            )
        )
        rows = [
            [
                i + 1,
                e.meter,
                e.type.value.replace("_", " "),
                fmt_utc(e.start.timestamp())[:16],
                "still open" if e.end is None else fmt_utc(e.end.timestamp())[:16],
                fmt(e.excess, unit=e.unit),
                fmt(e.cost, unit=cur),
                fmt(e.co2_kg, unit="kg"),
                e.explanation,
            ]
            for i, e in enumerate(a.events)
        ]
        body.append(
            table(
                ["#", "meter", "what", "from (UTC)", "to", "excess", "cost", "CO2", "explanation"],
                rows,
                numeric={0, 5, 6, 7},
            )
        )
    else:
        body.append("<p>No losses found by the detectors in this period.</p>")
    # per resource
    for resource, meters in a.resources().items():
        unit = meters[0].meter.unit
        body.append(f"<h2>{esc(resource.capitalize())}</h2>")
        same_unit = [m for m in meters if m.meter.unit == unit]
        body.append(
            img(
                plots.resource_daily(
                    same_unit[0].daily_t_s,
                    {m.meter.id: m.daily for m in same_unit},
                    {
                        m.meter.id: m.base_rate_per_h * 24
                        for m in same_unit
                        if m.base_rate_per_h is not None
                    },
                    unit,
                    resource,
                ),
                f"{resource} daily consumption",
            )
        )
        rows = [
            [
                m.meter.id,
                fmt(m.total, unit=m.meter.unit),
                fmt(m.cost, unit=cur),
                fmt(m.co2_kg, unit="kg"),
                fmt(m.base_rate_per_h, unit=f"{m.meter.unit}/h"),
                "-" if m.base_share is None else f"{100 * m.base_share:.0f} %",
                fmt(m.specific, unit=f"{m.meter.unit}/{a.produced_unit}"),
                "-" if m.trend_pct_per_week is None else f"{m.trend_pct_per_week:+.1f} %/week",
                f"{100 * m.coverage:.0f} %",
            ]
            for m in meters
        ]
        body.append(
            table(
                [
                    "meter",
                    "consumption",
                    "cost",
                    "CO2",
                    "base load",
                    "base share",
                    "per unit produced",
                    "trend",
                    "data",
                ],
                rows,
                numeric={1, 2, 3, 4, 5, 6, 7, 8},
            )
        )
    # specific consumption trend
    spec = {m.meter.id: m.weekly_specific for m in a.meters if np.isfinite(m.weekly_specific).any()}
    if spec:
        first = next(m for m in a.meters if m.meter.id in spec)
        body.append("<h2>Specific consumption</h2>")
        body.append(
            f"<p>Consumption per {esc(a.produced_unit)} produced "
            f"({fmt(a.produced, unit=a.produced_unit)} in the period), week by week. A rising line "
            "means more resource per product: fouling, losses or a change in how the line "
            "runs.</p>"
        )
        body.append(
            img(
                plots.specific_trend(
                    first.weekly_t_s,
                    spec,
                    {m.meter.id: m.meter.unit for m in a.meters},
                    a.produced_unit,
                ),
                "specific consumption trend",
            )
        )
    faults = [e for m in a.meters for e in m.faults]
    if faults:
        body.append("<h2>Data quality</h2>")
        body.append(
            table(
                ["meter", "what", "when (UTC)", "note"],
                [
                    [
                        e.meter,
                        e.type.value.replace("_", " "),
                        fmt_utc(e.start.timestamp())[:16],
                        e.explanation,
                    ]
                    for e in faults
                ],
            )
        )
    body.append(
        '<p class="note">Base load: median over the standstills of the mean rate while the line '
        "stands still (the 10th percentile of the rates without production data). Savings "
        "potential: money of the loss events in the period; open losses annualised at their "
        "mean rate. Per-resource figures add up the meters as listed; a main meter and its "
        "sub-meters would be counted twice.</p>"
    )
    title = f"RECP assessment: {a.site}"
    sub = f"{fmt_utc(a.start_s)[:10]} to {fmt_utc(a.end_s)[:10]} (UTC), {len(a.meters)} meters"
    return page(title, sub, body)


def _resource(a: Assessment, meter_id: str) -> str:
    return next((m.meter.resource for m in a.meters if m.meter.id == meter_id), "")


def assessment_dict(a: Assessment) -> dict[str, object]:
    """JSON summary (``assessment.json``) of the same figures."""

    def num(x: float | None) -> float | None:
        return None if x is None or x != x else float(f"{x:.6g}")

    return {
        "format": "recp-assessment/1",
        "site": a.site,
        "start": _utc(a.start_s),
        "end": _utc(a.end_s),
        "currency": a.currency,
        "produced": num(a.produced),
        "produced_unit": a.produced_unit,
        "savings_potential": num(a.potential_cost),
        "savings_potential_annualised": num(a.annualised_cost()),
        "meters": [
            {
                "meter": m.meter.id,
                "resource": m.meter.resource,
                "unit": m.meter.unit,
                "consumption": num(m.total),
                "cost": num(m.cost),
                "co2_kg": num(m.co2_kg),
                "base_rate_per_h": num(m.base_rate_per_h),
                "base_share": num(m.base_share),
                "specific": num(m.specific),
                "trend_pct_per_week": num(m.trend_pct_per_week),
                "coverage": num(m.coverage),
            }
            for m in a.meters
        ],
        "events": [
            {
                "meter": e.meter,
                "type": e.type.value,
                "start": e.start.isoformat().replace("+00:00", "Z"),
                "end": None if e.end is None else e.end.isoformat().replace("+00:00", "Z"),
                "excess": num(e.excess),
                "unit": e.unit,
                "cost": num(e.cost),
                "co2_kg": num(e.co2_kg),
                "explanation": e.explanation,
            }
            for e in a.events
        ],
    }


def _utc(t: int) -> str:
    from ..arrays import utc

    return utc(t).strftime("%Y-%m-%dT%H:%M:%SZ")
