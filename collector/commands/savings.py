"""``recp savings``: verify what an intervention saved (IPMVP adjusted baseline, Guideline 14)."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

NAME = "savings"
HELP = "verify savings: adjusted baseline, ASHRAE Guideline 14 statistics, HTML report"
DESCRIPTION = """\
Verify what an intervention saved on one meter (IPMVP Option B/C). A baseline model (time of
week, outdoor temperature, production) is fitted on the baseline period and run with the
reporting period's weather and production: the adjusted baseline. Avoided consumption is
adjusted baseline minus actual, with its ASHRAE Guideline 14-2014 uncertainty at 68/80/90 %
and a pass/fail verdict (CV(RMSE), NMBE, savings uncertainty, data sufficiency).

INPUT is a CSV file: timestamp_utc, then value columns (the layout recp simulate --csv
writes), or SITE/METER with --store FILE (the embedded store of recp detect or recp demo),
or influx:SITE/METER: the interval consumption recp detect stored in the InfluxDB 2 or
VictoriaMetrics (influx.flavor) of --analytics FILE (then --production names a production
meter and --temperature a reading field such as outdoor_temperature_c; prices from the
site's settings or --price). For a CSV, the consumption column is a counter by default
(--values interval: quantity per row). --temperature and --production name columns; a
column not in INPUT is taken from --temperature-csv / --production-csv, or else from the
one other CSV file in INPUT's folder that has it. A production column is a counter of
units produced, or a rate per hour when its name ends in _h. With a meters.json beside
INPUT (recp simulate output) the meter's counter column, unit, price and CO2 factor come
from it.

Periods are START..END with ISO dates or date-times; a date-only END includes that day;
times without Z or an offset are local in --timezone.

Writes OUT/savings.json and OUT/report.html (self-contained, plots embedded).

examples:
  recp savings out/steam_main.csv --baseline 2026-01-05..2026-02-15 \\
      --reporting 2026-02-16..2026-03-01 --temperature outdoor_temperature_c \\
      --production produced_units --timezone Europe/Vienna --out savings/
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", type=Path, metavar="INPUT", help="CSV file of the meter")
    p.add_argument("--baseline", required=True, metavar="START..END", help="baseline period")
    p.add_argument("--reporting", required=True, metavar="START..END", help="reporting period")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--meter", metavar="ID", help="meter id in meters.json (default: file name)")
    p.add_argument(
        "--column",
        metavar="COL",
        help="consumption column (default: the meter's counter from meters.json)",
    )
    p.add_argument(
        "--values",
        choices=("counter", "interval"),
        default="counter",
        help="the column is a cumulative counter (default) or quantity per row",
    )
    p.add_argument("--temperature", metavar="COL", help="outdoor temperature column, degC")
    p.add_argument(
        "--temperature-csv", type=Path, metavar="FILE", help="file holding the temperature column"
    )
    p.add_argument("--production", metavar="COL", help="production column (units)")
    p.add_argument(
        "--production-csv", type=Path, metavar="FILE", help="file holding the production column"
    )
    p.add_argument(
        "--method",
        choices=("hourly", "daily", "caltrack-daily", "caltrack-hourly"),
        default=None,
        help="hourly (default): hour-of-week, degree and production terms on hours; daily: "
        "CalTRACK 2.0's daily method on local days (one intercept, heating/cooling degree days "
        "of the daily mean temperature, production terms) with CalTRACK's data sufficiency "
        "(a 365-day baseline) and our significance rule (a slope needs p < 0.1); "
        "caltrack-daily: CalTRACK 2.0's daily method exactly as the spec states it (no "
        "p-value rule; days with half their hours known filled; needs --temperature); "
        "caltrack-hourly: CalTRACK 2.0's hourly method as eemeter has "
        "it (a model per calendar month on it and its neighbours, hour-of-week levels, "
        "occupancy-split temperature bins; needs --temperature and a 365-day baseline)",
    )
    p.add_argument("--interval", choices=("hourly", "daily"), help=argparse.SUPPRESS)
    p.add_argument(
        "--time-of-week",
        choices=("week", "daytype", "none"),
        default=None,
        help="levels of the model: week (hour of the week; the hourly default), daytype "
        "(workday/weekend x hour: fewer parameters, for baselines of a few weeks) or none "
        "(one level per hour of the day; the daily default: a single intercept)",
    )
    p.add_argument(
        "--timezone", default=None, help="local time zone for time of week and dates (default UTC)"
    )
    p.add_argument("--unit", help="counter unit when there is no meters.json")
    p.add_argument("--price", type=float, help="price per counter unit (overrides meters.json)")
    p.add_argument(
        "--co2-factor",
        type=float,
        metavar="KG",
        help="kg CO2 per counter unit (overrides meters.json)",
    )
    p.add_argument("--currency", default="EUR", help="currency of the price (default EUR)")
    p.add_argument(
        "--store",
        type=Path,
        metavar="FILE",
        help="read INPUT SITE/METER from this embedded store (recp detect with influx.url "
        "sqlite:FILE; recp demo's store.sqlite)",
    )
    p.add_argument(
        "--analytics",
        type=Path,
        metavar="FILE",
        help="analytics file of recp detect, for INPUT influx:SITE/METER",
    )


def _problem(file: str, line: int | None, message: str) -> Any:
    from ..configfile import ConfigError, Problem

    return ConfigError([Problem(file, line, "", message)])


DAILY = ("daily", "caltrack-daily")


def _method(args: argparse.Namespace) -> str:
    """--method, or the older --interval spelling of it; hourly by default."""
    if args.method and args.interval and args.method != args.interval:
        raise _problem("<command line>", None,
                       f"--method {args.method} and --interval {args.interval} disagree; "
                       "give --method only")  # fmt: skip
    return str(args.method or args.interval or "hourly")


def _grid(args: argparse.Namespace) -> dict[str, Any]:
    """The series the method fits: days or hours, and whether a day with half its hours
    known is filled (CalTRACK daily)."""
    method = _method(args)
    return {"interval_s": 86400 if method in DAILY else 3600,
            "fill_days": method == "caltrack-daily"}


def run(args: argparse.Namespace) -> int:
    from detectors.csvinput import CsvInputError
    from detectors.savings import SavingsError

    try:
        return _run(args)
    except CsvInputError as exc:
        raise _problem(exc.file, exc.line, exc.message) from None
    except SavingsError as exc:
        raise _problem(str(args.input), None, str(exc)) from None


def _influx_series(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(series, baseline, reporting) from the InfluxDB of an analytics file."""
    from detectors.history import HistoryError
    from detectors.influxinput import parse_target, query_series
    from detectors.savings import Period, SavingsError
    from detectors.service.config import load_analytics

    site, meter_id = parse_target(str(args.input))
    if args.analytics is None:
        raise _problem(str(args.input), None, "an InfluxDB input needs --analytics FILE (the "
                       "analytics file of recp detect: URL, bucket, token, flavor)")  # fmt: skip
    spec = load_analytics(args.analytics)
    tz = args.timezone or "UTC"
    baseline = Period.parse(args.baseline, "baseline", tz)
    reporting = Period.parse(args.reporting, "reporting", tz)
    try:
        series = query_series(
            spec, site, meter_id, baseline.start_s, reporting.end_s,
            timezone=tz, production=args.production, temperature_field=args.temperature,
            price=args.price, co2=args.co2_factor, **_grid(args),
        )  # fmt: skip
    except (HistoryError, SavingsError) as exc:
        raise _problem(spec.history_url, None, str(exc)) from None
    return series, baseline, reporting


def _store_series(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(series, baseline, reporting) from the embedded store (``--store FILE``)."""
    import numpy as np

    from detectors.influxinput import parse_target, series_from_rows
    from detectors.meter import MeterInfo
    from detectors.savings import Period
    from detectors.store import Store, _price, consumption_rows, reading_series

    site, meter_id = parse_target(str(args.input))
    tz = args.timezone or "UTC"
    baseline = Period.parse(args.baseline, "baseline", tz)
    reporting = Period.parse(args.reporting, "reporting", tz)
    try:
        store = Store(args.store)
    except FileNotFoundError as exc:
        raise _problem(str(args.store), None, str(exc)) from None
    with store:
        wanted = [meter_id] + ([args.production] if args.production else [])
        rows = consumption_rows(store, site, baseline.start_s, reporting.end_s, wanted)
        temperature = None
        if args.temperature:
            ts, vs = reading_series(store, site, args.temperature, baseline.start_s,
                                    reporting.end_s)
            temperature = (np.asarray(ts, dtype=np.int64), np.asarray(vs, dtype=np.float64))
        price, co2, unit = _price(store, site, meter_id)
    info = MeterInfo(meter_id, unit or next((r.unit for r in rows if r.meter == meter_id), ""),
                     price_per_unit=args.price if args.price is not None else price,
                     co2_kg_per_unit=args.co2_factor if args.co2_factor is not None else co2)
    series = series_from_rows(
        rows, meter_id, start_s=baseline.start_s, end_s=reporting.end_s,
        timezone=tz, production=args.production, temperature=temperature, info=info,
        **_grid(args),
    )  # fmt: skip
    return series, baseline, reporting


def _csv_series(args: argparse.Namespace, bar: Any) -> tuple[Any, Any, Any]:
    """(series, baseline, reporting) from CSV files."""
    from dataclasses import replace

    from detectors.csvinput import CsvInputError, find_column, load_manifest, read_columns
    from detectors.meter import MeterInfo
    from detectors.savings import Period, Readings, prepare

    src: Path = args.input
    manifest = load_manifest(src.parent)
    meter_id = args.meter or src.stem
    if manifest is not None and meter_id in manifest.meters:
        meter = manifest.meter_info(meter_id)
        column = args.column or manifest.meters[meter_id].get("counter")
    else:
        if args.meter and manifest is not None:
            manifest.meter_info(args.meter)  # raises naming the meters it has
        meter = MeterInfo(meter_id, args.unit or "")
        column = args.column
    if not column:
        raise CsvInputError(src, 1, "name the consumption column with --column")
    if args.price is not None:
        meter = replace(meter, price_per_unit=args.price)
    if args.co2_factor is not None:
        meter = replace(meter, co2_kg_per_unit=args.co2_factor)
    tz = args.timezone or (manifest.timezone if manifest and manifest.timezone else "UTC")
    baseline = Period.parse(args.baseline, "baseline", tz)
    reporting = Period.parse(args.reporting, "reporting", tz)
    bar.note(f"reading {src.name}")
    ts, cols = read_columns(src, [column])
    consumption = Readings(ts, cols[column], args.values, meter)
    temperature = production = None
    if args.temperature:
        f = args.temperature_csv or find_column(args.temperature, src)
        tt, tv = read_columns(f, [args.temperature])
        temperature = Readings(tt, tv[args.temperature], "rate")
    if args.production:
        f = args.production_csv or find_column(args.production, src)
        pt, pv = read_columns(f, [args.production])
        kind = "rate" if args.production.endswith("_h") else "counter"
        pmeter = None
        if manifest is not None:
            entry = manifest.meters.get(f.stem, {})
            if entry.get("counter") == args.production:
                pmeter = manifest.meter_info(f.stem)
        production = Readings(pt, pv[args.production], kind, pmeter)  # type: ignore[arg-type]
    bar.step("cleaning")
    series = prepare(
        consumption,
        meter=meter,
        start_s=baseline.start_s,
        end_s=reporting.end_s,
        timezone=tz,
        temperature=temperature,
        production=production,
        **_grid(args),
    )
    return series, baseline, reporting


def _run(args: argparse.Namespace) -> int:
    from detectors.baseline import BaselineConfig
    from detectors.report.progress import Progress
    from detectors.report.verification import savings_html
    from detectors.savings import SavingsError, compute_savings

    with Progress(5, "savings") as bar:
        if args.store is not None:
            bar.note("reading the store")
            series, baseline, reporting = _store_series(args)
            bar.step("cleaning")
        elif str(args.input).startswith("influx:"):
            bar.note("querying InfluxDB")
            series, baseline, reporting = _influx_series(args)
            bar.step("cleaning")
        else:
            series, baseline, reporting = _csv_series(args, bar)
        meter = series.meter
        bar.step("fitting")
        if _method(args) == "caltrack-hourly" and args.time_of_week not in (None, "week"):
            raise SavingsError(
                f"--time-of-week {args.time_of_week} does not apply to --method "
                "caltrack-hourly: CalTRACK hourly has a level per hour of the week"
            )
        if _method(args) in DAILY:
            config = BaselineConfig.caltrack_daily(
                series.timezone, significance=_method(args) == "daily"
            )
            if args.time_of_week:
                config = replace(config, time_of_week=args.time_of_week)
        else:
            config = BaselineConfig(interval_s=series.interval_s, timezone=series.timezone,
                                    time_of_week=args.time_of_week or "week")  # fmt: skip
        result = compute_savings(
            series, baseline, reporting, config=config, currency=args.currency,
            progress=bar.note, method=_method(args),  # type: ignore[arg-type]
        )  # fmt: skip
        bar.step("plotting")
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "savings.json").write_text(
            json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8"
        )
        bar.step("report")
        (args.out / "report.html").write_text(savings_html(result), encoding="utf-8")
        bar.step()

    u = result.halfwidth.get(0.90)
    unit = meter.unit
    print(f"{meter.id}: avoided {result.avoided:,.4g} {unit}"
          + ("" if u is None else f" ± {u:,.3g} {unit} (90 %)")
          + ("" if result.fraction is None else f", {100 * result.fraction:.1f} % of baseline")
          + ("" if meter.cost(result.avoided) is None
             else f", {meter.cost(result.avoided):,.0f} {args.currency}"))  # fmt: skip
    st = result.model.stats
    cv = "n/a" if st.cv_rmse_pct is None else f"{st.cv_rmse_pct:.1f} %"
    print(f"method: {result.method_description}")
    print(f"model: {result.model.describe()}")
    print(f"Guideline 14: CV(RMSE) {cv}, verdict: "
          + ("PASS" if result.verdict.passed else "FAIL"))  # fmt: skip
    for reason in result.verdict.reasons:
        print(f"  - {reason}")
    for warning in result.verdict.warnings:
        print(f"  note: {warning}")
    print(f"wrote {args.out / 'savings.json'} and {args.out / 'report.html'}")
    return 0
