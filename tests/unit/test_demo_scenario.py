"""The demo's analytics file: the base-load night ends an hour before the first shift.

Readings a few minutes apart are interpolated linearly by the cleaning; a gap straddling
the morning start-up (0.4 -> 8 m3/h of water) put shift water into the night's last hour
(03:00-04:00 UTC = 05:00-06:00 in Vienna in summer): about 0.15 m3 in each live workday
night against 0.40, so the base-load detector's CUSUM started on the first live night and
the leak's alarm was dated back to the first minute of the live part."""

from __future__ import annotations

import zoneinfo
from pathlib import Path

from collector.demo.scenario import (
    analytics_file,
    live_seed,
    night_hours_utc,
    split_plant,
    utc_offset_s,
)
from collector.plant import Engine, PlantSpec, load_plant
from detectors.service.config import check_analytics

REPO = Path(__file__).resolve().parents[2]
SMALL = REPO / "edge_config" / "plants" / "demo_small.yaml"


def _local_hours(window: tuple[float, float], offset_s: int) -> list[float]:
    start, end = window
    n = int(((end - start) % 24) * 4)
    return [(start + i / 4 + offset_s / 3600) % 24 for i in range(n)]


def test_night_window_ends_an_hour_before_the_first_shift_summer_and_winter() -> None:
    plant = load_plant(SMALL).plant  # shifts from 06:00 local
    for offset_s in (7200, 3600):
        window = night_hours_utc(plant, offset_s)
        local = _local_hours(window, offset_s)
        assert len(local) == 16 and max(local) < 5.0 and min(local) >= 1.0, (window, local)
    assert night_hours_utc(plant, 7200) == (23.0, 3.0)


def test_demo_analytics_file_carries_the_window_and_loads(tmp_path: Path) -> None:
    split = split_plant(SMALL, tmp_path, history_days=34)
    path = analytics_file(split, tmp_path / "analytics.yaml", mqtt_url="mqtt://127.0.0.1:1",
                          protocol="5", influx_url="sqlite:" + str(tmp_path / "s.sqlite"),
                          org="o", bucket="b", token_file=None, workdir=tmp_path)  # fmt: skip
    cfg = check_analytics(path)
    offset = utc_offset_s(split.spec.plant.timezone, split.live_start)
    assert tuple(cfg.processing.night_hours_utc) == night_hours_utc(split.spec.plant, offset)
    assert cfg.processing.night_hours_utc[1] == 3.0  # 05:00 in Vienna in September


def _first_day(spec: PlantSpec, meter: str, point: str) -> list[float]:
    engine = Engine(spec.plant, spec.profiles, file=spec.file)
    out = []
    for _ in range(int(86400 / spec.plant.step_s)):
        out.append(engine.values(meter)[point])
        engine.step()
    return out


def test_the_live_week_has_a_seed_of_its_own_derived_from_the_plants(tmp_path: Path) -> None:
    """With the plant's seed the live week (a Monday, like the history's start) replayed
    the history's first days' noise exactly; its own seed, derived, keeps the demo
    reproducible and the truth (written by the live plant) names it."""
    spec = load_plant(SMALL)
    one = split_plant(SMALL, tmp_path, history_days=7)  # a week: the live part a Monday too
    live = load_plant(one.live_plant)
    assert live.plant.seed == live_seed(spec.plant.seed, one.live_start)
    assert live.plant.seed != spec.plant.seed
    # same demo, same run: the seed depends on the instant, not on how it is written
    vienna = one.live_start.astimezone(zoneinfo.ZoneInfo("Europe/Vienna"))
    assert live_seed(spec.plant.seed, vienna) == live.plant.seed
    assert one.live_start.weekday() == spec.plant.start.weekday() == 0
    # compressed air: base and running load with noise, no weather term
    history_day = _first_day(spec, "el_compressed_air", "power_kw")
    live_day = _first_day(live, "el_compressed_air", "power_kw")
    same = sum(abs(a - b) < 1e-9 for a, b in zip(history_day, live_day, strict=True))
    assert same < len(live_day) // 10, f"{same} of {len(live_day)} steps repeat the history"
    engine = Engine(live.plant, live.profiles, file=live.file)
    assert engine.truth()["seed"] == live.plant.seed
    assert live_seed(12, one.live_start) != live.plant.seed
