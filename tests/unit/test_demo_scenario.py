"""The demo's analytics file: the base-load night ends an hour before the first shift.

Readings a few minutes apart are interpolated linearly by the cleaning; a gap straddling
the morning start-up (0.4 -> 8 m3/h of water) put shift water into the night's last hour
(03:00-04:00 UTC = 05:00-06:00 in Vienna in summer): about 0.15 m3 in each live workday
night against 0.40, so the base-load detector's CUSUM started on the first live night and
the leak's alarm was dated back to the first minute of the live part."""

from __future__ import annotations

from pathlib import Path

from collector.demo.scenario import analytics_file, night_hours_utc, split_plant, utc_offset_s
from collector.plant import load_plant
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
