"""Scan one exported meter CSV for anomalies: what ``recp scan`` does.

The file needs a timestamp column and a value column: a counter (cumulative) or the
consumption per interval. Temperature and production columns are used when present. The
layout is detected (delimiter, timestamp format, which column is which, counter or
interval) and every guess can be overridden. Errors name the file and line.

Scores: one per interval in [0, 1], for ranking. An interval scores only where an event
starts (the event's relative size r as r / (1 + r)), so one long excursion raises the score
once, and a flat stretch, which has no spread at all, cannot push every score to the top.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from collector.quantities import QUANTITIES, UNIT_RESOURCES, Kind, counter_unit_in_name

from .anomaly import detect_anomalies
from .arrays import FloatArray, IntArray
from .clean import DEFAULT_INTERVAL_S, Consumption, clean_counter, resample_gauge
from .csvinput import CsvInputError
from .events import Event, EventType
from .meter import MeterInfo

TIME_NAMES = ("timestamp_utc", "timestamp", "time", "datetime", "date", "ts")
TEMPERATURE_NAMES = ("outdoor_temperature_c", "temperature_c", "temperature", "temp_c")
PRODUCTION_NAMES = ("produced_units", "production", "production_units", "units")
RESOURCE_UNITS = {"electricity": "kWh", "water": "m3", "steam": "kg"}
EPOCH_RANGE_S = (-62_135_596_800, 253_402_300_799)  # years 1..9999, what datetime holds
MAX_INTERVALS = 2_000_000  # 57 years of 15 minutes: beyond that a timestamp is a typo
DATA_QUALITY = {EventType.GAP, EventType.ROLLOVER, EventType.COUNTER_RESET,
                EventType.IMPOSSIBLE_RATE}


@dataclass(frozen=True)
class ScanOptions:
    """What ``recp scan`` was told; None means detect it from the file."""

    resource: str | None = None
    time_column: str | None = None
    value_column: str | None = None
    kind: str | None = None  # "counter" or "interval"
    temperature_column: str | None = None
    production_column: str | None = None
    timezone: str = "UTC"  # for timestamps without an offset
    interval_s: int = DEFAULT_INTERVAL_S
    meter: str = ""
    price_per_unit: float | None = None
    co2_kg_per_unit: float | None = None
    rollover: float | None = None
    max_rate_per_h: float | None = None
    currency: str = "EUR"


@dataclass(frozen=True)
class Table:
    """The parsed file: timestamps and every numeric column."""

    path: Path
    header: list[str]
    time_column: str
    t_s: IntArray
    columns: dict[str, FloatArray]


@dataclass(frozen=True)
class ScanResult:
    meter: MeterInfo
    value_column: str
    kind: str
    consumption: Consumption
    events: list[Event]
    scores: FloatArray
    notes: list[str] = field(default_factory=list)


def _sniff(path: Path, sample: str) -> csv.Dialect | type[csv.Dialect]:
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        return csv.excel


def _parse_time(text: str, zone: dt.tzinfo) -> int:
    text = text.strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:  # epoch seconds (or milliseconds)
        seconds = number / 1000 if number > 1e11 else number
        if not EPOCH_RANGE_S[0] <= seconds <= EPOCH_RANGE_S[1]:  # also NaN and infinities
            raise ValueError(f"{text} is not a time in years 1..9999")
        return int(seconds)
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    return int(value.timestamp())


def _number(text: str, decimal_comma: bool) -> float:
    text = text.strip()
    if text == "":
        return math.nan
    if decimal_comma:
        text = text.replace(".", "").replace(",", ".")
    return float(text)


def read_table(path: Path, opts: ScanOptions) -> Table:
    """Parse the whole CSV; the first bad cell raises CsvInputError naming its line."""
    try:
        zone: dt.tzinfo = ZoneInfo(opts.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise CsvInputError(path, None, f"unknown time zone {opts.timezone!r}") from None
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CsvInputError(path, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CsvInputError(path, None, f"cannot read: {exc}") from None
    dialect = _sniff(path, text[:4096])
    rows = csv.reader(text.splitlines(), dialect)
    header = [h.strip() for h in next(rows, [])]
    if len(header) < 2:
        raise CsvInputError(path, 1, "expected a header row with a timestamp and a value column")
    time_col = opts.time_column or next(
        (h for h in header if h.lower() in TIME_NAMES), header[0]
    )
    if time_col not in header:
        raise CsvInputError(path, 1, f"no column {time_col!r}; the file has {', '.join(header)}")
    ti = header.index(time_col)
    decimal_comma = getattr(dialect, "delimiter", ",") == ";"
    stamps: list[int] = []
    stamp_lines: list[int] = []
    cells: list[list[float]] = [[] for _ in header]
    bad_columns: dict[int, tuple[int, str]] = {}
    for line, row in enumerate(rows, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise CsvInputError(path, line, f"{len(row)} cells, the header has {len(header)}")
        try:
            stamps.append(_parse_time(row[ti], zone))
            stamp_lines.append(line)
        except ValueError:
            raise CsvInputError(
                path, line, f"{row[ti]!r} in column {time_col} is not a time "
                "(ISO 8601 such as 2026-01-05T00:00:00Z, or epoch seconds)"
            ) from None
        for i, cell in enumerate(row):
            if i == ti:
                continue
            try:
                cells[i].append(_number(cell, decimal_comma))
            except ValueError:
                cells[i].append(math.nan)
                bad_columns.setdefault(i, (line, cell))
    if not stamps:
        raise CsvInputError(path, 2, "no data rows after the header")
    _check_span(path, stamps, stamp_lines, opts.interval_s)
    numeric = {
        h: np.asarray(cells[i], dtype=np.float64)
        for i, h in enumerate(header)
        if i != ti and i not in bad_columns
    }
    wanted = [c for c in (opts.value_column, opts.temperature_column, opts.production_column)
              if c]
    for name in wanted:
        if name not in header:
            raise CsvInputError(path, 1, f"no column {name!r}; the file has {', '.join(header)}")
        i = header.index(name)
        if i in bad_columns:
            line, cell = bad_columns[i]
            raise CsvInputError(path, line, f"{cell!r} in column {name} is not a number")
    return Table(path, header, time_col, np.asarray(stamps, dtype=np.int64), numeric)


def _check_span(path: Path, stamps: list[int], lines: list[int], interval_s: int) -> None:
    """Refuse a time span that would need a grid of more than MAX_INTERVALS (a typo such as
    0226 for 2026 would otherwise allocate gigabytes); name the line farthest off."""
    lo, hi = min(stamps), max(stamps)
    if hi - lo <= MAX_INTERVALS * interval_s:
        return
    middle = sorted(stamps)[len(stamps) // 2]
    far = lo if middle - lo > hi - middle else hi
    i = stamps.index(far)
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    when = (epoch + dt.timedelta(seconds=far)).isoformat().replace("+00:00", "Z")
    raise CsvInputError(
        path, lines[i], f"time {when} is {abs(far - middle) / (365.25 * 86400):.0f} years from "
        f"the other readings (more than {MAX_INTERVALS:,} intervals); is the year right?")


def _value_column(table: Table, opts: ScanOptions) -> str:
    if opts.value_column:
        return opts.value_column
    skip = set(TEMPERATURE_NAMES) | set(PRODUCTION_NAMES) | {"line_running"}
    candidates = [h for h in table.columns if h not in skip]
    counters = [h for h in candidates if h in QUANTITIES and QUANTITIES[h].kind is Kind.COUNTER]
    if counters:
        return counters[0]
    if not candidates:
        raise CsvInputError(table.path, 1, "no numeric value column; name it with --value")
    return candidates[0]


def _kind(name: str, values: FloatArray, opts: ScanOptions) -> str:
    if opts.kind:
        return opts.kind
    q = QUANTITIES.get(name)
    if q is not None:
        return "counter" if q.kind is Kind.COUNTER else "interval"
    finite = values[np.isfinite(values)]
    if finite.size < 3:
        return "interval"
    rising = float(np.mean(np.diff(finite) >= 0))
    return "counter" if rising > 0.95 else "interval"


def _meter(name: str, opts: ScanOptions) -> tuple[MeterInfo, str]:
    """The meter's unit and resource: from a contract name (`energy_kwh`), else from a unit
    suffix in the column name (`total_kwh`), else from --resource; and how they were found.
    --resource always sets the resource; a unit the name states is kept."""
    q = QUANTITIES.get(name)
    suffix = counter_unit_in_name(name)
    if q is not None:
        unit, how = q.unit, f"{name} is a contract name"
    elif suffix is not None:
        unit, how = suffix[1], f"from the name's suffix {suffix[0]}"
    else:
        unit = RESOURCE_UNITS.get(opts.resource or "", "units")
        how = "from --resource" if opts.resource else "no unit in the name; --resource sets one"
    resource = opts.resource
    if resource is None:
        found = UNIT_RESOURCES.get(unit)
        resource = found.value if found is not None and found.value in RESOURCE_UNITS else None
    else:
        how += f"; resource {resource} from --resource"
    meter = MeterInfo(
        id=opts.meter or name,
        unit=unit,
        resource=resource or "",
        price_per_unit=opts.price_per_unit,
        co2_kg_per_unit=opts.co2_kg_per_unit,
        rollover=opts.rollover,
        max_rate_per_h=opts.max_rate_per_h,
    )
    return meter, how


def _interval_readings_to_counter(t: IntArray, x: FloatArray) -> tuple[IntArray, FloatArray]:
    """Consumption per row -> a counter (so one cleaning path serves both layouts).

    Each row's consumption is taken to end at its timestamp; the first row starts the count.
    """
    order = np.argsort(t, kind="stable")
    t, x = t[order], x[order]
    counter = np.nancumsum(np.where(np.isfinite(x), x, 0.0))
    counter[~np.isfinite(x)] = np.nan
    return t, counter


def onset_scores(consumption: Consumption, events: list[Event]) -> FloatArray:
    """Score in [0, 1] per interval: r / (1 + r) where an event starts, r its relative size."""
    t = consumption.start_s
    x = consumption.consumption
    scores = np.zeros(t.size)
    if t.size == 0:
        return scores
    typical = float(np.nanmedian(x)) if np.isfinite(x).any() else 0.0
    for ev in events:
        if ev.type in DATA_QUALITY:
            continue
        start = ev.start.timestamp()
        i = int(np.searchsorted(t, start, side="right")) - 1
        if not 0 <= i < t.size:
            continue
        end = ev.end.timestamp() if ev.end else float(t[-1] + consumption.interval_s)
        intervals = max(1.0, (end - start) / consumption.interval_s)
        if ev.type is EventType.STUCK:
            r = intervals / (4 * 3600 / consumption.interval_s)  # 4 hours stuck: 0.5
        elif typical > 0:
            r = max(0.0, ev.excess) / (typical * intervals)
        else:
            r = 1.0
        scores[i] = max(scores[i], r / (1.0 + r))
    return scores


def scan(path: Path, opts: ScanOptions) -> ScanResult:
    """Read ``path``, clean it, run every detector, and score the intervals."""
    table = read_table(path, opts)
    name = _value_column(table, opts)
    if name not in table.columns:
        raise CsvInputError(path, 1, f"column {name!r} holds text, not numbers")
    values = table.columns[name]
    kind = _kind(name, values, opts)
    meter, how = _meter(name, opts if opts.meter else replace(opts, meter=path.stem))
    what = f" ({meter.resource})" if meter.resource else ""
    notes = [f"value column {name} read as {kind} in {meter.unit}{what}, {how}"]
    t, v = table.t_s, values
    if kind == "interval":
        t, v = _interval_readings_to_counter(t, v)
    cons = clean_counter(t, v, meter=meter, interval_s=opts.interval_s)
    lo = int(cons.start_s[0]) if cons.start_s.size else None
    hi = int(cons.start_s[-1]) + opts.interval_s if cons.start_s.size else None
    temp_col = opts.temperature_column or next(
        (c for c in TEMPERATURE_NAMES if c in table.columns), None)
    prod_col = opts.production_column or next(
        (c for c in PRODUCTION_NAMES if c in table.columns), None)
    temperature = production = active = None
    if temp_col:
        temperature = resample_gauge(table.t_s, table.columns[temp_col],
                                     interval_s=opts.interval_s, start_s=lo, end_s=hi).mean
        notes.append(f"temperature from {temp_col}")
    if prod_col:
        prod = clean_counter(table.t_s, table.columns[prod_col], interval_s=opts.interval_s,
                             start_s=lo, end_s=hi)
        production = prod.consumption
        active = np.where(np.isfinite(production), (production > 0).astype(float), np.nan)
        notes.append(f"production from {prod_col}")
    events = list(cons.events)
    events += detect_anomalies(cons, meter, active=active, production=production,
                               temperature=temperature, currency=opts.currency)
    events.sort(key=lambda e: (e.start, e.type.value))
    return ScanResult(meter, name, kind, cons, events, onset_scores(cons, events), notes)


def event_dict(ev: Event) -> dict:
    """An event as JSON-ready data (UTC ISO times)."""
    def iso(t: dt.datetime | None) -> str | None:
        return None if t is None else t.strftime("%Y-%m-%dT%H:%M:%SZ")

    return {
        "meter": ev.meter, "type": ev.type.value, "start": iso(ev.start), "end": iso(ev.end),
        "severity": ev.severity.value, "excess": ev.excess, "unit": ev.unit, "cost": ev.cost,
        "co2_kg": ev.co2_kg, "score": ev.score, "explanation": ev.explanation,
    }
