"""Overspend: the CUSUM kernel against its twin, hysteresis, streaming == batch, events, and
detection against the virtual plant's truth (and silence on a plant without losses)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from naive_baseline import naive_cusum

from collector.plant import Engine, load_plant
from detectors.baseline import BaselineConfig, fit_baseline
from detectors.events import EventType, Severity
from detectors.kernels import overspend as kern
from detectors.meter import MeterInfo
from detectors.overspend import OverspendConfig, OverspendDetector, detect_overspend
from detectors.streaming import Point

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HOUR = 3600
MONDAY = 1767571200  # 2026-01-05T00:00:00Z


# --------------------------------------------------------------------------- kernel vs twin


@st.composite
def residual_series(draw: st.DrawFn) -> dict:
    """Residual-like series: runs of in-control noise, shifts, NaN gaps, constant stretches."""
    n = draw(st.integers(0, 120))
    level = st.sampled_from([0.0, 0.0, 0.4, 1.5, 3.0, -2.0])
    shift = draw(hnp.arrays(np.float64, n, elements=level))
    noise = draw(hnp.arrays(np.float64, n, elements=st.integers(-300, 300).map(lambda v: v / 100)))
    actual = 100.0 + shift + noise
    holes = draw(hnp.arrays(np.bool_, n, elements=st.sampled_from([False] * 9 + [True])))
    actual[holes] = np.nan
    expected = np.full(n, 100.0)
    scale = draw(hnp.arrays(np.float64, n, elements=st.sampled_from([1.0, 1.0, 0.5, 2.0, 0.0])))
    k = draw(st.sampled_from([0.0, 0.25, 0.5, 1.0]))
    h = draw(st.sampled_from([1.0, 3.0, 5.0]))
    release = draw(st.sampled_from([0.0, 0.5, 0.9]))
    params = np.array([k, h, release * h, draw(st.sampled_from([1.0, 2.0, 5.0])) * h,
                       draw(st.integers(1, 4)), draw(st.sampled_from([1.5, 4.0, np.inf])),
                       draw(st.sampled_from([0.0, 0.005, 0.05]))], dtype=np.float64)  # fmt: skip
    t = (MONDAY + HOUR * np.arange(n)).astype(np.float64)
    return dict(t=t, actual=actual, expected=expected, scale=scale, params=params)


@SETTINGS
@given(residual_series())
def test_cusum_kernel_equals_naive_twin(case: dict) -> None:
    p = case["params"]
    state = kern._new_state()
    scores, done = kern._run(state, case["t"], case["actual"], case["expected"], case["scale"], p)
    want_scores, want_closed, want_open = naive_cusum(
        case["t"].tolist(), case["actual"].tolist(), case["expected"].tolist(),
        case["scale"].tolist(), p[0], p[1], p[2], p[3], int(p[4]), p[5], p[6],
    )  # fmt: skip
    np.testing.assert_allclose(scores, want_scores, rtol=1e-12, atol=1e-12)
    assert done.shape == (len(want_closed), 6)
    np.testing.assert_allclose(done, np.array(want_closed).reshape(-1, 6), rtol=1e-12)
    assert (state[kern.OPEN] == 1.0) == (want_open is not None)
    if want_open is not None:
        assert state[kern.RUN_T] == want_open[0]
        assert state[kern.ALARM_T] == want_open[1]
        assert state[kern.RUN_R] == pytest.approx(want_open[3], rel=1e-12, abs=1e-12)


def test_cusum_on_empty_and_constant_input() -> None:
    p = OverspendConfig().vector()
    state = kern._new_state()
    empty = np.zeros(0)
    scores, done = kern._run(state, empty, empty, empty, empty, p)
    assert scores.size == 0 and done.shape == (0, 6)
    flat = np.full(500, 7.0)
    scores, done = kern._run(state, np.arange(500.0), flat, flat, np.ones(500), p)
    assert not scores.any() and done.shape == (0, 6) and state[kern.OPEN] == 0.0


# --------------------------------------------------------------------------- hysteresis


def _hovering(n: int, seed: int) -> np.ndarray:
    """Standardised residuals that push the CUSUM up to h, keep it wandering around h
    (crossing it again and again), then return to normal. (Fed with expected 0, so the
    allowance is k_sigma alone.)"""
    rng = np.random.default_rng(seed)
    cfg = OverspendConfig()
    k, h = cfg.k_sigma, cfg.h_sigma
    z = np.empty(n)
    s = 0.0
    for i in range(n):
        if i < 10:
            z[i] = k + 1.0  # climb
        elif i < n - 40:
            z[i] = k + 0.5 * (h - s) + rng.normal(0, 1.2)  # mean-reverting around h
        else:
            z[i] = rng.normal(0, 1)  # back in control
        s = min(cfg.cap * h, max(0.0, s + z[i] - k))
    return z


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_hysteresis_does_not_flap_near_the_threshold(seed: int) -> None:
    cfg = OverspendConfig()
    z = _hovering(400, seed)
    n = z.size
    state = kern._new_state()
    scores, done = kern._run(
        state, MONDAY + HOUR * np.arange(n, dtype=np.float64), z, np.zeros(n), np.ones(n),
        cfg.vector(),
    )  # fmt: skip
    crossings = int(np.sum((scores[1:] > cfg.h_sigma) != (scores[:-1] > cfg.h_sigma)))
    assert crossings >= 20  # a plain threshold on the CUSUM would flap this often
    assert done.shape[0] == 1  # one alert, opened once and closed once
    assert state[kern.OPEN] == 0.0
    start, alarm, end = done[0, :3]
    assert start == MONDAY and start < alarm <= end < MONDAY + (n - 40) * HOUR


# --------------------------------------------------------------------------- plant scenario

PLANT = """
kind: plant
name: overspend_check
timezone: Europe/Vienna
start: 2026-01-05T00:00:00Z
days: 35
seed: 3
step_s: 300
weather: {{mean_c: 9.5, annual_amplitude_c: 10, daily_amplitude_c: 4, noise_c: 2.5}}
schedule:
  workdays: [mon, tue, wed, thu, fri]
  shifts: ["06:00-14:00", "14:00-22:00"]
  breaks: ["12:00-12:30", "18:00-18:30"]
production: {{rate_units_h: 1200, noise: 0.05}}
meters:
  - {{id: el_packaging, profile: eastron_sdm630, port: 5020, unit_id: 4,
     load: {{base: 3, running: 30, per_unit: 0.012, noise: 0.05}},
     initial: 55120, price_per_unit: 0.21, co2_kg_per_unit: 0.28}}
  - {{id: steam_pasteuriser, profile: spirax_sarco_vlm20, port: 5022, unit_id: 2,
     load: {{base: 10, running: 380, per_unit: 0.12, noise: 0.05}},
     initial: 2104500, price_per_unit: 0.055, co2_kg_per_unit: 0.2}}
  - {{id: prod_line, profile: generic_plc_counter, port: 5023, unit_id: 1, initial: 3800000}}
  - {{id: outdoor, profile: rs485_temperature_humidity_sensor, port: 5024, unit_id: 1}}
losses:
  - {{meter: el_packaging, type: overspend, start: {overspend_start}, end: 2026-02-02T00:00:00Z,
     factor: 1.3, note: "conveyor drives left in manual after maintenance"}}
  - {{meter: steam_pasteuriser, type: drift, start: 2026-01-19T00:00:00Z,
     end: 2026-02-09T00:00:00Z, fraction: 0.2, note: "plate heat exchanger fouling"}}
"""
COUNTERS = {"el_packaging": "energy_kwh", "steam_pasteuriser": "mass_kg"}
BASELINE_DAYS = 14


def _plant_hours(tmp_path: Path, losses: bool) -> dict:
    """Hourly consumption (counter differences), production and mean outdoor temperature."""
    path = tmp_path / "plant.yaml"
    path.write_text(PLANT.format(overspend_start="2026-01-26T00:00:00Z"))
    spec = load_plant(path)
    engine = Engine(spec.plant, spec.profiles, losses=losses, file=spec.file)
    assert engine.end is not None
    counters: dict[str, list[float]] = {m: [] for m in COUNTERS}
    produced, temps, hour_temps, stamps = [], [], [], []
    t = engine.start
    while t <= engine.end:
        engine.advance_to(t)
        if (t - engine.start) % HOUR == 0:
            stamps.append(int(t))
            for m, col in COUNTERS.items():
                counters[m].append(engine.values(m, t)[col])
            produced.append(engine.values("prod_line", t)["produced_units"])
            if hour_temps:
                temps.append(float(np.mean(hour_temps)))
                hour_temps = []
        hour_temps.append(engine.values("outdoor", t)["outdoor_temperature_c"])
        t += engine.step_s
    return {
        "ts": np.array(stamps[:-1], dtype=np.int64),
        "y": {m: np.diff(np.array(v)) for m, v in counters.items()},
        "P": np.diff(np.array(produced)),
        "T": np.array(temps),
        "truth": engine.truth(),
        "meters": engine.manifest(),
    }


def _run_plant(data: dict) -> dict[str, list]:
    ts, P, T = data["ts"], data["P"], data["T"]
    fit = ts < ts[0] + BASELINE_DAYS * 86400
    found = {}
    for m in COUNTERS:
        info = MeterInfo.from_manifest(m, data["meters"][m])
        model = fit_baseline(
            ts[fit], data["y"][m][fit], temperature=T[fit], production=P[fit], meter=m,
            unit=info.unit, config=BaselineConfig(timezone="Europe/Vienna"),
        )  # fmt: skip
        res = detect_overspend(
            model, info, ts[~fit], data["y"][m][~fit], temperature=T[~fit], production=P[~fit]
        )
        found[m] = res.events
    return found


def test_plant_overspend_and_drift_are_found_and_quantified(tmp_path: Path) -> None:
    data = _plant_hours(tmp_path, losses=True)
    found = _run_plant(data)
    truth = {e["meter"]: e for e in data["truth"]["events"] if "excess" in e}

    over = truth["el_packaging"]
    start = _epoch(over["start"])
    events = found["el_packaging"]
    assert len(events) == 1, [e.explanation for e in events]
    ev = events[0]
    assert ev.type is EventType.OVERSPEND and ev.severity is Severity.ALARM
    assert abs(ev.start.timestamp() - start) <= 86400
    assert ev.end is not None and ev.end.timestamp() <= _epoch(over["end"]) + 86400
    assert ev.excess == pytest.approx(over["excess"], rel=0.30)
    assert ev.cost == pytest.approx(ev.excess * 0.21)
    assert ev.co2_kg == pytest.approx(ev.excess * 0.28)
    assert ev.unit == "kWh"
    assert ev.explanation.startswith(f"el_packaging used {ev.excess:,.0f} kWh (+")
    assert "more than its baseline predicts from 2026-01-26 0" in ev.explanation
    assert ev.explanation.endswith(f"about {ev.cost:,.0f} EUR")

    drift = truth["steam_pasteuriser"]
    events = found["steam_pasteuriser"]
    assert events, "the pasteuriser's fouling went unnoticed"
    assert all(e.start.timestamp() >= _epoch(drift["start"]) for e in events)
    assert events[0].start.timestamp() - _epoch(drift["start"]) <= 4 * 86400
    assert sum(e.excess for e in events) == pytest.approx(drift["excess"], rel=0.30)
    assert events[-1].end is None  # the drift is still growing when the data ends


def test_plant_without_losses_raises_no_overspend(tmp_path: Path) -> None:
    found = _run_plant(_plant_hours(tmp_path, losses=False))
    assert found == {"el_packaging": [], "steam_pasteuriser": []}


def _epoch(text: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --------------------------------------------------------------------------- streaming


def _synthetic_meter(days: int = 70, seed: int = 0) -> dict:
    """Hourly meter with a production-driven load and an overspend in the last weeks."""
    rng = np.random.default_rng(seed)
    n = 24 * days
    ts = (MONDAY + HOUR * np.arange(n)).astype(np.int64)
    hour = (ts // HOUR) % 24
    weekday = ((ts // 86400) + 3) % 7
    P = np.where((hour >= 6) & (hour < 22) & (weekday < 5), 1000 + rng.normal(0, 50, n), 0.0)
    T = 5 + 5 * np.sin(2 * np.pi * np.arange(n) / (24 * 30)) + rng.normal(0, 1, n)
    y = 5 + 0.03 * P + rng.normal(0, 0.5, n) * (1 + P / 500)
    y[24 * 49 : 24 * 54] += 0.01 * P[24 * 49 : 24 * 54]  # Mon-Fri of +33 % specific use
    y[24 * 63 : 24 * 64] = np.nan  # a day without data
    return dict(ts=ts, y=y, P=P, T=T)


def test_streaming_equals_batch_and_survives_snapshots() -> None:
    d = _synthetic_meter()
    fit = slice(0, 24 * 35)
    rest = slice(24 * 35, None)
    meter = MeterInfo("line", "kWh", price_per_unit=0.2, co2_kg_per_unit=0.3)
    model = fit_baseline(d["ts"][fit], d["y"][fit], production=d["P"][fit], meter="line",
                         unit="kWh")  # fmt: skip
    batch = detect_overspend(model, meter, d["ts"][rest], d["y"][rest], production=d["P"][rest])
    assert [e.end is not None for e in batch.events] == [True]

    det = OverspendDetector(model, meter)
    streamed, scores = [], []
    for i, (t, y, p) in enumerate(zip(d["ts"][rest], d["y"][rest], d["P"][rest], strict=True)):
        x = Point(int(t), float(y), production=float(p))
        peek = det.score_one(x)
        scores.append(det.update_one(x))
        assert scores[-1] == peek
        if i % 97 == 0:  # through JSON, as the service's checkpoints do
            det = OverspendDetector.restore(json.loads(json.dumps(det.snapshot())))
        streamed += det.drain_events()
    closed = [e for e in streamed if e.end is not None]
    opened = [e for e in streamed if e.end is None]
    assert closed == batch.events
    assert len(opened) == 1 and opened[0].start == closed[0].start
    np.testing.assert_allclose(scores, batch.cusum / OverspendConfig().h_sigma, rtol=1e-12)


def test_snapshot_restore_rejects_other_detectors_and_versions() -> None:
    d = _synthetic_meter(40)
    model = fit_baseline(d["ts"], d["y"], production=d["P"], unit="kWh")
    det = OverspendDetector(model, MeterInfo("line", "kWh"))
    snap = det.snapshot()
    with pytest.raises(ValueError, match="start a fresh detector"):
        OverspendDetector.restore({**snap, "version": 2})
    with pytest.raises(ValueError, match="start a fresh detector"):
        OverspendDetector.restore({**snap, "detector": "spike"})
    with pytest.raises(ValueError, match="state has 3 values"):
        OverspendDetector.restore({**snap, "state": [0.0, 0.0, 0.0]})
    assert det.warmup == 0


def test_open_alert_is_reported_with_end_none() -> None:
    d = _synthetic_meter()
    model = fit_baseline(d["ts"][: 24 * 35], d["y"][: 24 * 35], production=d["P"][: 24 * 35],
                         unit="kWh")  # fmt: skip
    cut = slice(24 * 35, 24 * 53)  # ends inside the overspend week
    res = detect_overspend(model, MeterInfo("line", "kWh", price_per_unit=0.2),
                           d["ts"][cut], d["y"][cut], production=d["P"][cut])  # fmt: skip
    assert len(res.events) == 1
    ev = res.events[0]
    assert ev.end is None and ev.is_open and ev.excess > 0
    assert " since 2026-" in ev.explanation
    assert ev.score >= 1.0


def test_meter_without_price_gets_no_money() -> None:
    d = _synthetic_meter()
    model = fit_baseline(d["ts"][: 24 * 35], d["y"][: 24 * 35], production=d["P"][: 24 * 35],
                         unit="kWh")  # fmt: skip
    res = detect_overspend(model, MeterInfo("line", "kWh"), d["ts"][24 * 35 :],
                           d["y"][24 * 35 :], production=d["P"][24 * 35 :])  # fmt: skip
    ev = res.events[0]
    assert ev.cost is None and ev.co2_kg is None and "EUR" not in ev.explanation
    assert math.isfinite(ev.excess)


def test_clear_errors() -> None:
    d = _synthetic_meter(40)
    model = fit_baseline(d["ts"], d["y"], production=d["P"], unit="kWh")
    with pytest.raises(ValueError, match="fit the baseline on the meter's counter unit"):
        OverspendDetector(model, MeterInfo("line", "MWh"))
    with pytest.raises(ValueError, match="pass production="):
        detect_overspend(model, MeterInfo("line", "kWh"), d["ts"], d["y"])
    with pytest.raises(ValueError, match="h_sigma"):
        OverspendConfig(h_sigma=0)
    with pytest.raises(ValueError, match="release"):
        OverspendConfig(release=1.0)
    with pytest.raises(ValueError, match="min_close_intervals"):
        OverspendConfig(min_close_intervals=0)
    assert replace(OverspendConfig(), cap=1.0).cap == 1.0
