"""Write a plant scenario as CSV files (one per meter), a meter manifest and the truth."""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..quantities import Kind
from .engine import Engine, Unavailable, write_json
from .losses import iso
from .registers import fast_reader


@dataclass(frozen=True)
class CsvSummary:
    """What a CSV run produced."""

    outdir: Path
    rows: int
    missing: int  # polls that got no answer or an exception
    meters: int
    start: str
    end: str


def write_csv(
    engine: Engine,
    outdir: Path,
    interval_s: float | None = None,
    progress: Callable[[float], None] | None = None,
) -> CsvSummary:
    """Run ``engine`` to its end, sampling every meter every ``interval_s`` seconds."""
    if engine.end is None:
        raise ValueError("the scenario has no end: give days in the plant file or --days")
    interval = interval_s or engine.step_s
    ratio = interval / engine.step_s
    if ratio < 1 or abs(ratio - round(ratio)) > 1e-9:
        raise ValueError(
            f"the sampling interval ({interval:g} s) must be a multiple of the "
            f"simulation step ({engine.step_s:g} s)"
        )
    outdir.mkdir(parents=True, exist_ok=True)
    files, writers, columns = {}, {}, {}
    rows = missing = 0
    try:
        for mid, meter in engine.meters.items():
            pts = [p for p in meter.points if p.kind is not Kind.STATE or p.name == "line_running"]
            columns[mid] = [(p.name, fast_reader(p)) for p in pts]
            f = (outdir / f"{mid}.csv").open("w", newline="", encoding="utf-8")
            files[mid] = f
            writers[mid] = csv.writer(f, lineterminator="\n")
            writers[mid].writerow(["timestamp_utc", *(p.name for p in pts)])
        t = engine.start
        total = engine.end - engine.start
        next_report = 0.0
        while t < engine.end:
            engine.advance_to(t)
            stamp = iso(t)
            for mid in engine.meters:
                try:
                    engine.check_available(mid, t)
                except Unavailable:
                    missing += 1
                    continue
                values = engine.values(mid, t)
                writers[mid].writerow(
                    [stamp, *(read(values[name]) for name, read in columns[mid])]
                )
                rows += 1
            t += interval
            if progress and (t - engine.start) / total >= next_report:
                progress(min(1.0, (t - engine.start) / total))
                next_report += 0.05
        engine.advance_to(engine.end)
    finally:
        for f in files.values():
            f.close()
    truth = engine.truth()
    write_json(outdir / "truth.json", truth)
    write_json(
        outdir / "meters.json",
        {"plant": engine.plant.name, "timezone": engine.plant.timezone, "meters": truth["meters"]},
    )
    return CsvSummary(outdir, rows, missing, len(engine.meters), iso(engine.start), iso(engine.end))
