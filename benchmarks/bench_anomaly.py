"""Anomaly detector throughput: intervals per second through all four detectors.

Data: 50 meters x 1 year of 1-minute intervals (26 million), synthetic: a weekly
production rhythm, noise, outdoor temperature, a few spikes, a frozen day and a leak.
Every detector (spike, stuck, level shift with weather correction, drift) scores every
interval, as the service's batch backfill would. Baseline, in one run: the plain-Python
twins in ``tests/naive.py`` on one meter-week, against the numba batch kernels on the same
week. The streaming API (one ``update_one`` call per interval from Python) is timed too.
Numba compile time is measured separately in fresh processes (empty cache, then cached).
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

from detectors.anomaly import DriftDetector, LevelShiftDetector, SpikeDetector, StuckDetector
from detectors.streaming import KernelDetector, Point

REPO = Path(__file__).resolve().parents[1]
METERS = 50
INTERVAL_S = 60
N = 365 * 24 * 60
START = 1_767_571_200  # 2026-01-05T00:00:00Z, a Monday
WEEK = 7 * 24 * 60


def meter_data(seed: int) -> dict[str, np.ndarray]:
    """One meter's year of 1-minute consumption with a production signal and temperature."""
    rng = np.random.default_rng(seed)
    t = START + INTERVAL_S * np.arange(N, dtype=np.int64)
    hour = (t % 86400) / 3600.0
    running = ((hour >= 6) & (hour < 22) & (((t // 86400) + 3) % 7 < 5)).astype(float)
    temp = 10 - 8 * np.cos(2 * np.pi * np.arange(N) / N) + 3 * np.sin(np.arange(N) / 5000.0)
    x = (1.0 + 3.0 * running + 0.05 * np.clip(15 - temp, 0, None)) / 60.0
    x *= 1 + 0.05 * rng.standard_normal(N)
    x[rng.integers(0, N, 20)] *= 5  # spikes
    x[N // 3 : N // 3 + 1440] = 0.0  # a frozen day
    x[N // 2 :] += 0.5 / 60.0  # a leak
    return {"t": t, "x": x, "active": running, "production": 20 * running, "temp": temp}


def detectors() -> list[KernelDetector]:
    return [
        SpikeDetector(slot_s=900),
        StuckDetector(interval_s=INTERVAL_S),
        LevelShiftDetector(interval_s=INTERVAL_S, use_temperature=True),
        DriftDetector(interval_s=INTERVAL_S, use_production=True),
    ]


def run_batch(d: dict[str, np.ndarray]) -> float:
    total = 0.0
    for det in detectors():
        scores, _ = det.process(d["t"], d["x"], d["active"], d["production"], d["temp"])
        total += float(scores.sum())
    return total


def run_naive(d: dict[str, np.ndarray]) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    import naive

    t, x = d["t"].tolist(), d["x"].tolist()
    a, p, c = d["active"].tolist(), d["production"].tolist(), d["temp"].tolist()
    spike, stuck, shift, drift = detectors()
    naive.spike(t, x, **spike.config_dict())
    naive.stuck(t, x, a, **stuck.config_dict())
    naive.level_shift(t, x, a, c, **shift.config_dict())
    naive.drift(t, x, p, **drift.config_dict())


def run_streaming(d: dict[str, np.ndarray]) -> None:
    dets = detectors()
    for row in zip(d["t"], d["x"], d["active"], d["production"], d["temp"], strict=True):
        p = Point(int(row[0]), float(row[1]), float(row[2]), float(row[3]), float(row[4]))
        for det in dets:
            det.update_one(p)


def compile_seconds(cache_dir: str) -> float:
    """Wall time of a fresh process's first call of every detector with ``cache_dir``."""
    code = (
        "import time\n"
        "from benchmarks.bench_anomaly import meter_data, run_batch\n"
        "d = {k: v[:20000] for k, v in meter_data(0).items()}\n"
        "t = time.perf_counter()\n"
        "run_batch(d)\n"
        "print(time.perf_counter() - t)\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip())


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        cold = compile_seconds(cache)
        warm = compile_seconds(cache)
    print(f"numba first call: {cold:.1f} s compiling (empty cache), {warm:.2f} s from the cache")

    week = {k: v[:WEEK] for k, v in meter_data(0).items()}
    run_batch(week)  # load the kernels before timing
    total = METERS * N

    batch_s = 0.0
    for seed in range(METERS):
        d = meter_data(seed)
        started = time.perf_counter()
        run_batch(d)
        batch_s += time.perf_counter() - started

    threads = os.cpu_count() or 1
    data = [meter_data(seed) for seed in range(2 * threads)]
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run_batch, data))
    threaded_rate = len(data) * N / (time.perf_counter() - started)

    reps = 5
    started = time.perf_counter()
    for _ in range(reps):
        run_batch(week)
    week_numba_s = (time.perf_counter() - started) / reps
    started = time.perf_counter()
    run_naive(week)
    naive_s = time.perf_counter() - started
    started = time.perf_counter()
    run_streaming(week)
    stream_s = time.perf_counter() - started

    print(f"{METERS} meters x 1 year of 1-minute intervals = {total / 1e6:.1f} million intervals")
    print(
        f"  numba batch, 4 detectors: {batch_s:6.1f} s  "
        f"{total / batch_s / 1e6:5.2f} M intervals/s/core"
    )
    print(
        f"  numba batch, {threads} threads:   "
        f"{threaded_rate / 1e6:5.2f} M intervals/s (kernels release the GIL)"
    )
    print(
        f"one meter-week ({WEEK} intervals): naive twins {naive_s:.2f} s, numba batch "
        f"{week_numba_s * 1e3:.1f} ms: {naive_s / week_numba_s:.0f}x"
    )
    print(
        f"  streaming update_one from Python: {stream_s:.2f} s, "
        f"{WEEK / stream_s / 1e3:.0f} k intervals/s (4 detectors)"
    )


if __name__ == "__main__":
    main()
