"""``recp baseline fit`` with the baseline inputs the service stores (issue 5).

A small plant's steam header depends on outdoor temperature (heating below 14 C) and on
production; what ``recp detect`` would store of it (15-minute ``consumption.actual`` of the
steam meter and the production line, the outdoor sensor's raw readings) is served by the
loopback stand-in of InfluxDB's query API (tests/fluxserver.py), through the real
influxdb_client. ``recp baseline fit`` must fit the steam meter with those inputs, the core
choosing the terms, as :func:`detectors.baseline.fit_baseline` does on the same data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from collector.cli import main
from collector.plant import Engine, load_plant
from collector.plant.csvout import write_csv
from detectors.baseline import BaselineConfig, BaselineModel, fit_baseline
from detectors.service.baselines import production_on, temperature_on

REPO = Path(__file__).resolve().parents[2]
START, END = "2026-01-05T00:00:00Z", "2026-01-26T00:00:00Z"

PLANT = f"""\
kind: plant
name: baseline_fit_test
timezone: UTC
start: {START}
days: 21
seed: 5
step_s: 300
weather: {{mean_c: 13, annual_amplitude_c: 2, daily_amplitude_c: 6, noise_c: 2}}
schedule:
  workdays: [mon, tue, wed, thu, fri]
  shifts: ["06:00-14:00", "14:00-22:00"]
production: {{rate_units_h: 1200, noise: 0.3}}
meters:
  - id: steam_main
    profile: endress_hauser_prowirl_200
    port: 5022
    unit_id: 1
    load:
      base: 140
      running: 300
      per_unit: 0.4
      heating: {{balance_c: 14, per_degc: 25}}
      noise: 0.03
    initial: 7311
  - id: prod_line
    profile: generic_plc_counter
    port: 5023
    unit_id: 1
    initial: 3800000
  - id: outdoor
    profile: rs485_temperature_humidity_sensor
    port: 5024
    unit_id: 1
"""


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """(the plant's CSV folder, a FluxReplay holding what recp detect stores of it)."""
    from fluxserver import FluxReplay, Point

    from detectors.clean import clean_counter
    from detectors.csvinput import read_columns

    root = tmp_path_factory.mktemp("baseline_fit")
    (root / "plant.yaml").write_text(PLANT, encoding="utf-8")
    os.environ.setdefault("RECP_PROFILES", str(REPO / "edge_config" / "profiles"))
    spec = load_plant(root / "plant.yaml")
    write_csv(Engine(spec.plant, spec.profiles, file=spec.file), root / "out", 300)
    replay = FluxReplay(token="t0ken")
    for meter, column, unit in (("steam_main", "mass_t", "t"),
                                ("prod_line", "produced_units", "units")):  # fmt: skip
        ts, cols = read_columns(root / "out" / f"{meter}.csv", [column])
        c = clean_counter(ts, cols[column], interval_s=900)
        tags = {"site": "dairy", "meter": meter, "resource": "steam", "unit": unit}
        replay.points += [Point("consumption", tags, "actual", int(t), float(v))
                          for t, v in zip(c.start_s, c.consumption, strict=True)
                          if np.isfinite(v)]  # fmt: skip
    ts, cols = read_columns(root / "out" / "outdoor.csv", ["outdoor_temperature_c"])
    tags = {"site": "dairy", "meter": "outdoor", "resource": "weather"}
    replay.points += [Point("reading", tags, "outdoor_temperature_c", int(t), float(v))
                      for t, v in zip(ts, cols["outdoor_temperature_c"], strict=True)]
    return root / "out", replay


def analytics(tmp_path: Path, sites: dict[str, Any]) -> Path:
    path = tmp_path / "analytics.yaml"
    path.write_text(yaml.safe_dump({
        "kind": "analytics", "influx": {"timeout_s": 60}, "baselines": {"dir": "bl"},
        "sites": sites}), encoding="utf-8")  # fmt: skip
    return path


def fit(tmp_path: Path, replay: Any, monkeypatch: pytest.MonkeyPatch,
        sites: dict[str, Any], *extra: str) -> int:
    monkeypatch.setenv("RECP_INFLUX_URL", replay.url)
    monkeypatch.setenv("RECP_INFLUX_TOKEN", "t0ken")
    return main(["baseline", "fit", "-c", str(analytics(tmp_path, sites)), "--site", "dairy",
                 "--start", START, "--end", END, *extra])


def test_baseline_fit_uses_the_sites_temperature_and_production(
    tmp_path: Path, stored: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, replay = stored
    replay.queries.clear()
    replay.start()
    try:
        code = fit(tmp_path, replay, monkeypatch,
                   {"dairy": {"temperature_meter": "outdoor", "production_meter": "prod_line"}},
                   "--meter", "steam_main")
        printed = capsys.readouterr().out
        assert code == 0, printed
        assert 'r.meter == "steam_main" or r.meter == "prod_line"' in replay.queries[0]
        assert 'r._field == "outdoor_temperature_c"' in replay.queries[1]
        assert 'r.meter == "outdoor"' in replay.queries[1]
    finally:
        replay.stop()
    assert not (tmp_path / "bl" / "dairy" / "prod_line.json").exists()  # an input only
    model = BaselineModel.from_json((tmp_path / "bl" / "dairy" / "steam_main.json").read_text())
    assert model.uses_temperature and model.uses_production, model.describe()
    assert model.heating_balance_c is not None and abs(model.heating_balance_c - 14) <= 3
    assert "heating" in printed and "unit produced" in printed

    # the same as the core fits on the same data, and better than time of week alone
    hours = [p for p in replay.points if p.measurement == "consumption"]
    ts = np.array(sorted({p.t_s // 3600 * 3600 for p in hours}), dtype=np.int64)
    steam = production_on(ts, 3600, [_row(p) for p in hours if p.tags["meter"] == "steam_main"])
    prod = production_on(ts, 3600, [_row(p) for p in hours if p.tags["meter"] == "prod_line"])
    temps = [p for p in replay.points if p.measurement == "reading"]
    by_hour: dict[int, list[float]] = {}
    for p in temps:
        by_hour.setdefault(p.t_s // 3600 * 3600, []).append(p.value)
    ht = np.array(sorted(by_hour), dtype=np.int64)
    temp = temperature_on(ts, 3600, (ht, np.array([np.mean(by_hour[t]) for t in ht.tolist()])))
    cfg = BaselineConfig(interval_s=3600)
    direct = fit_baseline(ts, steam, temperature=temp, production=prod, meter="steam_main",
                          unit="t", config=cfg)
    assert direct.heating_balance_c == model.heating_balance_c
    assert direct.uses_production and model.stats.adj_r2 == pytest.approx(
        direct.stats.adj_r2, abs=1e-6)
    alone = fit_baseline(ts, steam, meter="steam_main", unit="t", config=cfg)
    assert model.stats.cv_rmse_pct is not None and alone.stats.cv_rmse_pct is not None
    assert model.stats.cv_rmse_pct < alone.stats.cv_rmse_pct / 3  # about 1.8 % vs 12 %
    assert out.exists()


def test_baseline_fit_without_inputs_is_time_of_week_and_missing_inputs_are_named(
    tmp_path: Path, stored: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, replay = stored
    replay.start()
    try:
        assert fit(tmp_path, replay, monkeypatch, {}, "--meter", "steam_main") == 0
        model = BaselineModel.from_json(
            (tmp_path / "bl" / "dairy" / "steam_main.json").read_text())
        assert not model.uses_temperature and not model.uses_production
        capsys.readouterr()
        code = fit(tmp_path, replay, monkeypatch,
                   {"dairy": {"temperature_meter": "weather2"}}, "--meter", "steam_main")
        printed = capsys.readouterr().out
        assert code == 1 and "FAILED steam_main: no outdoor temperature (weather2." in printed
    finally:
        replay.stop()


def test_baseline_fit_from_victoriametrics_fits_the_same_model(
    tmp_path: Path, stored: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], victoria_metrics: Any,
) -> None:
    """The same points, written by the service's writer into a real VictoriaMetrics and
    read with ``influx.flavor: victoriametrics`` (and into the embedded store): the same
    model as from the Flux path; a stopped server is one line naming its URL."""
    from vmstore import store

    _, replay = stored
    replay.start()
    try:
        sites = {"dairy": {"temperature_meter": "outdoor", "production_meter": "prod_line"}}
        (tmp_path / "flux").mkdir()
        assert fit(tmp_path / "flux", replay, monkeypatch, sites, "--meter", "steam_main") == 0
    finally:
        replay.stop()
    store(victoria_metrics, replay.points)
    monkeypatch.setenv("RECP_INFLUX_URL", victoria_metrics.url)
    path = analytics(tmp_path, sites)
    text = yaml.safe_load(path.read_text(encoding="utf-8"))
    text["influx"]["flavor"] = "victoriametrics"
    path.write_text(yaml.safe_dump(text), encoding="utf-8")
    command = ["baseline", "fit", "-c", str(path), "--site", "dairy", "--start", START,
               "--end", END]  # fmt: skip
    capsys.readouterr()
    assert main([*command, "--meter", "steam_main"]) == 0, capsys.readouterr().out
    flux_model = json.loads((tmp_path / "flux" / "bl" / "dairy" / "steam_main.json").read_text())
    vm_model = json.loads((tmp_path / "bl" / "dairy" / "steam_main.json").read_text())
    # the same model; numbers equal to VictoriaMetrics' stored precision (about 12 digits)
    assert vm_model == _approx(flux_model)
    assert vm_model["heating_balance_c"] == flux_model["heating_balance_c"]
    assert BaselineModel.from_json(json.dumps(vm_model)).uses_temperature
    # the embedded store (influx.url: sqlite:FILE) holding the same points: the same model
    from detectors.service.lines import line
    from detectors.store import StoreWriter

    writer = StoreWriter(tmp_path / "store.sqlite")
    writer.write([text for p in replay.points
                  if (text := line(p.measurement, p.tags, {p.field: p.value}, p.t_s * 1000))])
    writer.close()
    monkeypatch.setenv("RECP_INFLUX_URL", f"sqlite:{tmp_path / 'store.sqlite'}")
    assert main([*command, "--meter", "steam_main"]) == 0, capsys.readouterr().out
    store_model = json.loads((tmp_path / "bl" / "dairy" / "steam_main.json").read_text())
    assert store_model == flux_model
    monkeypatch.setenv("RECP_INFLUX_URL", victoria_metrics.url)
    # without --meter every meter of the site with consumption is fitted (prod_line too)
    assert main(command) == 0
    assert (tmp_path / "bl" / "dairy" / "prod_line.json").exists()
    capsys.readouterr()
    victoria_metrics.stop()
    assert main(command) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"error: could not read consumption from {victoria_metrics.url}: "
                          f"could not query VictoriaMetrics ({victoria_metrics.url}"), out
    assert len(out.strip().splitlines()) == 1


def _approx(value: Any) -> Any:
    """``value`` with every float compared to 1e-9 relative (1e-12 near zero)."""
    if isinstance(value, dict):
        return {k: _approx(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_approx(v) for v in value]
    if isinstance(value, float):
        return pytest.approx(value, rel=1e-9, abs=1e-12)
    return value


def _row(p: Any) -> Any:
    from detectors.service.baselines import Row

    return Row(p.tags["meter"], p.t_s, p.value, p.tags.get("unit", ""))
