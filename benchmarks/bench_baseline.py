"""Baseline fits and the overspend CUSUM: numba against plain Python and numpy.linalg.lstsq.

Data: 50 synthetic meters x 3 years hourly (26,280 intervals each) with an hour-of-week
shape, production (specific consumption plus a running load) and heating/cooling degree
terms. Printed, each against a named baseline in one run:

1. ``fit_baseline`` per meter (the whole model selection: every term combination and
   balance-point pair, ~1,400 candidate models) against (a) ``numpy.linalg.lstsq`` fitting
   the same candidates on the dense design and (b) the plain-Python twin
   (``tests/naive_baseline.py``). Both are far too slow to run in full, so each is timed on
   a few candidates (the twin on a slice of rows) and scaled by candidates (and rows, its
   cost being linear in them); the scaled figures are marked "est.".
2. One fixed model (a single candidate): numba accumulate + solve against one
   ``numpy.linalg.lstsq`` on its dense design, both timed in full.
3. The overspend CUSUM over all 1.3 M intervals: the numba kernel against the plain-Python
   twin (timed on 5 meters, scaled), plus ``detect_overspend`` end to end (prediction and
   CUSUM) and the streaming detector one interval at a time.

The first fit's time (numba compiling, or loading its on-disk cache) is reported apart.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from naive_baseline import naive_cusum, naive_fit  # noqa: E402

from detectors.baseline import BaselineConfig, fit_baseline, tz_offsets  # noqa: E402
from detectors.kernels import overspend as okern  # noqa: E402
from detectors.kernels.baseline import _accumulate, _fit_candidate, _time_groups  # noqa: E402
from detectors.meter import MeterInfo  # noqa: E402
from detectors.overspend import OverspendConfig, OverspendDetector, detect_overspend  # noqa: E402
from detectors.streaming import Point  # noqa: E402

METERS = 50
YEARS = 3
HOUR = 3600
T0 = 1_672_617_600  # 2023-01-02T00:00:00Z, a Monday


def synthetic(meters: int = METERS, years: int = YEARS) -> dict[str, Any]:
    """Timestamps, temperature, production and one consumption series per meter."""
    rng = np.random.default_rng(2026)
    n = 8760 * years
    t = T0 + HOUR * np.arange(n, dtype=np.int64)
    day = np.arange(n) / 24
    hour = (t // HOUR) % 24
    weekday = ((t // 86400) + 3) % 7
    temp = 10 - 10 * np.cos(2 * np.pi * day / 365.25) + 4 * np.sin(2 * np.pi * (hour - 9) / 24)
    temp += np.cumsum(rng.normal(0, 0.3, n)) * 0.1 + rng.normal(0, 1.5, n)
    shift = (hour >= 6) & (hour < 22) & (weekday < 5)
    prod = np.where(shift & (rng.random(n) > 0.05), 1200 * (1 + 0.05 * rng.normal(size=n)), 0.0)
    ys = []
    for _ in range(meters):
        base, running, per_unit = rng.uniform(5, 50), rng.uniform(10, 100), rng.uniform(0, 0.05)
        heat, cool = rng.uniform(0, 3), rng.uniform(0, 2)
        hb, cb = rng.integers(10, 17), rng.integers(18, 24)
        y = base + running * (prod > 0) + per_unit * prod
        y += heat * np.maximum(0, hb - temp) + cool * np.maximum(0, temp - cb)
        ys.append(y * (1 + 0.04 * rng.normal(size=n)))
    return {"t": t, "T": temp, "P": prod, "y": ys}


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def dense_design(t: np.ndarray, T: np.ndarray, P: np.ndarray, heat_c: float | None,
                 cool_c: float | None) -> np.ndarray:  # fmt: skip
    """One-hot hour of week, production, running, degree terms: the numpy baseline's X."""
    g = _time_groups(t, np.zeros(t.size, dtype=np.int64), HOUR, False)
    cols = [np.eye(168)[g], P[:, None], (P > 0).astype(float)[:, None]]
    if heat_c is not None:
        cols.append(np.maximum(0, heat_c - T)[:, None])
    if cool_c is not None:
        cols.append(np.maximum(0, T - cool_c)[:, None])
    return np.hstack(cols)


def bench_fit(d: dict[str, Any]) -> None:
    t, T, P, ys = d["t"], d["T"], d["P"], d["y"]
    n = t.size
    first = timed(lambda: fit_baseline(t[:2000], ys[0][:2000], temperature=T[:2000],
                                       production=P[:2000]))  # fmt: skip
    print(f"first fit (numba compile or cache load): {first:.2f} s")

    models = []
    started = time.perf_counter()
    for y in ys:
        models.append(fit_baseline(t, y, temperature=T, production=P))
    ours = (time.perf_counter() - started) / len(ys)
    cands = models[0].stats.candidates
    cfg_cv = BaselineConfig(selection="cv")
    ours_cv = timed(lambda: fit_baseline(t, ys[0], temperature=T, production=P, config=cfg_cv))
    right = sum(m.heating_balance_c is not None and m.cooling_balance_c is not None for m in models)
    print(
        f"fit_baseline, {len(ys)} meters x {n} hourly intervals, {cands} candidates each: "
        f"{1000 * ours:.1f} ms per meter ({1000 * ours / YEARS:.1f} ms per meter-year), "
        f"{len(ys) * n / (ours * len(ys)) / 1e6:.1f} M intervals/s; with 5-fold CV "
        f"{1000 * ours_cv:.0f} ms; heating and cooling found in {right}/{len(ys)}"
    )

    # (a) numpy.linalg.lstsq on the dense design, a few candidates, scaled to all
    sample = [(None, None), (15.0, None), (12.0, 20.0)]
    started = time.perf_counter()
    for hb, cb in sample:
        X = dense_design(t, T, P, hb, cb)
        np.linalg.lstsq(X, ys[0], rcond=None)
    per_cand = (time.perf_counter() - started) / len(sample)
    numpy_fit = per_cand * cands
    print(
        f"  numpy.linalg.lstsq, same candidates on the dense design: {per_cand:.2f} s per "
        f"candidate, est. {numpy_fit:.0f} s per meter -> numba {numpy_fit / ours:,.0f}x faster"
    )

    # (b) the plain-Python twin on a slice of rows, scaled by rows and candidates
    rows = 336
    w = [1.0] * rows
    g = _time_groups(t[:rows], np.zeros(rows, dtype=np.int64), HOUR, False).tolist()
    Z = np.column_stack([P[:rows], (P[:rows] > 0)]).tolist()
    naive = timed(lambda: naive_fit(g, ys[0][:rows].tolist(), w, Z, T[:rows].tolist(), 168,
                                    [True, True], 15.0, None, True))  # fmt: skip
    naive_fit_s = naive * (n / rows) * cands
    print(
        f"  plain-Python twin: {naive:.2f} s for one candidate on {rows} rows, est. "
        f"{naive_fit_s / 3600:,.0f} h per meter -> numba {naive_fit_s / ours:,.0f}x faster"
    )

    # one fixed model: accumulate + one solve against one dense lstsq
    grid = np.array([15.0, 21.0])
    groups = _time_groups(t, tz_offsets(t, "UTC"), HOUR, False)
    Zf = np.ascontiguousarray(np.column_stack([P, (P > 0).astype(float)]))
    fold = np.zeros(n, dtype=np.int64)
    ones = np.ones(n)
    zmask = np.array([True, True])

    def one_numba() -> None:
        st = _accumulate(groups, ys[0], ones, Zf, T, grid, 168, fold, 1)
        _fit_candidate(st, zmask, 0, 1, grid, 0.0, 1e-9)

    one_numba()
    reps = 20
    ours_one = timed(lambda: [one_numba() for _ in range(reps)]) / reps
    X = dense_design(t, T, P, 15.0, 21.0)
    numpy_one = timed(lambda: np.linalg.lstsq(X, ys[0], rcond=None))
    print(
        f"one fixed model ({X.shape[1]} coefficients): numba {1000 * ours_one:.2f} ms, "
        f"numpy.linalg.lstsq {1000 * numpy_one:.0f} ms (design built beforehand) -> "
        f"{numpy_one / ours_one:,.0f}x"
    )


def bench_cusum(d: dict[str, Any]) -> None:
    t, T, P, ys = d["t"], d["T"], d["P"], d["y"]
    n = t.size
    fit = slice(0, 8760)
    rest = slice(8760, None)
    cfg = OverspendConfig()
    params = cfg.vector()
    series = []
    for i, y in enumerate(ys):
        model = fit_baseline(t[fit], y[fit], temperature=T[fit], production=P[fit], unit="kWh",
                             meter=f"m{i}")  # fmt: skip
        e = model.predict(t[rest], T[rest], P[rest])
        series.append((model, y[rest] * 1.0, e, model.prediction_std(e, long_run=True)))
    tf = t[rest].astype(np.float64)
    m = tf.size
    okern._run(okern._new_state(), tf[:10], *(a[:10] for a in series[0][1:]), params)
    started = time.perf_counter()
    for _, y, e, s in series:
        okern._run(okern._new_state(), tf, y, e, s, params)
    ours = time.perf_counter() - started
    total = m * len(series)
    few = 5
    started = time.perf_counter()
    for _, y, e, s in series[:few]:
        naive_cusum(tf.tolist(), y.tolist(), e.tolist(), s.tolist(), params[0], params[1],
                    params[2], params[3], int(params[4]), params[5], params[6])  # fmt: skip
    naive = (time.perf_counter() - started) * len(series) / few
    print(
        f"CUSUM kernel, {len(series)} meters x {m} intervals: {1000 * ours:.1f} ms "
        f"({total / ours / 1e6:.0f} M intervals/s); plain-Python twin est. {naive:.1f} s "
        f"-> {naive / ours:,.0f}x"
    )
    meter = MeterInfo("m0", "kWh", price_per_unit=0.2)
    model = series[0][0]
    whole = timed(lambda: detect_overspend(model, meter, t[rest], ys[0][rest],
                                           temperature=T[rest], production=P[rest]))  # fmt: skip
    det = OverspendDetector(model, meter, cfg)
    k = 2000
    points = [Point(int(t[8760 + i]), float(ys[0][8760 + i]), production=float(P[8760 + i]),
                    temperature=float(T[8760 + i])) for i in range(k)]  # fmt: skip
    stream = timed(lambda: [det.update_one(x) for x in points]) / k
    print(
        f"detect_overspend (predict + CUSUM), one meter x {m} intervals: {1000 * whole:.1f} ms; "
        f"streaming update_one: {1e6 * stream:.0f} us per interval "
        f"({1 / stream:,.0f} intervals/s) -> batch {stream * m / whole:,.0f}x per interval"
    )
    _ = n


def main() -> None:
    d = synthetic()
    bench_fit(d)
    bench_cusum(d)


if __name__ == "__main__":
    main()
