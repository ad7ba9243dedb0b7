"""Score the detector core against the virtual plant's ground truth.

Runs the 30-day demo plant (every loss and fault injected) as CSV, with a loss-free lead-in
of four weeks before it (the demo's losses keep their dates) on which every meter's baseline
is fitted. Every meter goes through the batch pipeline (clean_counter -> detect_anomalies
over the whole run, and baseline -> detect_overspend after the lead-in); the events found
are matched with the truth, and printed are:
share of injected events found, share of injected excess attributed, false events per meter
per month, and the median start delay per event type.

    python -m benchmarks.score_detection [--plant PLANT] [--seed N] [--lead-in-days 28]

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

import yaml

from collector.plant import Engine, load_plant
from collector.plant.csvout import write_csv
from detectors.anomaly import detect_anomalies
from detectors.baseline import BaselineConfig, fit_baseline
from detectors.clean import clean_counter, resample_gauge
from detectors.csvinput import load_manifest, read_columns
from detectors.events import Event, EventType
from detectors.overspend import detect_overspend

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "edge_config" / "plants" / "demo.yaml"
INTERVAL_S = 900
HOUR_S = 3600
SLACK_S = 86400
# injected type -> event types that count as finding it
COMPATIBLE: dict[str, set[EventType]] = {
    # overspend against the baseline is what every consumption loss looks like to the CUSUM
    "leak": {EventType.BASE_LOAD_RISE, EventType.LEVEL_SHIFT, EventType.OVERSPEND},
    "base_load_rise": {EventType.BASE_LOAD_RISE, EventType.LEVEL_SHIFT, EventType.OVERSPEND},
    "steam_trap": {EventType.LEVEL_SHIFT, EventType.BASE_LOAD_RISE, EventType.OVERSPEND},
    "drift": {EventType.DRIFT, EventType.OVERSPEND},
    "overspend": {EventType.OVERSPEND, EventType.DRIFT},
    "spikes": {EventType.SPIKE, EventType.OVERSPEND},
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


def overspend(folder: Path, manifest, mid: str, split_s: int) -> list[Event]:  # type: ignore[no-untyped-def]
    """Baseline fitted before ``split_s`` (hourly), overspend CUSUM after it."""
    start, end = manifest.start_s, manifest.end_s
    weather, prod = manifest.first_of("weather"), manifest.first_of("production")
    tw, cw = read_columns(folder / f"{weather}.csv", ["outdoor_temperature_c"])
    temp = resample_gauge(tw, cw["outdoor_temperature_c"], interval_s=HOUR_S, start_s=start,
                          end_s=end).mean
    tp, cp = read_columns(folder / f"{prod}.csv", [manifest.meters[prod]["counter"]])
    units = clean_counter(tp, cp[manifest.meters[prod]["counter"]],
                          meter=manifest.meter_info(prod), interval_s=HOUR_S, start_s=start,
                          end_s=end).consumption
    info = manifest.meter_info(mid)
    tc, cc = read_columns(folder / f"{mid}.csv", [manifest.meters[mid]["counter"]])
    cons = clean_counter(tc, cc[manifest.meters[mid]["counter"]], meter=info,
                         interval_s=HOUR_S, start_s=start, end_s=end)
    fit = cons.start_s < split_s
    model = fit_baseline(cons.start_s[fit], cons.consumption[fit], temperature=temp[fit],
                         production=units[fit], meter=mid, unit=info.unit,
                         config=BaselineConfig(timezone=manifest.timezone or "UTC"),
                         resolution=cons.resolution)
    return detect_overspend(model, info, cons.start_s[~fit], cons.consumption[~fit],
                            temperature=temp[~fit], production=units[~fit]).events


def analyse(folder: Path, split_s: int | None = None) -> dict[str, list[Event]]:
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
        if split_s is not None:
            found += overspend(folder, manifest, mid, split_s)
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
        "matched": {m.truth["id"]: [f"{ev.type.value} {ev.start:%Y-%m-%d %H:%M} "
                                    f"{ev.excess:.4g} {ev.unit}" for ev in m.found]
                    for m in matches},
        "false": [f"{ev.meter} {ev.type.value} {ev.start:%Y-%m-%d %H:%M}" for ev in false],
    }


def run(plant_path: Path, seed: int | None, lead_in_days: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "csv"
        data = yaml.safe_load(plant_path.read_text(encoding="utf-8"))
        start = _t(str(data["start"]).replace(" ", "T").replace("+00:00", "Z"))
        split = int(start)
        lead = dt.timedelta(days=lead_in_days)
        data["start"] = (dt.datetime.fromtimestamp(start, dt.timezone.utc) - lead).isoformat()
        data["days"] = float(data.get("days") or 30) + lead_in_days
        if seed is not None:
            data["seed"] = seed
        moved = plant_path.parent / f".score-{plant_path.stem}-{id(folder)}.yaml"
        moved.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        try:
            spec = load_plant(moved)
        finally:
            moved.unlink()
        write_csv(Engine(spec.plant, spec.profiles, file=spec.file), folder)
        truth = json.loads((folder / "truth.json").read_text())
        days = (_t(truth["now"]) - _t(truth["start"])) / 86400
        return score(truth, analyse(folder, split if lead_in_days > 0 else None), days)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plant", type=Path, default=DEMO)
    p.add_argument("--seed", type=int)
    p.add_argument("--lead-in-days", type=float, default=28.0,
                   help="loss-free days before the plant's start, for the baselines (0: none)")
    args = p.parse_args(argv or [])
    r = run(args.plant, args.seed, args.lead_in_days)
    print(f"injected events found: {r['found']}/{r['events']} "
          f"({r['found'] / max(1, r['events']):.0%}); losses {r['losses_found']}/"
          f"{r['loss_events']}")
    print(f"injected excess attributed: {r['excess_share']:.0%}")
    print(f"false events: {r['false_events']} ({r['false_per_meter_month']:.2f} per meter-month)")
    print("median start delay, hours: " + ", ".join(
        f"{k} {v:+.1f}" for k, v in r["median_delay_h"].items()))
    for truth_id, found in r["matched"].items():
        print(f"  {truth_id}: " + ("; ".join(found) or "-"))
    if r["missed"]:
        print("missed: " + ", ".join(r["missed"]))
    if r["false"]:
        print("false: " + "; ".join(r["false"]))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
