"""Full batch pipeline throughput: counter readings per second per core, against numpy and river.

The pipeline of one meter, as ``benchmarks/score_detection.py`` and the service's backfill
run it: ``clean_counter`` (1-minute readings to 15-minute consumption) -> ``detect_anomalies``
(spike, stuck, level shift with weather correction, drift per unit produced) ->
``detect_overspend`` against a baseline fitted on the first four weeks. The site's
production counter, line-running signal and outdoor temperature are cleaned once and
shared by its meters (timed, not counted as points). Baseline fitting is timed separately:
it runs once per meter and refit, not per reading (``bench_baseline`` compares it).

Data: 20 meters x 500,000 one-minute counter readings (347 days) = 10 million readings,
synthetic: a weekly production rhythm, heating load, noise, NaN readings, repeated and
swapped timestamps, one register wrap per meter and a loss per meter (spikes, a frozen
counter, a leak or a drift, in turn).

Compared in one run, in one process pinned to one core (NUMBA_NUM_THREADS=1, BLAS threads 1):

* ours: the package's numba pipeline;
* numpy: ``benchmarks/numpy_pipeline.py``, the same detectors written with whole-array numpy
  (and Python loops over nights, days and the overspend CUSUM); it gives the same events
  (``tests/unit/test_numpy_pipeline.py``);
* river: ``HalfSpaceTrees`` (river's streaming anomaly detector) fed our cleaned 15-minute
  intervals one at a time from Python; timed on a subsample of intervals and scaled to
  all of them, plus our cleaning.

Rates are points (readings) per CPU second of the pinned process: per core, whatever else
the machine runs; wall-clock rates are printed beside them. Numba compile time is measured
in fresh processes with an empty cache directory, then again in a second process on the
filled cache (``cache=True``: a second start must not compile).

    python -m benchmarks.bench_pipeline [--meters 20] [--readings 500000] [--river 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
START = 1_767_571_200  # 2026-01-05T00:00:00Z, a Monday
READING_S = 60
INTERVAL_S = 900
FIT_DAYS = 28
ROLLOVER = 10_000_000.0
ONE_CORE = {
    "NUMBA_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
LOSSES = ("spikes", "stuck", "leak", "drift")
# glibc hands every array above 128 kB out as fresh pages from the kernel and takes them
# back when it is freed, so each large temporary costs a page fault per 4 kB, and on a VM
# those cost more than the arithmetic. With these settings freed memory is kept for reuse.
DEFAULT_MALLOC: dict[str, str] = {}
DATA_EVENTS = {"rollover", "counter_reset", "gap", "impossible_rate"}
REUSE_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824"}


@dataclass(frozen=True)
class Site:
    """The site's shared signals as raw readings (production counter, line running, weather)."""

    t: np.ndarray
    produced: np.ndarray  # production counter, units
    running: np.ndarray  # 1 while the line runs
    temperature: np.ndarray  # outdoor degC


def site_readings(n: int) -> Site:
    t = START + READING_S * np.arange(n, dtype=np.int64)
    hour = (t % 86400) / 3600.0
    weekday = ((t // 86400) + 3) % 7
    running = ((hour >= 6) & (hour < 22) & (weekday < 5)).astype(np.float64)
    minutes = np.arange(n)
    temp = 8 - 8 * np.cos(2 * np.pi * minutes / (365 * 1440)) + 4 * np.sin(minutes / 2000.0)
    return Site(t, np.cumsum(running * 2.0), running, temp)


def meter_readings(seed: int, site: Site) -> tuple[np.ndarray, np.ndarray, str]:
    """One meter's counter readings (kWh), with faults and one loss; and the loss's name."""
    rng = np.random.default_rng(seed)
    n = site.t.size
    rate = (2.0 + 0.3 * seed % 3 + 6.0 * site.running + 0.1 * np.clip(15 - site.temperature, 0,
            None)) / 60.0  # fmt: skip
    rate *= 1 + 0.05 * rng.standard_normal(n)
    loss = LOSSES[seed % len(LOSSES)]
    if loss == "spikes":
        for at in rng.integers(n // 4, n, 6):
            rate[at : at + 15] *= 4.0
    elif loss == "stuck":
        at = n // 2 + 6 * 60  # from 06:00-ish for 12 hours
        rate[at : at + 12 * 60] = 0.0
    elif loss == "leak":
        rate[2 * n // 3 :] += 0.8 / 60.0
    else:
        rate[n // 2 :] *= 1 + 0.4 * np.arange(n - n // 2) / (n - n // 2)
    counter = ROLLOVER - 50_000.0 * (1 + seed % 5) + np.cumsum(np.clip(rate, 0, None))
    counter = np.where(counter >= ROLLOVER, counter - ROLLOVER, counter)  # a register wrap
    ts = site.t.copy()
    counter[rng.random(n) < 1e-3] = np.nan
    dup = rng.integers(1, n, n // 10_000)
    ts[dup] = ts[dup - 1]  # repeated timestamps
    swap = rng.integers(1, n - 1, n // 50_000)  # delivered out of order
    ts[swap], ts[swap + 1] = ts[swap + 1].copy(), ts[swap].copy()
    counter[swap], counter[swap + 1] = counter[swap + 1].copy(), counter[swap].copy()
    return ts, counter, loss


def grid(site: Site) -> tuple[int, int]:
    lo = START
    hi = int(site.t[-1]) // INTERVAL_S * INTERVAL_S
    return lo, hi


# ------------------------------------------------------------------------------ the pipelines


def ours_site(site: Site) -> dict[str, np.ndarray]:
    from detectors.clean import clean_counter, resample_gauge

    lo, hi = grid(site)
    kw: dict[str, Any] = {"interval_s": INTERVAL_S, "start_s": lo, "end_s": hi}
    return {
        "production": clean_counter(site.t, site.produced, **kw).consumption,
        "active": resample_gauge(site.t, site.running, **kw).mean,
        "temperature": resample_gauge(site.t, site.temperature, **kw).mean,
    }


def numpy_site(site: Site) -> dict[str, np.ndarray]:
    from benchmarks import numpy_pipeline as npp

    lo, hi = grid(site)
    kw: dict[str, Any] = {"interval_s": INTERVAL_S, "start_s": lo, "end_s": hi}
    return {
        "production": npp.clean_counter(site.t, site.produced, rollover=None,
                                        max_rate_per_h=None, **kw).consumption,
        "active": npp.resample_gauge(site.t, site.running, **kw),
        "temperature": npp.resample_gauge(site.t, site.temperature, **kw),
    }


def meter_info(seed: int) -> Any:
    from detectors.meter import MeterInfo

    return MeterInfo(f"m{seed}", "kWh", "electricity", price_per_unit=0.2, rollover=ROLLOVER,
                     max_rate_per_h=200.0)  # fmt: skip


def fit(t: np.ndarray, x: np.ndarray, shared: dict[str, np.ndarray], resolution: float,
        meter: str) -> Any:  # fmt: skip
    from detectors.baseline import BaselineConfig, fit_baseline

    part = t < START + FIT_DAYS * 86400
    return fit_baseline(
        t[part], x[part], temperature=shared["temperature"][part],
        production=shared["production"][part], meter=meter, unit="kWh",
        config=BaselineConfig(interval_s=INTERVAL_S), resolution=resolution,
    )  # fmt: skip


class Clock:
    """CPU and wall seconds per stage."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}

    def __call__(self, stage: str, fn: Callable[[], Any]) -> Any:
        c, w = time.process_time(), time.perf_counter()
        out = fn()
        self.cpu[stage] = self.cpu.get(stage, 0.0) + time.process_time() - c
        self.wall[stage] = self.wall.get(stage, 0.0) + time.perf_counter() - w
        return out


def run_ours(ts: np.ndarray, v: np.ndarray, seed: int, shared: dict[str, np.ndarray],
             lo: int, hi: int, clock: Clock) -> tuple[list[Any], Any, Any]:  # fmt: skip
    from detectors.anomaly import detect_anomalies
    from detectors.clean import clean_counter
    from detectors.overspend import detect_overspend

    meter = meter_info(seed)
    cons = clock("clean", lambda: clean_counter(ts, v, meter=meter, interval_s=INTERVAL_S,
                                                start_s=lo, end_s=hi))  # fmt: skip
    events = list(cons.events)
    events += clock("detectors", lambda: detect_anomalies(
        cons, meter, active=shared["active"], production=shared["production"],
        temperature=shared["temperature"]))  # fmt: skip
    t, x = cons.start_s, cons.consumption
    model = clock("baseline fit", lambda: fit(t, x, shared, cons.resolution, meter.id))
    after = t >= START + FIT_DAYS * 86400
    events += clock("overspend", lambda: detect_overspend(
        model, meter, t[after], x[after], temperature=shared["temperature"][after],
        production=shared["production"][after]).events)  # fmt: skip
    return events, cons, model


def run_numpy(ts: np.ndarray, v: np.ndarray, seed: int, shared: dict[str, np.ndarray],
              lo: int, hi: int, model: Any, clock: Clock) -> list[Any]:  # fmt: skip
    from benchmarks import numpy_pipeline as npp

    meter = meter_info(seed)
    cons = clock("clean", lambda: npp.clean_counter(
        ts, v, interval_s=INTERVAL_S, rollover=meter.rollover,
        max_rate_per_h=meter.max_rate_per_h, start_s=lo, end_s=hi))  # fmt: skip
    events = clock("detectors", lambda: npp.detect_anomalies(
        cons, meter, active=shared["active"], production=shared["production"],
        temperature=shared["temperature"]))  # fmt: skip
    t, x = cons.start_s, cons.consumption
    after = t >= START + FIT_DAYS * 86400
    events += clock("overspend", lambda: npp.detect_overspend(
        model, meter, t[after], x[after], temperature=shared["temperature"][after],
        production=shared["production"][after]))  # fmt: skip
    return events


def run_river(cons: Any, shared: dict[str, np.ndarray], limit: int) -> tuple[float, int]:
    """CPU seconds of river's HalfSpaceTrees over the first ``limit`` intervals, and how many."""
    from river import anomaly, compose, preprocessing

    model = compose.Pipeline(preprocessing.MinMaxScaler(), anomaly.HalfSpaceTrees(seed=1))
    t, x = cons.start_s[:limit], cons.consumption[:limit]
    rows = [
        {"consumption": float(xi), "slot": float((ti // INTERVAL_S) % 672),
         "temperature": float(te), "active": float(ac)}
        for ti, xi, te, ac in zip(t, x, shared["temperature"], shared["active"], strict=False)
        if np.isfinite(xi)
    ]  # fmt: skip
    started = time.process_time()
    for row in rows:
        model.score_one(row)
        model.learn_one(row)
    return time.process_time() - started, len(rows)


def _cleaned(ts: np.ndarray, v: np.ndarray, site: Site) -> tuple[np.ndarray, np.ndarray]:
    from detectors.clean import clean_counter

    lo, hi = grid(site)
    cons = clean_counter(ts, v, interval_s=INTERVAL_S, start_s=lo, end_s=hi)
    return cons.start_s, cons.consumption


# ------------------------------------------------------------------------------ compile time

_FIRST_CALL = """
import json, time
t0 = time.perf_counter()
from benchmarks import bench_pipeline as b
site = b.site_readings(40 * 1440)
t1, c1 = time.perf_counter(), time.process_time()
shared = b.ours_site(site)
lo, hi = b.grid(site)
ts, v, _ = b.meter_readings(3, site)
b.run_ours(ts, v, 3, shared, lo, hi, b.Clock())
out = {"import_s": t1 - t0, "first_call_s": time.perf_counter() - t1,
       "first_call_cpu_s": time.process_time() - c1}
print(json.dumps({**out, **b.cache_stats()}))
"""


def cache_stats() -> dict[str, int]:
    """Signatures numba loaded from its cache (hits) and compiled (misses) in this process."""
    import importlib

    import numba.core.registry

    hits = misses = 0
    for name in ("anomaly", "baseline", "clean", "lstsq", "overspend"):
        module = importlib.import_module(f"detectors.kernels.{name}")
        for obj in vars(module).values():
            if isinstance(obj, numba.core.registry.CPUDispatcher):
                hits += sum(obj.stats.cache_hits.values())
                misses += sum(obj.stats.cache_misses.values())
    return {"cache_hits": hits, "cache_misses": misses}


def first_call(cache_dir: str) -> dict[str, float]:
    """Import and first pipeline run of a fresh process with ``cache_dir`` as numba's cache."""
    env = {**os.environ, **ONE_CORE, "NUMBA_CACHE_DIR": cache_dir, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", _FIRST_CALL], env=env, cwd=REPO,
                         capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ the run


def measure(meters: int, readings: int, river_n: int) -> dict[str, Any]:
    """Everything timed, in this process (call it pinned to one core)."""
    load = [os.getloadavg()[0]]
    site = site_readings(readings)
    lo, hi = grid(site)
    # load the compiled kernels (from numba's cache) before the clock runs
    small = site_readings(40 * 1440)
    warm_ts, warm_v, _ = meter_readings(0, small)
    run_ours(warm_ts, warm_v, 0, ours_site(small), *grid(small), Clock())
    run_numpy(warm_ts, warm_v, 0, numpy_site(small), *grid(small),
              fit(*_cleaned(warm_ts, warm_v, small), ours_site(small), 0.0, "m0"), Clock())
    ours, numpy_ = Clock(), Clock()
    shared = ours("site", lambda: ours_site(site))
    shared_np = numpy_("site", lambda: numpy_site(site))
    found: dict[str, dict[str, int]] = {}
    intervals = 0
    river_cpu, river_n_done = 0.0, 0
    for seed in range(meters):
        ts, v, loss = meter_readings(seed, site)
        ev_ours, cons, model = run_ours(ts, v, seed, shared, lo, hi, ours)
        ev_np = run_numpy(ts, v, seed, shared_np, lo, hi, model, numpy_)
        intervals += cons.consumption.size
        kinds = lambda evs: sorted({e.type.value for e in evs} - DATA_EVENTS)  # noqa: E731
        found[f"m{seed} ({loss})"] = {"ours": kinds(ev_ours), "numpy": kinds(ev_np)}  # type: ignore[dict-item]
        if river_n_done < river_n:
            cpu, done = run_river(cons, shared, river_n - river_n_done)
            river_cpu += cpu
            river_n_done += done
    return {
        "meters": meters, "readings": meters * readings, "intervals": intervals,
        "ours_cpu": ours.cpu, "ours_wall": ours.wall, "numpy_cpu": numpy_.cpu,
        "numpy_wall": numpy_.wall, "river_cpu": river_cpu, "river_n": river_n_done,
        "found": found, "load": [*load, os.getloadavg()[0]],
    }  # fmt: skip


def _child(args: argparse.Namespace) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    print(json.dumps(measure(args.meters, args.readings, args.river)))


def readable(n: float) -> str:
    """A count or rate for people at any size: 40,000, 850,000, 1.2 M, 10.0 M (never "0.0 M")."""
    if abs(n) >= 1e6:
        return f"{n / 1e6:,.1f} M"
    if abs(n) >= 100 or n == int(n):
        return f"{n:,.0f}"
    return f"{n:.3g}"


def report(r: dict[str, Any], reuse: dict[str, Any],
           compile_s: dict[str, dict[str, float]]) -> None:  # fmt: skip
    pipeline = ("clean", "detectors", "overspend")
    points = r["readings"]

    def total(clock: dict[str, float]) -> float:
        return sum(clock[s] for s in pipeline)

    print(f"{r['meters']} meters, {readable(points)} one-minute readings -> "
          f"{readable(r['intervals'])} 15-minute intervals; one process on one core")
    loads = [*r["load"], *reuse["load"]]
    print(f"load average (1 min, {os.cpu_count()} cores) from {min(loads):.1f} to "
          f"{max(loads):.1f} during the timed runs, {time.strftime('%H:%M UTC', time.gmtime())}")
    print("| pipeline | malloc | CPU s | readings/s/core | readings/s wall | vs numpy |")
    print("| --- | --- | --- | --- | --- | --- |")
    for run, how in ((r, "default"), (reuse, "reuse")):
        numpy_s = total(run["numpy_cpu"])
        for name, cpu, wall in (("ours (numba)", run["ours_cpu"], run["ours_wall"]),
                                ("numpy", run["numpy_cpu"], run["numpy_wall"])):  # fmt: skip
            print(f"| {name} | {how} | {total(cpu):.2f} | {readable(points / total(cpu))} | "
                  f"{readable(points / total(wall))} | {numpy_s / total(cpu):.1f}x |")  # fmt: skip
    river_per = r["river_cpu"] / max(1, r["river_n"])
    river_s = r["ours_cpu"]["clean"] + river_per * r["intervals"]
    numpy_s = total(r["numpy_cpu"])
    print(f"| river HalfSpaceTrees + our cleaning | default | {river_s:.1f} | "
          f"{readable(points / river_s)} | | {numpy_s / river_s:.2f}x |")  # fmt: skip
    print(f"river: {r['river_n']:,} intervals timed, {river_per * 1e6:.0f} us each, "
          "scaled to all intervals")
    print("| stage | ours CPU s | numpy CPU s | ours, reuse malloc | ours per interval |")
    print("| --- | --- | --- | --- | --- |")
    for s in ("site", "clean", "detectors", "overspend", "baseline fit"):
        npv = r["numpy_cpu"].get(s)
        per = r["ours_cpu"][s] / r["intervals"] * 1e9
        print(f"| {s} | {r['ours_cpu'][s]:.3f} | {'-' if npv is None else f'{npv:.3f}'} | "
              f"{reuse['ours_cpu'][s]:.3f} | {per:.0f} ns |")  # fmt: skip
    det = r["ours_cpu"]["detectors"] + r["ours_cpu"]["overspend"]
    print(f"detectors + overspend alone: {readable(r['intervals'] / det)} intervals/s/core")
    cold, warm = compile_s["cold"], compile_s["warm"]
    print(f"numba, fresh process, empty cache: first pipeline call {cold['first_call_s']:.1f} s "
          f"({cold['first_call_cpu_s']:.1f} s CPU), {cold['cache_misses']} signatures compiled")
    print(f"numba, second process, same cache: first call {warm['first_call_s']:.2f} s "
          f"({warm['first_call_cpu_s']:.2f} s CPU), {warm['cache_hits']} signatures loaded, "
          f"{warm['cache_misses']} compiled")  # fmt: skip
    same = all(v["ours"] == v["numpy"] for v in r["found"].values())
    print(f"anomaly and overspend event types, ours vs numpy: {'same' if same else 'DIFFER'}")
    for meter, v in r["found"].items():
        print(f"  {meter}: {', '.join(v['ours']) or '-'}"
              + ("" if v["ours"] == v["numpy"] else f"  (numpy: {', '.join(v['numpy'])})"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--meters", type=int, default=20)
    p.add_argument("--readings", type=int, default=500_000, help="per meter, one a minute")
    p.add_argument("--river", type=int, default=20_000, help="intervals river is timed on")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv if argv is not None else [])
    if args.child:
        _child(args)
        return
    with tempfile.TemporaryDirectory() as cache:
        compile_s = {"cold": first_call(cache), "warm": first_call(cache)}
    runs = []
    for allocator, river_n in ((DEFAULT_MALLOC, args.river), (REUSE_MALLOC, 0)):
        env = {**os.environ, **ONE_CORE, **allocator, "PYTHONPATH": str(REPO)}
        cmd = [sys.executable, "-m", "benchmarks.bench_pipeline", "--child",
               "--meters", str(args.meters), "--readings", str(args.readings),
               "--river", str(river_n)]  # fmt: skip
        out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    report(runs[0], runs[1], compile_s)


if __name__ == "__main__":
    main(sys.argv[1:])
