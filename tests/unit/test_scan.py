"""``recp scan``: layouts detected, losses found, scores that rank, bad input located."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from collector.cli import main
from collector.plant import Engine, load_plant
from collector.plant.csvout import write_csv
from detectors.csvinput import CsvInputError
from detectors.scan import ScanOptions, read_table, scan

PLANT = """\
kind: plant
name: scan_test
timezone: Europe/Vienna
start: 2026-02-02T00:00:00Z
days: 16
seed: 5
step_s: 300
meters:
  - id: water
    profile: endress_hauser_promag_w400
    port: 5020
    load: {base: 0.4, running: 5, noise: 0.05}
    initial: 1000
    price_per_unit: 4.0
losses:
  - {meter: water, type: leak, start: 2026-02-10T23:00:00Z, rate: 1.0}
"""


@pytest.fixture(scope="module")
def plant_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("scan")
    (tmp / "plant.yaml").write_text(PLANT)
    spec = load_plant(tmp / "plant.yaml")
    write_csv(Engine(spec.plant, spec.profiles), tmp / "out", interval_s=300)
    return tmp / "out" / "water.csv"


def test_scan_finds_the_leak_and_scores_it_once(plant_csv: Path, tmp_path: Path) -> None:
    result = scan(plant_csv, ScanOptions(price_per_unit=4.0))
    assert result.kind == "counter" and result.meter.unit == "m3"
    assert result.meter.id == "water"
    rises = [e for e in result.events if e.type.value in ("base_load_rise", "level_shift")]
    assert len(rises) == 1
    leak = rises[0]
    assert abs(leak.start.timestamp() - 1770764400) <= 6 * 3600  # 2026-02-10T23:00Z
    assert leak.excess == pytest.approx(1.0 * (16 * 24 - (8 * 24 + 23)), rel=0.15)
    assert leak.cost == pytest.approx(leak.excess * 4.0)
    scores = result.scores
    assert np.all((scores >= 0) & (scores <= 1))
    assert np.count_nonzero(scores) == len([e for e in result.events if e.excess > 0])
    # the CLI writes both files
    out, sc = tmp_path / "events.json", tmp_path / "scores.csv"
    assert main(["scan", str(plant_csv), "--out", str(out), "--scores", str(sc)]) == 0
    data = json.loads(out.read_text())
    assert any(e["type"] in ("base_load_rise", "level_shift") for e in data["events"])
    lines = sc.read_text().splitlines()
    assert lines[0] == "interval_start_utc,consumption,score" and len(lines) > 1000


def test_flat_stretch_does_not_tie_at_the_top(tmp_path: Path) -> None:
    # interval layout, semicolons and decimal commas, local times without offset
    rows = ["Zeit;Verbrauch kWh"]
    t0 = np.datetime64("2026-03-02T00:00")
    for i in range(14 * 96):
        stamp = str(t0 + np.timedelta64(15 * i, "m")).replace("T", " ")
        value = 5.0 if (i // 96) in (4, 5, 6) else 5.0 + (i % 96 > 28) * 20 + (i % 7) * 0.3
        rows.append(f"{stamp};{value:.2f}".replace(".", ","))
    path = tmp_path / "export.csv"
    path.write_text("\n".join(rows) + "\n")
    result = scan(path, ScanOptions(resource="electricity", timezone="Europe/Vienna"))
    assert result.kind == "interval" and result.meter.unit == "kWh"
    assert result.consumption.consumption.size >= 14 * 96 - 1
    assert float(np.nansum(result.consumption.consumption)) == pytest.approx(
        sum(float(r.split(";")[1].replace(",", ".")) for r in rows[2:]), rel=1e-6
    )
    top = np.sort(result.scores)[-5:]
    assert np.count_nonzero(top == top.max()) <= 1 or top.max() == 0


def test_bad_input_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("timestamp_utc,energy_kwh\n2026-01-01T00:00:00Z,1\nyesterday,2\n")
    with pytest.raises(CsvInputError, match=r"bad\.csv:3: 'yesterday' in column timestamp_utc"):
        read_table(path, ScanOptions())
    path.write_text("timestamp_utc,energy_kwh\n2026-01-01T00:00:00Z,1\n2026-01-01T00:15:00Z,x\n")
    assert main(["scan", str(path), "--value", "energy_kwh", "--out", str(tmp_path / "e")]) == 2
    assert f"{path}:3: 'x' in column energy_kwh is not a number" in capsys.readouterr().err
    path.write_text("timestamp_utc,energy_kwh\n2026-01-01T00:00:00Z,1\n")
    assert main(["scan", str(path), "--value", "power", "--out", str(tmp_path / "e")]) == 2
    assert "no column 'power'" in capsys.readouterr().err
    assert main(["scan", str(tmp_path / "none.csv")]) == 2


def test_scores_rank_events_once_each_and_a_flat_stretch_not_at_all(tmp_path: Path) -> None:
    """Scores are for ranking alarms: one score per event, at its start, larger for the
    larger event; days of a meter reading the same value (zero spread) score nothing."""
    rows = ["timestamp,consumption_kwh"]
    t0 = np.datetime64("2026-03-02T00:00")
    n = 24 * 96
    day, slot = np.arange(n) // 96, np.arange(n) % 96
    x = 5.0 + (slot > 28) * (slot < 88) * 20.0 + (np.arange(n) % 7) * 0.3
    x[(day >= 8) & (day <= 10)] = 5.0  # a flat stretch: three days of one value
    big, small = 3 * 96 + 40, 4 * 96 + 56  # 10:00 on day 3, 14:00 on day 4, half an hour
    x[big : big + 2] += 60.0
    x[small : small + 2] += 35.0
    x[19 * 96 :] += 6.0  # base load up from day 19 on: one long excursion
    for i in range(n):
        rows.append(f"{t0 + np.timedelta64(15 * i, 'm')}Z,{x[i]:.2f}")
    path = tmp_path / "meter.csv"
    path.write_text("\n".join(rows) + "\n")
    result = scan(path, ScanOptions(resource="electricity", kind="interval"))
    kinds = sorted(e.type.value for e in result.events)
    assert kinds == ["base_load_rise", "spike", "spike"], [e.explanation for e in result.events]
    scores, starts = result.scores, result.consumption.start_s
    assert np.all((scores >= 0) & (scores <= 1))
    assert np.count_nonzero(scores) == 3  # one per event, not one per interval

    def near(i: int) -> float:  # the highest score within an hour of row i
        stamp = (t0 + np.timedelta64(15 * i, "m")).astype("datetime64[s]").astype(np.int64)
        return float(scores[np.abs(starts - stamp) <= 3600].max())

    assert near(big) > near(small) > 0
    flat = (starts >= starts[0] + 8 * 86400) & (starts < starts[0] + 11 * 86400)
    assert not scores[flat].any()
    rise = starts >= starts[0] + 19 * 86400 - 86400
    assert np.count_nonzero(scores[rise]) == 1
    top = np.sort(scores)[-2:]
    assert top[1] > top[0]  # no tie at the top


def _counter_csv(path: Path, column: str) -> Path:
    rows = [f"timestamp,{column}"]
    t0 = np.datetime64("2026-03-02T00:00")
    total = 1000.0
    for i in range(3 * 96):
        total += 5.0 + (i % 96 > 28) * 20.0
        rows.append(f"{t0 + np.timedelta64(15 * i, 'm')}Z,{total:.2f}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(("column", "unit", "resource"), [
    ("total_kwh", "kWh", "electricity"), ("Verbrauch kWh", "kWh", "electricity"),
    ("cold_water_m3", "m3", "water"), ("steam_total_t", "t", "steam"),
])  # fmt: skip
def test_unit_and_resource_from_the_column_names_suffix(
    tmp_path: Path, column: str, unit: str, resource: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _counter_csv(tmp_path / "export.csv", column)
    result = scan(path, ScanOptions())
    assert (result.meter.unit, result.meter.resource) == (unit, resource)
    assert main(["scan", str(path), "--out", str(tmp_path / "e.json")]) == 0
    said = capsys.readouterr().out.splitlines()[0]
    assert f"in {unit} ({resource}), from the name's suffix" in said, said


def test_resource_flag_overrides_the_suffix_and_a_bare_name_stays_units(tmp_path: Path) -> None:
    path = _counter_csv(tmp_path / "export.csv", "total_kwh")
    result = scan(path, ScanOptions(resource="steam"))  # heat in kWh from a steam meter
    assert (result.meter.unit, result.meter.resource) == ("kWh", "steam")
    assert "resource steam from --resource" in result.notes[0]
    bare = scan(_counter_csv(tmp_path / "bare.csv", "total"), ScanOptions())
    assert (bare.meter.unit, bare.meter.resource) == ("units", "")
    assert "no unit in the name" in bare.notes[0]
    water = scan(_counter_csv(tmp_path / "w.csv", "total"), ScanOptions(resource="water"))
    assert (water.meter.unit, water.meter.resource) == ("m3", "water")
