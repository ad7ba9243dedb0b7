"""``recp simulate``: run the virtual plant as Modbus TCP servers, or write it as CSV."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
import time
from pathlib import Path

NAME = "simulate"
HELP = "run the virtual plant: Modbus TCP meters, or CSV files with --csv"
DESCRIPTION = """\
Run a virtual plant described by a plant file (kind: plant). Its meters behave like a small
factory (shifts, weather, production, noise) with the losses and faults the file injects,
and the ground truth of every injected event is written as JSON.

Without --csv, every meter is served over Modbus TCP on loopback through its device
profile, with time running --speed simulated seconds per wall-clock second, until the
scenario ends or Ctrl-C. With --csv OUTDIR, the whole scenario is written at once as one CSV
per meter (timestamp_utc and value columns named with their units), meters.json and
truth.json.

examples:
  recp simulate -c edge_config/plants/demo.yaml
  recp simulate -c edge_config/plants/demo.yaml --speed 1            # real time
  recp simulate -c edge_config/plants/demo.yaml --csv out/demo --days 30
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", type=Path, required=True, metavar="PLANT",
                   help="plant file, e.g. edge_config/plants/demo.yaml")
    p.add_argument("--csv", type=Path, metavar="OUTDIR",
                   help="write CSV files, meters.json and truth.json here instead of serving")
    p.add_argument("--days", type=float, help="scenario length (default: the plant file's)")
    p.add_argument("--start", help="scenario start, UTC, e.g. 2026-03-02T00:00:00Z")
    p.add_argument("--seed", type=int, help="random seed (default: the plant file's)")
    p.add_argument("--interval", type=float, metavar="SECONDS",
                   help="CSV sampling interval (default: the simulation step)")
    p.add_argument("--no-losses", action="store_true",
                   help="run the same plant without any injected loss or fault")
    serve = p.add_argument_group("serving Modbus")
    serve.add_argument("--speed", type=float,
                       help="simulated seconds per wall second (1 = real time, 0 = frozen)")
    serve.add_argument("--host", help="address to listen on (default: the plant file's)")
    serve.add_argument("--port-base", type=int, metavar="PORT",
                       help="move the plant's ports so the lowest is PORT (0: any free ports)")
    serve.add_argument("--truth", type=Path, metavar="FILE",
                       help="keep the ground truth here while serving (default: none)")
    serve.add_argument("--status", type=Path, metavar="FILE",
                       help="keep a JSON snapshot of ports and current values here")
    serve.add_argument("--from", dest="serve_from", metavar="TIME",
                       help="start serving at this simulated time (UTC): the scenario still "
                       "begins at its start and runs there silently, so a CSV of the days "
                       "before (a lead-in) continues into what is served")
    serve.add_argument("--record", type=Path, metavar="FILE",
                       help="append every read served to FILE, one JSON line each (meter, "
                       "simulated time, request, decoded values or why it was refused)")
    serve.add_argument("--hold", type=Path, metavar="FILE",
                       help="answer at once, but start the clock only when FILE exists (and, "
                       "for a plant with a clock, at the next read of that clock)")


def _overrides(args: argparse.Namespace) -> dict:
    out: dict = {}
    if args.days is not None:
        out["days"] = args.days
    if args.seed is not None:
        out["seed"] = args.seed
    if args.start:
        out["start"] = dt.datetime.fromisoformat(args.start.replace("Z", "+00:00"))
    if args.speed is not None:
        out["speed"] = args.speed
    if args.host:
        out["host"] = args.host
    return out


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from ..configfile import ConfigError, Problem, validation_problems
    from ..plant import Engine, load_plant

    spec = load_plant(args.config)
    overrides = _overrides(args)
    if overrides:
        data = spec.plant.model_dump() | overrides
        try:
            plant = type(spec.plant).model_validate(data)
        except ValidationError as exc:  # a bad --days, --start, --speed, ...
            raise ConfigError(list(validation_problems(exc, "command line", {}))) from None
        spec = dataclasses.replace(spec, plant=plant)
    try:
        engine = Engine(spec.plant, spec.profiles, losses=not args.no_losses, file=spec.file)
    except ValueError as exc:
        raise ConfigError([Problem(spec.file, None, "losses", str(exc))]) from None

    if args.csv:
        from ..plant.csvout import write_csv

        started, cpu_started = time.monotonic(), time.process_time()

        def progress(fraction: float) -> None:
            if sys.stderr.isatty():
                bar = "#" * int(fraction * 30)
                print(f"\r[{bar:30s}] {fraction:4.0%}", end="", file=sys.stderr, flush=True)

        summary = write_csv(engine, args.csv, args.interval, progress)
        if sys.stderr.isatty():
            print(file=sys.stderr)
        took, cpu = time.monotonic() - started, time.process_time() - cpu_started
        n_events = len(engine.truth()["events"])
        print(
            f"wrote {summary.rows} readings of {summary.meters} meters "
            f"({summary.start} .. {summary.end}, {summary.missing} polls unanswered) "
            f"and {n_events} truth events to {summary.outdir} in {took:.1f} s "
            f"(cpu {cpu:.1f} s)"
        )
        return 0

    if args.serve_from:
        try:
            begin = dt.datetime.fromisoformat(args.serve_from.replace("Z", "+00:00"))
        except ValueError:
            begin = None
        if begin is None or begin.tzinfo is None:
            raise ConfigError([Problem("command line", None, "--from",
                                       f"not a UTC time like 2026-02-02T00:00:00Z: "
                                       f"{args.serve_from!r}")])
        t = begin.timestamp()
        if not engine.start <= t < (engine.end if engine.end is not None else float("inf")):
            raise ConfigError([Problem("command line", None, "--from",
                                       f"{args.serve_from} is not within the scenario")])
        engine.advance_to(t)

    from ..plant.server import serve_plant

    return serve_plant(engine, spec, port_base=args.port_base, truth_path=args.truth,
                       status_path=args.status, record_path=args.record,
                       hold_path=args.hold)
