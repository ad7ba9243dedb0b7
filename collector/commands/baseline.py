"""``recp baseline fit``: fit meters' baselines from stored consumption (analytics extra)."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

NAME = "baseline"
HELP = "fit or refit meters' baselines from the consumption stored in InfluxDB/VictoriaMetrics"
DESCRIPTION = """\
Read one site's interval consumption (measurement consumption, field actual) between
--start and --end from the database of an analytics file (InfluxDB 2, or VictoriaMetrics
with influx.flavor: victoriametrics, or the embedded store of influx.url: sqlite:FILE),
fit a baseline per meter (time of week, and the outdoor temperature and production the
file names; docs/detector-service.md) and write <baselines.dir>/<site>/<meter>.json,
which recp detect loads (restart it to use a refit baseline).

example:
  recp baseline fit -c /etc/recp/analytics.yaml --site dairy \\
      --start 2026-01-01T00:00:00Z --end 2026-03-01T00:00:00Z
"""


def _utc(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO time: {text!r}") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give the time in UTC (end it with Z): {text!r}")
    return value.astimezone(dt.timezone.utc)


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    fit = sub.add_parser("fit", help="fit baselines from stored consumption")
    fit.add_argument("-c", "--config", type=Path, required=True, metavar="FILE",
                     help="analytics file (kind: analytics) with baselines.dir set")
    fit.add_argument("--site", required=True)
    fit.add_argument("--meter", action="append", default=[], help="only this meter (repeat)")
    fit.add_argument("--start", type=_utc, required=True, help="baseline period start, UTC")
    fit.add_argument("--end", type=_utc, required=True, help="baseline period end, UTC")
    fit.add_argument("--interval", type=int, default=3600, metavar="SECONDS",
                     help="baseline interval (default 3600: hourly)")
    fit.add_argument("--timezone", default="UTC", help="local time for time-of-week slots")


def run(args: argparse.Namespace) -> int:
    from detectors.baseline import BaselineConfig
    from detectors.history import HistoryError
    from detectors.service.baselines import fit_site, query_rows, query_temperatures, save
    from detectors.service.config import load_analytics
    from detectors.service.inputs import inputs_from_config

    from ..configfile import ConfigError, Problem

    spec = load_analytics(args.config)
    if spec.config.baselines.dir is None:
        raise ConfigError([Problem(str(args.config), None, "baselines.dir",
                                   "set it to the folder where baselines are kept")])
    config = BaselineConfig(interval_s=args.interval, timezone=args.timezone)
    inputs = inputs_from_config(spec.config)
    # the production meters named for the chosen meters are read too (their consumption)
    wanted = list(args.meter)
    for m in args.meter:
        link = inputs.of(args.site, m)
        if link is not None and link.production is not None:
            wanted.append(link.production.meter)
    try:
        rows = query_rows(spec, args.site, args.start, args.end, wanted)
        links = {m: link for m in {r.meter for r in rows}
                 if (link := inputs.of(args.site, m)) is not None}
        sources = {ln.temperature.meter: ln.temperature for ln in links.values()
                   if ln.temperature is not None}
        temperatures = query_temperatures(spec, args.site, sources.values(), args.start,
                                          args.end)
    except HistoryError as exc:  # the database's own errors (HTTP, connection, timeout)
        print(f"error: could not read consumption from "
              f"{spec.history_url}: {exc}")
        return 1
    if not rows:
        print(f"no consumption of site {args.site} stored between {args.start} and {args.end}")
        return 1
    # with --meter, the production meters were read as inputs, not to be fitted
    to_fit = set(args.meter) if args.meter else {r.meter for r in rows}
    failed = 0
    results = fit_site(rows, config, links, temperatures)
    for meter, result in sorted((m, r) for m, r in results.items() if m in to_fit):
        if isinstance(result, str):
            failed += 1
            print(f"FAILED {meter}: {result}")
            continue
        path = save(spec, args.site, result)
        print(f"ok     {result.describe()}  -> {path}")
    return 1 if failed else 0
