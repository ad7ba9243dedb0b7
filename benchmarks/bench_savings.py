"""Savings fits: time per meter-year and agreement with eemeter 4.1.1 on its sample meters.

1. Fit time of ``detectors.baseline.fit_baseline`` (what ``recp savings`` fits) on one
   synthetic meter-year, hourly (8,760 intervals, hour of week + degree terms) and daily
   (CalTRACK's daily method), and of ``detectors.caltrack_hourly.fit_caltrack_hourly``
   (``--method caltrack-hourly``), best of five after a warm-up, wall clock and CPU, and
   whether a re-fit gives the identical model.
2. Side by side with eemeter (OpenEEmeter, CalTRACK): ``benchmarks/eemeter_side.py`` runs in
   eemeter's own environment (as released it needs pytz, pandas < 3 and scikit-learn 1.5.2)
   and writes the series it fitted plus its results; here the same series and periods are
   fitted by us. Set ``EEMETER_PYTHON`` to that environment's python (the side script is
   then run, about a minute per hourly meter) or ``EEMETER_RESULTS`` to a folder it already
   wrote. Without either, part 2 is skipped with a note.

Printed: savings as % of the adjusted baseline for both and the difference in percentage
points, CV(RMSE) and NMBE beside each other, fit times and their ratio; for the hourly
samples both our hourly model and our CalTRACK hourly beside eemeter's CalTRACK hourly,
for eemeter's CalTRACK daily (``SAMPLE@caltrack``) both our ``daily`` (with p < 0.1) and
our ``caltrack-daily`` (CalTRACK 2.0 as the spec states it), with both models' parameters
and sums of squared residuals over the same baseline rows,
with the largest difference of the hourly predictions and, where the savings differ, both
models of the month that carries the difference.
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

from detectors import mv
from detectors.baseline import BaselineConfig, FitStats, fit_baseline
from detectors.caltrack_hourly import CaltrackHourlyModel, f_to_c, fit_caltrack_hourly, local_months

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


def best_of(fn: Callable[[], object], runs: int = 5, clock: Callable[[], float] = time.perf_counter
            ) -> float:
    """Best of ``runs`` after a warm-up, wall clock (or ``clock``: process_time for CPU)."""
    fn()
    times = []
    for _ in range(runs):
        started = clock()
        fn()
        times.append(clock() - started)
    return min(times)


def fit_times() -> dict[int, float]:
    out = {}
    for interval, name in ((3600, "hourly"), (86400, "daily"), (86400, "caltrack-daily")):
        t, temp, y = synthetic_year(interval)
        cfg = {"hourly": BaselineConfig(), "caltrack-daily": BaselineConfig.caltrack_daily(),
               "daily": BaselineConfig.caltrack_daily(significance=True)}[name]  # fmt: skip
        seconds = best_of(lambda: fit_baseline(t, y, temperature=temp, config=cfg))  # noqa: B023
        cpu = best_of(lambda: fit_baseline(t, y, temperature=temp, config=cfg),  # noqa: B023
                      clock=time.process_time)  # fmt: skip
        a = fit_baseline(t, y, temperature=temp, config=cfg).to_json()
        b = fit_baseline(t, y, temperature=temp, config=cfg).to_json()
        print(f"fit one meter-year, {name}: {1000 * seconds:.1f} ms wall, {1000 * cpu:.1f} ms CPU; "
              f"re-fit identical: {a == b}")  # fmt: skip
        out.setdefault(interval, seconds)
    t, temp, y = synthetic_year(3600)

    def caltrack() -> CaltrackHourlyModel:
        return fit_caltrack_hourly(t, y, temperature=temp)

    seconds = best_of(caltrack)
    cpu = best_of(caltrack, clock=time.process_time)
    same = caltrack().to_json() == caltrack().to_json()
    print(f"fit one meter-year, caltrack-hourly: {1000 * seconds:.1f} ms wall, {1000 * cpu:.1f} "
          f"ms CPU; re-fit identical: {same}")  # fmt: skip
    return out


def read_series(path: Path) -> dict[str, np.ndarray]:
    """The side script's CSV: t, observed, temperature (degF -> degC), eemeter's prediction."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))

    def col(name: str) -> np.ndarray:
        return np.array([float(r[name]) if r.get(name) else np.nan for r in rows])

    return {
        "t": np.array([int(r["t"]) for r in rows], dtype=np.int64),
        "y": col("observed"),
        "temp_c": (col("temperature_f") - 32.0) * 5.0 / 9.0,
        "ee": col("eemeter_predicted"),
    }


def _cv_nmbe(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """CV(RMSE) and NMBE in %, both with n (not n - p), as eemeter reports them."""
    resid = y - pred
    mean = float(np.mean(y))
    return (
        100 * float(np.sqrt(np.mean(resid**2))) / mean,
        100 * float(np.sum(resid)) / (resid.size * mean),
    )


def _savings_pct(y: np.ndarray, pred: np.ndarray, rows: np.ndarray) -> float:
    """Savings in % of the prediction summed over ``rows``."""
    total = float(np.sum(pred[rows]))
    return 100 * (total - float(np.sum(y[rows]))) / total


def _shape_cv(y: np.ndarray, pred: np.ndarray, rows: np.ndarray) -> float:
    """CV(RMSE) in % of the prediction scaled to the observed total over ``rows`` (shape)."""
    k = float(np.sum(y[rows])) / float(np.sum(pred[rows]))
    resid = y[rows] - k * pred[rows]
    return 100 * float(np.sqrt(np.mean(resid**2))) / float(np.mean(y[rows]))


def _side_by_side(y: np.ndarray, ours: np.ndarray, ee: np.ndarray, common: np.ndarray,
                  fitted: np.ndarray, stats: FitStats) -> dict:  # fmt: skip
    """The figures every comparison reports for ours and eemeter's: savings over the
    ``common`` reporting rows (eemeter's also without its baseline bias), our 90 %
    uncertainty, CV(RMSE) and NMBE over the ``fitted`` baseline rows, shape CV(RMSE)."""
    ee_cv, ee_nmbe = _cv_nmbe(y[fitted], ee[fitted])
    o_cv, o_nmbe = _cv_nmbe(y[fitted], ours[fitted])
    bias = float(np.sum(y[fitted])) / float(np.sum(ee[fitted]))
    adjusted = float(np.sum(ours[common]))
    u90 = mv.savings_halfwidth(
        cv_rmse_pct=stats.cv_rmse_pct or 0.0, n=stats.n, n_params=stats.n_params,
        rho=stats.residual_lag1, m=int(common.sum()), adjusted_total=adjusted,
        confidence=0.90,
    )  # fmt: skip
    return {
        "ee_savings_pct": _savings_pct(y, ee, common),
        "ee_unbiased_pct": _savings_pct(y, ee * bias, common),
        "savings_pct": _savings_pct(y, ours, common),
        "u90_pp": None if u90 is None else 100 * u90 / adjusted,
        "ee_cv": ee_cv, "cv": o_cv, "cv_g14": stats.cv_rmse_pct,
        "ee_nmbe": ee_nmbe, "nmbe": o_nmbe,
        "ee_shape_cv": _shape_cv(y, ee, common), "shape_cv": _shape_cv(y, ours, common),
        "rows": int(common.sum()),
    }  # fmt: skip


def compare(path: Path, result: dict, spec: bool = False) -> dict:
    """Our fit on the series eemeter fitted; both judged on the same rows.

    Daily: our ``daily`` (CalTRACK daily with our p < 0.1 rule), or with ``spec`` our
    ``caltrack-daily`` (CalTRACK 2.0's daily method as the spec states it).

    Savings are summed over the reporting rows where the observation and both predictions
    are known; eemeter's hourly model predicts exactly 0 in months it has no model for
    (a short baseline), so such rows are left out for both. Also: each model's in-sample
    CV(RMSE) and NMBE over the same baseline rows, eemeter's savings with its own in-sample
    bias taken out (its prediction scaled by observed / predicted over the baseline), the
    out-of-sample CV(RMSE) of each model's shape over the reporting year (its prediction
    scaled to the reporting total), our 90 % savings uncertainty (Guideline 14), fit times
    and whether a re-fit gives the identical model.
    """
    s = read_series(path)
    t, y, temp, ee = s["t"], s["y"], s["temp_c"], s["ee"]
    interval = 86400 if result["freq"] == "daily" else 3600
    b0, b1 = result["baseline"]
    r0, r1 = result["reporting"]
    b = (t >= b0) & (t < b1) & np.isfinite(y) & np.isfinite(temp)
    r = (t >= r0) & (t < r1)
    # our daily method is CalTRACK's (one intercept, HDD/CDD of the daily mean temperature)
    cfg = (BaselineConfig.caltrack_daily(significance=not spec) if interval == 86400
           else BaselineConfig())  # fmt: skip
    seconds = best_of(lambda: fit_baseline(t[b], y[b], temperature=temp[b], config=cfg), 3)
    model = fit_baseline(t[b], y[b], temperature=temp[b], config=cfg)
    again = fit_baseline(t[b], y[b], temperature=temp[b], config=cfg)
    ours = model.predict(t, temp)
    has_ee = np.isfinite(ee) & (ee != 0.0)
    common = r & np.isfinite(y) & np.isfinite(ours) & has_ee
    left_out = int((r & np.isfinite(y) & np.isfinite(ours) & ~has_ee).sum())
    fitted = b & np.isfinite(ours) & np.isfinite(ee)

    seg: dict[str, float] = {}
    if interval == 3600:
        mw = month_weighted(t, y, temp, b, model)
        ok = fitted & np.isfinite(mw)
        seg_cv, seg_nmbe = _cv_nmbe(y[ok], mw[ok])
        if np.isfinite(mw[common]).all():
            seg = {"savings_pct": _savings_pct(y, mw, common), "cv": seg_cv,
                   "nmbe": seg_nmbe, "shape_cv": _shape_cv(y, mw, common)}  # fmt: skip
    caltrack = (
        caltrack_compare(t, y, temp, ee, b, r, (b0, b1), has_ee) if interval == 3600 else None
    )
    return {
        "caltrack": caltrack,
        "segmented": seg,
        **_side_by_side(y, ours, ee, common, fitted, model.stats),
        "fit_s": seconds, "identical": model.to_json() == again.to_json(),
        "ee_sse": float(np.sum((y[fitted] - ee[fitted]) ** 2)),
        "sse": float(np.sum((y[fitted] - ours[fitted]) ** 2)),
        "left_out": left_out,
        "model": model.describe().split(": ", 1)[1].split("; R2")[0],
    }  # fmt: skip


def caltrack_compare(
    t: np.ndarray, y: np.ndarray, temp: np.ndarray, ee: np.ndarray, b: np.ndarray,
    r: np.ndarray, baseline: tuple[int, int], has_ee: np.ndarray,
) -> dict:  # fmt: skip
    """Our ``--method caltrack-hourly`` beside eemeter's CalTRACK hourly on the same rows.

    The baseline hours are eemeter's but its last: eemeter's ``merge_features`` sets the
    last row of its design matrix to NaN, so that hour is not in its fit (left in, it moves
    the three winter months' models by up to 0.01 pp of savings). Savings over the
    reporting hours both predict; also the largest difference of the two predictions per
    hour (in % of the mean hourly consumption), in the baseline and the reporting year.
    """
    fit = b.copy()
    fit[np.flatnonzero((t >= baseline[0]) & (t < baseline[1]))[-1]] = False

    def run() -> CaltrackHourlyModel:
        return fit_caltrack_hourly(t[fit], y[fit], temperature=temp[fit])

    seconds = best_of(run, 3)
    cpu = best_of(run, 3, clock=time.process_time)
    model, again = run(), run()
    ours = model.predict(t, temp)
    common = r & np.isfinite(y) & np.isfinite(ours) & has_ee
    left_out = int((r & np.isfinite(y) & (np.isfinite(ours) != has_ee)).sum())
    fitted = b & np.isfinite(ours) & np.isfinite(ee)

    mean = float(np.mean(y[fitted]))
    rep = common
    # the month that carries most of the difference in savings
    months = local_months(t, "UTC")
    gap = {int(m): float(np.sum(ours[rep & (months == m)] - ee[rep & (months == m)]))
           for m in range(1, 13)}  # fmt: skip
    worst = max(gap, key=lambda m: abs(gap[m]))
    return {
        **_side_by_side(y, ours, ee, common, fitted, model.stats),
        "fit_s": seconds, "cpu_s": cpu, "identical": model.to_json() == again.to_json(),
        "left_out": left_out,
        "max_diff_fit_pct": 100 * float(np.max(np.abs(ours[fitted] - ee[fitted]))) / mean,
        "max_diff_rep_pct": 100 * float(np.max(np.abs(ours[rep] - ee[rep]))) / mean,
        "n_params": model.stats.n_params, "worst_month": worst,
        "worst_share": gap[worst] / (sum(gap.values()) or 1.0),
        "month_model": model.months[worst - 1],
        "model": model.describe().split(": ", 1)[1].split("; R2")[0],
    }  # fmt: skip


def month_beside(ours: object, ee_params: dict | None, month: int) -> list[str]:
    """Both CalTRACK hourly models of one calendar month, in degC (eemeter's converted)."""
    from detectors.caltrack_hourly import MONTHS, MonthModel

    lines = [f"    ours    {ours.describe() if isinstance(ours, MonthModel) else 'no model'}"]
    if not ee_params:
        return [*lines, "    eemeter (its parameters were not saved by this run of eemeter_side)"]
    prev, nxt = MONTHS[(month - 2) % 12], MONTHS[month % 12]
    name = f"{prev}-{MONTHS[month - 1]}-{nxt}-weighted"
    seg = ee_params.get(name)
    if not seg or not seg.get("params"):
        return [*lines, f"    eemeter {name}: no model"]
    p = seg["params"]
    levels = [v for k, v in p.items() if k.startswith("C(hour_of_week)")]
    finite = [v for v in levels if v == v]
    zero = sum(1 for v in finite if v == 0.0)

    def slopes(kind: str) -> str:
        vals = [1.8 * v for k, v in sorted(p.items()) if k.endswith(f"_{kind}")]
        return ", ".join(f"{v:.3g}" for v in vals)

    def edges(key: str) -> str:
        return ", ".join(f"{f_to_c(e):.1f}" for e in seg.get(key) or [])

    lines.append(
        f"    eemeter {name}: {len(finite)} hour-of-week levels "
        f"{min(finite):.4g}..{max(finite):.4g} ({zero} exactly 0), "
        f"{len(seg.get('occupied_hours') or [])} occupied "
        f"hours of week; occupied edges [{edges('occupied_bins_f')}] C, slopes "
        f"[{slopes('occupied')}]/K; unoccupied edges [{edges('unoccupied_bins_f')}] C, slopes "
        f"[{slopes('unoccupied')}]/K"
    )
    return lines


def month_weighted(t: np.ndarray, y: np.ndarray, temp: np.ndarray, fit: np.ndarray,
                   model: object) -> np.ndarray:
    """Our hourly terms refitted CalTRACK's way, a diagnostic (not what recp fits).

    CalTRACK hourly fits one model per calendar month on that month (weight 1) and its two
    neighbours (weight 0.5) and predicts each month with its own. Here: hour-of-week levels
    plus our model's degree terms (its balance points), by weighted least squares per month.
    """
    import datetime as dt

    from detectors.baseline import BaselineModel

    assert isinstance(model, BaselineModel)
    tow = ((t // 86400 + 3) % 7) * 24 + (t % 86400) // 3600
    cols = [(tow[:, None] == np.arange(168)).astype(float)]
    if model.heating_balance_c is not None:
        cols.append(np.maximum(0.0, model.heating_balance_c - temp)[:, None])
    if model.cooling_balance_c is not None:
        cols.append(np.maximum(0.0, temp - model.cooling_balance_c)[:, None])
    X = np.nan_to_num(np.hstack(cols))
    month = np.array([dt.datetime.fromtimestamp(int(x), dt.timezone.utc).month for x in t])
    out = np.full(t.size, np.nan)
    for m in range(1, 13):
        near = (month == (m - 2) % 12 + 1) | (month == m % 12 + 1)
        w = np.where(month == m, 1.0, np.where(near, 0.5, 0.0))
        use = fit & (w > 0)
        if not use.any():
            continue
        sw = np.sqrt(w[use])
        beta = np.linalg.lstsq(X[use] * sw[:, None], y[use] * sw, rcond=None)[0]
        out[month == m] = X[month == m] @ beta
    out[~np.isfinite(temp)] = np.nan
    return out


def eemeter_results() -> Path | None:
    """The folder of eemeter's results: EEMETER_RESULTS, or a fresh run of the side script.

    A fresh run (EEMETER_PYTHON) writes into EEMETER_OUT (default a new temporary folder),
    EEMETER_JOBS processes at once (default 2), one process per sample meter, each given
    EEMETER_TIMEOUT_S seconds (default 5400: eemeter's hourly fit of a meter-year took up to
    25 min on the loaded machine); a meter that runs out of time is reported and left out.
    """
    done = os.environ.get("EEMETER_RESULTS")
    if done:
        return Path(done)
    python = os.environ.get("EEMETER_PYTHON")
    if not python:
        return None
    out = Path(os.environ.get("EEMETER_OUT") or tempfile.mkdtemp(prefix="eemeter-"))
    out.mkdir(parents=True, exist_ok=True)
    jobs = int(os.environ.get("EEMETER_JOBS", "2"))
    timeout_s = float(os.environ.get("EEMETER_TIMEOUT_S", "5400"))
    script = str(REPO / "benchmarks" / "eemeter_side.py")
    names = subprocess.run(
        [python, script, "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    # the slow hourly meters first (uk-gas sample 0, the slowest, first of all), so the
    # quick daily ones fill in around them
    queue = sorted(names, key=lambda n: (n.endswith("daily"), not n.startswith("uk-gas"), n))
    running: list[tuple[str, subprocess.Popen[bytes], float]] = []
    while queue or running:
        while queue and len(running) < jobs:
            name = queue.pop(0)
            if (out / f"{name}.json").exists():
                continue  # done in an earlier run into the same folder
            running.append((name, subprocess.Popen([python, script, str(out), name]),
                            time.monotonic()))  # fmt: skip
        time.sleep(1.0)
        for item in list(running):
            name, proc, started = item
            if proc.poll() is not None:
                running.remove(item)
            elif time.monotonic() - started > timeout_s:
                proc.kill()
                proc.wait()
                running.remove(item)
                print(f"eemeter: {name} not finished in {timeout_s:.0f} s; left out", flush=True)
    return out


def load_results(folder: Path) -> list[dict]:
    """Every sample's result the side script wrote (one JSON each), in the side script's order."""
    found = {}
    for path in sorted(folder.glob("*.json")):
        if path.name != "results.json":
            res = json.loads(path.read_text(encoding="utf-8"))
            found[res["sample"]] = res
    if not found and (folder / "results.json").exists():  # written before per-sample files
        found = {r["sample"]: r for r in json.loads((folder / "results.json").read_text())}
    return sorted(found.values(), key=lambda r: (r["freq"], r["sample"]))


def main() -> None:
    fit_times()
    folder = eemeter_results()
    if folder is None:
        print("eemeter comparison skipped: set EEMETER_PYTHON (see benchmarks/eemeter_side.py)")
        return
    results = load_results(folder)
    print(
        f"{'sample':40} {'freq':6} {'savings e':>9} {'ours':>6} {'diff':>6} {'e unb.':>6} "
        f"{'diff':>6} {'our U90':>7} {'CV e/o':>11} {'NMBE e/o':>11} {'out-of-s. CV e/o':>16} "
        f"{'fit e':>7} {'fit o':>7} {'ratio':>7} rows"
    )
    rows = []
    for res in results:
        c = compare(folder / f"{res['sample']}.csv", res)
        todo = [(res, c)]
        if c["caltrack"]:
            todo.append(({**res, "kind": "caltrack-hourly"}, c["caltrack"]))
        if kind_of(res) == "caltrack":  # eemeter's CalTRACK daily: our caltrack-daily too
            todo.append(({**res, "kind": "caltrack-daily"},
                         compare(folder / f"{res['sample']}.csv", res, spec=True)))  # fmt: skip
        for res, c in todo:
            rows.append((res, c))
            print_row(res, c)
    print_rest(rows)


def print_row(res: dict, c: dict) -> None:
    """One comparison's line of the table."""
    if res.get("kind") == "caltrack-hourly":
        res = {**res, "sample": f"{res['sample']} (caltrack-hourly)", "freq": "ct-h"}
    if res.get("kind") == "caltrack-daily":
        res = {**res, "sample": f"{res['sample']} (caltrack-daily)", "freq": "ct-d"}
    d = c["savings_pct"] - c["ee_savings_pct"]
    du = c["savings_pct"] - c["ee_unbiased_pct"]
    print(
        f"{res['sample']:40} {res['freq']:6} {c['ee_savings_pct']:8.2f}% "
        f"{c['savings_pct']:5.2f}% {d:+6.2f} {c['ee_unbiased_pct']:5.2f}% {du:+6.2f} "
        f"{c['u90_pp'] or float('nan'):6.2f}pp {c['ee_cv']:5.1f}/{c['cv']:<5.1f} "
        f"{c['ee_nmbe']:+5.2f}/{c['nmbe']:<+5.2f} "
        f"{c['ee_shape_cv']:7.1f}/{c['shape_cv']:<7.1f} "
        f"{res['fit_s']:6.2f}s {1000 * c['fit_s']:5.1f}ms {res['fit_s'] / c['fit_s']:6.0f}x "
        f"{c['rows']}" + (f" ({c['left_out']} left out)" if c["left_out"] else "")
    )  # fmt: skip


def print_rest(rows: list[tuple[dict, dict]]) -> None:
    """Parameters, diagnostics, the Markdown table and the summary."""
    ct_rows = [(res, c) for res, c in rows if res.get("kind") == "caltrack-hourly"]
    if ct_rows:
        print("our --method caltrack-hourly against eemeter's CalTRACK hourly: largest "
              "difference of the hourly predictions (% of mean hourly use), fit time, "
              "effective parameters")  # fmt: skip
        for res, c in ct_rows:
            print(f"  {res['sample']:40} baseline {c['max_diff_fit_pct']:.2g} %, reporting "
                  f"{c['max_diff_rep_pct']:.2g} %; {1000 * c['fit_s']:.1f} ms wall, "
                  f"{1000 * c['cpu_s']:.1f} ms CPU; p {c['n_params']}; re-fit identical: "
                  f"{c['identical']}")  # fmt: skip
            if abs(c["savings_pct"] - c["ee_savings_pct"]) >= 0.05:
                from detectors.caltrack_hourly import MONTHS

                print(f"    apart by {c['savings_pct'] - c['ee_savings_pct']:+.2f} pp; "
                      f"{100 * c['worst_share']:.0f} % of it in {MONTHS[c['worst_month'] - 1]}, "
                      "whose models are:")  # fmt: skip
                for line in month_beside(c["month_model"], res.get("params"), c["worst_month"]):
                    print(line)
    rows = [(res, c) for res, c in rows if res.get("kind") != "caltrack-hourly"] + ct_rows
    print("the models' parameters (balance points in degC; eemeter's slopes per degF-day)")
    for res, c in rows:
        if res.get("kind") == "caltrack-hourly":
            continue
        which = " (caltrack-daily)" if res.get("kind") == "caltrack-daily" else ""
        print(f"  {res['sample']}{which}: ours {c['model']}; re-fit identical: "
              f"{c['identical']}; sum of squared residuals e/o {c['ee_sse']:.6g} / "
              f"{c['sse']:.6g}")  # fmt: skip
        if res.get("params") and res["freq"] == "daily":
            print(f"  {'':{len(res['sample'])}}  eemeter {ee_params(res['params'])}")
    print("our hourly terms refitted per month, CalTRACK's way (diagnostic): savings, CV(RMSE), "
          "NMBE, out-of-sample CV(RMSE)")  # fmt: skip
    for res, c in rows:
        g = c.get("segmented")
        if g:
            print(f"  {res['sample']:40} {g['savings_pct']:5.2f}% {g['cv']:6.1f} "
                  f"{g['nmbe']:+5.2f} {g['shape_cv']:6.1f}")  # fmt: skip
    if os.environ.get("BENCH_MARKDOWN"):
        Path(os.environ["BENCH_MARKDOWN"]).write_text(markdown(rows), encoding="utf-8")
    for kind, label in KINDS.items():
        group = [(res, c) for res, c in rows if kind_of(res) == kind]
        if not group:
            continue
        diffs = [abs(c["savings_pct"] - c["ee_savings_pct"]) for _, c in group]
        unb = [abs(c["savings_pct"] - c["ee_unbiased_pct"]) for _, c in group]
        ratios = [res["fit_s"] / c["fit_s"] for res, c in group]
        print(f"{label}: within 0.5 pp of eemeter on {sum(d <= 0.5 for d in diffs)} of "
              f"{len(diffs)} (largest {max(diffs):.2f} pp); of eemeter without its baseline "
              f"bias on {sum(d <= 0.5 for d in unb)} of {len(unb)} (largest {max(unb):.2f} pp); "
              f"fit-time ratio {min(ratios):.0f}x..{max(ratios):.0f}x; eemeter's first fits "
              f"(compiling) up to {max(r['first_fit_s'] for r, _ in group):.0f} s")  # fmt: skip


def markdown(rows: list[tuple[dict, dict]]) -> str:
    """The comparison as a Markdown table, meter by meter (for docs/savings.md)."""
    eemodel = {"hourly": "CalTRACK hourly", "caltrack-hourly": "CalTRACK hourly",
               "caltrack": "CalTRACK daily", "caltrack-daily": "CalTRACK daily",
               "daily": "eemeter 4 daily"}  # fmt: skip
    ours = {"hourly": "hourly", "caltrack-hourly": "caltrack-hourly", "caltrack": "daily",
            "caltrack-daily": "caltrack-daily", "daily": "daily"}  # fmt: skip
    out = [
        "| meter | ours | eemeter | eemeter % | ours % | diff pp | diff unbiased pp | our U90 pp "
        "| CV(RMSE) e / o | NMBE e / o | fit e | fit o | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def order(item: tuple[dict, dict]) -> tuple[str, int]:
        res = item[0]
        return res["sample"].split("@")[0], list(KINDS).index(kind_of(res))

    for res, c in sorted(rows, key=order):
        k = kind_of(res)
        meter = res["sample"].split("@")[0]
        d = c["savings_pct"] - c["ee_savings_pct"]
        du = c["savings_pct"] - c["ee_unbiased_pct"]
        ee_fit = res["fit_s"]
        earlier = f" ({res['run']})" if res.get("run") else ""  # a result of an earlier run
        out.append(
            f"| {meter} | {ours[k]} | {eemodel[k]} | {c['ee_savings_pct']:.2f} | "
            f"{c['savings_pct']:.2f} | {d:+.2f} | {du:+.2f} | {c['u90_pp'] or float('nan'):.1f} | "
            f"{c['ee_cv']:.1f} / {c['cv']:.1f} | {c['ee_nmbe']:+.2f} / {c['nmbe']:+.2f} | "
            f"{ee_fit:,.1f} s{earlier} | {1000 * c['fit_s']:.1f} ms | {ee_fit / c['fit_s']:,.0f}x |"
        )
    return "\n".join(out) + "\n"


KINDS = {
    "hourly": "our hourly vs eemeter's CalTRACK hourly",
    "caltrack-hourly": "our caltrack-hourly (CalTRACK 2.0 hourly) vs eemeter's CalTRACK hourly",
    "caltrack": "our daily (CalTRACK with p < 0.1) vs eemeter's CalTRACK daily (legacy "
    "settings)",
    "caltrack-daily": "our caltrack-daily (CalTRACK 2.0 daily) vs eemeter's CalTRACK daily "
    "(legacy settings)",
    "daily": "our daily (CalTRACK with p < 0.1) vs eemeter 4's daily model",
}


def kind_of(res: dict) -> str:
    """Which comparison a side-script result is: hourly, caltrack (legacy daily) or daily;
    caltrack-hourly for our CalTRACK hourly beside an hourly one."""
    if res.get("kind"):
        return str(res["kind"])
    if res["sample"].endswith("@caltrack"):
        return "caltrack"
    return "daily" if res["freq"] == "daily" else "hourly"


def ee_params(params: dict) -> str:
    """eemeter's daily submodels in a line: type, intercept, balance points (degC), slopes."""
    out = []
    for name, co in params.items():
        parts = [f"{name}: {co.get('model_type')}", f"intercept {co.get('intercept'):.4g}"]
        for term in ("hdd", "cdd"):
            bp, beta = co.get(f"{term}_bp"), co.get(f"{term}_beta")
            if bp is not None and beta is not None:
                k = co.get(f"{term}_k")
                parts.append(f"{term} {abs(beta):.4g} at {(bp - 32) / 1.8:.2f} C"
                             + (f" (smoothing k {k:.3g})" if k else ""))  # fmt: skip
        out.append(", ".join(parts))
    return "; ".join(out)


if __name__ == "__main__":
    main()
