"""The demo's scenario: a plant file split into loss-free history (CSV) and a live part.

The history runs through the plant engine at full speed as CSV (the same engine and
seeds as serving), then the live part is written as a plant file starting where the
history ends, every counter continuing from its last value. From the history the demo
fits each meter's baseline, and it replays the history to the detector service so its
detectors have learnt the plant before the live part starts. The site file (for the
agent) and the analytics file (for the service) are written from the same plant.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import zoneinfo
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..plant import Engine, load_plant
from ..plant.load import PlantSpec

DAY_S = 86400.0
# the service's consumption interval: an hour, so that an agent polling a plant running a
# day per 10 s on a busy machine still reads each meter a few times per interval
INTERVAL_S = 3600


@dataclass(frozen=True)
class Split:
    """A plant split at ``live_start``: the history's CSV folder and the live plant file."""

    spec: PlantSpec  # the whole plant as given
    history_dir: Path
    live_plant: Path
    history_start: dt.datetime
    live_start: dt.datetime
    live_end: dt.datetime
    history_rows: int

    @property
    def site(self) -> str:
        return self.spec.plant.name

    @property
    def live_days(self) -> float:
        return (self.live_end - self.live_start).total_seconds() / DAY_S


def live_seed(seed: int, live_start: dt.datetime) -> int:
    """The live part's seed: derived from the plant's seed and the live start, so the same
    demo gives the same run, while the live week's noise (and weather, production wobble)
    does not replay the history's first days, as the plant's own seed would."""
    text = f"{seed}/live/{live_start.astimezone(dt.timezone.utc).isoformat()}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") >> 1


def split_plant(plant_file: Path, workdir: Path, *, history_days: float,
                live_days: float | None = None, speed: float | None = None) -> Split:
    """Write the history as CSV and the live part as a plant file (see the module doc)."""
    from ..plant.csvout import write_csv

    spec = load_plant(plant_file)
    plant = spec.plant
    total = plant.days
    if total is None:
        raise ValueError(f"{plant_file}: the demo needs a plant with 'days' (a scenario end)")
    if history_days <= 0 or history_days >= total:
        raise ValueError(f"history days must be between 0 and the plant's {total:g} days")
    live = total - history_days if live_days is None else min(live_days, total - history_days)
    history = type(plant).model_validate(plant.model_dump() | {"days": history_days})
    engine = Engine(history, spec.profiles, file=spec.file)
    history_dir = workdir / "history"
    summary = write_csv(engine, history_dir, plant.step_s)
    # the live part continues every counter from where the history left it
    initial = {}
    for mid, meter in engine.meters.items():
        point = meter.primary
        if point is not None:
            initial[mid] = float(engine.values(mid)[point.name])
    live_start = plant.start + dt.timedelta(days=history_days)
    data = plant.model_dump(mode="json")
    data["start"] = live_start.isoformat().replace("+00:00", "Z")
    data["days"] = live
    data["seed"] = live_seed(plant.seed, live_start)
    if speed is not None:
        data["speed"] = speed
    for m in data["meters"]:
        if m["id"] in initial:
            m["initial"] = initial[m["id"]]
    live_plant = workdir / f"{plant.name}-live.yaml"
    header = (f"# the live part of {plant_file} (written by recp demo): "
              f"{live:g} days from {data['start']}, seed {data['seed']} derived from the "
              f"plant's {plant.seed}\n")
    live_plant.write_text(header + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    load_plant(live_plant)  # the written file must validate like the original
    return Split(spec, history_dir, live_plant, plant.start, live_start,
                 live_start + dt.timedelta(days=live), summary.rows)


def utc_offset_s(timezone: str, at: dt.datetime) -> int:
    """The zone's offset from UTC at ``at`` (the service takes one offset per site)."""
    offset = at.astimezone(zoneinfo.ZoneInfo(timezone)).utcoffset()
    return int(offset.total_seconds()) if offset else 0


def site_file(split: Split, path: Path, *, mqtt_url: str, protocol: str, ports: dict[int, int],
              poll_s: float, outbox: Path, clock_device: bool) -> Path:
    """The agent's site file for the live plant (ports as the plant actually listens)."""
    plant = load_plant(split.live_plant).plant
    meters = []
    for m in plant.meters:
        entry: dict[str, Any] = {
            "id": m.id, "name": m.name or m.id, "profile": m.profile, "unit_id": m.unit_id,
            "connection": {"type": "rtu_over_tcp" if m.framing == "rtu" else "tcp",
                           "host": plant.host, "port": ports.get(m.port, m.port)},
        }
        if m.price_per_unit is not None:
            entry["price_per_unit"] = m.price_per_unit
            entry["currency"] = "EUR"
        if m.co2_kg_per_unit is not None:
            entry["co2_kg_per_unit"] = m.co2_kg_per_unit
        meters.append(entry)
    if clock_device and plant.clock is not None:
        c = plant.clock
        meters.append({"id": "plc_clock", "name": "Line PLC clock", "profile": c.profile,
                       "unit_id": c.unit_id, "interval_s": poll_s,
                       "connection": {"type": "tcp", "host": plant.host,
                                      "port": ports.get(c.port, c.port)}})
    data: dict[str, Any] = {
        "kind": "site", "site": plant.name, "name": f"{plant.name} (recp demo)",
        "mqtt": {"url": mqtt_url, "protocol": protocol, "health_interval_s": 5,
                 "reconnect_delay_s": 0.1, "reconnect_delay_max_s": 2,
                 "max_rate_per_s": 20000},
        "outbox": {"path": str(outbox)},
        "polling": {"interval_s": poll_s, "timeout_s": 0.5, "retries": 1,
                    "reconnect_delay_s": 0.1, "reconnect_delay_max_s": 1,
                    "offline_backoff_max_s": 1},
        "clock": {"require": "none"},
        "meters": meters,
    }
    if clock_device and plant.clock is not None:
        data["clock"] = {"source": "device", "device": "plc_clock"}
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def night_hours_utc(plant: Any, offset_s: int) -> tuple[float, float]:
    """The base-load night window (UTC hours): the four hours ending an hour before the
    first shift starts (local), so that no reading gap straddling the morning start-up,
    interpolated linearly by the cleaning, carries shift consumption into the night."""
    starts = [int(r[:2]) * 60 + int(r[3:5]) for r in plant.schedule.shifts]
    if not starts:
        return (0.0, 4.0)
    end_h = (min(starts) / 60.0 - 1.0 - offset_s / 3600.0) % 24.0
    return ((end_h - 4.0) % 24.0, end_h)


def analytics_file(split: Split, path: Path, *, mqtt_url: str, protocol: str, influx_url: str,
                   org: str, bucket: str, token_file: Path | None, workdir: Path) -> Path:
    """The detector service's analytics file for the demo."""
    plant = split.spec.plant
    offset = utc_offset_s(plant.timezone, split.live_start)
    influx: dict[str, Any] = {"url": influx_url, "org": org, "bucket": bucket,
                              "retry_delay_max_s": 2}
    if token_file is not None:
        influx["token_file"] = str(token_file.resolve())
    data = {
        "kind": "analytics", "instance": "demo",
        "mqtt": {"url": mqtt_url, "protocol": protocol, "reconnect_delay_max_s": 2},
        "influx": influx,
        "spool": {"path": str(workdir / "spool.sqlite"), "synchronous": "NORMAL"},
        "checkpoint": {"path": str(workdir / "detect-state.json")},
        "processing": {"interval_s": INTERVAL_S, "utc_offset_s": offset,
                       "night_hours_utc": list(night_hours_utc(plant, offset))},
        "baselines": {"dir": str(workdir / "baselines")},
        "sites": {plant.name: {"currency": "EUR", "utc_offset_s": offset}},
        "metrics_interval_s": 1,
        "drain_timeout_s": 30,
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def fit_baselines(split: Split, folder: Path) -> dict[str, str]:
    """Fit each consumption meter's baseline on the history (the service's 15-min grid).

    Time of week by day type (workday/weekend x interval of the day): four weeks are too
    few for one level per interval of the week. Returns meter -> description or error.
    """
    from detectors.baseline import BaselineConfig, fit_baseline
    from detectors.clean import clean_counter
    from detectors.csvinput import load_manifest, read_columns

    man = load_manifest(split.history_dir)
    assert man is not None
    out: dict[str, str] = {}
    config = BaselineConfig(interval_s=INTERVAL_S, timezone=split.spec.plant.timezone,
                            time_of_week="daytype")
    site_dir = folder / split.site
    site_dir.mkdir(parents=True, exist_ok=True)
    for mid, entry in man.meters.items():
        if entry.get("resource") not in ("electricity", "water", "steam"):
            continue
        info = man.meter_info(mid)
        ts, cols = read_columns(split.history_dir / f"{mid}.csv", [entry["counter"]])
        cons = clean_counter(ts, cols[entry["counter"]], meter=info, interval_s=INTERVAL_S,
                             start_s=man.start_s, end_s=man.end_s)
        try:
            model = fit_baseline(cons.start_s, cons.consumption, meter=mid, unit=info.unit,
                                 config=config, resolution=cons.resolution)
        except ValueError as exc:
            out[mid] = f"no baseline: {exc}"
            continue
        (site_dir / f"{mid}.json").write_text(model.to_json(indent=1), encoding="utf-8")
        out[mid] = model.describe()
    return out


def truth_events(truth_file: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads(truth_file.read_text(encoding="utf-8")).get("events", []))
    except (OSError, json.JSONDecodeError):
        return []
