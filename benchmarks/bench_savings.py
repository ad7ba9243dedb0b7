"""Savings fits: time per meter-year and agreement with eemeter 4.1.1 on its sample meters.

1. Fit time of ``detectors.baseline.fit_baseline`` (what ``recp savings`` fits) on one
   synthetic meter-year, hourly (8,760 intervals, hour of week + degree terms) and daily,
   best of five after a warm-up, and whether a re-fit gives the identical model.
2. Side by side with eemeter (OpenEEmeter, CalTRACK): ``benchmarks/eemeter_side.py`` runs in
   eemeter's own environment (as released it needs pytz, pandas < 3 and scikit-learn 1.5.2)
   and writes the series it fitted plus its results; here the same series and periods are
   fitted by us. Set ``EEMETER_PYTHON`` to that environment's python (the side script is
   then run, about a minute per hourly meter) or ``EEMETER_RESULTS`` to a folder it already
   wrote. Without either, part 2 is skipped with a note.

Printed: savings as % of the adjusted baseline for both and the difference in percentage
points, CV(RMSE) and NMBE beside each other, fit times and their ratio.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from detectors.baseline import BaselineConfig, fit_baseline

REPO = Path(__file__).resolve().parents[1]
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def synthetic_year(interval_s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    n = 365 * 86400 // interval_s
    t = T0 + interval_s * np.arange(n, dtype=np.int64)
    day = (t - T0) / 86400
    temp = 10 - 10 * np.cos(2 * np.pi * day / 365) + rng.normal(0, 2, n)
    if interval_s < 86400:
        temp += 4 * np.sin(2 * np.pi * (t % 86400) / 86400)
    hour = (t % 86400) / 3600
    work = (hour >= 7) & (hour < 19) if interval_s < 86400 else np.ones(n, bool)
    y = (5 + 3 * work + 0.4 * np.maximum(0, 15 - temp)) * (interval_s / 3600)
    return t, temp, y * (1 + 0.1 * rng.standard_normal(n))


def best_of(fn: Callable[[], object], runs: int = 5) -> float:
    fn()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def fit_times() -> dict[int, float]:
    out = {}
    for interval in (3600, 86400):
        t, temp, y = synthetic_year(interval)
        cfg = BaselineConfig(interval_s=interval)
        seconds = best_of(lambda: fit_baseline(t, y, temperature=temp, config=cfg))  # noqa: B023
        a = fit_baseline(t, y, temperature=temp, config=cfg).to_json()
        b = fit_baseline(t, y, temperature=temp, config=cfg).to_json()
        name = "hourly" if interval == 3600 else "daily"
        print(f"fit one meter-year, {name}: {1000 * seconds:.1f} ms; re-fit identical: {a == b}")
        out[interval] = seconds
    return out


def read_series(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    t = np.array([int(r["t"]) for r in rows], dtype=np.int64)
    y = np.array([float(r["observed"]) if r["observed"] else np.nan for r in rows])
    f_ = np.array([float(r["temperature_f"]) if r["temperature_f"] else np.nan for r in rows])
    return t, y, (f_ - 32.0) * 5.0 / 9.0


def ours(path: Path, result: dict) -> dict:
    t, y, temp = read_series(path)
    interval = 86400 if result["freq"] == "daily" else 3600
    b0, b1 = result["baseline"]
    r0, r1 = result["reporting"]
    b = (t >= b0) & (t < b1)
    r = (t >= r0) & (t < r1)
    cfg = BaselineConfig(interval_s=interval)
    seconds = best_of(lambda: fit_baseline(t[b], y[b], temperature=temp[b], config=cfg), 3)
    model = fit_baseline(t[b], y[b], temperature=temp[b], config=cfg)
    pred = model.predict(t[r], temp[r])
    ok = np.isfinite(pred) & np.isfinite(y[r])
    predicted = float(np.sum(pred[ok]))
    savings = predicted - float(np.sum(y[r][ok]))
    return {
        "savings_pct": 100 * savings / predicted,
        "cv_rmse_pct": model.stats.cv_rmse_pct,
        "nmbe_pct": model.stats.nmbe_pct,
        "fit_s": seconds,
    }


def eemeter_results() -> Path | None:
    done = os.environ.get("EEMETER_RESULTS")
    if done:
        return Path(done)
    python = os.environ.get("EEMETER_PYTHON")
    if not python:
        return None
    out = Path(tempfile.mkdtemp(prefix="eemeter-"))
    subprocess.run([python, str(REPO / "benchmarks" / "eemeter_side.py"), str(out)], check=True)
    return out


def main() -> None:
    fit_times()
    folder = eemeter_results()
    if folder is None:
        print("eemeter comparison skipped: set EEMETER_PYTHON (see benchmarks/eemeter_side.py)")
        return
    results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    head = (
        f"{'sample':42} {'freq':6} {'savings eemeter':>15} {'ours':>7} {'diff pp':>8} "
        f"{'CV(RMSE) e/o':>14} {'NMBE e/o':>13} {'fit e':>8} {'fit o':>8} {'ratio':>6}"
    )
    print(head)
    worst = 0.0
    for res in results:
        o = ours(folder / f"{res['sample']}.csv", res)
        diff = o["savings_pct"] - res["savings_pct"]
        worst = max(worst, abs(diff))
        print(
            f"{res['sample']:42} {res['freq']:6} {res['savings_pct']:14.2f}% "
            f"{o['savings_pct']:6.2f}% {diff:+8.2f} "
            f"{res['cv_rmse_pct']:6.1f}/{o['cv_rmse_pct'] or float('nan'):<6.1f} "
            f"{res['nmbe_pct']:6.2f}/{o['nmbe_pct'] or 0.0:<6.2f} "
            f"{res['fit_s']:7.2f}s {1000 * o['fit_s']:6.1f}ms {res['fit_s'] / o['fit_s']:6.0f}x"
        )
    first = max(r["first_fit_s"] for r in results)
    print(f"largest savings difference: {worst:.2f} percentage points; "
          f"eemeter's slowest first fit (compiling) {first:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
