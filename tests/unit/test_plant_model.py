"""The virtual plant's model: calendar, determinism, and loads that follow their drivers."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from collector.plant import Engine, load_plant
from collector.plant.config import Plant
from collector.plant.drivers import Calendar

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "edge_config" / "plants" / "demo.yaml"


def epoch(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.fixture(scope="module")
def demo_spec():  # type: ignore[no-untyped-def]
    return load_plant(DEMO)


def calendar(**schedule: object) -> Calendar:
    plant = Plant.model_validate(
        {
            "kind": "plant", "name": "cal", "timezone": "Europe/Vienna",
            "start": "2026-01-05T00:00:00Z", "schedule": schedule,
            "meters": [{"id": "m", "profile": "eastron_sdm630", "port": 1}],
        }
    )
    return Calendar(plant)


@pytest.mark.parametrize(
    ("when", "running"),
    [
        ("2026-01-05T05:30:00Z", True),  # Monday 06:30 in Vienna (UTC+1)
        ("2026-01-05T04:59:00Z", False),  # 05:59 local, before the first shift
        ("2026-01-05T11:10:00Z", False),  # 12:10 local, lunch break
        ("2026-01-05T20:59:00Z", True),  # 21:59 local
        ("2026-01-05T21:00:00Z", False),  # 22:00 local, end of the second shift
        ("2026-01-06T08:00:00Z", False),  # Epiphany, a holiday
        ("2026-01-10T08:00:00Z", False),  # Saturday
        ("2026-07-06T04:30:00Z", True),  # Monday 06:30 in summer time (UTC+2)
    ],
)
def test_shifts_breaks_weekends_holidays(when: str, running: bool) -> None:
    cal = calendar(breaks=["12:00-12:30"], holidays=["2026-01-06"])
    assert cal.state(epoch(when))[0] is running


def test_night_shift_runs_past_midnight_into_saturday() -> None:
    cal = calendar(workdays=["mon", "tue", "wed", "thu", "fri"], shifts=["22:00-06:00"])
    assert cal.state(epoch("2026-01-09T23:30:00Z"))[0]  # Saturday 00:30, Friday's shift
    assert not cal.state(epoch("2026-01-10T23:30:00Z"))[0]  # Sunday 00:30


def run_day(spec, losses: bool = True) -> list[dict[str, float]]:  # type: ignore[no-untyped-def]
    engine = Engine(spec.plant, spec.profiles, losses=losses)
    out = []
    for _ in range(24 * 60):
        engine.step()
        out.append({mid: engine.values(mid)["energy_kwh"]
                    for mid in engine.meters if mid.startswith("el_")})
    return out


def test_same_seed_same_plant(demo_spec) -> None:  # type: ignore[no-untyped-def]
    assert run_day(demo_spec) == run_day(demo_spec)


def test_other_seed_other_noise(demo_spec) -> None:  # type: ignore[no-untyped-def]
    other = demo_spec.plant.model_copy(update={"seed": 99})
    a = Engine(demo_spec.plant, demo_spec.profiles)
    b = Engine(other, demo_spec.profiles)
    a.step()
    b.step()
    assert a.values("el_main")["power_kw"] != b.values("el_main")["power_kw"]


def test_loads_follow_production_and_weather(demo_spec) -> None:  # type: ignore[no-untyped-def]
    engine = Engine(demo_spec.plant, demo_spec.profiles, losses=False)
    samples: dict[str, list[float]] = {"night": [], "shift": []}
    temps = []
    for _ in range(7 * 24 * 60):
        engine.step()
        key = "shift" if engine.drivers.running else "night"
        samples[key].append(engine.values("el_main")["power_kw"])
        temps.append(engine.drivers.temperature_c)
    night = sum(samples["night"]) / len(samples["night"])
    shift = sum(samples["shift"]) / len(samples["shift"])
    assert 40 < night < 80 and shift > night + 100  # base ~55 kW, +140 kW when running
    assert -20 < min(temps) < max(temps) < 20  # January in Vienna
    # counters only grow while no fault is injected, and gauges stay within the rating
    m = engine.meters["steam_main"]
    assert m.state.metered_total > 7311000 and m.state.rate < m.max_rate


def test_interpolates_counters_inside_a_step(demo_spec) -> None:  # type: ignore[no-untyped-def]
    engine = Engine(demo_spec.plant, demo_spec.profiles, losses=False)
    engine.advance_to(epoch("2026-01-07T09:00:30Z"))
    start = engine.values("water_main")["volume_m3"]
    half = engine.values("water_main", engine.t + 30)["volume_m3"]
    engine.step()
    full = engine.values("water_main")["volume_m3"]
    assert start < half < full
    assert half - start == pytest.approx((full - start) / 2)


def test_clock_steps_add_up_from_their_time() -> None:
    from collector.plant.config import ClockDevice

    clock = ClockDevice.model_validate({"port": 5020, "steps": [
        {"at": "2026-03-02T12:00:00Z", "by_s": 3600},
        {"at": "2026-03-03T00:00:00Z", "by_s": -5400}]})
    noon = dt.datetime(2026, 3, 2, 12, tzinfo=dt.timezone.utc).timestamp()
    assert clock.offset_s(noon - 0.001) == 0
    assert clock.offset_s(noon) == 3600
    assert clock.offset_s(noon + 86400) == -1800
    with pytest.raises(ValueError, match="by_s"):
        ClockDevice.model_validate({"port": 5020, "steps": [{"at": "2026-03-02T12:00:00Z"}]})
