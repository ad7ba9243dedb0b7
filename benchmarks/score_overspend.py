"""Score baseline + overspend against the virtual plant's truth.

The demo plant (``edge_config/plants/demo.yaml``) injects its losses from 2026-01-08 on. To
give the baseline a clean period the scenario is run from four weeks earlier
(2025-12-08, 58 days), written as 1-minute CSV like ``recp simulate --csv``, once with and
once without losses. Per consumption meter: ``clean_counter`` to hourly consumption (rollover,
reset and gaps handled), production and outdoor temperature resampled alike, a baseline
fitted on the first 28 days, and ``detect_overspend`` over the remaining 30. Printed:

* per injected consumption loss: found (an OVERSPEND event on the meter overlapping its
  window, a day of slack), start delay, and the overspend excess attributed to it over the
  truth (capped at the truth per event, as ``score_detection`` does);
* false events: OVERSPEND events overlapping no injected loss, with and without losses.

Overspend is one of several detectors: spikes and stuck meters are not its job (spikes are
too short to move a CUSUM built for sustained excess; a stuck meter reads *less*).

    python -m benchmarks.score_overspend [--dir OUTDIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

from collector.plant import Engine, load_plant
from collector.plant.csvout import write_csv
from detectors.baseline import BaselineConfig, fit_baseline
from detectors.clean import clean_counter, resample_gauge
from detectors.csvinput import load_manifest, read_columns
from detectors.events import Event
from detectors.overspend import detect_overspend

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "edge_config" / "plants" / "demo.yaml"
START = "2025-12-08T00:00:00Z"
DAYS = 58
BASELINE_DAYS = 28
HOUR = 3600
SLACK_S = 86400
CONSUMPTION = {"leak", "base_load_rise", "steam_trap", "drift", "overspend", "spikes"}


def _t(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def simulate(outdir: Path, losses: bool) -> Path:
    """The demo plant from START for DAYS days as 1-minute CSV; returns the folder."""
    data = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    data["start"] = START
    data["days"] = DAYS
    plant_file = outdir / f"demo_early_{'losses' if losses else 'clean'}.yaml"
    plant_file.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    # the profiles are looked up next to the plant file first, then in the source tree
    spec = load_plant(plant_file)
    engine = Engine(spec.plant, spec.profiles, losses=losses, file=spec.file)
    folder = outdir / ("losses" if losses else "clean")
    if not (folder / "truth.json").exists():
        write_csv(engine, folder, 60)
    return folder


def evaluate(folder: Path) -> tuple[dict[str, list[Event]], dict]:
    """Overspend events per consumption meter, and the truth."""
    manifest = load_manifest(folder)
    assert manifest is not None
    truth = json.loads((folder / "truth.json").read_text(encoding="utf-8"))
    start_s = int(_t(truth["start"]))
    end_s = int(_t(truth["now"]))
    split = start_s + BASELINE_DAYS * 86400
    t_out, out = read_columns(folder / "outdoor.csv", ["outdoor_temperature_c"])
    temp = resample_gauge(t_out, out["outdoor_temperature_c"], interval_s=HOUR,
                          start_s=start_s, end_s=end_s).mean  # fmt: skip
    t_p, prod_cols = read_columns(folder / "prod_line.csv", ["produced_units"])
    prod_info = manifest.meter_info("prod_line")
    prod = clean_counter(t_p, prod_cols["produced_units"], meter=prod_info, interval_s=HOUR,
                         start_s=start_s, end_s=end_s).consumption  # fmt: skip
    found: dict[str, list[Event]] = {}
    for meter_id, entry in manifest.meters.items():
        if entry.get("resource") not in ("electricity", "water", "steam"):
            continue
        info = manifest.meter_info(meter_id)
        t_c, cols = read_columns(folder / f"{meter_id}.csv", [entry["counter"]])
        cons = clean_counter(t_c, cols[entry["counter"]], meter=info, interval_s=HOUR,
                             start_s=start_s, end_s=end_s)  # fmt: skip
        ts = cons.start_s
        fit = ts < split
        model = fit_baseline(
            ts[fit], cons.consumption[fit], temperature=temp[fit], production=prod[fit],
            meter=meter_id, unit=info.unit, config=BaselineConfig(timezone="Europe/Vienna"),
            resolution=cons.resolution,
        )  # fmt: skip
        res = detect_overspend(
            model, info, ts[~fit], cons.consumption[~fit], temperature=temp[~fit],
            production=prod[~fit],
        )  # fmt: skip
        found[meter_id] = res.events
        print(f"  {model.describe()}")
    return found, truth


def _overlaps(ev: Event, start: float, end: float) -> bool:
    ev_end = ev.end.timestamp() if ev.end else float("inf")
    return ev.start.timestamp() <= end + SLACK_S and start - SLACK_S <= ev_end


def score(found: dict[str, list[Event]], truth: dict) -> None:
    end_s = _t(truth["now"])
    injected = [e for e in truth["events"] if e["type"] in CONSUMPTION]
    used: set[int] = set()
    delays: dict[str, list[float]] = {}
    print(f"  {'loss':38} {'found':>5} {'delay h':>8} {'excess':>10} {'truth':>10} {'share':>6}")
    for inj in injected:
        start = _t(inj["start"])
        end = _t(inj["end"]) if inj.get("end") else end_s
        hits = [e for e in found.get(inj["meter"], []) if _overlaps(e, start, end)]
        used |= {id(e) for e in hits}
        attributed = min(sum(e.excess for e in hits), inj["excess"])
        delay = (min(e.start.timestamp() for e in hits) - start) / HOUR if hits else None
        if delay is not None:
            delays.setdefault(inj["type"], []).append(delay)
        print(
            f"  {inj['id']:38} {'yes' if hits else 'no':>5} "
            f"{'' if delay is None else f'{delay:+.0f}':>8} {attributed:10.1f} "
            f"{inj['excess']:10.1f} {100 * attributed / inj['excess']:5.0f}%"
        )
    for evs in found.values():
        for e in evs:
            print(f"  event: {e.explanation}{' (open)' if e.end is None else ''}")
    false = [e for evs in found.values() for e in evs if id(e) not in used]
    for e in false:
        print(f"  false: {e.explanation}")
    meters = len(found)
    months = (end_s - _t(truth["start"]) - BASELINE_DAYS * 86400) / (30 * 86400)
    print(f"  false events: {len(false)} over {meters} meters and {months:.1f} months")
    for kind, values in sorted(delays.items()):
        print(f"  median start delay, {kind}: {statistics.median(values):+.0f} h")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dir", type=Path, help="keep the CSV here and reuse it next time (default: a temp dir)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        outdir = args.dir or Path(tmp)
        outdir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with ProcessPoolExecutor(2) as pool:
            folders = list(pool.map(simulate, [outdir, outdir], [True, False]))
        print(f"simulated {DAYS} days twice in {time.perf_counter() - started:.0f} s")
        for folder, label in zip(folders, ("with losses", "without losses"), strict=True):
            print(f"== {label}")
            found, truth = evaluate(folder)
            score(found, truth)


if __name__ == "__main__":
    main()
