"""Slow, obviously correct plain-Python twins of every detector kernel.

Each function mirrors one kernel in ``detectors/kernels`` (same arguments, same results)
but is written for reading, not speed: lists, ``statistics``, one rule per line. Tests
compare kernel and twin on generated inputs (NaN, inf, empty, constant stretches).
"""

from __future__ import annotations

import itertools
import math
import statistics
from typing import Any

import numpy as np

# Quality bits, as documented in detectors.clean.Quality.
DUPLICATE, OUT_OF_ORDER, INVALID, JITTER = 1, 2, 4, 8
ROLLOVER, RESET, UNKNOWN, GAP = 16, 32, 64, 128
IMPOSSIBLE_RATE, PARTIAL, NO_DATA = 256, 512, 1024


# ----------------------------------------------------------------------------- cleaning


def order_readings(ts: list[int], values: list[float]) -> tuple[list[int], list[int]]:
    """Indices kept (sorted by time, one per timestamp) and their flags."""
    late = [i > 0 and ts[i] < max(ts[:i]) for i in range(len(ts))]
    keep, flags = [], []
    for t in sorted(set(ts)):
        same = [i for i in range(len(ts)) if ts[i] == t]  # input order
        finite = [i for i in same if math.isfinite(values[i])]
        chosen = finite[-1] if finite else same[-1]
        f = DUPLICATE if len(same) > 1 else 0
        if any(late[i] for i in same):
            f |= OUT_OF_ORDER
        keep.append(chosen)
        flags.append(f)
    return keep, flags


def min_rise(values: list[float]) -> float:
    """Smallest rise between consecutive finite values, 0 when there is none."""
    finite = [v for v in values if math.isfinite(v)]
    rises = [b - a for a, b in itertools.pairwise(finite) if b > a]
    return min(rises) if rises else 0.0


def _fits(delta: float, dt: float, max_rate_per_s: float, resolution: float) -> bool:
    if delta < 0:
        return False
    return max_rate_per_s <= 0 or delta <= max_rate_per_s * dt * (1 + 1e-9) + resolution + 1e-12


def _wrapped(
    prev: float, cur: float, dt: float, rollover: float, max_rate_per_s: float, resolution: float
) -> float:
    """Consumption across a wrap, or NaN when no register size explains the drop."""
    if cur < 0:
        return math.nan
    if rollover > 0:
        sizes = [rollover]
    else:
        sizes = sorted(
            w * s
            for w in (2.0**16, 2.0**32, 2.0**64)
            for s in (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
        )
    for r in sizes:
        if prev >= r:
            continue
        wrapped = cur + (r - prev)
        ok = (
            _fits(wrapped, dt, max_rate_per_s, resolution)
            if max_rate_per_s > 0
            else prev >= 0.9 * r and cur <= 0.1 * r
        )
        if ok:
            return wrapped
    return math.nan


def counter_segments(
    ts: list[int],
    values: list[float],
    in_flags: list[int],
    rollover: float,
    max_rate_per_s: float,
    resolution: float,
    gap_s: float,
    jitter_abs: float,
    jitter_rel: float,
) -> list[tuple[int, int, float, int, float, float]]:
    """(t0, t1, delta, flags, before, level) per accepted reading after the first."""
    out: list[tuple[int, int, float, int, float, float]] = []
    ref: tuple[int, float] | None = None  # (time, value) consumption is counted from
    held: tuple[int, float, int] | None = None  # implausible reading waiting for the next
    pending = 0

    def emit(t0: int, t1: int, d: float, f: int, before: float, level: float) -> None:
        if t1 - t0 > gap_s:
            f |= GAP
        out.append((t0, t1, d, f, before, level))

    for t, v, f0 in zip(ts, values, in_flags, strict=True):
        f = f0 | pending
        pending = 0
        if not math.isfinite(v):
            pending = f | INVALID
            continue
        if ref is None:
            ref = (t, v)
            pending = f
            continue
        rt, rv = ref
        d = v - rv
        if d >= 0 and _fits(d, t - rt, max_rate_per_s, resolution):
            if held is not None:  # held reading was a glitch
                f |= held[2] | IMPOSSIBLE_RATE
                held = None
            emit(rt, t, d, f, rv, v)
            ref = (t, v)
        elif d >= 0:
            if held is not None and _fits(v - held[1], t - held[0], max_rate_per_s, resolution):
                ht, hv, hf = held
                emit(rt, ht, math.nan, hf | IMPOSSIBLE_RATE | UNKNOWN, rv, hv)
                emit(ht, t, v - hv, f, hv, v)
                ref = (t, v)
                held = None
            else:
                carried = held[2] | IMPOSSIBLE_RATE if held is not None else 0
                held = (t, v, f | carried)
        else:
            if held is not None:
                f |= held[2] | IMPOSSIBLE_RATE
                held = None
            if -d <= max(jitter_abs, jitter_rel * abs(rv), resolution):
                emit(rt, t, 0.0, f | JITTER, rv, v)
                ref = (t, rv)  # the higher reading stays the reference
                continue
            w = _wrapped(rv, v, t - rt, rollover, max_rate_per_s, resolution)
            if not math.isnan(w):
                emit(rt, t, w, f | ROLLOVER, rv, v)
            elif max_rate_per_s > 0 and _fits(v, t - rt, max_rate_per_s, resolution):
                emit(rt, t, v, f | RESET, rv, v)
            elif v == 0:
                emit(rt, t, 0.0, f | RESET, rv, v)
            else:
                emit(rt, t, math.nan, f | RESET | UNKNOWN, rv, v)
            ref = (t, v)
    if held is not None and ref is not None:
        emit(ref[0], held[0], math.nan, held[2] | IMPOSSIBLE_RATE | UNKNOWN, ref[1], held[1])
    return out


def resample_segments(
    segments: list[tuple[int, int, float, int]], grid_start: int, interval_s: int, n: int
) -> tuple[list[float], list[int]]:
    """Consumption and flags per interval: each segment spread by time overlap."""
    cons, flags = [], []
    for j in range(n):
        lo, hi = grid_start + j * interval_s, grid_start + (j + 1) * interval_s
        total, f, covered = 0.0, 0, 0
        for t0, t1, d, sf in segments:
            overlap = min(t1, hi) - max(t0, lo)
            if overlap > 0:
                total += d * overlap / (t1 - t0)
                f |= sf
                covered += overlap
        if covered == 0:
            total, f = math.nan, f | NO_DATA
        elif covered < interval_s:
            f |= PARTIAL
        cons.append(total)
        flags.append(f)
    return cons, flags


def resample_gauge(
    ts: list[int], values: list[float], grid_start: int, interval_s: int, n: int
) -> tuple[list[float], list[int]]:
    """Mean and count of the finite readings per interval."""
    means, counts = [], []
    for j in range(n):
        lo = grid_start + j * interval_s
        inside = [
            v
            for t, v in zip(ts, values, strict=True)
            if lo <= t < lo + interval_s and math.isfinite(v)
        ]
        means.append(statistics.fmean(inside) if inside else math.nan)
        counts.append(len(inside))
    return means, counts


def as_array(values: list[float]) -> np.ndarray:
    """Helper for comparisons in tests."""
    return np.asarray(values, dtype=np.float64)


# ----------------------------------------------------------------------------- anomaly

WEEK, DAY = 7 * 86400, 86400
MONDAY = 3 * 86400  # 1970-01-01 was a Thursday
SIGMA_PER_MAD = 1.4826
NAN = math.nan


def fsum_left(values: list[float]) -> float:
    """Left-to-right float sum, like the kernels' running sums (``sum`` may compensate)."""
    total = 0.0
    for v in values:
        total += v
    return total


def _mean(values: list[float]) -> float:
    return fsum_left(values) / len(values)


def _median_mad(values: list[float]) -> tuple[float, float]:
    med = statistics.median(values)
    return med, statistics.median([abs(v - med) for v in values])


class _Profile:
    """Recent values per time-of-week slot, with time-of-day slots as the fallback."""

    def __init__(self, slot_s: int, tow_depth: int, tod_depth: int, offset_s: int) -> None:
        self.slot_s, self.offset_s = slot_s, offset_s
        self.tow: list[list[float]] = [[] for _ in range(WEEK // slot_s)]
        self.tod: list[list[float]] = [[] for _ in range(DAY // slot_s)]
        self.tow_depth, self.tod_depth = tow_depth, tod_depth

    def slots(self, t: int) -> tuple[list[float], list[float]]:
        week_slot = math.floor((t + self.offset_s + MONDAY) / self.slot_s) % len(self.tow)
        day_slot = math.floor((t + self.offset_s) / self.slot_s) % len(self.tod)
        return self.tow[week_slot], self.tod[day_slot]

    def lookup(self, t: int, min_count: int) -> tuple[float, float] | None:
        week, day = self.slots(t)
        for ring in (week, day):
            if len(ring) >= min_count:
                return _median_mad(ring)
        return None

    def learn(self, t: int, x: float) -> None:
        week, day = self.slots(t)
        for ring, depth in ((week, self.tow_depth), (day, self.tod_depth)):
            ring.append(x)
            if len(ring) > depth:
                ring.pop(0)


def spike(
    t: list[int],
    x: list[float],
    *,
    slot_s: int,
    tow_depth: int,
    tod_depth: int,
    min_count: int,
    utc_offset_s: int,
    floor_rel: float,
    floor_abs: float,
    warmup_n: int,
) -> tuple[list[float], list[tuple[float, float, float]]]:
    """Robust z of each interval against the values seen before in its slot.

    The slot is the time of week; else the time of day on the same kind of day (weekday,
    weekend); else, after a day's worth of values, the most recent values.
    """
    per_day = DAY // slot_s
    week: list[list[float]] = [[] for _ in range(WEEK // slot_s)]
    day: dict[tuple[bool, int], list[float]] = {}
    recent: list[float] = []
    learned: list[float] = []
    scores, outs = [], []
    for ti, xi in zip(t, x, strict=True):
        if not math.isfinite(xi):
            scores.append(0.0)
            outs.append((NAN, NAN, NAN))
            continue
        week_slot = math.floor((ti + utc_offset_s + MONDAY) / slot_s) % len(week)
        weekend = (math.floor((ti + utc_offset_s) / DAY) + 3) % 7 >= 5
        key = (weekend, math.floor((ti + utc_offset_s) / slot_s) % per_day)
        day_values = day.setdefault(key, [])
        values, source = None, NAN
        if len(learned) >= warmup_n:
            if len(week[week_slot]) >= min_count:
                values, source = week[week_slot], 0.0
            elif day_values:
                values, source = day_values, 1.0
            elif len(learned) >= per_day and len(recent) >= min_count:
                other = day.get((not weekend, key[1]), [])
                like = bool(other) and abs(xi - statistics.median(other)) <= 0.25 * abs(xi)
                values, source = (other if like else recent), 2.0
        score, out = 0.0, (NAN, NAN, NAN)
        if values is not None:
            med, mad = _median_mad(values)
            level = _mean(learned) if learned else 0.0
            scale = max(
                SIGMA_PER_MAD * mad, floor_rel * abs(med), floor_rel * level, floor_abs, 1e-12
            )
            # only a rise scores; the scale is reported only for one
            score, out = ((xi - med) / scale, (med, scale, source)) if xi > med else (
                0.0, (med, NAN, source))
        for ring, depth in ((week[week_slot], tow_depth), (day_values, tod_depth),
                            (recent, tod_depth)):
            ring.append(xi)
            if len(ring) > depth:
                ring.pop(0)
        learned.append(abs(xi))
        scores.append(score)
        outs.append(out)
    return scores, outs


def stuck(
    t: list[int],
    x: list[float],
    active: list[float],
    *,
    slot_s: int,
    tow_depth: int,
    tod_depth: int,
    min_count: int,
    utc_offset_s: int,
    interval_s: int,
    eps: float,
    warmup_n: int,
) -> tuple[list[float], list[tuple[float, float, float]]]:
    """Hours standing still while production runs or the profile says it should move."""
    profile = _Profile(slot_s, tow_depth, tod_depth, utc_offset_s)
    learned = 0
    run_n, run_start, run_expected = 0, NAN, 0.0
    scores, outs = [], []
    for ti, xi, ai in zip(t, x, active, strict=True):
        if not math.isfinite(xi):
            scores.append(0.0)
            outs.append((NAN, NAN, NAN))
            continue
        found = profile.lookup(ti, min_count)
        med = found[0] if found is not None else NAN
        should_move = learned >= warmup_n and ((found is not None and med > eps) or ai >= 0.5)
        if xi > eps:
            run_n, run_start, run_expected = 0, NAN, 0.0
        elif should_move:
            if run_n == 0:
                run_start = float(ti)
            run_n += 1
            if found is not None:
                run_expected += max(med, 0.0)
        scores.append(run_n * interval_s / 3600.0)
        still = med if not xi > eps else NAN  # the median is only looked at standing still
        outs.append((run_start, run_expected, still) if run_n else (NAN, NAN, still))
        profile.learn(ti, xi)
        learned += 1
    return scores, outs


class _LevelShift:
    """CUSUM / Page-Hinkley on nightly means, written out one rule at a time."""

    def __init__(self, p: dict[str, Any]) -> None:
        self.p = p
        self.ref_nights: list[tuple[float, float]] = []  # (rate, temperature), newest last
        self.pending: list[tuple[float, float]] = []  # nights of an excursion in progress
        self.mean_nights: list[float] = []  # Page-Hinkley reference: nights outside alarms
        self.s = 0.0  # CUSUM, or Page-Hinkley cumulative sum
        self.m = 0.0  # Page-Hinkley running minimum
        self.alarm = False
        self.change_t = NAN
        self.shift: list[float] = []  # night - reference over the excursion
        self.c = 0.0
        self.close_t = NAN
        self.last_shift_end = NAN
        self.ref = NAN
        self.min_step = NAN
        self.slope = 0.0
        self.t_mid = NAN

    def weather(self) -> tuple[float, float]:
        """Least-squares slope of rate on temperature over the reference nights."""
        pairs = [(y, t) for y, t in self.ref_nights if math.isfinite(t)]
        if len(pairs) < 3:
            return 0.0, NAN
        ys = [y for y, _ in pairs]
        ts = [t for _, t in pairs]
        t_mean, y_mean = _mean(ts), _mean(ys)
        sxx = fsum_left([(t - t_mean) ** 2 for t in ts])
        sxy = fsum_left([(t - t_mean) * (y - y_mean) for y, t in pairs])
        t_mid = statistics.median(ts)
        if sxx <= 1e-9 * len(ts):
            return 0.0, t_mid
        return sxy / sxx, t_mid

    @staticmethod
    def adjusted(y: float, temp: float, slope: float, t_mid: float) -> float:
        if slope == 0 or not math.isfinite(temp) or not math.isfinite(t_mid):
            return y
        return y - slope * (temp - t_mid)

    def night(self, y_raw: float, temp: float, start: float) -> tuple[float, float]:
        """Learn one night; (score or -1 when an alarm closes, weather-normalised rate)."""
        p = self.p
        end = start + p["length"]
        if len(self.ref_nights) < p["min_ref"]:
            self._remember(y_raw, temp)
            self.mean_nights.append(y_raw)
            return 0.0, y_raw
        if not self.alarm:
            slope, t_mid = self.weather() if p["use_temperature"] else (0.0, NAN)
            adj = [self.adjusted(v, t, slope, t_mid) for v, t in self.ref_nights]
            med, mad = _median_mad(adj)
            y = self.adjusted(y_raw, temp, slope, t_mid)
            cusum = p["method"] == "cusum"
            ref = med if cusum else _mean(self.mean_nights)
            min_step = max(
                p["step_sigma"] * SIGMA_PER_MAD * mad,
                p["step_rel"] * abs(ref),
                p["step_abs"],
                1e-12,
            )
            k, h = min_step / 2, p["h_steps"] * min_step
            self.ref, self.min_step, self.slope, self.t_mid = ref, min_step, slope, t_mid
            if cusum:
                before = self.s
                self.s = max(0.0, self.s + y - ref - k)
                stat = self.s
            else:
                before = self.s - self.m
                self.s += y - ref - k
                self.m = min(self.m, self.s)
                stat = self.s - self.m
                self.mean_nights.append(y)
            if stat > 0:
                if before == 0:
                    self.change_t, self.shift = start, []
                self.shift.append(y - ref)
                self.last_shift_end = end
            else:
                self.change_t = NAN
            if stat > h:
                self.alarm, self.c, self.close_t = True, 0.0, NAN
                self.pending = []  # a real step never joins the reference
                return max(1.0, _mean(self.shift) / min_step), y
            if stat == 0:  # quiet again: the excursion was normal after all
                for night in self.pending:
                    self._remember(*night)
                self.pending = []
                self._remember(y_raw, temp)
            else:
                if len(self.pending) >= p["ref_nights"]:
                    for night in self.pending:
                        self._remember(*night)
                    self.pending = []
                self.pending.append((y_raw, temp))
            return stat / h, y
        y = self.adjusted(y_raw, temp, self.slope, self.t_mid)
        step = _mean(self.shift)
        before = self.c
        self.c = max(0.0, self.c + self.ref + step / 2 - y)
        if self.c == 0:
            self.shift.append(y - self.ref)
            self.last_shift_end = end
            self.close_t = NAN
        elif before == 0:
            self.close_t = (self.last_shift_end + start) / 2
        if self.c > p["h_steps"] * self.min_step:
            self.alarm, self.s, self.m, self.c = False, 0.0, 0.0, 0.0
            return -1.0, y
        return max(1.0, _mean(self.shift) / self.min_step), y

    def _remember(self, y: float, temp: float) -> None:
        self.ref_nights.append((y, temp))
        if len(self.ref_nights) > self.p["ref_nights"]:
            self.ref_nights.pop(0)


def level_shift(
    t: list[int],
    x: list[float],
    active: list[float],
    temperature: list[float],
    *,
    night_start_h: float,
    night_end_h: float,
    interval_s: int,
    min_coverage: float,
    ref_nights: int,
    min_ref: int,
    step_sigma: float,
    step_rel: float,
    step_abs: float,
    h_steps: float,
    method: str,
    use_temperature: bool,
) -> tuple[list[float], list[tuple[float, ...]]]:
    """Nightly mean rates (and temperatures) outside production, fed to :class:`_LevelShift`."""
    start_s = night_start_h * 3600
    length = ((night_end_h - night_start_h) % 24) * 3600 or DAY
    det = _LevelShift(
        dict(length=length, min_ref=min_ref, ref_nights=ref_nights, step_sigma=step_sigma,
             step_rel=step_rel, step_abs=step_abs, h_steps=h_steps, method=method,
             use_temperature=use_temperature)
    )  # fmt: skip
    key: int | None = None
    acc: list[float] = []
    temps: list[float] = []
    score = 0.0
    scores, outs = [], []
    for ti, xi, ai, temp in zip(t, x, active, temperature, strict=True):
        night_key = math.floor((ti - start_s) / DAY)
        inside = (ti - start_s) - night_key * DAY < length
        closed_end = adjusted = measured = night_start = NAN
        closed = False
        if key is not None and (not inside or night_key != key):
            begin = key * DAY + start_s
            if acc and len(acc) >= min_coverage * length / interval_s:
                measured = _mean(acc) * 3600 / interval_s
                night_temp = _mean(temps) if temps else NAN
                night_start = begin
                close_t = det.close_t
                score, adjusted = det.night(measured, night_temp, begin)
                if score < 0:
                    closed = True
                    closed_end = close_t if math.isfinite(close_t) else begin
                    score = 0.0
            key, acc, temps = None, [], []
        if inside:
            key = night_key
            if math.isfinite(xi) and not ai >= 0.5:
                acc.append(xi)
                if math.isfinite(temp):
                    temps.append(temp)
        step = _mean(det.shift) if det.shift and math.isfinite(det.change_t) else NAN
        outs.append(
            (float(det.alarm), det.change_t, step, det.ref, closed_end, adjusted,
             det.min_step, night_start, measured, det.slope)
        )  # fmt: skip
        if closed:
            det.change_t, det.close_t, det.shift = NAN, NAN, []
        scores.append(score)
    return scores, outs


def drift(
    t: list[int],
    x: list[float],
    production: list[float],
    *,
    utc_offset_s: int,
    interval_s: int,
    min_coverage: float,
    ref_days: int,
    window_days: int,
    min_rel: float,
    confirm_days: int,
    use_production: bool,
    min_production: float,
) -> tuple[list[float], list[tuple[float, ...]]]:
    """Rolling median of daily values against the median of the first days."""
    reference: list[float] = []
    ref = NAN
    window: list[float] = []
    alarm, streak, dev = False, 0, NAN
    key: int | None = None
    cons = prod = 0.0
    n = 0
    scores, outs = [], []
    for ti, xi, pi in zip(t, x, production, strict=True):
        day = math.floor((ti + utc_offset_s) / DAY)
        value, value_start = NAN, NAN
        if key is not None and day != key:
            if n > 0 and n >= min_coverage * DAY / interval_s:
                y = NAN
                if use_production:
                    if prod > min_production:
                        y = cons / prod
                else:
                    y = cons / n * 3600 / interval_s
                if math.isfinite(y):
                    value, value_start = y, key * DAY - utc_offset_s
                    if not math.isfinite(ref):
                        reference.append(y)
                        if len(reference) >= ref_days:
                            ref = statistics.median(reference[-ref_days:])
                    else:
                        window = [*window, y][-window_days:]
                        if len(window) == window_days:
                            dev = statistics.median(window) / ref - 1 if ref != 0 else 0.0
                            if not alarm:
                                streak = streak + 1 if dev >= min_rel else 0
                                if streak >= confirm_days:
                                    alarm, streak = True, 0
                            else:
                                streak = streak + 1 if dev < min_rel / 2 else 0
                                if streak >= confirm_days:
                                    alarm, streak = False, 0
            key, cons, prod, n = None, 0.0, 0.0, 0
        if key is None:
            key = day
        if math.isfinite(xi) and (not use_production or math.isfinite(pi)):
            cons += xi
            n += 1
            if use_production:
                prod += pi
        scores.append(max(0.0, dev / min_rel) if math.isfinite(dev) else 0.0)
        outs.append((float(alarm), dev, ref, value, value_start))
    return scores, outs
