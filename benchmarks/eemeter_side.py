"""The eemeter half of ``bench_savings``: run in eemeter's own environment, not ours.

    python -m venv /tmp/eevenv
    /tmp/eevenv/bin/pip install eemeter==4.1.1 "pandas<3" scikit-learn==1.5.2 pytz
    /tmp/eevenv/bin/python benchmarks/eemeter_side.py OUTDIR [SAMPLE ...]

For every sample meter eemeter ships (simulated Illinois and UK meters, hourly and daily),
takes the year before the blackout as baseline and the year after it as reporting, fits
eemeter's daily model (daily samples) and its CalTRACK hourly model (hourly samples), and
writes OUTDIR/<sample>.csv (the exact series it fitted: UTC epoch, observed, temperature in
degF, and eemeter's prediction for every row: the baseline rows as fitted, the reporting rows
as projected), OUTDIR/<sample>.json (savings, CV(RMSE), NMBE, fit times) and
OUTDIR/results.json (all of this run's). ``SAMPLE@daily`` fits eemeter's daily model on an
hourly sample (eemeter sums it into days itself), so every meter has a daily comparison;
``SAMPLE@caltrack`` fits eemeter's CalTRACK 2.0 ("legacy") daily settings on any sample.
The first meter of each kind in a run is fitted twice (the first fit compiles); later ones
once, warm. Not imported by ``python -m benchmarks`` (its name does not start with
``bench_``).
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

warnings.filterwarnings("ignore")

SAMPLES = [
    "il-electricity-cdd-hdd-daily",
    "il-electricity-cdd-only-daily",
    "il-gas-hdd-only-daily",
    "il-gas-intercept-only-daily",
    "il-electricity-cdd-hdd-hourly",
    "il-electricity-cdd-only-hourly",
    "il-gas-hdd-only-hourly",
    "il-gas-intercept-only-hourly",
    "uk-electricity-hdd-only-hourly-sample-0",
    "uk-electricity-hdd-only-hourly-sample-1",
    "uk-electricity-hdd-only-hourly-sample-2",
    "uk-gas-hdd-only-hourly-sample-0",
]
DAILY_OF_HOURLY = [f"{s}@daily" for s in SAMPLES if "-hourly" in s]
# eemeter 4's own CalTRACK 2.0 daily settings (DailyModel(model="legacy"): no smoothing, least
# squares, no season or weekday splits, 10 days per degree term), on every sample
LEGACY = [f"{s}@caltrack" for s in SAMPLES]


def periods(meta: dict) -> tuple[pd.Timestamp, pd.Timestamp, pd.Timestamp, pd.Timestamp]:
    b_end = pd.Timestamp(meta["blackout_start_date"]).tz_convert("UTC")
    r_start = pd.Timestamp(meta["blackout_end_date"]).tz_convert("UTC")
    return b_end - pd.Timedelta(days=365), b_end, r_start, r_start + pd.Timedelta(days=365)


def run(sample: str, out: Path, first: bool) -> dict:
    """Fit one sample (twice when ``first``: the first fit of a model in a process compiles)."""
    import eemeter.eemeter as em

    uk = sample.startswith("uk")
    from eemeter.eemeter.samples import load_sample

    name, _, tag = sample.partition("@")
    meter, temp, meta = load_sample(name, tempF=not uk)
    if uk:  # eemeter's models take degF
        temp = temp * 9 / 5 + 32
    elec = meta["interpretation"] == "electricity"
    b0, b1, r0, r1 = periods(meta)
    obs = meter["value"] if "value" in meter else meter.iloc[:, 0]
    base = obs[(obs.index >= b0) & (obs.index < b1)]
    rep = obs[(obs.index >= r0) & (obs.index < r1)]
    daily = meta["freq"] == "daily" or tag in ("daily", "caltrack")
    if daily:
        bd = em.DailyBaselineData.from_series(base, temp, is_electricity_data=elec)
        rd = em.DailyReportingData.from_series(rep, temp, is_electricity_data=elec)
        model_cls = em.DailyModel
    else:
        bd = em.HourlyCaltrackBaselineData.from_series(base, temp, is_electricity_data=elec)
        rd = em.HourlyCaltrackReportingData.from_series(rep, temp, is_electricity_data=elec)
        model_cls = em.HourlyCaltrackModel
    times = []
    for _ in range(2 if first else 1):
        started = time.perf_counter()
        model = model_cls(model="legacy") if tag == "caltrack" else model_cls()
        if daily:
            model.fit(bd, ignore_disqualification=True)
        else:
            model.fit(bd)
        times.append(time.perf_counter() - started)
    # a disqualified daily model (a short baseline: UK samples 1 and 2) is still compared,
    # as its hourly model is; the data-sufficiency difference is noted in docs/savings.md
    pred = model.predict(rd, ignore_disqualification=True) if daily else model.predict(rd)
    pred = pred[(pred.index >= r0) & (pred.index < r1)]
    ok = pred["observed"].notna() & pred["predicted"].notna()
    predicted = float(pred.loc[ok, "predicted"].sum())
    savings = predicted - float(pred.loc[ok, "observed"].sum())
    fitted = (
        model.predict(bd, ignore_disqualification=True)
        if daily
        else model.predict(
            em.HourlyCaltrackReportingData.from_series(base, temp, is_electricity_data=elec)
        )
    )
    fitted = fitted[(fitted.index >= b0) & (fitted.index < b1)].copy()
    fitted["observed"] = bd.df["observed"].reindex(fitted.index)  # as fitted
    fok = fitted["observed"].notna() & fitted["predicted"].notna()
    resid = fitted.loc[fok, "observed"] - fitted.loc[fok, "predicted"]
    mean = float(fitted.loc[fok, "observed"].mean())
    cvrmse = 100 * float(np.sqrt(np.mean(resid**2))) / mean
    nmbe = 100 * float(resid.sum()) / (len(resid) * mean)
    # the series as fitted (baseline rows) and as projected (reporting rows), with eemeter's
    # prediction for each; the reporting frame spans the whole weather file, so cut it
    both = pd.concat(
        [
            fitted[["observed", "temperature", "predicted"]],
            pred[["observed", "temperature", "predicted"]],
        ]
    )
    both.index = both.index.tz_convert("UTC")
    both = both[~both.index.duplicated(keep="first")].sort_index()
    epoch = (both.index - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta(seconds=1)
    pd.DataFrame(
        {
            "t": epoch,
            "observed": both["observed"].values,
            "temperature_f": both["temperature"].values,
            "eemeter_predicted": both["predicted"].values,
        }
    ).to_csv(out / f"{sample}.csv", index=False)
    result = {
        "sample": sample,
        "freq": "daily" if daily else "hourly",
        "baseline": [int(b0.timestamp()), int(b1.timestamp())],
        "reporting": [int(r0.timestamp()), int(r1.timestamp())],
        "savings": savings,
        "savings_pct": 100 * savings / predicted if predicted else None,
        "cv_rmse_pct": cvrmse,
        "nmbe_pct": nmbe,
        "first_fit_s": times[0],
        "fit_s": min(times[1:]) if len(times) > 1 else times[0],
        "params": params(model) if daily else hourly_params(model),
    }
    (out / f"{sample}.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


def params(model) -> dict:
    """A daily model's submodels (season/day-type splits) and their coefficients, degF."""
    return {
        name: sub.coefficients.model_dump(mode="json")
        for name, sub in model.params.submodels.items()
    }


def hourly_params(model) -> dict:
    """CalTRACK hourly's month models: per segment its coefficients (degF), occupied hours
    of week and kept bin endpoints, so a month can be set beside ours."""
    inner = model.model.model  # HourlyCaltrackModel -> results -> CalTRACKHourlyModel
    out = {}
    for seg in inner.segment_models:
        name = seg.segment_name
        occ = inner.occupancy_lookup.get(name)
        occupied = inner.occupied_temperature_bins[name]
        unoccupied = inner.unoccupied_temperature_bins[name]
        out[name] = {
            "params": seg.model_params,
            "occupied_hours": None if occ is None else [int(h) for h in occ.index[occ == 1]],
            "occupied_bins_f": [float(e) for e, keep in occupied.items() if keep],
            "unoccupied_bins_f": [float(e) for e, keep in unoccupied.items() if keep],
        }
    return out


def main() -> None:
    if sys.argv[1:] == ["--list"]:
        print(" ".join(SAMPLES + DAILY_OF_HOURLY + LEGACY))
        return
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    results = []
    seen: set[bool] = set()
    for sample in sys.argv[2:] or SAMPLES + DAILY_OF_HOURLY + LEGACY:  # or some samples only
        daily = sample.endswith(("daily", "@caltrack"))
        first = daily not in seen
        seen.add(daily)
        started = time.perf_counter()
        results.append(run(sample, out, first))
        (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
        took = time.perf_counter() - started
        print(f"{sample}: {results[-1]['savings_pct']:.2f} % in {took:.1f} s", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
