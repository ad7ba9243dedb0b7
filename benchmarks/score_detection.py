"""Score the detector core against the virtual plant's ground truth.

Runs the 30-day demo plant (every loss and fault injected) as CSV, passes every meter
through the batch pipeline (clean_counter -> detect_anomalies, plus baseline + overspend
where a baseline period is available), matches the events found with the truth and prints:
share of injected events found, share of injected excess attributed, false events per meter
per month, and the median start delay per event type.

    python -m benchmarks.score_detection [--dir OUTDIR] [--plant PLANT] [--seed N]

A found event matches an injected one when it is on the same meter, of a compatible type,
and overlaps the injected window (a day of slack at either end). Excess is attributed up to
the injected excess of the event it matches.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from collector.plant import Engine, load_plant
from collector.plant.csvout import write_csv
from detectors.anomaly import detect_anomalies
from detectors.clean import clean_counter, resample_gauge
from detectors.csvinput import load_manifest, read_columns
from detectors.events import Event, EventType

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "edge_config" / "plants" / "demo.yaml"
INTERVAL_S = 900
SLACK_S = 86400
# injected type -> event types that count as finding it
COMPATIBLE: dict[str, set[EventType]] = {
    "leak": {EventType.BASE_LOAD_RISE, EventType.LEVEL_SHIFT},
    "base_load_rise": {EventType.BASE_LOAD_RISE, EventType.LEVEL_SHIFT},
    "steam_trap": {EventType.LEVEL_SHIFT, EventType.BASE_LOAD_RISE},
    "drift": {EventType.DRIFT, EventType.OVERSPEND},
    "overspend": {EventType.OVERSPEND, EventType.DRIFT},
    "spikes": {EventType.SPIKE},
    "stuck": {EventType.STUCK},
    "rollover": {EventType.ROLLOVER},
    "reset": {EventType.COUNTER_RESET},
    "dropout": {EventType.GAP},
}
LOSS_TYPES = {"leak", "base_load_rise", "steam_trap", "drift", "overspend", "spikes"}
DATA_TYPES = {EventType.ROLLOVER, EventType.COUNTER_RESET, EventType.GAP,
              EventType.IMPOSSIBLE_RATE}


def _t(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class Match:
    truth: dict
    found: list[Event]


def analyse(folder: Path) -> dict[str, list[Event]]:
    """Every meter of a plant CSV folder through the batch pipeline."""
    manifest = load_manifest(folder)
    assert manifest is not None, f"{folder} has no meters.json"
    start, end = manifest.start_s, manifest.end_s
    weather = manifest.first_of("weather")
    prod = manifest.first_of("production")
    temperature = active = production = None
    if weather:
        ts, cols = read_columns(folder / f"{weather}.csv", ["outdoor_temperature_c"])
        temperature = resample_gauge(ts, cols["outdoor_temperature_c"], interval_s=INTERVAL_S,
                                     start_s=start, end_s=end).mean
    if prod:
        entry = manifest.meters[prod]
        ts, cols = read_columns(folder / f"{prod}.csv", [entry["counter"], "line_running"])
        active = resample_gauge(ts, cols["line_running"], interval_s=INTERVAL_S,
                                start_s=start, end_s=end).mean
        production = clean_counter(ts, cols[entry["counter"]], meter=manifest.meter_info(prod),
                                   interval_s=INTERVAL_S, start_s=start, end_s=end).consumption
    events: dict[str, list[Event]] = {}
    for mid, entry in manifest.meters.items():
        if entry.get("resource") not in ("electricity", "water", "steam"):
            continue
        meter = manifest.meter_info(mid)
        ts, cols = read_columns(folder / f"{mid}.csv", [entry["counter"]])
        cons = clean_counter(ts, cols[entry["counter"]], meter=meter, interval_s=INTERVAL_S,
                             start_s=start, end_s=end)
        found = list(cons.events)
        found += detect_anomalies(cons, meter, active=active, production=production,
                                  temperature=temperature)
        events[mid] = found
    return events


def score(truth: dict, events: dict[str, list[Event]], days: float) -> dict:
    matches: list[Match] = []
    used: set[int] = set()
    for e in truth["events"]:
        kinds = COMPATIBLE.get(e["type"])
        if not kinds or not e.get("injected") or e["meter"] not in events:
            continue
        lo = _t(e.get("start") or e["at"]) - SLACK_S
        hi = _t(e.get("end") or e.get("planned_end") or truth["now"]) + SLACK_S
        if e["type"] in ("rollover", "reset"):
            hi = lo + 2 * SLACK_S
        hits = []
        for ev in events[e["meter"]]:
            ev_end = ev.end.timestamp() if ev.end else _t(truth["now"])
            if ev.type in kinds and ev.start.timestamp() <= hi and ev_end >= lo:
                hits.append(ev)
                used.add(id(ev))
        matches.append(Match(e, hits))
    losses = [m for m in matches if m.truth["type"] in LOSS_TYPES]
    true_excess = sum(m.truth["excess"] for m in losses)
    attributed = sum(min(m.truth["excess"], sum(ev.excess for ev in m.found)) for m in losses)
    false = [ev for evs in events.values() for ev in evs
             if id(ev) not in used and ev.type not in DATA_TYPES]
    delays: dict[str, list[float]] = defaultdict(list)
    for m in matches:
        if m.truth["type"] == "spikes":  # each spike found, from its own injected time
            times = [_t(s) for s in m.truth["spikes"]]
            delays["spikes"] += [min((ev.start.timestamp() - s for s in times), key=abs) / 3600
                                 for ev in m.found]
        elif m.found:
            first = min(ev.start.timestamp() for ev in m.found)
            delays[m.truth["type"]].append((first - _t(m.truth.get("start") or m.truth["at"]))
                                           / 3600)
    months = len(events) * days / 30.0
    return {
        "events": len(matches),
        "found": sum(1 for m in matches if m.found),
        "loss_events": len(losses),
        "losses_found": sum(1 for m in losses if m.found),
        "excess_share": attributed / true_excess if true_excess else 1.0,
        "false_events": len(false),
        "false_per_meter_month": len(false) / months if months else 0.0,
        "median_delay_h": {k: statistics.median(v) for k, v in sorted(delays.items())},
        "missed": [m.truth["id"] for m in matches if not m.found],
        "false": [f"{ev.meter} {ev.type.value} {ev.start:%Y-%m-%d %H:%M}" for ev in false],
    }


def run(folder: Path | None, plant_path: Path, seed: int | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        if folder is None:
            folder = Path(tmp)
            spec = load_plant(plant_path)
            plant = spec.plant if seed is None else spec.plant.model_copy(update={"seed": seed})
            write_csv(Engine(plant, spec.profiles, file=spec.file), folder)
        truth = json.loads((folder / "truth.json").read_text())
        days = (_t(truth["now"]) - _t(truth["start"])) / 86400
        return score(truth, analyse(folder), days)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, help="an existing `recp simulate --csv` folder")
    p.add_argument("--plant", type=Path, default=DEMO)
    p.add_argument("--seed", type=int)
    args = p.parse_args(argv or [])
    r = run(args.dir, args.plant, args.seed)
    print(f"injected events found: {r['found']}/{r['events']} "
          f"({r['found'] / max(1, r['events']):.0%}); losses {r['losses_found']}/"
          f"{r['loss_events']}")
    print(f"injected excess attributed: {r['excess_share']:.0%}")
    print(f"false events: {r['false_events']} ({r['false_per_meter_month']:.2f} per meter-month)")
    print("median start delay, hours: " + ", ".join(
        f"{k} {v:+.1f}" for k, v in r["median_delay_h"].items()))
    if r["missed"]:
        print("missed: " + ", ".join(r["missed"]))
    if r["false"]:
        print("false: " + "; ".join(r["false"]))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
