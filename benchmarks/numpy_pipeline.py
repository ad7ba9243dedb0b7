"""The detector pipeline written the straightforward numpy way: the baseline of bench_pipeline.

Same maths as ``detectors`` (clean -> spike, stuck, level shift, drift -> overspend), built
from whole-array numpy operations: sorting, ``np.diff``, ``np.interp`` of the cumulative
counter at the grid edges, ``np.bincount`` group sums, sliding windows with
``np.nanmedian`` for the time-of-week profiles. What is a recursion over time (the nightly
CUSUM, the daily drift alarm, the overspend CUSUM) is a plain Python loop over nights, days
or intervals, as one would write it next to numpy; the nightly state machine is the
reference twin's (``tests/naive.py``). Events are built by the package's own event code
(each numpy detector is a drop-in for the compiled one), so on the same input both give the
same events (``tests/unit/test_numpy_pipeline.py``).

The cleaner handles what whole-array code handles simply: unsorted and repeated timestamps
(the last finite reading wins), NaN readings, register wraps at a known rollover, meter
resets and gaps (NaN, never filled). It does not undo small backward jitter or hold
implausible readings back the way ``detectors.clean`` does.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from detectors.anomaly import (
    DriftDetector,
    LevelShiftDetector,
    SpikeDetector,
    StuckDetector,
    _explained,
    detect_drift,
    detect_level_shift,
    detect_spikes,
    detect_stuck,
)
from detectors.baseline import BaselineModel
from detectors.events import Event, merge
from detectors.meter import MeterInfo
from detectors.overspend import OverspendConfig, OverspendDetector

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import naive  # the reference twins: the nightly state machine

DAY = 86400
MONDAY = 3 * 86400  # 1970-01-01 was a Thursday
SIGMA_PER_MAD = 1.4826
NAN = math.nan
Array = np.ndarray


# ------------------------------------------------------------------------------ cleaning


@dataclass(frozen=True)
class Cleaned:
    """Interval consumption on a regular grid (what the detectors need of a Consumption)."""

    start_s: Array
    interval_s: int
    consumption: Array
    resolution: float


def clean_counter(
    ts: Array,
    values: Array,
    *,
    interval_s: int,
    rollover: float | None,
    max_rate_per_h: float | None,
    start_s: int,
    end_s: int,
) -> Cleaned:
    """Counter readings -> consumption per interval of [start_s, end_s)."""
    order = np.argsort(ts, kind="stable")
    t, v = ts[order], values[order]
    ok = np.isfinite(v)
    t, v = t[ok], v[ok]
    last = np.r_[t[1:] != t[:-1], True]  # the last finite reading of a timestamp wins
    t, v = t[last], v[last]
    d = np.diff(v)
    dt = np.diff(t).astype(np.float64)
    rises = d[d > 0]
    resolution = float(rises.min()) if rises.size else 0.0
    per_s = (max_rate_per_h or 0.0) / 3600.0
    steps = np.diff(t)[:: max(1, t.size // 10_000)]
    gap_s = max(float(interval_s), 3.0 * float(np.median(steps)) if steps.size else 0.0)
    drop = d < -resolution
    d = np.where(d < 0, 0.0, d)  # jitter: a drop of one step counts as nothing
    if rollover:
        wrapped = v[1:] + (rollover - v[:-1])
        fits = (wrapped <= per_s * dt + resolution) if per_s else (v[:-1] >= 0.9 * rollover)
        wrap = drop & fits
        d = np.where(wrap, wrapped, d)
        drop &= ~wrap
    if drop.any():  # reset: the new reading is what was used since, if plausible
        plausible = (v[1:] <= per_s * dt + resolution) if per_s else v[1:] == 0
        d = np.where(drop, np.where(plausible, v[1:], NAN), d)
    unknown = ~np.isfinite(d) | (dt > gap_s)
    cumulative = np.r_[0.0, np.cumsum(np.where(np.isfinite(d), d, 0.0))]
    n = (end_s - start_s) // interval_s
    edges = start_s + interval_s * np.arange(n + 1, dtype=np.int64)
    cons = np.diff(np.interp(edges, t, cumulative))
    covered = (edges[1:] > t[0]) & (edges[:-1] < t[-1]) if t.size else np.zeros(n, bool)
    cons[~covered] = NAN
    if unknown.any():  # intervals a gap or an unknown step touches are NaN
        lo = (t[:-1][unknown] - start_s) // interval_s
        hi = -(-(t[1:][unknown] - start_s) // interval_s)
        mark = np.zeros(n + 1, np.int64)
        np.add.at(mark, np.clip(lo, 0, n), 1)
        np.add.at(mark, np.clip(hi, 0, n), -1)
        cons[np.cumsum(mark)[:n] > 0] = NAN
    return Cleaned(edges[:-1], interval_s, cons, resolution)


def resample_gauge(ts: Array, values: Array, *, interval_s: int, start_s: int, end_s: int) -> Array:
    """Mean of the finite readings per interval (NaN where none)."""
    n = (end_s - start_s) // interval_s
    j = (ts - start_s) // interval_s
    ok = np.isfinite(values) & (j >= 0) & (j < n)
    total = np.bincount(j[ok], weights=values[ok], minlength=n)
    count = np.bincount(j[ok], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, NAN)


# ------------------------------------------------------------------------------ profiles


def _previous_in_slot(slot: Array, values: Array, depth: int) -> Array:
    """Row i: the up to ``depth`` values before i (in order) with the same slot, NaN-padded."""
    m = values.size
    order = np.lexsort((np.arange(m), slot))
    s_sorted, v_sorted = slot[order], values[order]
    windows = sliding_window_view(np.r_[np.full(depth, NAN), v_sorted], depth)[:m]
    group_start = np.searchsorted(s_sorted, s_sorted, side="left")
    source = np.arange(m)[:, None] - depth + np.arange(depth)[None, :]
    out = np.empty((m, depth))
    out[order] = np.where(source >= group_start[:, None], windows, NAN)
    return out


def _previous_in_other(slot: Array, other: Array, values: Array, depth: int) -> Array:
    """Row i: the up to ``depth`` latest values before i whose slot is ``other[i]``."""
    m = values.size
    inclusive = np.concatenate(
        [_previous_in_slot(slot, values, depth)[:, 1:], values[:, None]], axis=1
    )  # row j: the values of j's slot up to and including j
    order = np.lexsort((np.arange(m), slot))
    key = slot[order].astype(np.int64) * m + order
    k = np.searchsorted(key, other.astype(np.int64) * m + np.arange(m)) - 1
    valid = k >= 0
    valid[valid] = slot[order[k[valid]]] == other[valid]
    out = np.full((m, depth), NAN)
    out[valid] = inclusive[order[k[valid]]]
    return out


def _profile(
    t: Array, x: Array, det: SpikeDetector | StuckDetector, mad: bool
) -> tuple[Array, Array, Array]:
    """(found, median, MAD) per finite value from its time-of-week slot, else time of day."""
    slot, off = float(det.slot_s), float(det.utc_offset_s)
    tf = t.astype(np.float64)
    tow = np.floor((tf + off + MONDAY) / slot).astype(np.int64) % (7 * DAY // det.slot_s)
    tod = np.floor((tf + off) / slot).astype(np.int64) % (DAY // det.slot_s)
    week = _previous_in_slot(tow, x, det.tow_depth)
    day = _previous_in_slot(tod, x, det.tod_depth)
    use_week = (det.tow_depth - np.isnan(week).sum(axis=1)) >= det.min_count
    use_day = ~use_week & ((det.tod_depth - np.isnan(day).sum(axis=1)) >= det.min_count)
    found = use_week | use_day
    med = np.full(x.size, NAN)
    spread = np.full(x.size, NAN)
    for use, w in ((use_week, week), (use_day, day)):
        if use.any():
            rows = w[use]
            m = np.nanmedian(rows, axis=1)
            med[use] = m
            if mad:
                spread[use] = np.nanmedian(np.abs(rows - m[:, None]), axis=1)
    return found, med, spread


def _spike_profile(t: Array, x: Array, det: SpikeDetector) -> tuple[Array, Array, Array, Array]:
    """(found, median, MAD, source) per finite value: time of week, else time of day on the
    same kind of day, else (after a day's worth of values) the most recent values."""
    slot, off = float(det.slot_s), float(det.utc_offset_s)
    per_day = DAY // det.slot_s
    tf = t.astype(np.float64)
    tow = np.floor((tf + off + MONDAY) / slot).astype(np.int64) % (7 * DAY // det.slot_s)
    weekend = (np.floor((tf + off) / DAY).astype(np.int64) + 3) % 7 >= 5
    tod = np.floor((tf + off) / slot).astype(np.int64) % per_day + per_day * weekend
    learned = np.arange(x.size)
    choices = []
    for rows, depth in ((tow, det.tow_depth), (tod, det.tod_depth),
                        (np.zeros(x.size, np.int64), det.tod_depth)):  # fmt: skip
        w = _previous_in_slot(rows, x, depth)
        choices.append((w, (depth - np.isnan(w).sum(axis=1)) >= det.min_count))
    week, day, recent = choices
    day = (day[0], (det.tod_depth - np.isnan(day[0]).sum(axis=1)) >= 1)  # however few
    # the recent values, unless x is within 25 % of this time on the other kind of day
    other = _previous_in_other(tod, tod + np.where(weekend, -per_day, per_day), x, det.tod_depth)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        like = np.abs(x - np.nanmedian(other, axis=1)) <= 0.25 * np.abs(x)
    recent = (np.where(like[:, None], other, recent[0]), recent[1] & (learned >= per_day))
    choices = [week, day, recent]
    taken = np.zeros(x.size, bool)
    med, spread, source = (np.full(x.size, NAN) for _ in range(3))
    for code, (w, enough) in enumerate(choices):
        use = enough & ~taken & (learned >= det.warmup_n)
        taken |= use
        if use.any():
            m = np.nanmedian(w[use], axis=1)
            med[use] = m
            spread[use] = np.nanmedian(np.abs(w[use] - m[:, None]), axis=1)
            source[use] = code
    return taken, med, spread, source


class NumpySpike(SpikeDetector):
    def process(self, t_s, values, active=None, production=None, temperature=None):  # type: ignore[no-untyped-def,override]
        x = np.asarray(values, dtype=np.float64)
        scores, outs = np.zeros(x.size), np.full((x.size, 3), NAN)
        fin = np.flatnonzero(np.isfinite(x))
        xf = x[fin]
        found, med, mad, source = _spike_profile(np.asarray(t_s)[fin], xf, self)
        learned = np.arange(xf.size)
        abs_sum = np.r_[0.0, np.cumsum(np.abs(xf))[:-1]]
        with np.errstate(invalid="ignore", divide="ignore"):
            level = np.where(learned > 0, abs_sum / np.maximum(learned, 1), 0.0)
        ok = found & (learned >= self.warmup_n)
        scale = np.maximum.reduce([
            SIGMA_PER_MAD * mad, self.floor_rel * np.abs(med), self.floor_rel * level,
            np.full(xf.size, self.floor_abs), np.full(xf.size, 1e-12),
        ])  # fmt: skip
        rise = ok & (xf > med)
        scores[fin[rise]] = (xf[rise] - med[rise]) / scale[rise]
        outs[fin[ok], 0] = med[ok]
        outs[fin[rise], 1] = scale[rise]
        outs[fin[ok], 2] = source[ok]
        return scores, outs


class NumpyStuck(StuckDetector):
    def process(self, t_s, values, active=None, production=None, temperature=None):  # type: ignore[no-untyped-def,override]
        x = np.asarray(values, dtype=np.float64)
        t = np.asarray(t_s)
        act = np.full(x.size, NAN) if active is None else np.asarray(active, dtype=np.float64)
        scores, outs = np.zeros(x.size), np.full((x.size, 3), NAN)
        fin = np.flatnonzero(np.isfinite(x))
        xf = x[fin]
        found, med, _ = _profile(t[fin], xf, self, mad=False)
        warm = np.arange(xf.size) >= self.warmup_n
        with np.errstate(invalid="ignore"):
            expected = warm & ((found & (med > self.eps)) | (act[fin] >= 0.5))
        moving = xf > self.eps
        still = ~moving & expected
        count = np.cumsum(still)
        run_n = count - np.maximum.accumulate(np.where(moving, count, 0))
        gain = np.where(still & found, np.maximum(med, 0.0), 0.0)
        total = np.cumsum(gain)
        run_expected = total - np.maximum.accumulate(np.where(moving, total, 0.0))
        idx = np.arange(xf.size)
        first = np.maximum.accumulate(np.where((still & (run_n == 1)) | moving, idx, 0))
        in_run = run_n > 0
        scores[fin] = run_n * self.interval_s / 3600.0
        outs[fin[in_run], 0] = t[fin][first[in_run]]
        outs[fin[in_run], 1] = run_expected[in_run]
        outs[fin[~moving], 2] = med[~moving]
        return scores, outs


def _runs_of(key: Array, member: Array) -> tuple[Array, Array, Array]:
    """(first index, stop index, key) of each run of equal ``key`` among ``member`` rows."""
    idx = np.flatnonzero(member)
    if idx.size == 0:
        return idx, idx, idx
    k = key[idx]
    cut = np.flatnonzero((np.diff(idx) != 1) | (np.diff(k) != 0)) + 1
    first = idx[np.r_[0, cut]]
    stop = idx[np.r_[cut - 1, idx.size - 1]] + 1
    return first, stop, k[np.r_[0, cut]]


def _run_index(n: int, first: Array) -> Array:
    """Per row, the number of the last run that started at or before it (-1: none)."""
    marker = np.zeros(n, np.int64)
    marker[first] = 1
    return np.cumsum(marker) - 1


def _fill_forward(n: int, at: Array, rows: Array, initial: Array) -> Array:
    """Per row i, ``rows[j]`` of the last ``at[j] <= i`` (``initial`` before the first)."""
    pos = np.searchsorted(at, np.arange(n), side="right") - 1
    table = np.vstack([initial[None, :], rows]) if rows.size else initial[None, :]
    return table[pos + 1]


class NumpyLevelShift(LevelShiftDetector):
    def process(self, t_s, values, active=None, production=None, temperature=None):  # type: ignore[no-untyped-def,override]
        x = np.asarray(values, dtype=np.float64)
        t = np.asarray(t_s)
        n = x.size
        act = np.full(n, NAN) if active is None else np.asarray(active, dtype=np.float64)
        temp = np.full(n, NAN) if temperature is None else np.asarray(temperature, np.float64)
        start_s, length = self.night_start_h * 3600.0, self.night_length_s
        offset = t.astype(np.float64) - start_s
        key = np.floor(offset / DAY)
        inside = offset - key * DAY < length
        first, stop, keys = _runs_of(key, inside)
        with np.errstate(invalid="ignore"):
            use = inside & np.isfinite(x) & ~(act >= 0.5)
        night_of = _run_index(n, first)
        sums = np.bincount(night_of[use], weights=x[use], minlength=first.size)
        counts = np.bincount(night_of[use], minlength=first.size)
        with_t = use & np.isfinite(temp)
        t_sums = np.bincount(night_of[with_t], weights=temp[with_t], minlength=first.size)
        t_counts = np.bincount(night_of[with_t], minlength=first.size)
        det = naive._LevelShift(
            dict(length=length, min_ref=self.min_ref, ref_nights=self.ref_nights,
                 step_sigma=self.step_sigma, step_rel=self.step_rel, step_abs=self.step_abs,
                 h_steps=self.h_steps, method=self.method,
                 use_temperature=self.use_temperature)
        )  # fmt: skip
        need = self.min_coverage * length / self.interval_s
        at: list[int] = []
        rows: list[tuple[float, ...]] = []
        completes: list[int] = []
        score = 0.0
        for j in range(first.size):  # one step per night, in Python
            if stop[j] >= n:
                break  # the data ends inside this night
            closed_end = adjusted = measured = night_start = NAN
            closed = False
            if counts[j] > 0 and counts[j] >= need:
                measured = sums[j] / counts[j] * 3600 / self.interval_s
                night_t = t_sums[j] / t_counts[j] if t_counts[j] else NAN
                night_start = keys[j] * DAY + start_s
                close_t = det.close_t
                score, adjusted = det.night(measured, night_t, night_start)
                if score < 0:
                    closed = True
                    closed_end = close_t if math.isfinite(close_t) else night_start
                    score = 0.0
            step = naive._mean(det.shift) if det.shift and math.isfinite(det.change_t) else NAN
            completes.append(stop[j])
            at.append(stop[j])
            rows.append((score, float(det.alarm), det.change_t, step, det.ref, closed_end,
                         adjusted, det.min_step, night_start, measured, det.slope))
            if closed:  # reported; from the next interval on the excursion is forgotten
                det.change_t, det.close_t, det.shift = NAN, NAN, []
                if stop[j] + 1 < n:
                    at.append(stop[j] + 1)
                    rows.append((score, float(det.alarm), NAN, NAN, det.ref, NAN, NAN,
                                 det.min_step, NAN, NAN, det.slope))
        table = np.array(rows).reshape(-1, 11)
        initial = np.array([0.0, 0.0, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, 0.0])
        out = _fill_forward(n, np.array(at, dtype=np.int64), table, initial)
        once = np.zeros(n, bool)  # these columns hold only on the interval completing a night
        once[np.array(completes, dtype=np.int64)] = True
        for c in (5, 6, 8, 9):
            out[~once, c] = NAN
        return out[:, 0].copy(), np.ascontiguousarray(out[:, 1:])


class NumpyDrift(DriftDetector):
    def process(self, t_s, values, active=None, production=None, temperature=None):  # type: ignore[no-untyped-def,override]
        x = np.asarray(values, dtype=np.float64)
        t = np.asarray(t_s)
        n = x.size
        prod = np.full(n, NAN) if production is None else np.asarray(production, np.float64)
        key = np.floor((t.astype(np.float64) + self.utc_offset_s) / DAY)
        first, stop, keys = _runs_of(key, np.ones(n, bool))
        day_of = _run_index(n, first)
        use = np.isfinite(x) & (np.isfinite(prod) if self.use_production else True)
        cons = np.bincount(day_of[use], weights=x[use], minlength=first.size)
        count = np.bincount(day_of[use], minlength=first.size)
        made = np.bincount(day_of[use], weights=prod[use], minlength=first.size)
        need = self.min_coverage * DAY / self.interval_s
        at, rows = [], []
        reference: list[float] = []
        window: list[float] = []
        ref, dev, alarm, streak = NAN, NAN, False, 0
        for j in range(first.size - 1):  # a day completes when the next one starts
            y = NAN
            if count[j] > 0 and count[j] >= need:
                if self.use_production:
                    y = cons[j] / made[j] if made[j] > self.min_production else NAN
                else:
                    y = cons[j] / count[j] * 3600 / self.interval_s
            if not math.isfinite(y):
                continue
            if not math.isfinite(ref):
                reference.append(y)
                if len(reference) >= self.ref_days:
                    ref = float(np.median(reference))
            else:
                window = [*window, y][-self.window_days :]
                if len(window) == self.window_days:
                    dev = float(np.median(window)) / ref - 1 if ref != 0 else 0.0
                    limit = self.min_rel if not alarm else self.min_rel / 2
                    hit = dev >= limit if not alarm else dev < limit
                    streak = streak + 1 if hit else 0
                    if streak >= self.confirm_days:
                        alarm, streak = not alarm, 0
            at.append(stop[j])
            rows.append((max(0.0, dev / self.min_rel) if math.isfinite(dev) else 0.0,
                         float(alarm), dev, ref, y, keys[j] * DAY - self.utc_offset_s))
        table = np.array(rows).reshape(-1, 6)
        out = _fill_forward(n, np.array(at, dtype=np.int64),
                            table, np.array([0.0, 0.0, NAN, NAN, NAN, NAN]))
        once = np.zeros(n, bool)
        once[np.array(at, dtype=np.int64)] = True
        out[~once, 4] = NAN
        out[~once, 5] = NAN
        return out[:, 0].copy(), np.ascontiguousarray(out[:, 1:])


def detect_anomalies(
    cons: Cleaned,
    meter: MeterInfo,
    *,
    active: Array | None,
    production: Array | None,
    temperature: Array | None,
    night_hours_utc: tuple[float, float] = (0.0, 4.0),
) -> list[Event]:
    """``detectors.anomaly.detect_anomalies`` with the numpy detectors."""
    t, x, step = cons.start_s, cons.consumption, cons.interval_s
    night_length_s = ((night_hours_utc[1] - night_hours_utc[0]) % 24.0) * 3600.0 or 86400.0
    spikes = detect_spikes(t, x, meter=meter, interval_s=step,
                           detector=NumpySpike(floor_abs=cons.resolution)).events
    events: list[Event] = list(detect_stuck(
        t, x, meter=meter, active=active, interval_s=step,
        detector=NumpyStuck(interval_s=step)).events)  # fmt: skip
    events += detect_level_shift(
        t, x, meter=meter, active=active, temperature=temperature, interval_s=step,
        detector=NumpyLevelShift(
            *night_hours_utc, interval_s=step, use_temperature=temperature is not None,
            step_abs=2.0 * cons.resolution * 3600.0 / night_length_s,
        ),
    ).events  # fmt: skip
    events += detect_drift(
        t, x, meter=meter, production=production, interval_s=step,
        detector=NumpyDrift(interval_s=step, use_production=production is not None),
    ).events  # fmt: skip
    events += [e for e in spikes if not _explained(e, events)]
    return merge(events)


# ------------------------------------------------------------------------------ overspend


def predict(model: BaselineModel, t: Array, temperature: Array, production: Array) -> Array:
    """The baseline's expected consumption per interval (UTC models, week or daytype)."""
    if model.timezone != "UTC":
        raise ValueError("the numpy pipeline predicts UTC baselines only")
    local = t.astype(np.int64)
    day = local // DAY
    weekday = (day + 3) % 7
    slots = DAY // model.interval_s
    slot = (local - day * DAY) // model.interval_s
    kind = weekday if model.time_of_week == "week" else (weekday >= 5).astype(np.int64)
    e = model._alpha[kind * slots + slot]
    if model.production_coef is not None:
        e = e + model.production_coef * production
    if model.running_coef is not None:
        e = e + model.running_coef * np.where(np.isfinite(production), production > 0, NAN)
    if model.heating_coef is not None:
        e = e + model.heating_coef * np.maximum(0.0, model.heating_balance_c - temperature)
    if model.cooling_coef is not None:
        e = e + model.cooling_coef * np.maximum(0.0, temperature - model.cooling_balance_c)
    if model.uses_temperature:
        e = np.where(np.isfinite(temperature), e, NAN)
    return e


def detect_overspend(
    model: BaselineModel,
    meter: MeterInfo,
    t: Array,
    consumption: Array,
    *,
    temperature: Array,
    production: Array,
    config: OverspendConfig | None = None,
) -> list[Event]:
    """Overspend CUSUM: residuals with numpy, the recursion a Python loop over intervals."""
    cfg = config or OverspendConfig()
    expected = predict(model, t, temperature, production)
    scale = model.prediction_std(expected, long_run=True)
    r = consumption - expected
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = (scale > 0) & np.isfinite(r) & np.isfinite(scale)
        z = np.minimum(r / scale, cfg.clip_sigma)
        k = np.maximum(cfg.k_sigma, cfg.k_rel * expected / scale)
    h, h_low, cap = cfg.h_sigma, cfg.release * cfg.h_sigma, cfg.cap * cfg.h_sigma
    det = OverspendDetector(model, meter, cfg)  # for its event text only
    events: list[Event] = []
    s, is_open, below = 0.0, False, 0
    run_t, run_r, run_e = NAN, 0.0, 0.0
    peak_s, peak_t, peak_r, peak_e = 0.0, NAN, 0.0, 0.0
    for ti, oki, zi, ki, ri, ei in zip(
        t.tolist(), ok.tolist(), z.tolist(), k.tolist(), r.tolist(), expected.tolist(),
        strict=True,
    ):
        if not oki:
            continue
        s_new = min(cap, max(0.0, s + zi - ki))
        if not is_open:
            if s_new == 0.0:
                run_t, run_r, run_e = NAN, 0.0, 0.0
            else:
                if s == 0.0:
                    run_t, run_r, run_e = float(ti), 0.0, 0.0
                run_r += ri
                run_e += ei
            s = s_new
            if s_new > h:
                is_open, below = True, 0
                peak_s, peak_t, peak_r, peak_e = s_new, float(ti), run_r, run_e
            continue
        run_r += ri
        run_e += ei
        s = s_new
        if s_new >= peak_s:
            peak_s, peak_t, peak_r, peak_e = s_new, float(ti), run_r, run_e
        below = below + 1 if s_new < h_low else 0
        if below >= cfg.min_close_intervals:
            events.append(det._event(run_t, peak_t, peak_r, peak_e, peak_s))
            s, is_open, below = 0.0, False, 0
            run_t, run_r, run_e, peak_s, peak_t = NAN, 0.0, 0.0, 0.0, NAN
    if is_open:
        events.append(det._event(run_t, None, run_r, run_e, peak_s))
    return events

