"""Test helper: run a small virtual plant to CSV and load it cleaned onto one 15-min grid.

Used by the detector scoring tests. Nothing here is a detector; it only glues the plant's
CSV output (``<meter>.csv``, ``meters.json``, ``truth.json``) to ``detectors.clean``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from collector.plant import Engine, load_plant
from collector.plant.csvout import write_csv
from detectors.clean import Consumption, clean_counter, resample_gauge
from detectors.meter import MeterInfo

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "edge_config" / "plants" / "demo.yaml"


def small_demo(
    directory: Path,
    *,
    meters: list[str],
    days: float,
    step_s: float = 300.0,
    loss_types: set[str] | None = None,
) -> Path:
    """A copy of the demo plant with only ``meters``, their losses, and a shorter run.

    A coarser simulation step keeps the run fast; the plant's profiles are found through
    the source tree (``RECP_PROFILES`` is not needed).
    """
    data = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    data["days"] = days
    data["step_s"] = step_s
    data["meters"] = [m for m in data["meters"] if m["id"] in meters]
    data["losses"] = [
        x
        for x in data.get("losses", [])
        if x["meter"] in meters and (loss_types is None or x["type"] in loss_types)
    ]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "plant.yaml"
    # keep the profiles resolvable: the plant file names them relative to edge_config/
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def simulate(plant_file: Path, outdir: Path, *, losses: bool, interval_s: float) -> Path:
    """Run the plant to CSV in ``outdir``; returns ``outdir``."""
    spec = load_plant(plant_file)
    engine = Engine(spec.plant, spec.profiles, losses=losses, file=spec.file)
    write_csv(engine, outdir, interval_s)
    return outdir


def read_column(path: Path, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(int64 UTC epoch seconds, float64 values) of one column of a plant CSV file."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        i = header.index(column)
        stamps, values = [], []
        for row in reader:
            stamps.append(row[0].rstrip("Z"))
            values.append(float(row[i]) if row[i] != "" else np.nan)
    ts = np.array(stamps, dtype="datetime64[s]").astype(np.int64)
    return ts, np.asarray(values, dtype=np.float64)


@dataclass(frozen=True)
class PlantRun:
    """Every counter of one plant run cleaned onto one grid, plus production and truth."""

    consumption: dict[str, Consumption]
    meters: dict[str, MeterInfo]
    active: np.ndarray  # share of each interval the line ran
    production: np.ndarray  # units produced per interval
    temperature: np.ndarray  # outdoor temperature per interval, degC
    truth: dict[str, Any]
    start_s: int
    end_s: int


def load_run(outdir: Path, interval_s: int = 900) -> PlantRun:
    """Clean every counter of a plant CSV run onto one UTC grid."""
    manifest = json.loads((outdir / "meters.json").read_text(encoding="utf-8"))["meters"]
    truth = json.loads((outdir / "truth.json").read_text(encoding="utf-8"))
    start = int(np.datetime64(truth["start"].rstrip("Z"), "s").astype(np.int64))
    end = int(np.datetime64(truth["now"].rstrip("Z"), "s").astype(np.int64))
    consumption, meters = {}, {}
    for mid, entry in manifest.items():
        if not entry.get("counter"):
            continue
        meter = MeterInfo.from_manifest(mid, entry)
        ts, vs = read_column(outdir / f"{mid}.csv", entry["counter"])
        meters[mid] = meter
        consumption[mid] = clean_counter(
            ts, vs, meter=meter, interval_s=interval_s, start_s=start, end_s=end
        )
    prod_id = next((m for m, e in manifest.items() if e["resource"] == "production"), None)
    n = (end - start) // interval_s
    active = np.full(n, np.nan)
    production = np.full(n, np.nan)
    if prod_id is not None:
        ts, running = read_column(outdir / f"{prod_id}.csv", "line_running")
        active = resample_gauge(ts, running, interval_s=interval_s, start_s=start, end_s=end).mean
        production = consumption[prod_id].consumption
    temperature = np.full(n, np.nan)
    weather_id = next((m for m, e in manifest.items() if e["resource"] == "weather"), None)
    if weather_id is not None:
        ts, temp = read_column(outdir / f"{weather_id}.csv", "outdoor_temperature_c")
        gauge = resample_gauge(ts, temp, interval_s=interval_s, start_s=start, end_s=end)
        temperature = gauge.mean
    return PlantRun(consumption, meters, active, production, temperature, truth, start, end)
