"""``recp scan``: find anomalies in one exported meter CSV (offline)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

NAME = "scan"
HELP = "scan a meter CSV for anomalies and losses (offline)"
DESCRIPTION = """\
Read one CSV exported from a meter or a data logger: a timestamp column and a value column
(a counter, or the consumption per interval), optionally outdoor temperature and production
columns. The layout is detected; flags override every guess. The readings are cleaned
(rollovers, resets, gaps flagged, never filled) and every detector runs over them: spikes,
stuck meter, base-load rise / level shift, drift. Events are written as JSON with their
excess, cost and CO2; --scores writes one score in [0, 1] per interval for ranking alarms.

examples:
  recp scan out/demo/water_main.csv --out events.json
  recp scan export.csv --value total_kwh --kind counter --resource electricity \\
            --price 0.21 --co2 0.28 --timezone Europe/Vienna --scores scores.csv
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", type=Path, metavar="INPUT.csv")
    p.add_argument("--out", type=Path, default=Path("events.json"), metavar="FILE",
                   help="events as JSON (default: events.json)")
    p.add_argument("--scores", type=Path, metavar="FILE", help="per-interval scores as CSV")
    p.add_argument("--resource", choices=["electricity", "water", "steam"],
                   help="what the meter measures (default: from the column name)")
    p.add_argument("--time", dest="time_column", metavar="COL", help="timestamp column")
    p.add_argument("--value", dest="value_column", metavar="COL", help="value column")
    p.add_argument("--kind", choices=["counter", "interval"],
                   help="cumulative counter or consumption per row (default: detected)")
    p.add_argument("--temperature", dest="temperature_column", metavar="COL")
    p.add_argument("--production", dest="production_column", metavar="COL",
                   help="a production counter column (units produced)")
    p.add_argument("--timezone", default="UTC",
                   help="zone of timestamps that carry no offset (default: UTC)")
    p.add_argument("--interval-min", type=int, default=15, help="analysis interval (15)")
    p.add_argument("--meter", default="", help="meter name for the events")
    p.add_argument("--price", type=float, help="money per unit (kWh, m3, kg)")
    p.add_argument("--co2", type=float, help="kg CO2 per unit")
    p.add_argument("--currency", default="EUR")
    p.add_argument("--rollover", type=float, help="value at which the counter wraps")
    p.add_argument("--max-rate", type=float, help="rated maximum, units per hour")


def run(args: argparse.Namespace) -> int:
    from detectors.csvinput import CsvInputError
    from detectors.scan import ScanOptions, event_dict, scan

    from ..configfile import ConfigError, Problem

    opts = ScanOptions(
        resource=args.resource, time_column=args.time_column, value_column=args.value_column,
        kind=args.kind, temperature_column=args.temperature_column,
        production_column=args.production_column, timezone=args.timezone,
        interval_s=args.interval_min * 60, meter=args.meter, price_per_unit=args.price,
        co2_kg_per_unit=args.co2, rollover=args.rollover, max_rate_per_h=args.max_rate,
        currency=args.currency,
    )
    try:
        result = scan(args.input, opts)
    except CsvInputError as exc:
        raise ConfigError([Problem(exc.file, exc.line, "", exc.message)]) from None
    except ValueError as exc:
        raise ConfigError([Problem(str(args.input), None, "", str(exc))]) from None
    events = [event_dict(e) for e in result.events]
    args.out.write_text(json.dumps({"input": str(args.input), "notes": result.notes,
                                    "events": events}, indent=2) + "\n", encoding="utf-8")
    if args.scores:
        with args.scores.open("w", encoding="utf-8") as f:
            f.write("interval_start_utc,consumption,score\n")
            c = result.consumption
            for t, x, s in zip(c.start_s, c.consumption, result.scores, strict=True):
                when = dt.datetime.fromtimestamp(int(t), dt.timezone.utc)
                stamp = when.strftime("%Y-%m-%dT%H:%M:%SZ")
                f.write(f"{stamp},{'' if x != x else f'{x:.6g}'},{s:.4f}\n")
    print("; ".join(result.notes))
    losses = [e for e in result.events if e.excess > 0]
    print(f"{len(result.events)} events ({len(losses)} with an excess) written to {args.out}")
    for e in sorted(losses, key=lambda e: -(e.cost or e.excess))[:10]:
        print(f"  {e.type.value:15s} {e.explanation}")
    return 0
