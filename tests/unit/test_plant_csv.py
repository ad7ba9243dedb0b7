"""The 30-day demo scenario as CSV: fast, complete, and carrying exactly the injected truth.

The same plant is written twice, with and without losses, in two processes at once. Every
random stream in the plant is independent of the losses, so the difference between the two
runs is exactly what the losses add; the truth file must report that difference.
"""

from __future__ import annotations

import csv
import datetime as dt
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "edge_config" / "plants" / "demo.yaml"
CONSUMPTION = {"leak", "base_load_rise", "steam_trap", "drift", "overspend", "spikes"}


def _t(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("demo_csv")
    procs = {}
    for name, extra in (("losses", []), ("clean", ["--no-losses"])):
        cmd = [sys.executable, "-m", "collector", "simulate", "-c", str(DEMO),
               "--csv", str(base / name), *extra]
        procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
    took = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        # the writer's own CPU time: what it costs, whatever else the machine is doing
        match = re.search(r"\(cpu ([0-9.]+) s\)", out)
        assert match, out
        took[name] = float(match.group(1))
    return {
        "dir": base / "losses",
        "clean": base / "clean",
        "seconds": took,
        "truth": json.loads((base / "losses" / "truth.json").read_text()),
        "meters": json.loads((base / "losses" / "meters.json").read_text())["meters"],
    }


def test_thirty_days_well_under_a_minute(runs: dict) -> None:
    # CPU seconds of each run (about 15-20 s on this 2-core machine), not wall time,
    # so that a busy machine does not fail the test
    assert max(runs["seconds"].values()) < 45, runs["seconds"]
    truth = runs["truth"]
    assert truth["complete"] is True
    assert _t(truth["now"]) - _t(truth["start"]) == dt.timedelta(days=30)


def test_demo_has_the_required_meters(runs: dict) -> None:
    resources = [m["resource"] for m in runs["meters"].values()]
    assert resources.count("electricity") >= 3
    assert resources.count("water") >= 2
    assert resources.count("steam") >= 2
    assert "production" in resources and "weather" in resources
    for mid in runs["meters"]:
        rows = read_rows(runs["dir"] / f"{mid}.csv")
        assert len(rows) > 43000  # a reading a minute, less unanswered polls
        assert rows[0]["timestamp_utc"] == "2026-01-05T00:00:00Z"


def test_truth_lists_every_injected_event(runs: dict) -> None:
    import yaml

    plant = yaml.safe_load(DEMO.read_text())
    ids = {e["id"] for e in runs["truth"]["events"]}
    for i, loss in enumerate(plant["losses"]):
        assert f"{loss['meter']}/{loss['type']}/{i}" in ids
    for e in runs["truth"]["events"]:
        assert {"id", "meter", "type"} <= set(e)
        if e["type"] in CONSUMPTION:
            assert e["excess"] > 0 and e["unit"] in ("kWh", "m3", "kg", "t")
            assert e["cost"] > 0 and e["co2_kg"] > 0


def between(rows: list[dict[str, str]], start: str, end: str) -> list[dict[str, str]]:
    return [r for r in rows if start <= r["timestamp_utc"] < end]


def counter_at(rows: list[dict[str, str]], column: str, when: str) -> float:
    for row in rows:
        if row["timestamp_utc"] == when:
            return float(row[column])
    raise AssertionError(f"no row at {when}")


def test_each_excess_is_present_in_the_data(runs: dict) -> None:
    checked = 0
    for e in runs["truth"]["events"]:
        if e["type"] not in CONSUMPTION:
            continue
        meter = runs["meters"][e["meter"]]
        col = meter["counter"]
        lossy = read_rows(runs["dir"] / f"{e['meter']}.csv")
        clean = read_rows(runs["clean"] / f"{e['meter']}.csv")
        start = e["start"]
        last = lossy[-1]["timestamp_utc"]
        end = min(e["end"] or last, last)
        with_loss = counter_at(lossy, col, end) - counter_at(lossy, col, start)
        without = counter_at(clean, col, end) - counter_at(clean, col, start)
        seen = with_loss - without
        # open events run one step past the last row; allow that step and rounding
        assert seen == pytest.approx(e["excess"], rel=0.01, abs=0.5), e["id"]
        checked += 1
    assert checked == 6


def test_faults_show_in_the_data(runs: dict) -> None:
    events = {e["id"]: e for e in runs["truth"]["events"]}
    # stuck: the CIP pulse counter shows one frozen value for the whole window
    stuck = events["water_cip/stuck/6"]
    rows = read_rows(runs["dir"] / "water_cip.csv")
    window = [r for r in rows if stuck["start"] <= r["timestamp_utc"] < stuck["end"]]
    assert len(window) == 24 * 60
    assert len({(r["volume_m3"], r["flow_m3_h"]) for r in window}) == 1
    assert stuck["unmetered"] > 10  # a CIP cycle ran while the meter was stuck
    # rollover: the PLC's uint32 counter wraps within a minute of the asked time
    roll = events["prod_line/rollover/7"]
    assert abs(_t(roll["at"]) - _t("2026-01-21T12:00:00Z")) <= dt.timedelta(minutes=1)
    prod = read_rows(runs["dir"] / "prod_line.csv")
    drops = [
        b["timestamp_utc"] for a, b in itertools.pairwise(prod)
        if float(b["produced_units"]) < float(a["produced_units"])
    ]
    assert drops == ["2026-01-21T12:01:00Z"]
    # reset: the replaced refrigeration meter starts again from 0
    el = read_rows(runs["dir"] / "el_refrigeration.csv")
    at = events["el_refrigeration/reset/8"]["at"]
    before = counter_at(el, "energy_kwh", "2026-01-29T08:59:00Z")
    after = counter_at(el, "energy_kwh", at)
    assert before > 400000 and after < 1
    # dropout: no readings at all; exception with probability 0.5: about half missing
    steam = read_rows(runs["dir"] / "steam_pasteuriser.csv")
    assert not between(steam, "2026-01-12T10:00:00Z", "2026-01-12T12:00:00Z")
    pack = read_rows(runs["dir"] / "el_packaging.csv")
    answered = between(pack, "2026-01-18T14:00:00Z", "2026-01-18T15:00:00Z")
    assert 15 <= len(answered) <= 45


def test_natural_16_bit_rollovers_are_in_the_truth(runs: dict) -> None:
    events = runs["truth"]["events"]
    assert all("injected" in e for e in events)
    natural = [e for e in events if e["type"] == "rollover" and not e["injected"]]
    assert natural and {e["meter"] for e in natural} == {"water_cip"}
    rows = read_rows(runs["dir"] / "water_cip.csv")
    drops = sum(
        1 for a, b in itertools.pairwise(rows) if float(b["volume_m3"]) < float(a["volume_m3"])
    )
    assert drops == len(natural)
    for e in natural:
        assert e["rollover"] == pytest.approx(655.36)
