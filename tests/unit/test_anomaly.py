"""Anomaly detectors: kernels against their plain-Python twins, streaming against batch,
one contract suite over every streaming detector, and detection scored against the virtual
plant's truth (and its loss-free twin)."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors.anomaly import (
    DETECTORS,
    DriftDetector,
    LevelShiftDetector,
    SpikeDetector,
    StuckDetector,
    detect_anomalies,
    detect_drift,
    detect_level_shift,
    detect_spikes,
    detect_stuck,
)
from detectors.events import EventType
from detectors.kernels import anomaly as k
from detectors.meter import MeterInfo
from detectors.streaming import KernelDetector, Point

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import naive
import plantdata

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DAY = 86400
METER = MeterInfo("m", "kWh", resource="electricity", price_per_unit=0.2, co2_kg_per_unit=0.3)
T0 = 1_767_571_200  # 2026-01-05T00:00:00Z, a Monday


def same(a: Any, b: Any, rel: float = 1e-9) -> bool:
    """Equal arrays, NaN where NaN, to a relative tolerance."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(
        np.all((np.isnan(a) & np.isnan(b)) | np.isclose(a, b, rtol=rel, atol=1e-9))
    )


# ----------------------------------------------------------------------------- data


@st.composite
def series(draw: st.DrawFn) -> dict[str, Any]:
    """A meter's intervals: daily rhythm, noise, a step, NaN/inf, flat and zero stretches."""
    interval = draw(st.sampled_from([900, 3600]))
    days = draw(st.integers(0, 16))
    n = days * DAY // interval + draw(st.integers(0, 30))
    t0 = draw(st.integers(0, 3000)) * interval
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    t = t0 + interval * np.arange(n, dtype=np.int64)
    hour = (t % DAY) / 3600
    running = ((hour >= 6) & (hour < 20) & (((t // DAY) + 3) % 7 < 5)).astype(float)
    base = draw(st.sampled_from([0.0, 1.0, 5.0]))
    x = (base + 4 * running) * (
        1 + draw(st.sampled_from([0.0, 0.05, 0.3])) * rng.standard_normal(n)
    )
    if n and draw(st.booleans()):  # a step up some way in
        x[int(n * draw(st.floats(0.2, 0.9))) :] += draw(st.sampled_from([0.5, 3.0, 10.0]))
    if n and draw(st.booleans()):  # ramp
        x *= 1 + draw(st.floats(0, 0.5)) * np.linspace(0, 1, n)
    if n and draw(st.booleans()):  # quantised like a coarse counter
        x = np.round(x * 2) / 2
    if n > 10 and draw(st.booleans()):  # a flat or frozen stretch
        a = int(rng.integers(0, n - 5))
        x[a : a + int(rng.integers(2, max(3, n // 4)))] = draw(st.sampled_from([0.0, 2.0]))
    bad = rng.random(n) < draw(st.sampled_from([0.0, 0.02, 0.2]))
    x[bad] = rng.choice([np.nan, np.inf, -np.inf], bad.sum())
    active = np.where(rng.random(n) < 0.05, np.nan, running)
    production = np.where(running > 0, 100 + 10 * rng.standard_normal(n), 0.0)
    temperature = 5 + 5 * np.sin(np.arange(n) / max(1, DAY // interval) / 3)
    temperature[rng.random(n) < 0.05] = np.nan
    return {
        "t": t, "x": x, "active": active, "production": production,
        "temperature": temperature, "interval": interval,
    }  # fmt: skip


# ----------------------------------------------------------------------------- kernel == twin


@SETTINGS
@given(
    series(),
    st.sampled_from([900, 3600]),
    st.integers(1, 4),
    st.sampled_from([0.0, 0.05]),
    st.sampled_from([0.0, 0.5]),
)
def test_spike_kernel_matches_naive(
    s: dict[str, Any], slot: int, min_count: int, floor_rel: float, floor_abs: float
) -> None:
    cfg = dict(
        slot_s=slot, tow_depth=3, tod_depth=4, min_count=min_count, utc_offset_s=3600,
        floor_rel=floor_rel, floor_abs=floor_abs, warmup_n=5,
    )  # fmt: skip
    scores, diag = SpikeDetector(**cfg).process(s["t"], s["x"])
    want, want_diag = naive.spike(s["t"].tolist(), s["x"].tolist(), **cfg)
    assert same(scores, want)
    assert same(diag, np.asarray(want_diag).reshape(-1, 3))


@SETTINGS
@given(series(), st.integers(1, 3), st.sampled_from([0.0, 0.4]))
def test_stuck_kernel_matches_naive(s: dict[str, Any], min_count: int, eps: float) -> None:
    cfg = dict(
        slot_s=3600, tow_depth=2, tod_depth=3, min_count=min_count, utc_offset_s=0,
        interval_s=s["interval"], eps=eps, warmup_n=10,
    )  # fmt: skip
    scores, diag = StuckDetector(**cfg).process(s["t"], s["x"], s["active"])
    want, want_diag = naive.stuck(s["t"].tolist(), s["x"].tolist(), s["active"].tolist(), **cfg)
    assert same(scores, want)
    assert same(diag, np.asarray(want_diag).reshape(-1, 3))


@SETTINGS
@given(
    series(),
    st.sampled_from([(0.0, 4.0), (22.5, 5.0), (3.0, 3.0)]),
    st.sampled_from(["cusum", "page_hinkley"]),
    st.booleans(),
    st.sampled_from([(3, 2), (6, 4)]),
    st.sampled_from([0.0, 0.2]),
)
def test_level_shift_kernel_matches_naive(
    s: dict[str, Any],
    night: tuple[float, float],
    method: str,
    use_temperature: bool,
    ref: tuple[int, int],
    step_rel: float,
) -> None:
    cfg = dict(
        night_start_h=night[0], night_end_h=night[1], interval_s=s["interval"],
        min_coverage=0.5, ref_nights=ref[0], min_ref=ref[1], step_sigma=2.0,
        step_rel=step_rel, step_abs=0.01, h_steps=2.0, method=method,
        use_temperature=use_temperature,
    )  # fmt: skip
    det = LevelShiftDetector(**cfg)
    scores, diag = det.process(s["t"], s["x"], s["active"], None, s["temperature"])
    want, want_diag = naive.level_shift(
        s["t"].tolist(), s["x"].tolist(), s["active"].tolist(), s["temperature"].tolist(), **cfg
    )
    assert same(scores, want)
    assert same(diag, np.asarray(want_diag).reshape(-1, 10))


@SETTINGS
@given(series(), st.booleans(), st.sampled_from([(2, 2), (3, 4)]), st.integers(1, 2))
def test_drift_kernel_matches_naive(
    s: dict[str, Any], use_production: bool, days: tuple[int, int], confirm: int
) -> None:
    cfg = dict(
        utc_offset_s=3600, interval_s=s["interval"], min_coverage=0.5, ref_days=days[0],
        window_days=days[1], min_rel=0.05, confirm_days=confirm,
        use_production=use_production, min_production=10.0,
    )  # fmt: skip
    scores, diag = DriftDetector(**cfg).process(s["t"], s["x"], None, s["production"])
    want, want_diag = naive.drift(s["t"].tolist(), s["x"].tolist(), s["production"].tolist(), **cfg)
    assert same(scores, want)
    assert same(diag, np.asarray(want_diag).reshape(-1, 5))


# ----------------------------------------------------------------------------- contract

FACTORIES: dict[str, Callable[[], KernelDetector]] = {
    "spike": lambda: SpikeDetector(slot_s=3600, min_count=2),
    "stuck": lambda: StuckDetector(interval_s=900, min_count=2),
    "level_shift": lambda: LevelShiftDetector(min_ref=3, use_temperature=True),
    "level_shift_ph": lambda: LevelShiftDetector(min_ref=3, method="page_hinkley"),
    "drift": lambda: DriftDetector(ref_days=3, window_days=3, use_production=True),
}
assert {f().name for f in FACTORIES.values()} == {d.name for d in DETECTORS}


def points(s: dict[str, Any]) -> list[Point]:
    return [
        Point(int(t), float(x), float(a), float(p), float(c))
        for t, x, a, p, c in zip(
            s["t"], s["x"], s["active"], s["production"], s["temperature"], strict=True
        )
    ]


def batch(det: KernelDetector, s: dict[str, Any]) -> np.ndarray:
    scores, _ = det.process(s["t"], s["x"], s["active"], s["production"], s["temperature"])
    return scores


@pytest.fixture(scope="module")
def month() -> dict[str, Any]:
    """Twenty days of a plant-like meter at 15 min, with a leak from day 12, and a gap."""
    rng = np.random.default_rng(5)
    n = 20 * 96
    t = 1767571200 + 900 * np.arange(n, dtype=np.int64)  # 2026-01-05 (a Monday)
    hour = (t % DAY) / 3600
    running = ((hour >= 5) & (hour < 21) & (((t // DAY) + 3) % 7 < 5)).astype(float)
    x = (1.0 + 6 * running) * (1 + 0.05 * rng.standard_normal(n)) / 4
    x[12 * 96 :] += 0.25
    x[300:310] = np.nan
    return {
        "t": t, "x": x, "active": running, "production": 300 * running,
        "temperature": 4 + 3 * np.sin(np.arange(n) / 150), "interval": 900,
    }  # fmt: skip


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_streaming_equals_batch(name: str, month: dict[str, Any]) -> None:
    det = FACTORIES[name]()
    streamed = []
    for p in points(month):
        streamed.append(det.score_one(p))
        det.learn_one(p)
    assert np.array_equal(streamed, batch(FACTORIES[name](), month))
    one_step = FACTORIES[name]()
    assert np.array_equal([one_step.update_one(p) for p in points(month)], streamed)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_update_one_gives_the_batch_diagnostics_in_its_own_buffers(
    name: str, month: dict[str, Any]
) -> None:
    """One streaming step allocates nothing: the same buffers every call, the batch's rows."""
    det = FACTORIES[name]()
    buffers = (det._io_t, det._io, det._out_row, det._work)
    rows = []
    for p in points(month):
        det.update_one(p)
        rows.append(det.diagnostics)
    assert all(a is b for a, b in zip(buffers, (det._io_t, det._io, det._out_row, det._work),
                                      strict=True))  # fmt: skip
    _, want = FACTORIES[name]().process(
        month["t"], month["x"], month["active"], month["production"], month["temperature"]
    )
    assert np.array_equal(np.array(rows), want, equal_nan=True)


@SETTINGS
@given(st.lists(st.booleans(), max_size=30))
def test_true_runs_match_plain_python(mask: list[bool]) -> None:
    starts, stops = k._true_runs(np.array(mask, dtype=np.bool_))
    want = []
    i = 0
    while i < len(mask):
        if mask[i]:
            j = i
            while j < len(mask) and mask[j]:
                j += 1
            want.append((i, j))
            i = j
        else:
            i += 1
    assert list(zip(starts.tolist(), stops.tolist(), strict=True)) == want


@SETTINGS
@given(st.lists(st.integers(-5, 5), max_size=20), st.integers(0, 3))
def test_on_grid_matches_plain_python(steps: list[int], step: int) -> None:
    t = np.cumsum([0, *steps]).astype(np.int64) * 900 if steps else np.zeros(0, np.int64)
    want = all(b - a == step * 900 for a, b in itertools.pairwise(t.tolist()))
    assert k._on_grid(t, step * 900) == want
    assert k._on_grid(900 * step * np.arange(len(steps) + 1, dtype=np.int64), step * 900)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_contract_deterministic(name: str, month: dict[str, Any]) -> None:
    assert np.array_equal(batch(FACTORIES[name](), month), batch(FACTORIES[name](), month))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_contract_snapshot_restore_continues_identically(name: str, month: dict[str, Any]) -> None:
    whole = batch(FACTORIES[name](), month)
    cut = len(month["t"]) // 2 + 7
    first = {k: v[:cut] if isinstance(v, np.ndarray) else v for k, v in month.items()}
    rest = {k: v[cut:] if isinstance(v, np.ndarray) else v for k, v in month.items()}
    det = FACTORIES[name]()
    batch(det, first)
    state = json.loads(json.dumps(det.snapshot(), allow_nan=False))  # strict JSON
    again = type(det).restore(state)
    assert np.array_equal(batch(again, rest), whole[cut:])
    with pytest.raises(ValueError, match="snapshot"):
        type(det).restore({**state, "version": 99})


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_contract_warmup_scores_zero(name: str, month: dict[str, Any]) -> None:
    det = FACTORIES[name]()
    scores = batch(det, month)
    assert det.warmup > 0
    assert np.all(scores[: det.warmup] == 0)
    assert np.all(scores >= 0) and np.all(np.isfinite(scores))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_contract_score_one_does_not_learn(name: str, month: dict[str, Any]) -> None:
    det = FACTORIES[name]()
    ps = points(month)
    for p in ps[:500]:
        det.learn_one(p)
    before = det.snapshot()
    first = [det.score_one(p) for p in ps[500:600]]
    assert det.snapshot() == before
    assert [det.score_one(p) for p in ps[500:600]] == first


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_contract_better_than_chance(name: str, month: dict[str, Any]) -> None:
    """Scores are higher where each detector's kind of anomaly was put than elsewhere."""
    s = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in month.items()}
    n = len(s["t"])
    label = np.zeros(n, dtype=bool)
    kind = FACTORIES[name]().name
    if kind == "spike":
        at = np.arange(5 * 96 + 40, n, 97)
        s["x"][at] *= 4
        label[at] = True
    elif kind == "stuck":
        s["x"][15 * 96 + 24 : 15 * 96 + 60] = 0.0
        label[15 * 96 + 30 : 15 * 96 + 60] = True
    elif kind == "level_shift":
        label[14 * 96 :] = True  # the leak from day 12, once seen for two nights
    else:
        s["x"] *= 1 + 0.6 * np.clip((np.arange(n) - 8 * 96) / (12 * 96), 0, None)
        label[17 * 96 :] = True
    scores = batch(FACTORIES[name](), s)
    assert scores[label].mean() > scores[~label].mean() + 0.5


def test_unknown_snapshot_is_refused() -> None:
    state = SpikeDetector().snapshot()
    with pytest.raises(ValueError, match="not a stuck detector snapshot"):
        StuckDetector.restore(state)


def test_empty_and_single_point() -> None:
    for det in (f() for f in FACTORIES.values()):
        scores, diag = det.process(np.zeros(0, dtype=np.int64), np.zeros(0))
        assert scores.shape == (0,) and diag.shape[0] == 0
        assert det.score_one(Point(0, 1.0)) == 0.0
    empty = np.zeros(0, dtype=np.int64)
    assert detect_spikes(empty, np.zeros(0), meter=METER).events == ()
    assert detect_level_shift(empty, np.zeros(0), meter=METER).events == ()
    assert detect_stuck(empty, np.zeros(0), meter=METER).events == ()
    assert detect_drift(empty, np.zeros(0), meter=METER).events == ()


def test_constant_series_gives_no_events() -> None:
    t = 900 * np.arange(30 * 96, dtype=np.int64)
    for x in (np.zeros(t.size), np.full(t.size, 2.5)):
        assert detect_spikes(t, x, meter=METER).events == ()
        assert detect_level_shift(t, x, meter=METER).events == ()
        assert detect_drift(t, x, meter=METER).events == ()
        scores, _ = SpikeDetector().process(t, x)
        assert np.all(scores == 0)


def test_bad_inputs_say_how_to_fix() -> None:
    with pytest.raises(ValueError, match="regular grid"):
        detect_spikes(np.array([0, 900, 2000]), [1.0, 2.0, 3.0], meter=METER)
    with pytest.raises(ValueError, match="slot_s must divide a day"):
        SpikeDetector(slot_s=7000)
    with pytest.raises(ValueError, match="method"):
        LevelShiftDetector(method="ewma")
    with pytest.raises(TypeError, match="epoch seconds"):
        SpikeDetector().process(np.array([0.5]), [1.0])


def test_kernels_run_as_plain_python() -> None:
    """With NUMBA_DISABLE_JIT=1 every kernel is ordinary Python and still matches its twin."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        import numpy as np, naive, numba
        assert numba.config.DISABLE_JIT
        from detectors.anomaly import SpikeDetector, StuckDetector, LevelShiftDetector
        from detectors.anomaly import DriftDetector
        from detectors.clean import clean_counter
        t = 900 * np.arange(6 * 96, dtype=np.int64)
        x = 1 + (np.arange(t.size) % 96 > 40) + (np.arange(t.size) > 400)
        x = x.astype(float); x[7] = np.nan
        act = (np.arange(t.size) % 96 > 40).astype(float)
        s, _ = SpikeDetector(min_count=2).process(t, x)
        cfg = SpikeDetector(min_count=2).config_dict()
        assert np.allclose(s, naive.spike(t.tolist(), x.tolist(), **cfg)[0])
        s, _ = StuckDetector(min_count=2).process(t, x, act)
        cfg = StuckDetector(min_count=2).config_dict()
        assert np.allclose(s, naive.stuck(t.tolist(), x.tolist(), act.tolist(), **cfg)[0])
        d = LevelShiftDetector(min_ref=2)
        s, _ = d.process(t, x, act)
        w = naive.level_shift(t.tolist(), x.tolist(), act.tolist(), [np.nan] * t.size,
                              **d.config_dict())[0]
        assert np.allclose(s, w)
        d = DriftDetector(ref_days=1, window_days=2)
        s, _ = d.process(t, x)
        assert np.allclose(s, naive.drift(t.tolist(), x.tolist(), [0.0] * t.size,
                                          **d.config_dict())[0])
        r = clean_counter(np.arange(0, 4000, 60), np.arange(0, 4000, 60) / 60.0 % 50)
        assert r.total > 0
        print("ok")
        """
    )
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def _week_of_load(saturday: str) -> tuple[np.ndarray, np.ndarray]:
    """Eight days from a Monday, 15-min kWh: weekdays 40 from 06:00 to 22:00, else 10."""
    t = T0 + 900 * np.arange(8 * 96, dtype=np.int64)
    hour, day = (t - T0) % 86400 / 3600, (t - T0) // 86400
    x = np.where((hour >= 6) & (hour < 22) & (day < 5), 40.0, 10.0)
    sat = day == 5
    if saturday == "like weekdays":
        x[sat & (hour >= 6) & (hour < 22)] = 40.0
    elif saturday == "short shift":
        x[sat & (hour >= 6) & (hour < 12)] = 25.0
    elif saturday == "spike":
        x[sat & (hour >= 11) & (hour < 11.5)] = 25.0
    rng = np.random.default_rng(3)
    return t, x * (1 + 0.02 * rng.standard_normal(t.size))


@pytest.mark.parametrize(
    ("saturday", "spikes"), [("spike", 1), ("like weekdays", 0), ("short shift", 0)]
)
def test_spike_on_the_first_weekend_without_history(saturday: str, spikes: int) -> None:
    """No weekend profile yet: the hours before stand in, unless the interval looks like
    weekdays at that time; a rise that stays up (a shift) is no spike."""
    t, x = _week_of_load(saturday)
    events = detect_spikes(t, x, meter=METER, interval_s=900).events
    assert len(events) == spikes, [e.explanation for e in events]
    if spikes:
        assert events[0].start.timestamp() == T0 + 5 * 86400 + 11 * 3600
        assert events[0].excess == pytest.approx(2 * 15.0, rel=0.2)
    # streaming scores (the service's alerts) cannot wait for a return: a Saturday like the
    # weekdays stays quiet, a first short Saturday shift does score at its start
    scores, _ = SpikeDetector().process(t, x)
    saturday_scores = scores[(t - T0) // 86400 == 5]
    assert (saturday_scores.max() >= 6.0) == (saturday == "spike" or saturday == "short shift")


@pytest.mark.parametrize("onset_day", [12.0, 30.0, 41.5])
def test_drift_start_is_where_the_ramp_begins(onset_day: float) -> None:
    """Flat days between the reference and a ramp must not pull the start early."""
    per_day, days = 96, 60
    t = T0 + 900 * np.arange(days * per_day, dtype=np.int64)
    rng = np.random.default_rng(int(onset_day))
    base = 10.0 * (1 + 0.03 * rng.standard_normal(t.size))
    ramp = 0.01 * np.maximum(0.0, np.arange(t.size) / per_day - onset_day)
    events = detect_drift(t, base * (1 + ramp), meter=METER, interval_s=900).events
    assert [e.type for e in events] == [EventType.DRIFT]
    start_error_h = (events[0].start.timestamp() - (T0 + onset_day * 86400)) / 3600
    assert abs(start_error_h) <= 24, events[0].explanation
    assert events[0].excess == pytest.approx(float(np.sum(base * ramp)), rel=0.15)


# ----------------------------------------------------------------------------- plant truth

SCORED = ["water_main", "steam_main", "el_compressed_air", "prod_line", "outdoor"]
NIGHT = (22.5, 5.0)  # UTC: after the 23:15 local CIP, before the 06:00 local shift


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> dict[str, plantdata.PlantRun]:
    """The demo's leak, steam trap and base-load rise on its 30 days, simulated at 10 min."""
    base = tmp_path_factory.mktemp("plant")
    plant_file = plantdata.small_demo(base, meters=SCORED, days=30, step_s=600)
    runs = {}
    for name, losses in (("losses", True), ("clean", False)):
        out = plantdata.simulate(plant_file, base / name, losses=losses, interval_s=600)
        runs[name] = plantdata.load_run(out)
    return runs


def events_of(run: plantdata.PlantRun, meter: str) -> list[Any]:
    return detect_anomalies(
        run.consumption[meter],
        run.meters[meter],
        active=run.active,
        production=run.production,
        temperature=run.temperature,
        night_hours_utc=NIGHT,
        utc_offset_s=3600,
    )


@pytest.mark.parametrize(
    ("meter", "kind"),
    [
        ("water_main", EventType.BASE_LOAD_RISE),
        ("steam_main", EventType.LEVEL_SHIFT),
        ("el_compressed_air", EventType.BASE_LOAD_RISE),
    ],
)
def test_injected_losses_are_found(
    plant: dict[str, plantdata.PlantRun], meter: str, kind: EventType
) -> None:
    run = plant["losses"]
    truth = next(e for e in run.truth["events"] if e["meter"] == meter and "excess" in e)
    events = events_of(run, meter)
    assert [e.type for e in events] == [kind], [e.explanation for e in events]
    event = events[0]
    start = np.datetime64(truth["start"].rstrip("Z"), "s").astype(np.int64)
    assert abs(event.start.timestamp() - start) <= 3 * 3600, event.explanation
    assert event.excess == pytest.approx(truth["excess"], rel=0.3), event.explanation
    if truth["end"] is None:
        assert event.end is None
    elif event.end is not None:  # the repair is seen in the nights after it (or not yet)
        end = np.datetime64(truth["end"].rstrip("Z"), "s").astype(np.int64)
        assert abs(event.end.timestamp() - end) <= 12 * 3600
    assert event.unit == truth["unit"]
    assert event.cost == pytest.approx(event.excess * run.meters[meter].price_per_unit)
    assert meter in event.explanation and "/day" in event.explanation


@pytest.mark.parametrize("meter", ["water_main", "steam_main", "el_compressed_air"])
def test_no_false_alarm_without_losses(plant: dict[str, plantdata.PlantRun], meter: str) -> None:
    events = events_of(plant["clean"], meter)
    assert events == [], [e.explanation for e in events]


def test_plant_rollover_is_cleaned(plant: dict[str, plantdata.PlantRun]) -> None:
    run = plant["losses"]
    rollovers = [e for e in run.consumption["prod_line"].events if e.type is EventType.ROLLOVER]
    assert len(rollovers) == 1
    # the same production with and without the wrap, to the counter's unit step
    assert run.consumption["prod_line"].total == pytest.approx(
        plant["clean"].consumption["prod_line"].total, abs=2.0
    )
    assert math.isfinite(run.production[100])


@pytest.mark.parametrize("n", [7, 8])
def test_sorting_networks_sort_every_input(n: int) -> None:
    """0/1 principle: a comparator network sorting every 0/1 input sorts every input."""
    for bits in itertools.product((0.0, 1.0), repeat=n):
        buf = np.array(bits)
        assert k._sorted_median(buf, n) == naive_median(list(bits))
        assert buf.tolist() == sorted(bits)
    rng = np.random.default_rng(n)
    for _ in range(200):
        values = rng.integers(0, 4, n).astype(float)  # ties too
        buf = values.copy()
        assert k._sorted_median(buf, n) == naive_median(values.tolist())
        assert buf.tolist() == sorted(values.tolist())


def naive_median(values: list[float]) -> float:
    import statistics

    return float(statistics.median(values))
