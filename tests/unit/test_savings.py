"""Savings verification: Guideline 14 statistics, and ``recp savings`` against the virtual
plant where the true savings are known (a steam trap that fails open before the baseline
starts and is repaired on the intervention date)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from collector.cli import main
from collector.plant import Engine, load_plant
from collector.plant.csvout import write_csv
from detectors import mv
from detectors.savings import Period, SavingsError, parse_local

REPO = Path(__file__).resolve().parents[2]
START = "2026-01-05T00:00:00Z"
INTERVENTION = "2026-02-16T00:00:00Z"  # the trap is repaired: six weeks of baseline
TRAP_KG_H = 180.0

PLANT = f"""\
kind: plant
name: savings_test
timezone: Europe/Vienna
start: {START}
days: 56
seed: 11
step_s: 300
weather: {{mean_c: 9.5, annual_amplitude_c: 10, daily_amplitude_c: 4, noise_c: 2.5}}
schedule:
  workdays: [mon, tue, wed, thu, fri]
  shifts: ["06:00-14:00", "14:00-22:00"]
  breaks: ["12:00-12:30"]
production: {{rate_units_h: 1200, noise: 0.05}}
meters:
  - id: steam_main
    profile: endress_hauser_prowirl_200
    port: 5022
    unit_id: 1
    load:
      base: 140
      running: 650
      per_unit: 0.25
      heating: {{balance_c: 14, per_degc: 18}}
      batches:
        - {{every_min: 1440, offset_min: 1335, duration_min: 60, rate: 900, during: workday}}
      noise: 0.04
    initial: 7311
    price_per_unit: 55
    co2_kg_per_unit: 200
  - id: prod_line
    profile: generic_plc_counter
    port: 5023
    unit_id: 1
    initial: 3800000
  - id: outdoor
    profile: rs485_temperature_humidity_sensor
    port: 5024
    unit_id: 1
losses:
  - {{meter: steam_main, type: steam_trap, start: {START}, end: {INTERVENTION},
     rate: {TRAP_KG_H}}}
"""


# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    ("p", "dof", "expected"),
    [
        (0.975, 5, 2.570582),
        (0.95, 10, 1.812461),
        (0.9, 30, 1.310415),
        (0.995, 20, 2.845340),
        (0.95, 1, 6.313752),
        (0.9, 200, 1.285799),
        (0.95, 1e7, 1.644854),
    ],
)
def test_t_quantile_matches_tables(p: float, dof: float, expected: float) -> None:
    assert mv.t_quantile(p, dof) == pytest.approx(expected, abs=2e-6)
    assert mv.t_cdf(mv.t_quantile(p, dof), dof) == pytest.approx(p, abs=1e-7)
    assert mv.t_quantile(1 - p, dof) == pytest.approx(-expected, abs=2e-6)


def test_effective_n_and_halfwidth_follow_guideline_14() -> None:
    assert mv.effective_n(1000, 0.0) == 1000
    assert mv.effective_n(1000, 0.5) == pytest.approx(1000 / 3)
    assert mv.effective_n(1000, -0.4) == 1000  # negative autocorrelation earns no credit
    n, p, rho, m, e, cv = 1000, 20, 0.5, 300, 5000.0, 15.0
    n_eff = 1000 / 3
    t = mv.t_quantile(0.95, n_eff - p)
    by_hand = 1.26 * t * 0.15 * e * math.sqrt((n / n_eff) * (1 + 2 / n_eff) / m)
    u = mv.savings_halfwidth(cv_rmse_pct=cv, n=n, n_params=p, rho=rho, m=m,
                             adjusted_total=e, confidence=0.9)  # fmt: skip
    assert u == pytest.approx(by_hand)
    assert mv.fsu(u, 500.0) == pytest.approx(by_hand / 500.0)
    # more parameters than independent intervals: no uncertainty can be given
    assert mv.savings_halfwidth(cv_rmse_pct=cv, n=100, n_params=90, rho=0.5, m=10,
                                adjusted_total=e, confidence=0.9) is None  # fmt: skip


def test_period_parsing() -> None:
    p = Period.parse("2026-01-05..2026-01-11")
    assert p.days == 7  # a date-only end includes that day
    assert Period.parse("2026-01-05T06:00:00Z..2026-01-05T18:00:00Z").days == 0.5
    local = Period.parse("2026-01-05..2026-01-05", timezone="Europe/Vienna")
    assert local.start_s == parse_local("2026-01-04T23:00:00Z")
    for bad in ("2026-01-05", "2026-01-05..", "2026-13-01..2026-12-01", "2026-02-01..2026-01-01"):
        with pytest.raises(SavingsError, match="--period"):
            Period.parse(bad)


# ----------------------------------------------------------------------------- the plant


@pytest.fixture(scope="module")
def plant_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight weeks of a steam header whose trap is repaired after six."""
    root = tmp_path_factory.mktemp("savings")
    path = root / "plant.yaml"
    path.write_text(PLANT, encoding="utf-8")
    import os

    os.environ.setdefault("RECP_PROFILES", str(REPO / "edge_config" / "profiles"))
    spec = load_plant(path)
    engine = Engine(spec.plant, spec.profiles, losses=True, file=spec.file)
    write_csv(engine, root / "out", 300)
    return root / "out"


def true_savings(out: Path, reporting: tuple[str, str]) -> float:
    """The trap's rate (from the truth: excess over its duration) times reporting hours."""
    truth = json.loads((out / "truth.json").read_text(encoding="utf-8"))
    (trap,) = [e for e in truth["events"] if e["type"] == "steam_trap"]
    hours = (parse_local(trap["end"]) - parse_local(trap["start"])) / 3600
    rate = trap["excess"] / hours  # counter units (t) per hour
    assert rate == pytest.approx(TRAP_KG_H / 1000, rel=1e-6)
    span = (parse_local(reporting[1]) - parse_local(reporting[0])) / 3600
    return rate * span


def run_savings(plant: Path, out: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    code = main(["savings", str(plant / "steam_main.csv"), "--out", str(out), *extra])
    data = (
        json.loads((out / "savings.json").read_text(encoding="utf-8"))
        if (out / "savings.json").exists()
        else {}
    )
    return code, data


def png_images(html: str) -> list[np.ndarray]:
    import base64
    import io

    import matplotlib.image

    found = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    return [matplotlib.image.imread(io.BytesIO(base64.b64decode(b)), format="png") for b in found]


@pytest.mark.parametrize("interval", ["hourly", "daily", "caltrack-daily", "caltrack-hourly"])
def test_savings_match_the_truth_within_their_uncertainty(
    plant_dir: Path, tmp_path: Path, interval: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, s = run_savings(
        plant_dir, tmp_path,
        "--baseline", "2026-01-05T00:00:00Z..2026-02-16T00:00:00Z",
        "--reporting", "2026-02-16T00:00:00Z..2026-03-02T00:00:00Z",
        "--temperature", "outdoor_temperature_c", "--production", "produced_units",
        "--timezone", "UTC", "--method", interval,
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    truth = true_savings(plant_dir, ("2026-02-16T00:00:00Z", "2026-03-02T00:00:00Z"))
    sv = s["savings"]
    est = sv["avoided"]
    band = sv["uncertainty"]["90%"]
    with capsys.disabled():  # the numbers the closing note quotes (pytest -s)
        print(f"\n{interval}: estimated {est:.3f} t, true {truth:.3f} t, "
              f"90 % +-{band['halfwidth']:.3f} t, normalised {sv['normalised']:.1f} t, "
              f"CV(RMSE) {s['guideline14']['cv_rmse_pct']:.1f} %")  # fmt: skip
    assert band["low"] <= truth <= band["high"]
    assert abs(est - truth) <= 0.05 * truth
    assert sv["cost"] == pytest.approx(est * 55, rel=1e-5)
    assert sv["co2_kg"] == pytest.approx(est * 200, rel=1e-5)
    # the three confidence levels nest
    widths = [sv["uncertainty"][k]["halfwidth"] for k in ("68%", "80%", "90%")]
    assert widths == sorted(widths) and widths[0] > 0
    g14 = s["guideline14"]
    assert g14["cv_rmse_pct"] < g14["thresholds"]["cv_rmse_max_pct"]
    if interval == "hourly":
        assert s["verdict"] == {"passed": True, "reasons": [], "warnings": []}
    elif interval == "caltrack-hourly":  # with production terms in every month's model
        assert s["verdict"]["reasons"] == [
            "baseline period is 42.0 days; at least 365 are needed by CalTRACK's hourly "
            "method, so that every calendar month has its own model"
        ]
        assert s["model"]["format"] == "recp-caltrack-hourly/1"
        fitted = [m["month"] for m in s["model"]["months"] if m is not None]
        assert fitted == [1, 2, 3, 12]  # January, February and their neighbours
        assert all(m["production_coef"] is not None for m in s["model"]["months"] if m)
    else:  # Guideline 14 is met; CalTRACK's daily method wants a year of baseline
        assert s["verdict"]["reasons"] == [
            "baseline period is 42.0 days; at least 365 are needed by CalTRACK's daily "
            "method, so that every season is seen"
        ]
        assert s["model"]["time_of_week"] == "none" and len(s["model"]["intercepts"]) == 1
        assert "with production terms (CalTRACK has none)" in s["method_description"]
        assert ("p < 0.1" in s["method_description"]) == (interval == "daily")
    assert s["method"] == interval
    assert s["method_description"].startswith(interval)
    if interval != "caltrack-hourly":
        assert s["model"]["format"] == "recp-baseline/1"
    assert s["data"]["baseline_coverage_pct"] == 100 and s["data"]["reporting_coverage_pct"] == 100
    # normalised savings under the baseline's conditions: the trap's rate over six weeks
    assert sv["normalised"] == pytest.approx(TRAP_KG_H / 1000 * 42 * 24, rel=0.05)
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    images = png_images(html)
    assert len(images) == 3
    for im in images:  # rendered, and not blank
        assert im.shape[0] > 200 and im.shape[1] > 500 and float(im[..., :3].std()) > 0.05
    assert s["method_description"].split(":")[0] in html
    if interval == "hourly":
        assert "Meets ASHRAE Guideline 14" in html
        assert "PASS" in capsys.readouterr().out


def test_caltrack_hourly_weather_only_on_the_plant(plant_dir: Path, tmp_path: Path) -> None:
    """The plant's production follows a weekly schedule, which the hour-of-week levels
    carry: CalTRACK hourly without production terms is still within the band and 5 %."""
    code, s = run_savings(
        plant_dir, tmp_path,
        "--baseline", "2026-01-05T00:00:00Z..2026-02-16T00:00:00Z",
        "--reporting", "2026-02-16T00:00:00Z..2026-03-02T00:00:00Z",
        "--temperature", "outdoor_temperature_c", "--timezone", "UTC",
        "--method", "caltrack-hourly",
    )  # fmt: skip
    assert code == 0
    truth = true_savings(plant_dir, ("2026-02-16T00:00:00Z", "2026-03-02T00:00:00Z"))
    sv = s["savings"]
    band = sv["uncertainty"]["90%"]
    assert band["low"] <= truth <= band["high"]
    assert abs(sv["avoided"] - truth) <= 0.05 * truth
    assert all(m["production_coef"] is None for m in s["model"]["months"] if m)
    assert "production terms" not in s["method_description"]


def test_too_short_a_baseline_fails_the_verdict(plant_dir: Path, tmp_path: Path) -> None:
    code, s = run_savings(
        plant_dir, tmp_path,
        "--baseline", "2026-02-03..2026-02-15", "--reporting", "2026-02-16..2026-03-01",
        "--temperature", "outdoor_temperature_c", "--production", "produced_units",
        "--interval", "daily",
    )  # fmt: skip
    assert code == 0
    assert s["verdict"]["passed"] is False
    assert any("baseline period is 13.0 days" in r for r in s["verdict"]["reasons"])
    assert "Does not meet ASHRAE Guideline 14" in (tmp_path / "report.html").read_text()


def test_method_and_its_old_interval_spelling_must_agree(
    plant_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run_savings(
        plant_dir, tmp_path,
        "--baseline", "2026-01-05..2026-02-15", "--reporting", "2026-02-16..2026-03-01",
        "--method", "daily", "--interval", "hourly",
    )  # fmt: skip
    assert code == 2
    assert "--method daily and --interval hourly disagree" in capsys.readouterr().err


def test_a_meter_unrelated_to_its_drivers_fails_on_cv_rmse(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    t0 = parse_local("2026-01-05T00:00:00Z")
    n = 56 * 24
    stamps = [t0 + 3600 * i for i in range(n)]
    used = rng.lognormal(0.0, 1.0, n)  # noise: no time of week, weather or production in it
    csv = tmp_path / "random.csv"
    lines = ["timestamp_utc,energy_kwh"] + [
        f"{np.datetime64(t, 's')}Z,{u:.4f}" for t, u in zip(stamps, used, strict=True)
    ]
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    code = main(["savings", str(csv), "--column", "energy_kwh", "--values", "interval",
                 "--unit", "kWh", "--baseline", "2026-01-05..2026-02-15",
                 "--reporting", "2026-02-16..2026-03-01", "--out", str(out)])  # fmt: skip
    assert code == 0
    s = json.loads((out / "savings.json").read_text(encoding="utf-8"))
    assert s["verdict"]["passed"] is False
    assert any(r.startswith("CV(RMSE)") for r in s["verdict"]["reasons"])
    assert s["guideline14"]["cv_rmse_pct"] > 30


def test_bad_inputs_get_clear_errors(
    plant_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--baseline", "2026-01-05..2026-02-15", "--reporting", "2026-02-16..2026-03-01"]
    # reporting period before the baseline
    code, _ = run_savings(plant_dir, tmp_path / "a", "--baseline", "2026-02-16..2026-03-01",
                          "--reporting", "2026-01-05..2026-02-15")  # fmt: skip
    assert code == 2
    assert "must start after the baseline period ends" in capsys.readouterr().err
    # a production column that is not there
    code, _ = run_savings(plant_dir, tmp_path / "b", *base, "--production", "bottles")
    assert code == 2
    assert "no column 'bottles'" in capsys.readouterr().err
    # too little data to fit at all
    code, _ = run_savings(plant_dir, tmp_path / "c", "--baseline", "2026-01-05..2026-01-06",
                          "--reporting", "2026-02-16..2026-03-01")  # fmt: skip
    assert code == 2
    assert "cannot fit a baseline: too little data" in capsys.readouterr().err
    # a broken CSV names file and line
    bad = tmp_path / "bad"
    bad.mkdir()
    text = (plant_dir / "steam_main.csv").read_text(encoding="utf-8").splitlines()
    text[4] = text[4].rsplit(",", 1)[0] + ",12,5"
    text[6] = "2026-01-05 25:00,1,2"
    (bad / "steam_main.csv").write_text("\n".join(text) + "\n", encoding="utf-8")
    code = main(["savings", str(bad / "steam_main.csv"), "--column", "mass_t",
                 *base, "--out", str(tmp_path / "d")])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "steam_main.csv:7: '2026-01-05 25:00' is not a UTC timestamp" in err
    text[6] = text[5]
    text[8] = text[8].rsplit(",", 1)[0] + ",n/a"
    (bad / "steam_main.csv").write_text("\n".join(text) + "\n", encoding="utf-8")
    code = main(["savings", str(bad / "steam_main.csv"), "--column", "mass_t",
                 *base, "--out", str(tmp_path / "d")])  # fmt: skip
    assert code == 2
    assert "steam_main.csv:9: column mass_t: 'n/a' is not a number" in capsys.readouterr().err
    # InfluxDB input needs its analytics file, and SITE/METER
    assert main(["savings", "influx:dairy/steam_main", *base, "--out", str(tmp_path / "e")]) == 2
    assert "needs --analytics FILE" in capsys.readouterr().err
    assert main(["savings", "influx:steam_main", *base, "--out", str(tmp_path / "e")]) == 2
    assert "influx:SITE/METER" in capsys.readouterr().err


def test_unknown_time_zone_and_bad_period_are_usage_errors(
    plant_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    periods = ["--baseline", "2026-01-05..2026-02-15", "--reporting", "2026-02-16..2026-03-01"]
    code, _ = run_savings(plant_dir, tmp_path, *periods, "--timezone", "Mars/Olympus")
    assert code == 2
    assert "unknown time zone 'Mars/Olympus'" in capsys.readouterr().err
    code, _ = run_savings(plant_dir, tmp_path, "--baseline", "2026-01-05",
                          "--reporting", "2026-02-16..2026-03-01")  # fmt: skip
    assert code == 2
    assert "--baseline '2026-01-05': expected START..END" in capsys.readouterr().err


def test_prepare_builds_local_days_and_reads_every_kind_of_column() -> None:
    from detectors.meter import MeterInfo
    from detectors.savings import Readings, prepare

    meter = MeterInfo("m", "kWh")
    start = parse_local("2026-03-27", "Europe/Vienna")  # DST starts on Sunday the 29th
    end = parse_local("2026-03-31", "Europe/Vienna", end=True)
    t = np.arange(start, end + 1, 900, dtype=np.int64)
    counter = Readings(t, 1000.0 + (t - start) / 900.0)  # 1 kWh per 15 min: 4 kWh/h
    per_row = Readings(t, np.ones(t.size), "interval")
    rate = Readings(t, np.full(t.size, 8.0), "rate")  # 8 units/h
    temp = Readings(t, np.full(t.size, 5.0), "rate")
    daily = prepare(counter, meter=meter, start_s=start, end_s=end, interval_s=86400,
                    timezone="Europe/Vienna", temperature=temp, production=rate)  # fmt: skip
    assert daily.t_s.size == 5  # Friday to Tuesday, local days
    hours = np.array([24, 24, 23, 24, 24])
    assert np.allclose(daily.consumption, 4 * hours)
    assert daily.production is not None and np.allclose(daily.production, 8 * hours)
    assert daily.temperature is not None and np.allclose(daily.temperature, 5.0)
    hourly = prepare(per_row, meter=meter, start_s=start, end_s=end, interval_s=3600)
    assert np.allclose(hourly.consumption[:-1], 4.0)  # four rows of 1 kWh per hour
    with pytest.raises(SavingsError, match="interval"):
        prepare(counter, meter=meter, start_s=start, end_s=end, interval_s=7200)


def test_a_column_is_found_in_the_one_sibling_file_that_has_it(tmp_path: Path) -> None:
    from detectors.csvinput import CsvInputError, find_column

    main_csv = tmp_path / "m.csv"
    main_csv.write_text("timestamp_utc,energy_kwh\n2026-01-05T00:00:00Z,1\n")
    (tmp_path / "w.csv").write_text("timestamp_utc,outdoor_temperature_c\n2026-01-05T00:00:00Z,3\n")
    assert find_column("outdoor_temperature_c", main_csv) == tmp_path / "w.csv"
    assert find_column("energy_kwh", main_csv) == main_csv
    (tmp_path / "w2.csv").write_text("timestamp_utc,outdoor_temperature_c\n")
    with pytest.raises(CsvInputError, match=r"in several files \(w.csv, w2.csv\)"):
        find_column("outdoor_temperature_c", main_csv)
    with pytest.raises(CsvInputError, match="no column 'rain_mm'"):
        find_column("rain_mm", main_csv)


def stored_points(plant_dir: Path) -> list[Any]:
    """What recp detect stores of the plant: 15-minute consumption.actual of the steam meter
    and the production line, and the raw outdoor temperature readings."""
    from fluxserver import Point

    from detectors.clean import clean_counter
    from detectors.csvinput import read_columns

    points = []
    for meter, column, unit in (("steam_main", "mass_t", "t"),
                                ("prod_line", "produced_units", "units")):  # fmt: skip
        ts, cols = read_columns(plant_dir / f"{meter}.csv", [column])
        c = clean_counter(ts, cols[column], interval_s=900)
        tags = {"site": "dairy", "meter": meter, "resource": "steam", "unit": unit}
        points += [Point("consumption", tags, "actual", int(t), float(v))
                   for t, v in zip(c.start_s, c.consumption, strict=True)
                   if np.isfinite(v)]  # fmt: skip
    ts, cols = read_columns(plant_dir / "outdoor.csv", ["outdoor_temperature_c"])
    tags = {"site": "dairy", "meter": "outdoor", "resource": "weather"}
    points += [Point("reading", tags, "outdoor_temperature_c", int(t), float(v))
               for t, v in zip(ts, cols["outdoor_temperature_c"], strict=True)]  # fmt: skip
    return points


def test_influx_input_gives_the_same_savings_as_the_csv(
    plant_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``influx:SITE/METER`` through the real influxdb_client over HTTP to a loopback stand-in
    of InfluxDB's query API (tests/fluxserver.py) holding what recp detect stores: 15-minute
    consumption.actual of the steam meter and the production line, and the raw outdoor
    temperature readings. The savings equal those from the plant's CSV files."""
    from fluxserver import FluxReplay

    replay = FluxReplay(token="s3cret")
    replay.points += stored_points(plant_dir)
    import yaml

    analytics = yaml.safe_load((REPO / "edge_config" / "analytics.yaml").read_text("utf-8"))
    analytics["influx"]["timeout_s"] = 120  # generous: a loaded test machine, not the network
    (tmp_path / "analytics.yaml").write_text(yaml.safe_dump(analytics), encoding="utf-8")
    replay.start()
    try:
        monkeypatch.setenv("RECP_INFLUX_URL", replay.url)
        monkeypatch.setenv("RECP_INFLUX_TOKEN", "s3cret")
        periods = ["--baseline", "2026-01-05T00:00:00Z..2026-02-16T00:00:00Z",
                   "--reporting", "2026-02-16T00:00:00Z..2026-03-02T00:00:00Z"]  # fmt: skip
        command = ["savings", "influx:dairy/steam_main", "--analytics",
                   str(tmp_path / "analytics.yaml"), *periods,
                   "--production", "prod_line", "--temperature", "outdoor_temperature_c",
                   "--price", "55", "--out", str(tmp_path / "influx")]  # fmt: skip
        code = main(command)
        assert code == 0, capsys.readouterr().err
        assert len(replay.queries) == 2
        assert 'r.meter == "steam_main" or r.meter == "prod_line"' in replay.queries[0]
        assert 'r._field == "outdoor_temperature_c"' in replay.queries[1]
        # a wrong token: InfluxDB's 401 in one line, no traceback
        monkeypatch.setenv("RECP_INFLUX_TOKEN", "wrong")
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "401" in err and "unauthorized" in err and "Traceback" not in err
    finally:
        replay.stop()
    # nothing listening any more: the same, a line naming the URL
    monkeypatch.setenv("RECP_INFLUX_TOKEN", "s3cret")
    assert main(command) == 2
    err = capsys.readouterr().err
    assert replay.url in err and "could not query InfluxDB" in err and "Traceback" not in err
    code, from_csv = run_savings(plant_dir, tmp_path / "csv", *periods,
                                 "--temperature", "outdoor_temperature_c",
                                 "--production", "produced_units", "--timezone", "UTC")  # fmt: skip
    assert code == 0
    from_influx = json.loads((tmp_path / "influx" / "savings.json").read_text(encoding="utf-8"))
    a, b = from_influx["savings"], from_csv["savings"]
    assert a["avoided"] == pytest.approx(b["avoided"], rel=1e-3)
    assert a["cost"] == pytest.approx(b["cost"], rel=1e-3)
    assert from_influx["verdict"]["passed"]


def test_victoriametrics_input_gives_the_same_savings_as_the_csv(
    plant_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], victoria_metrics: Any,
) -> None:
    """``influx:SITE/METER`` with ``influx.flavor: victoriametrics``: the points recp detect
    stores, written by the service's own writer into a real VictoriaMetrics and read back
    through /api/v1/export, give the savings of the plant's CSV files. A Flux reader pointed
    at it, a wrong path and a stopped server each give one line naming the URL."""
    import yaml
    from vmstore import store

    assert store(victoria_metrics, stored_points(plant_dir)) > 10_000
    analytics = yaml.safe_load((REPO / "edge_config" / "analytics.yaml").read_text("utf-8"))
    analytics["influx"].update(timeout_s=120, flavor="victoriametrics")
    analytics["influx"].pop("token_env", None)  # a single-node VictoriaMetrics without auth
    path = tmp_path / "analytics.yaml"
    path.write_text(yaml.safe_dump(analytics), encoding="utf-8")
    monkeypatch.setenv("RECP_INFLUX_URL", victoria_metrics.url)
    monkeypatch.delenv("RECP_INFLUX_TOKEN", raising=False)
    periods = ["--baseline", "2026-01-05T00:00:00Z..2026-02-16T00:00:00Z",
               "--reporting", "2026-02-16T00:00:00Z..2026-03-02T00:00:00Z"]  # fmt: skip
    command = ["savings", "influx:dairy/steam_main", "--analytics", str(path), *periods,
               "--production", "prod_line", "--temperature", "outdoor_temperature_c",
               "--price", "55", "--out", str(tmp_path / "vm")]  # fmt: skip
    code = main(command)
    assert code == 0, capsys.readouterr().err
    code, from_csv = run_savings(plant_dir, tmp_path / "csv", *periods,
                                 "--temperature", "outdoor_temperature_c",
                                 "--production", "produced_units", "--timezone", "UTC")  # fmt: skip
    assert code == 0
    from_vm = json.loads((tmp_path / "vm" / "savings.json").read_text(encoding="utf-8"))
    a, b = from_vm["savings"], from_csv["savings"]
    assert a["avoided"] == pytest.approx(b["avoided"], rel=1e-3)
    assert a["cost"] == pytest.approx(b["cost"], rel=1e-3)
    assert from_vm["verdict"]["passed"]
    capsys.readouterr()

    def one_line(analytics_update: dict[str, Any]) -> str:
        changed = {**analytics, "influx": {**analytics["influx"], **analytics_update}}
        path.write_text(yaml.safe_dump(changed), encoding="utf-8")
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.startswith("error: "), err
        return err.splitlines()[0]

    # the Flux reader against VictoriaMetrics: its 400, and what to set
    err = one_line({"flavor": "influxdb2"})
    assert "InfluxDB answered 400" in err and "influx.flavor: victoriametrics" in err
    # an error answer of VictoriaMetrics itself
    err = one_line({"query_url": victoria_metrics.url + "/nowhere"})
    assert f"{victoria_metrics.url}/nowhere/api/v1/export" in err and "answered 400" in err
    victoria_metrics.stop()
    err = one_line({})
    assert f"could not query VictoriaMetrics ({victoria_metrics.url}/api/v1/export)" in err
    assert "ConnectionRefusedError" in err


def test_caltrack_hourly_bad_inputs_get_clear_errors(
    plant_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--baseline", "2026-01-05..2026-02-15", "--reporting", "2026-02-16..2026-03-01",
            "--method", "caltrack-hourly"]  # fmt: skip
    # a weather model without a temperature
    code, _ = run_savings(plant_dir, tmp_path / "a", *base)
    assert code == 2
    assert "caltrack-hourly is a weather model: give the outdoor temperature" in (
        capsys.readouterr().err
    )
    temp = ["--temperature", "outdoor_temperature_c"]
    code, _ = run_savings(plant_dir, tmp_path / "b", *base, *temp, "--time-of-week", "daytype")
    assert code == 2
    assert "does not apply to --method caltrack-hourly" in capsys.readouterr().err
    # two days of baseline: fewer hours than the month model's parameters
    code, _ = run_savings(plant_dir, tmp_path / "c", "--baseline", "2026-01-05..2026-01-06",
                          "--reporting", "2026-01-20..2026-01-30", "--method",
                          "caltrack-hourly", *temp)  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot fit a baseline: too little data to fit the CalTRACK hourly baseline" in err
    assert "Traceback" not in err


def test_caltrack_daily_bad_inputs_get_clear_errors(
    plant_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--baseline", "2026-01-05..2026-02-15", "--reporting", "2026-02-16..2026-03-01",
            "--method", "caltrack-daily"]  # fmt: skip
    code, _ = run_savings(plant_dir, tmp_path / "a", *base)
    assert code == 2
    assert "caltrack-daily is a weather model: give the outdoor temperature" in (
        capsys.readouterr().err
    )
    temp = ["--temperature", "outdoor_temperature_c"]
    code, _ = run_savings(plant_dir, tmp_path / "b", *base, *temp, "--time-of-week", "week")
    assert code == 2
    assert "does not apply to --method caltrack-daily" in capsys.readouterr().err
    # one day of baseline: fewer days than the intercept-only model's one parameter needs
    code, _ = run_savings(plant_dir, tmp_path / "c", "--baseline", "2026-01-05..2026-01-05",
                          "--reporting", "2026-01-20..2026-01-30", "--method",
                          "caltrack-daily", *temp)  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot fit a baseline: too little data" in err
    assert "Traceback" not in err


def test_caltrack_daily_fills_days_with_half_their_hours() -> None:
    """CalTRACK 2.2.2.1: a day summed from hours is known when at most half its hours are
    missing, those filled with the mean of the others; ours (daily) wants every hour."""
    from detectors.meter import MeterInfo
    from detectors.savings import Readings, prepare

    meter = MeterInfo("m", "kWh")
    start = parse_local("2026-03-02")
    t = start + 3600 * np.arange(3 * 24, dtype=np.int64)
    used = np.where((t // 3600) % 24 < 12, 1.0, 3.0)  # 1 kWh/h at night, 3 by day
    used[:12] = np.nan  # day 1: 12 of 24 hours known (the day hours)
    used[24:37] = np.nan  # day 2: 11 of 24 known
    temp = Readings(t, np.full(t.size, 5.0), "rate")
    kw = dict(meter=meter, start_s=start, end_s=start + 3 * 86400, interval_s=86400,
              temperature=temp)  # fmt: skip
    spec = prepare(Readings(t, used, "interval"), fill_days=True, **kw)  # type: ignore[arg-type]
    ours = prepare(Readings(t, used, "interval"), **kw)  # type: ignore[arg-type]
    assert np.allclose(spec.consumption[[0, 2]], [72.0, 48.0])  # 24 x 3, and 12 x 1 + 12 x 3
    assert np.isnan(spec.consumption[1])
    assert np.isnan(ours.consumption[:2]).all() and ours.consumption[2] == 48.0
    # the same from stored rows (InfluxDB, VictoriaMetrics, the embedded store)
    from detectors.history.base import Row
    from detectors.influxinput import series_from_rows

    rows = [Row("m", int(ti), float(u), "kWh") for ti, u in zip(t, used, strict=True)
            if np.isfinite(u)]  # fmt: skip
    kw2 = dict(start_s=start, end_s=start + 3 * 86400, interval_s=86400,
               temperature=(t, np.full(t.size, 5.0)))  # fmt: skip
    stored = series_from_rows(rows, "m", fill_days=True, **kw2)  # type: ignore[arg-type]
    assert np.allclose(stored.consumption, spec.consumption, equal_nan=True)
    strict = series_from_rows(rows, "m", **kw2)  # type: ignore[arg-type]
    assert np.allclose(strict.consumption, ours.consumption, equal_nan=True)


def test_caltrack_daily_weather_only_on_the_plant(plant_dir: Path, tmp_path: Path) -> None:
    """CalTRACK daily as the spec has it, no production terms: one intercept for every day.

    The steam header's days differ by production (a weekly schedule: workdays and
    weekends), not by weather, so a weather-only daily model cannot tell them apart: its
    estimate is off by about 30 %, and what is right is that it says so: a 90 % band that
    still holds the truth, and a verdict that fails on CV(RMSE) and on the uncertainty.
    With the production terms it is within 5 % (test_savings_match_the_truth...)."""
    code, s = run_savings(
        plant_dir, tmp_path,
        "--baseline", "2026-01-05T00:00:00Z..2026-02-16T00:00:00Z",
        "--reporting", "2026-02-16T00:00:00Z..2026-03-02T00:00:00Z",
        "--temperature", "outdoor_temperature_c", "--timezone", "UTC",
        "--method", "caltrack-daily",
    )  # fmt: skip
    assert code == 0
    truth = true_savings(plant_dir, ("2026-02-16T00:00:00Z", "2026-03-02T00:00:00Z"))
    sv = s["savings"]
    band = sv["uncertainty"]["90%"]
    print(f"\ncaltrack-daily weather only: {sv['avoided']:.3f} t, true {truth:.3f} t, 90 % "
          f"+-{band['halfwidth']:.3f} t, CV(RMSE) {s['guideline14']['cv_rmse_pct']:.1f} %, "
          f"model {s['model_description']}")  # fmt: skip
    assert band["low"] <= truth <= band["high"]
    assert abs(sv["avoided"] - truth) > 0.05 * truth  # weather does not explain the plant
    reasons = " | ".join(s["verdict"]["reasons"])
    assert s["verdict"]["passed"] is False
    assert "CV(RMSE)" in reasons and "uncertainty" in reasons, reasons
    assert s["model"]["production_coef"] is None and s["model"]["running_coef"] is None
    assert "production terms" not in s["method_description"]
