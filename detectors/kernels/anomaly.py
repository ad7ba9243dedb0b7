"""Anomaly kernels: one compiled step per detector, shared by the batch loop and streaming.

Every detector keeps its state in three float64 arrays (``fs`` scalars, ``ra`` and ``rb``
rings) and has one kernel ``_X_run(p, fs, ra, rb, t, x, active, prod, temp, scores,
outs, work)`` that, interval by interval, scores the interval starting at ``t[i]`` against
what was learned before it, then learns it, writing ``scores[i]`` and diagnostics
``outs[i]`` (``work`` is scratch space of ``_work_size`` floats, so it allocates nothing).
``_X_batch`` runs it over arrays, ``_step`` any of them over one interval (the streaming
form): one loop body, so batch and streaming are the same maths. The body is written inside the loop
rather than in a per-interval function inlined into it: passing the state arrays to such a
function costs numba a reference count increment and decrement per array per interval,
which was most of the detectors' time. Public wrappers, parameters and events live in
:mod:`detectors.anomaly`.

Rings hold recent values per time slot: row ``r`` is ``[count, next position, values...]``.
"""

from __future__ import annotations

import math

import numpy as np

from ..jit import njit

WEEK_S = 7 * 86400
DAY_S = 86400
MONDAY_SHIFT_S = 3 * 86400  # 1970-01-01 was a Thursday: shift so slot 0 starts on Monday
MAD_TO_SIGMA = 1.4826

# ---------------------------------------------------------------------------------- rings


@njit
def _ring_push(ring: np.ndarray, row: int, value: float) -> None:
    """Store ``value`` in ring row ``row``, overwriting the oldest when full."""
    depth = ring.shape[1] - 2
    pos = int(ring[row, 1])
    ring[row, 2 + pos] = value
    ring[row, 1] = (pos + 1) % depth
    if ring[row, 0] < depth:
        ring[row, 0] += 1.0


@njit
def _work_size(ra: np.ndarray, rb: np.ndarray) -> int:
    """Scratch space a step needs: the longest ring row."""
    return max(ra.shape[1], rb.shape[1])


@njit
def _sorted_median(buf: np.ndarray, n: int) -> float:
    """Median of ``buf[:n]``, sorting it in place (rings are small).

    Full rings of the default depths (8 weeks, 7 days) go through a sorting network: no
    data-dependent branches, four times faster than the insertion sort used otherwise.
    Ring values are finite (NaN intervals are never learned), so both sort alike.
    """
    if n == 8:
        _sort8(buf)
    elif n == 7:
        _sort7(buf)
    else:
        for i in range(1, n):
            v = buf[i]
            j = i - 1
            while j >= 0 and buf[j] > v:
                buf[j + 1] = buf[j]
                j -= 1
            buf[j + 1] = v
    half = n // 2
    return buf[half] if n % 2 else 0.5 * (buf[half - 1] + buf[half])


@njit
def _swap_less(buf: np.ndarray, i: int, j: int) -> None:
    """Compare and exchange: ``buf[i] <= buf[j]`` afterwards (selects, no branch)."""
    x = buf[i]
    y = buf[j]
    swap = y < x
    buf[i] = y if swap else x
    buf[j] = x if swap else y


@njit
def _sort8(buf: np.ndarray) -> None:
    """Sort ``buf[:8]``: an optimal 19-comparator network (checked on all 0/1 inputs)."""
    _swap_less(buf, 0, 2)
    _swap_less(buf, 1, 3)
    _swap_less(buf, 4, 6)
    _swap_less(buf, 5, 7)
    _swap_less(buf, 0, 4)
    _swap_less(buf, 1, 5)
    _swap_less(buf, 2, 6)
    _swap_less(buf, 3, 7)
    _swap_less(buf, 0, 1)
    _swap_less(buf, 2, 3)
    _swap_less(buf, 4, 5)
    _swap_less(buf, 6, 7)
    _swap_less(buf, 2, 4)
    _swap_less(buf, 3, 5)
    _swap_less(buf, 1, 4)
    _swap_less(buf, 3, 6)
    _swap_less(buf, 1, 2)
    _swap_less(buf, 3, 4)
    _swap_less(buf, 5, 6)


@njit
def _sort7(buf: np.ndarray) -> None:
    """Sort ``buf[:7]``: an optimal 16-comparator network (checked on all 0/1 inputs)."""
    _swap_less(buf, 0, 6)
    _swap_less(buf, 2, 3)
    _swap_less(buf, 4, 5)
    _swap_less(buf, 0, 2)
    _swap_less(buf, 1, 4)
    _swap_less(buf, 3, 6)
    _swap_less(buf, 0, 1)
    _swap_less(buf, 2, 5)
    _swap_less(buf, 3, 4)
    _swap_less(buf, 1, 2)
    _swap_less(buf, 4, 6)
    _swap_less(buf, 2, 3)
    _swap_less(buf, 4, 5)
    _swap_less(buf, 1, 2)
    _swap_less(buf, 3, 4)
    _swap_less(buf, 5, 6)


@njit
def _ring_median(ring: np.ndarray, row: int, work: np.ndarray) -> float:
    """Median of the values in ring row ``row`` (``work``: scratch space, no allocation)."""
    n = int(ring[row, 0])
    for i in range(n):
        work[i] = ring[row, 2 + i]
    return _sorted_median(work, n)


@njit
def _slots(t: float, slot_s: float, offset_s: float, n_tow: int, n_tod: int) -> tuple[int, int]:
    """(time-of-week slot from Monday 00:00, time-of-day slot) of ``t`` in local time."""
    k = math.floor((t + offset_s + MONDAY_SHIFT_S) / slot_s)
    d = math.floor((t + offset_s) / slot_s)
    return int(k % n_tow), int(d % n_tod)


@njit
def _profile_median(
    ra: np.ndarray, rb: np.ndarray, tow: int, tod: int, min_count: float, work: np.ndarray
) -> tuple[bool, float]:
    """(found, median) from the time-of-week slot, else the time-of-day slot."""
    if ra[tow, 0] >= min_count:
        return True, _ring_median(ra, tow, work)
    if rb[tod, 0] >= min_count:
        return True, _ring_median(rb, tod, work)
    return False, math.nan


@njit
def _median_of_sorted(buf: np.ndarray, n: int) -> float:
    half = n // 2
    return buf[half] if n % 2 else 0.5 * (buf[half - 1] + buf[half])


@njit
def _sorted_row(ring: np.ndarray, row: int, work: np.ndarray) -> int:
    """The values of ring row ``row`` sorted into ``work``; how many."""
    n = int(ring[row, 0])
    for i in range(n):
        work[i] = ring[row, 2 + i]
    _sorted_median(work, n)
    return n


@njit
def _on_grid(t: np.ndarray, step: int) -> bool:
    """Whether ``t`` runs in steps of exactly ``step`` (a regular grid; empty and one: yes)."""
    for i in range(1, t.shape[0]):  # noqa: SIM110 - numba compiles no generator in all()
        if t[i] - t[i - 1] != step:
            return False
    return True


@njit
def _true_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, stops): the [start, stop) index pairs of the runs of True in ``mask``."""
    n = mask.shape[0]
    count = 0
    for i in range(n):
        if mask[i] and (i == 0 or not mask[i - 1]):
            count += 1
    starts = np.empty(count, dtype=np.int64)
    stops = np.empty(count, dtype=np.int64)
    r = 0
    for i in range(n):
        if mask[i] and (i == 0 or not mask[i - 1]):
            starts[r] = i
        if mask[i] and (i == n - 1 or not mask[i + 1]):
            stops[r] = i + 1
            r += 1
    return starts, stops


# ---------------------------------------------------------------------------------- spikes

# parameters
SP_SLOT, SP_OFFSET, SP_MIN_COUNT, SP_FLOOR_REL, SP_FLOOR_ABS, SP_WARMUP = 0, 1, 2, 3, 4, 5
SP_NPARAM = 6
# scalar state: points learned, sum of |x| learned
SP_N, SP_ABS_SUM = 0, 1
SP_NSTATE = 2
SP_NOUT = 3  # expected, scale, source of the expectation (SOURCE_*)
SOURCE_WEEK, SOURCE_DAYTYPE, SOURCE_RECENT = 0.0, 1.0, 2.0
LIKE_OTHER = 0.25  # within 25 % of the other kind of day's median: that day's rhythm


@njit
def _spike_rows(t: float, p: np.ndarray, n_tow: int, n_tod: int) -> tuple[int, int]:
    """(time-of-week row, row of the time of day on this kind of day) of ``t``.

    Rows of ``rb``: weekdays' time-of-day slots, then weekend days' (local time), then one
    row of the most recent values.
    """
    tow, tod = _slots(t, p[SP_SLOT], p[SP_OFFSET], n_tow, n_tod)
    weekday = (math.floor((t + p[SP_OFFSET]) / DAY_S) + 3) % 7  # 1970-01-01: a Thursday
    return tow, tod + (n_tod if weekday >= 5 else 0)


@njit
def _spike_run(
    p: np.ndarray,
    fs: np.ndarray,
    ra: np.ndarray,
    rb: np.ndarray,
    ts: np.ndarray,
    xs: np.ndarray,
    actives: np.ndarray,
    prods: np.ndarray,
    temps: np.ndarray,
    scores: np.ndarray,
    outs: np.ndarray,
    work: np.ndarray,
) -> None:
    """Robust z-score of ``x`` against the median and MAD of its time-of-week slot.

    Until that slot holds ``min_count`` values, the same time of day on earlier days of
    the same kind (weekday or weekend) stands in, however few: a burst at the same time
    yesterday is the plant's rhythm, not a spike. Where there is no such day yet, the most
    recent values do, once a day of values has been learned (a plant's first weekend has
    no weekend history, yet a spike on it is still a spike against the hours before it),
    unless ``x`` is within ``LIKE_OTHER`` of the same time on the other kind of day (a
    shift starting at this time on weekdays is no spike when it starts on the first
    Saturday too), which then stands in. The scale
    is floored at ``floor_rel`` times the median and times the mean level learned so far
    (so a flat stretch with zero spread does not make every rise infinite). Only rises
    score (spikes); falls and warm-up give 0, and for them the MAD (the scale) is not
    computed.
    """
    for r in range(ts.shape[0]):
        t = float(ts[r])
        x = xs[r]
        outs[r, 0] = math.nan
        outs[r, 1] = math.nan
        outs[r, 2] = math.nan
        score = 0.0
        if not math.isfinite(x):
            scores[r] = score
            continue
        n_tod = (rb.shape[0] - 1) // 2
        recent = rb.shape[0] - 1
        tow, day = _spike_rows(t, p, ra.shape[0], n_tod)
        n = 0
        if fs[SP_N] >= p[SP_WARMUP]:
            if ra[tow, 0] >= p[SP_MIN_COUNT]:
                n = _sorted_row(ra, tow, work)
                outs[r, 2] = SOURCE_WEEK
            elif rb[day, 0] >= 1.0:
                n = _sorted_row(rb, day, work)
                outs[r, 2] = SOURCE_DAYTYPE
            elif fs[SP_N] >= n_tod and rb[recent, 0] >= p[SP_MIN_COUNT]:
                # the recent values, unless x looks like this time on the other kind of day: a
                # shift that starts at this time on weekdays is no spike on a Saturday either
                other = day + n_tod if day < n_tod else day - n_tod
                like_other = rb[other, 0] >= 1.0 and (
                    abs(x - _ring_median(rb, other, work)) <= LIKE_OTHER * abs(x)
                )
                n = _sorted_row(rb, other if like_other else recent, work)
                outs[r, 2] = SOURCE_RECENT
        if n > 0:
            med = _median_of_sorted(work, n)
            outs[r, 0] = med
            if x > med:
                for i in range(n):
                    work[i] = abs(work[i] - med)
                mad = _sorted_median(work, n)
                level = fs[SP_ABS_SUM] / fs[SP_N] if fs[SP_N] > 0 else 0.0
                scale = max(
                    MAD_TO_SIGMA * mad,
                    p[SP_FLOOR_REL] * abs(med),
                    p[SP_FLOOR_REL] * level,
                    p[SP_FLOOR_ABS],
                    1e-12,
                )
                outs[r, 1] = scale
                score = (x - med) / scale
        _ring_push(ra, tow, x)
        _ring_push(rb, day, x)
        _ring_push(rb, recent, x)
        fs[SP_N] += 1.0
        fs[SP_ABS_SUM] += abs(x)
        scores[r] = score


@njit
def _spike_batch(
    p: np.ndarray,
    fs: np.ndarray,
    ra: np.ndarray,
    rb: np.ndarray,
    t: np.ndarray,
    x: np.ndarray,
    active: np.ndarray,
    prod: np.ndarray,
    temp: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores and diagnostics of every interval, learning as it goes."""
    n = t.shape[0]
    scores = np.empty(n)
    outs = np.empty((n, SP_NOUT))
    _spike_run(p, fs, ra, rb, t, x, active, prod, temp, scores, outs, np.empty(_work_size(ra, rb)))
    return scores, outs


# ---------------------------------------------------------------------------------- stuck

ST_SLOT, ST_OFFSET, ST_MIN_COUNT, ST_INTERVAL, ST_EPS, ST_WARMUP = 0, 1, 2, 3, 4, 5
ST_NPARAM = 6
ST_N, ST_RUN_N, ST_RUN_START, ST_RUN_EXPECTED = 0, 1, 2, 3
ST_NSTATE = 4
ST_NOUT = 3  # run start, expected (unmetered) during the run, slot median while still


@njit
def _stuck_run(
    p: np.ndarray,
    fs: np.ndarray,
    ra: np.ndarray,
    rb: np.ndarray,
    ts: np.ndarray,
    xs: np.ndarray,
    actives: np.ndarray,
    prods: np.ndarray,
    temps: np.ndarray,
    scores: np.ndarray,
    outs: np.ndarray,
    work: np.ndarray,
) -> None:
    """Hours the counter has stood still while it should move (score), 0 when it moves.

    It should move while production runs (``active`` >= 0.5) or when the time-of-week
    profile's median for the slot is above ``eps``. Standing still when nothing is
    expected neither extends nor ends a run; moving (``x`` > ``eps``) ends it. The slot
    median is only needed (and only computed) while the counter stands still.
    """
    for r in range(ts.shape[0]):
        t = float(ts[r])
        x = xs[r]
        active = actives[r]
        outs[r, 0] = math.nan
        outs[r, 1] = math.nan
        outs[r, 2] = math.nan
        if not math.isfinite(x):
            scores[r] = 0.0
            continue
        tow, tod = _slots(t, p[ST_SLOT], p[ST_OFFSET], ra.shape[0], rb.shape[0])
        if x > p[ST_EPS]:
            fs[ST_RUN_N] = 0.0
            fs[ST_RUN_START] = math.nan
            fs[ST_RUN_EXPECTED] = 0.0
        else:
            found, med = _profile_median(ra, rb, tow, tod, p[ST_MIN_COUNT], work)
            warm = fs[ST_N] >= p[ST_WARMUP]
            if warm and ((found and med > p[ST_EPS]) or active >= 0.5):
                if fs[ST_RUN_N] == 0.0:
                    fs[ST_RUN_START] = t
                fs[ST_RUN_N] += 1.0
                if found:
                    fs[ST_RUN_EXPECTED] += max(med, 0.0)
            outs[r, 2] = med
        score = fs[ST_RUN_N] * p[ST_INTERVAL] / 3600.0
        if fs[ST_RUN_N] > 0.0:
            outs[r, 0] = fs[ST_RUN_START]
            outs[r, 1] = fs[ST_RUN_EXPECTED]
        _ring_push(ra, tow, x)
        _ring_push(rb, tod, x)
        fs[ST_N] += 1.0
        scores[r] = score


@njit
def _stuck_batch(
    p: np.ndarray,
    fs: np.ndarray,
    ra: np.ndarray,
    rb: np.ndarray,
    t: np.ndarray,
    x: np.ndarray,
    active: np.ndarray,
    prod: np.ndarray,
    temp: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores and diagnostics of every interval, learning as it goes."""
    n = t.shape[0]
    scores = np.empty(n)
    outs = np.empty((n, ST_NOUT))
    _stuck_run(p, fs, ra, rb, t, x, active, prod, temp, scores, outs, np.empty(_work_size(ra, rb)))
    return scores, outs


# ---------------------------------------------------------------------------------- level shift

(
    LS_START,
    LS_LENGTH,
    LS_INTERVAL,
    LS_COVERAGE,
    LS_MIN_REF,
    LS_STEP_SIGMA,
    LS_STEP_REL,
    LS_STEP_ABS,
    LS_H_STEPS,
    LS_METHOD,
    LS_USE_TEMP,
) = range(11)
LS_NPARAM = 11
CUSUM, PAGE_HINKLEY = 0.0, 1.0
(
    LS_KEY,  # day number of the night being accumulated (NaN: none)
    LS_ACC_SUM,
    LS_ACC_N,
    LS_ACC_T_SUM,  # outdoor temperature over the night's intervals
    LS_ACC_T_N,
    LS_S,  # CUSUM statistic, or Page-Hinkley cumulative sum m
    LS_M,  # Page-Hinkley running minimum of m
    LS_ALARM,
    LS_CHANGE_T,  # start of the first night of the current excursion
    LS_SHIFT_SUM,  # sum of (night - reference) over the excursion's shifted nights
    LS_SHIFT_N,
    LS_C,  # closing CUSUM: evidence the level went back
    LS_CLOSE_T,  # estimated end once closing evidence started
    LS_LAST_SHIFT_END,  # end of the last night still shifted
    LS_MEAN_SUM,  # Page-Hinkley reference: sum and count of nights outside alarms
    LS_MEAN_N,
    LS_REF,  # reference level (counter units per hour) in use
    LS_MIN_STEP,  # smallest step worth finding, counter units per hour
    LS_SLOPE,  # change of the night rate per degree C, fitted on the reference nights
    LS_T_MID,  # median temperature of the reference nights (rates are normalised to it)
    LS_SCORE,
) = range(21)
LS_NSTATE = 21
# alarm, change start, step/h, reference/h, closed end, night value (weather-normalised),
# min step, night start, night value as measured, slope per degree C
LS_NOUT = 10


@njit
def _ls_new_state() -> np.ndarray:
    fs = np.zeros(LS_NSTATE)
    fs[LS_KEY] = math.nan
    fs[LS_CHANGE_T] = math.nan
    fs[LS_CLOSE_T] = math.nan
    fs[LS_LAST_SHIFT_END] = math.nan
    fs[LS_REF] = math.nan
    fs[LS_MIN_STEP] = math.nan
    fs[LS_T_MID] = math.nan
    return fs


@njit
def _ls_weather(ra: np.ndarray) -> tuple[float, float]:
    """(slope per degree C, median temperature) of the reference nights; slope 0 if unknown.

    Least squares of night rate on night temperature over the nights with a temperature;
    fewer than three such nights or no temperature spread give no correction.
    """
    n = int(ra[0, 0])
    ys = ra[0, 2 : 2 + n]
    ts = ra[1, 2 : 2 + n]
    ok = np.isfinite(ts)
    m = int(ok.sum())
    if m < 3:
        return 0.0, math.nan
    yv = ys[ok]
    tv = ts[ok]
    t_mean = 0.0
    y_mean = 0.0
    for i in range(m):  # plain running sums: the reference twin adds in the same order
        t_mean += tv[i]
        y_mean += yv[i]
    t_mean /= m
    y_mean /= m
    sxx = 0.0
    sxy = 0.0
    for i in range(m):
        sxx += (tv[i] - t_mean) ** 2
        sxy += (tv[i] - t_mean) * (yv[i] - y_mean)
    t_mid = _sorted_median(tv, m)  # tv is a copy: sorting it is harmless
    if sxx <= 1e-9 * m:
        return 0.0, t_mid
    return sxy / sxx, t_mid


@njit
def _ls_adjusted(y: float, temp: float, slope: float, t_mid: float) -> float:
    """Night rate normalised to the reference temperature (unchanged without one)."""
    if slope == 0.0 or not math.isfinite(temp) or not math.isfinite(t_mid):
        return y
    return y - slope * (temp - t_mid)


@njit
def _ls_flush(ra: np.ndarray, rb: np.ndarray) -> None:
    """Move the pending nights (oldest first) into the reference ring and empty them."""
    n = int(rb[0, 0])
    for i in range(n):
        _ring_push(ra, 0, rb[0, 2 + i])
        _ring_push(ra, 1, rb[1, 2 + i])
    rb[:, :2] = 0.0


@njit
def _ls_night(
    p: np.ndarray,
    fs: np.ndarray,
    ra: np.ndarray,
    rb: np.ndarray,
    y_raw: float,
    temp: float,
    start: float,
    work: np.ndarray,
) -> tuple[float, float]:
    """Take one night (mean rate, mean temperature); (score, weather-normalised rate).

    The score is -1 when an alarm closes with this night.
    """
    end = start + p[LS_LENGTH]
    if ra[0, 0] < p[LS_MIN_REF]:  # warm-up: learn the reference
        _ring_push(ra, 0, y_raw)
        _ring_push(ra, 1, temp)
        fs[LS_MEAN_SUM] += y_raw
        fs[LS_MEAN_N] += 1.0
        return 0.0, y_raw
    if fs[LS_ALARM] == 0.0:
        slope, t_mid = 0.0, math.nan
        if p[LS_USE_TEMP] != 0.0:
            slope, t_mid = _ls_weather(ra)
        n = int(ra[0, 0])
        for i in range(n):
            work[i] = _ls_adjusted(ra[0, 2 + i], ra[1, 2 + i], slope, t_mid)
        med = _sorted_median(work, n)
        for i in range(n):
            work[i] = abs(work[i] - med)
        mad = _sorted_median(work, n)
        y = _ls_adjusted(y_raw, temp, slope, t_mid)
        ref = med if p[LS_METHOD] == CUSUM else fs[LS_MEAN_SUM] / fs[LS_MEAN_N]
        min_step = max(
            p[LS_STEP_SIGMA] * MAD_TO_SIGMA * mad,
            p[LS_STEP_REL] * abs(ref),
            p[LS_STEP_ABS],
            1e-12,
        )
        k = 0.5 * min_step
        h = p[LS_H_STEPS] * min_step
        fs[LS_REF] = ref
        fs[LS_MIN_STEP] = min_step
        fs[LS_SLOPE] = slope
        fs[LS_T_MID] = t_mid
        if p[LS_METHOD] == CUSUM:
            before = fs[LS_S]
            fs[LS_S] = max(0.0, fs[LS_S] + y - ref - k)
            stat = fs[LS_S]
        else:
            before = fs[LS_S] - fs[LS_M]
            fs[LS_S] += y - ref - k
            fs[LS_M] = min(fs[LS_M], fs[LS_S])
            stat = fs[LS_S] - fs[LS_M]
            fs[LS_MEAN_SUM] += y
            fs[LS_MEAN_N] += 1.0
        if stat > 0.0:
            if before == 0.0:
                fs[LS_CHANGE_T] = start
                fs[LS_SHIFT_SUM] = 0.0
                fs[LS_SHIFT_N] = 0.0
            fs[LS_SHIFT_SUM] += y - ref
            fs[LS_SHIFT_N] += 1.0
            fs[LS_LAST_SHIFT_END] = end
        else:
            fs[LS_CHANGE_T] = math.nan
        if stat > h:
            fs[LS_ALARM] = 1.0
            fs[LS_C] = 0.0
            fs[LS_CLOSE_T] = math.nan
            rb[:, :2] = 0.0  # the excursion's nights never join the reference
            return max(1.0, fs[LS_SHIFT_SUM] / fs[LS_SHIFT_N] / min_step), y
        # Nights of an excursion wait in ``rb`` until it ends: back to quiet, they join the
        # reference; raising an alarm, they are dropped. So the reference learns every
        # normal night (learning only quiet ones biases it low) and never a real step.
        if stat == 0.0:
            _ls_flush(ra, rb)
            _ring_push(ra, 0, y_raw)
            _ring_push(ra, 1, temp)
        else:
            if rb[0, 0] >= rb.shape[1] - 2:  # a long, slow excursion: it is the new normal
                _ls_flush(ra, rb)
            _ring_push(rb, 0, y_raw)
            _ring_push(rb, 1, temp)
        return stat / h, y
    # in alarm: reference, weather correction and step size are frozen; watch for the
    # level going back
    ref = fs[LS_REF]
    min_step = fs[LS_MIN_STEP]
    y = _ls_adjusted(y_raw, temp, fs[LS_SLOPE], fs[LS_T_MID])
    step = fs[LS_SHIFT_SUM] / fs[LS_SHIFT_N]
    before = fs[LS_C]
    fs[LS_C] = max(0.0, fs[LS_C] + ref + 0.5 * step - y)
    if fs[LS_C] == 0.0:
        fs[LS_SHIFT_SUM] += y - ref
        fs[LS_SHIFT_N] += 1.0
        fs[LS_LAST_SHIFT_END] = end
        fs[LS_CLOSE_T] = math.nan
    elif before == 0.0:
        fs[LS_CLOSE_T] = 0.5 * (fs[LS_LAST_SHIFT_END] + start)
    if fs[LS_C] > p[LS_H_STEPS] * min_step:
        fs[LS_ALARM] = 0.0
        fs[LS_S] = 0.0
        fs[LS_M] = 0.0
        fs[LS_C] = 0.0
        return -1.0, y  # closed: the caller reports the end
    return max(1.0, fs[LS_SHIFT_SUM] / fs[LS_SHIFT_N] / min_step), y


@njit
def _ls_run(
    p: np.ndarray,
    fs: np.ndarray,
    ra: np.ndarray,
    rb: np.ndarray,
    ts: np.ndarray,
    xs: np.ndarray,
    actives: np.ndarray,
    prods: np.ndarray,
    temps: np.ndarray,
    scores: np.ndarray,
    outs: np.ndarray,
    work: np.ndarray,
) -> None:
    """Base-load level shift: CUSUM (or Page-Hinkley) over nightly mean rates.

    Intervals starting inside the night window (``start`` s after UTC midnight, ``length``
    s long) and not in production (``active`` < 0.5 or unknown) are averaged per night; a
    night with enough coverage becomes one observation when the first interval after it
    arrives. With ``use_temp``, nights are normalised to the reference nights' median
    temperature using the slope fitted on those nights (heating and cooling loads follow
    the weather). The score is the statistic over its threshold before an alarm, and the
    step in units of the smallest step worth finding during one (at least 1).
    """
    for r in range(ts.shape[0]):
        t = float(ts[r])
        x = xs[r]
        active = actives[r]
        temp = temps[r]
        for j in range(LS_NOUT):
            outs[r, j] = math.nan
        offset = t - p[LS_START]
        key = math.floor(offset / DAY_S)
        inside = offset - key * DAY_S < p[LS_LENGTH]
        closed = False
        if math.isfinite(fs[LS_KEY]) and (not inside or key != fs[LS_KEY]):
            start = fs[LS_KEY] * DAY_S + p[LS_START]
            expected_n = p[LS_LENGTH] / p[LS_INTERVAL]
            if fs[LS_ACC_N] > 0 and fs[LS_ACC_N] >= p[LS_COVERAGE] * expected_n:
                night = fs[LS_ACC_SUM] / fs[LS_ACC_N] * 3600.0 / p[LS_INTERVAL]
                night_t = fs[LS_ACC_T_SUM] / fs[LS_ACC_T_N] if fs[LS_ACC_T_N] > 0 else math.nan
                close_t = fs[LS_CLOSE_T]
                score, adjusted = _ls_night(p, fs, ra, rb, night, night_t, start, work)
                outs[r, 5] = adjusted
                outs[r, 7] = start
                outs[r, 8] = night
                if score < 0.0:
                    closed = True
                    outs[r, 4] = close_t if math.isfinite(close_t) else start
                    score = 0.0
                fs[LS_SCORE] = score
            fs[LS_KEY] = math.nan
            fs[LS_ACC_SUM] = 0.0
            fs[LS_ACC_N] = 0.0
            fs[LS_ACC_T_SUM] = 0.0
            fs[LS_ACC_T_N] = 0.0
        if inside:
            fs[LS_KEY] = key
            if math.isfinite(x) and not active >= 0.5:
                fs[LS_ACC_SUM] += x
                fs[LS_ACC_N] += 1.0
                if math.isfinite(temp):
                    fs[LS_ACC_T_SUM] += temp
                    fs[LS_ACC_T_N] += 1.0
        outs[r, 0] = fs[LS_ALARM]
        outs[r, 1] = fs[LS_CHANGE_T]
        if fs[LS_SHIFT_N] > 0.0 and math.isfinite(fs[LS_CHANGE_T]):
            outs[r, 2] = fs[LS_SHIFT_SUM] / fs[LS_SHIFT_N]
        outs[r, 3] = fs[LS_REF]
        outs[r, 6] = fs[LS_MIN_STEP]
        outs[r, 9] = fs[LS_SLOPE]
        if closed:  # reported above; start afresh
            fs[LS_CHANGE_T] = math.nan
            fs[LS_CLOSE_T] = math.nan
            fs[LS_SHIFT_SUM] = 0.0
            fs[LS_SHIFT_N] = 0.0
        scores[r] = fs[LS_SCORE]


@njit
def _ls_batch(
    p: np.ndarray,
    fs: np.ndarray,
    ra: np.ndarray,
    rb: np.ndarray,
    t: np.ndarray,
    x: np.ndarray,
    active: np.ndarray,
    prod: np.ndarray,
    temp: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores and diagnostics of every interval, learning as it goes."""
    n = t.shape[0]
    scores = np.empty(n)
    outs = np.empty((n, LS_NOUT))
    _ls_run(p, fs, ra, rb, t, x, active, prod, temp, scores, outs, np.empty(_work_size(ra, rb)))
    return scores, outs


# ---------------------------------------------------------------------------------- drift

(
    DR_OFFSET,
    DR_INTERVAL,
    DR_COVERAGE,
    DR_REF_DAYS,
    DR_MIN_REL,
    DR_CONFIRM,
    DR_USE_PROD,
    DR_MIN_PROD,
) = range(8)
DR_NPARAM = 8
(
    DR_KEY,  # local day number being accumulated (NaN: none)
    DR_CONS,
    DR_PROD,
    DR_N,
    DR_REF,  # reference daily value (median of the first ref_days days), NaN until known
    DR_ALARM,
    DR_ABOVE,  # consecutive days above min_rel (or, in alarm, below min_rel / 2)
    DR_DEV,  # last rolling deviation from the reference
) = range(8)
DR_NSTATE = 8
DR_NOUT = 5  # alarm, deviation, reference, day value finalised here, that day's start


@njit
def _dr_new_state() -> np.ndarray:
    fs = np.zeros(DR_NSTATE)
    fs[DR_KEY] = math.nan
    fs[DR_REF] = math.nan
    fs[DR_DEV] = math.nan
    return fs


@njit
def _dr_day(
    p: np.ndarray, fs: np.ndarray, ra: np.ndarray, rb: np.ndarray, y: float, work: np.ndarray
) -> None:
    """Take one day's value: learn the reference, then track the rolling median's deviation."""
    if not math.isfinite(fs[DR_REF]):
        _ring_push(ra, 0, y)
        if ra[0, 0] >= p[DR_REF_DAYS]:
            fs[DR_REF] = _ring_median(ra, 0, work)
        return
    _ring_push(rb, 0, y)
    if rb[0, 0] < rb.shape[1] - 2:
        return
    ref = fs[DR_REF]
    dev = _ring_median(rb, 0, work) / ref - 1.0 if ref != 0.0 else 0.0
    fs[DR_DEV] = dev
    if fs[DR_ALARM] == 0.0:
        fs[DR_ABOVE] = fs[DR_ABOVE] + 1.0 if dev >= p[DR_MIN_REL] else 0.0
        if fs[DR_ABOVE] >= p[DR_CONFIRM]:
            fs[DR_ALARM] = 1.0
            fs[DR_ABOVE] = 0.0
    else:
        fs[DR_ABOVE] = fs[DR_ABOVE] + 1.0 if dev < 0.5 * p[DR_MIN_REL] else 0.0
        if fs[DR_ABOVE] >= p[DR_CONFIRM]:
            fs[DR_ALARM] = 0.0
            fs[DR_ABOVE] = 0.0


@njit
def _dr_run(
    p: np.ndarray,
    fs: np.ndarray,
    ra: np.ndarray,
    rb: np.ndarray,
    ts: np.ndarray,
    xs: np.ndarray,
    actives: np.ndarray,
    prods: np.ndarray,
    temps: np.ndarray,
    scores: np.ndarray,
    outs: np.ndarray,
    work: np.ndarray,
) -> None:
    """Gradual drift: rolling median of daily values against a reference, relative.

    A day's value is its consumption per unit produced (``use_prod``; days producing no
    more than ``min_prod`` are skipped) or its mean rate per hour. The first ``ref_days``
    days set the reference; then the median of the last ``window`` days (the ring size)
    is compared with it. The score is the deviation over ``min_rel`` (>= 1: drifted); an
    alarm needs ``confirm`` days in a row above it and ends after as many below half of it.
    """
    for r in range(ts.shape[0]):
        t = float(ts[r])
        x = xs[r]
        prod = prods[r]
        for j in range(DR_NOUT):
            outs[r, j] = math.nan
        key = math.floor((t + p[DR_OFFSET]) / DAY_S)
        if math.isfinite(fs[DR_KEY]) and key != fs[DR_KEY]:
            expected_n = DAY_S / p[DR_INTERVAL]
            if fs[DR_N] >= p[DR_COVERAGE] * expected_n and fs[DR_N] > 0:
                y = math.nan
                if p[DR_USE_PROD] != 0.0:
                    if fs[DR_PROD] > p[DR_MIN_PROD]:
                        y = fs[DR_CONS] / fs[DR_PROD]
                else:
                    y = fs[DR_CONS] / fs[DR_N] * 3600.0 / p[DR_INTERVAL]
                if math.isfinite(y):
                    _dr_day(p, fs, ra, rb, y, work)
                    outs[r, 3] = y
                    outs[r, 4] = fs[DR_KEY] * DAY_S - p[DR_OFFSET]
            fs[DR_KEY] = math.nan
            fs[DR_CONS] = 0.0
            fs[DR_PROD] = 0.0
            fs[DR_N] = 0.0
        if not math.isfinite(fs[DR_KEY]):
            fs[DR_KEY] = key
        if math.isfinite(x) and (p[DR_USE_PROD] == 0.0 or math.isfinite(prod)):
            fs[DR_CONS] += x
            fs[DR_N] += 1.0
            if p[DR_USE_PROD] != 0.0:
                fs[DR_PROD] += prod
        outs[r, 0] = fs[DR_ALARM]
        outs[r, 1] = fs[DR_DEV]
        outs[r, 2] = fs[DR_REF]
        dev = fs[DR_DEV]
        scores[r] = max(0.0, dev / p[DR_MIN_REL]) if math.isfinite(dev) else 0.0


@njit
def _dr_batch(
    p: np.ndarray,
    fs: np.ndarray,
    ra: np.ndarray,
    rb: np.ndarray,
    t: np.ndarray,
    x: np.ndarray,
    active: np.ndarray,
    prod: np.ndarray,
    temp: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores and diagnostics of every interval, learning as it goes."""
    n = t.shape[0]
    scores = np.empty(n)
    outs = np.empty((n, DR_NOUT))
    _dr_run(p, fs, ra, rb, t, x, active, prod, temp, scores, outs, np.empty(_work_size(ra, rb)))
    return scores, outs


# ---------------------------------------------------------------------------------- streaming

SPIKE, STUCK, LEVEL_SHIFT, DRIFT = 0, 1, 2, 3  # detector kinds for _step
IO_X, IO_ACTIVE, IO_PROD, IO_TEMP, IO_SCORE = 0, 1, 2, 3, 4
IO_SIZE = 5


@njit
def _step(
    kind: int,
    p: np.ndarray,
    fs: np.ndarray,
    ra: np.ndarray,
    rb: np.ndarray,
    t: int,
    x: float,
    active: float,
    prod: float,
    temp: float,
    io_t: np.ndarray,
    io: np.ndarray,
    out: np.ndarray,
    work: np.ndarray,
) -> float:
    """One interval through detector ``kind``'s run kernel (the streaming form): its score.

    The interval goes in as one-element views of the caller's buffers ``io_t`` (1 int)
    and ``io`` (``IO_SIZE`` floats), so a step allocates nothing; ``out`` is the (1,
    n_out) row of diagnostics.
    """
    io_t[0] = t
    io[IO_X] = x
    io[IO_ACTIVE] = active
    io[IO_PROD] = prod
    io[IO_TEMP] = temp
    xs = io[IO_X : IO_X + 1]
    acts = io[IO_ACTIVE : IO_ACTIVE + 1]
    prods = io[IO_PROD : IO_PROD + 1]
    temps = io[IO_TEMP : IO_TEMP + 1]
    score = io[IO_SCORE : IO_SCORE + 1]
    if kind == SPIKE:
        _spike_run(p, fs, ra, rb, io_t, xs, acts, prods, temps, score, out, work)
    elif kind == STUCK:
        _stuck_run(p, fs, ra, rb, io_t, xs, acts, prods, temps, score, out, work)
    elif kind == LEVEL_SHIFT:
        _ls_run(p, fs, ra, rb, io_t, xs, acts, prods, temps, score, out, work)
    else:
        _dr_run(p, fs, ra, rb, io_t, xs, acts, prods, temps, score, out, work)
    return io[IO_SCORE]
