"""Cleaning throughput: counter readings per second turned into 15-min consumption.

Data: 50 meters x 1 year of 1-minute readings (26 million), synthetic: a daily rhythm,
noise, NaN readings, repeated and swapped timestamps, a register wrap and a meter reset.
Baselines, in one run:

* numpy: a straightforward vectorised cleaner (stable sort, last duplicate wins, wraps
  undone by adding the register size, consumption from ``np.interp`` of the cumulative
  counter at the interval edges). It handles less (no resets, glitches or gaps) but does
  the same sorting and resampling work.
* naive: the plain-Python twins in ``tests/naive.py`` on a 2,000-reading slice (they are
  quadratic by design), against the numba pipeline on the same slice.

Numba compile time is measured separately in fresh processes: once with an empty cache
directory (compiles) and once more with the now-filled one (loads from the cache).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from detectors.clean import clean_counter

REPO = Path(__file__).resolve().parents[1]
METERS = 50
READINGS = 365 * 24 * 60  # one a minute for a year
INTERVAL_S = 900
ROLLOVER = 10_000_000.0
START = 1_767_225_600  # 2026-01-01T00:00:00Z


def meter_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One meter's year of readings (kWh counter), with the usual faults."""
    rng = np.random.default_rng(seed)
    ts = START + 60 * np.arange(READINGS, dtype=np.int64)
    hour = (ts % 86400) / 3600.0
    rate_kw = 40.0 + 60.0 * ((hour > 6) & (hour < 22)) + 5.0 * rng.standard_normal(READINGS)
    counter = 9_000_000.0 + np.cumsum(np.clip(rate_kw, 0, None) / 60.0)
    counter = np.where(counter >= ROLLOVER, counter - ROLLOVER, counter)  # a register wrap
    counter[READINGS * 3 // 4 :] -= counter[READINGS * 3 // 4] - 5.0  # meter replaced
    counter[rng.random(READINGS) < 1e-3] = np.nan
    dup = rng.integers(1, READINGS, READINGS // 10_000)
    ts[dup] = ts[dup - 1]  # repeated timestamps
    swap = rng.integers(1, READINGS - 1, READINGS // 50_000)  # delivered out of order
    ts[swap], ts[swap + 1] = ts[swap + 1].copy(), ts[swap].copy()
    counter[swap], counter[swap + 1] = counter[swap + 1].copy(), counter[swap].copy()
    return ts, counter


def clean_numba(ts: np.ndarray, values: np.ndarray) -> float:
    r = clean_counter(ts, values, interval_s=INTERVAL_S, rollover=ROLLOVER, max_rate_per_h=500)
    return r.total


def clean_numpy(ts: np.ndarray, values: np.ndarray) -> float:
    """The vectorised baseline (see the module docstring)."""
    order = np.argsort(ts, kind="stable")
    t, v = ts[order], values[order]
    last = np.r_[t[1:] != t[:-1], True]  # last of each run of equal timestamps
    t, v = t[last], v[last]
    ok = np.isfinite(v)
    t, v = t[ok], v[ok]
    d = np.diff(v)
    d[d < 0] += ROLLOVER
    cumulative = np.r_[0.0, np.cumsum(d)]
    edges = np.arange(t[0] // INTERVAL_S * INTERVAL_S, t[-1] + INTERVAL_S, INTERVAL_S)
    consumption = np.diff(np.interp(edges, t, cumulative, left=np.nan, right=np.nan))
    return float(np.nansum(consumption))


def clean_naive(ts: np.ndarray, values: np.ndarray) -> float:
    sys.path.insert(0, str(REPO / "tests"))
    import naive

    keep, flags = naive.order_readings(ts.tolist(), values.tolist())
    t = [int(ts[i]) for i in keep]
    v = [float(values[i]) for i in keep]
    segs = naive.counter_segments(t, v, flags, ROLLOVER, 500 / 3600, 0.0, 2700.0, 0.0, 0.0)
    lo = t[0] // INTERVAL_S * INTERVAL_S
    n = (t[-1] - lo) // INTERVAL_S + 1
    cons, _ = naive.resample_segments([s[:4] for s in segs], lo, INTERVAL_S, n)
    return float(np.nansum(cons))


def compile_seconds(cache_dir: str) -> float:
    """Wall time of a fresh process's first clean_counter call with ``cache_dir``."""
    code = (
        "import time, numpy as np\n"
        "from detectors.clean import clean_counter\n"
        "t = time.perf_counter()\n"
        "clean_counter(np.arange(0, 6000, 60), np.arange(100.0), max_rate_per_h=1e4)\n"
        "print(time.perf_counter() - t)\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip())


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        cold = compile_seconds(cache)
        warm = compile_seconds(cache)
    print(f"numba first call: {cold:.1f} s compiling (empty cache), {warm:.2f} s from the cache")

    clean_numba(*meter_data(0))  # load the kernels before timing
    data = [meter_data(seed) for seed in range(METERS)]
    total = METERS * READINGS

    started = time.perf_counter()
    numba_totals = [clean_numba(ts, v) for ts, v in data]
    numba_s = time.perf_counter() - started

    started = time.perf_counter()
    numpy_totals = [clean_numpy(ts, v) for ts, v in data]
    numpy_s = time.perf_counter() - started

    threads = os.cpu_count() or 1
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda d: clean_numba(*d), data))
    threaded_s = time.perf_counter() - started

    # both agree where the numpy cleaner is right (before the reset it cannot handle)
    assert np.all(np.isfinite(numba_totals)) and np.all(np.isfinite(numpy_totals))

    small = meter_data(1)
    ts_small, v_small = small[0][:2000], small[1][:2000]
    reps = 20
    started = time.perf_counter()
    for _ in range(reps):
        fast = clean_numba(ts_small, v_small)
    small_numba_s = (time.perf_counter() - started) / reps
    started = time.perf_counter()
    slow = clean_naive(ts_small, v_small)
    naive_s = time.perf_counter() - started
    assert abs(fast - slow) <= 1e-6 * abs(slow)

    print(f"{METERS} meters x 1 year of 1-minute readings = {total / 1e6:.1f} million readings")
    print(
        f"  numba clean_counter:  {numba_s:6.2f} s  {total / numba_s / 1e6:6.1f} M readings/s/core"
    )
    print(f"  numpy baseline:       {numpy_s:6.2f} s  {total / numpy_s / 1e6:6.1f} M readings/s")
    print(f"  numba vs numpy:       {numpy_s / numba_s:6.1f}x")
    print(
        f"  numba, {threads} threads:     {threaded_s:6.2f} s  "
        f"{total / threaded_s / 1e6:6.1f} M readings/s (kernels release the GIL)"
    )
    print(
        f"2,000 readings: naive twin {naive_s * 1e3:.0f} ms, numba {small_numba_s * 1e3:.2f} ms: "
        f"{naive_s / small_numba_s:.0f}x"
    )


if __name__ == "__main__":
    main()
