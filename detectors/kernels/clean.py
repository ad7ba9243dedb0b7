"""Cleaning kernels: counter readings to time segments of known consumption, and resampling.

Public wrappers, flags and the documented choices live in :mod:`detectors.clean`; this module
only holds the compiled loops. Flag bits are plain integers here and must match
``detectors.clean.Quality``.
"""

from __future__ import annotations

import math

import numpy as np

from ..jit import njit

# Keep in step with detectors.clean.Quality.
DUPLICATE = 1
OUT_OF_ORDER = 2
INVALID = 4
JITTER = 8
ROLLOVER = 16
RESET = 32
UNKNOWN = 64
GAP = 128
IMPOSSIBLE_RATE = 256
PARTIAL = 512
NO_DATA = 1024

# Register widths tried when no rollover value is given, each times a power of ten (the
# profile's scale: a 16-bit register counting 0.01 m3 wraps at 655.36 m3).
_WIDTHS = (65536.0, 4294967296.0, 18446744073709551616.0)
_SCALES = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


@njit
def _order_readings(
    ts: np.ndarray, values: np.ndarray, order: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Drop repeated timestamps: (indices kept, in time order; flags per kept reading).

    ``order`` sorts ``ts`` stably (the wrapper gets it from numpy, whose stable sort is
    fast on nearly sorted data). Of readings sharing a timestamp the last finite one in
    input order wins (a resent reading corrects the earlier one); the kept reading is
    flagged DUPLICATE. A reading whose timestamp is earlier than one received before it
    is flagged OUT_OF_ORDER.
    """
    n = ts.shape[0]
    late = np.zeros(n, dtype=np.int32)
    latest = np.int64(0)
    for i in range(n):
        if i > 0 and ts[i] < latest:
            late[i] = OUT_OF_ORDER
        if i == 0 or ts[i] > latest:
            latest = ts[i]
    keep = np.empty(n, dtype=np.int64)
    flags = np.empty(n, dtype=np.int32)
    m = 0
    i = 0
    while i < n:
        j = i
        t = ts[order[i]]
        while j + 1 < n and ts[order[j + 1]] == t:
            j += 1
        if j == i:  # the common case: a single reading
            keep[m] = order[i]
            flags[m] = late[order[i]]
        else:
            chosen = order[j]
            for k in range(j, i - 1, -1):
                if math.isfinite(values[order[k]]):
                    chosen = order[k]
                    break
            f = DUPLICATE
            for k in range(i, j + 1):
                f |= late[order[k]]
            keep[m] = chosen
            flags[m] = f
        m += 1
        i = j + 1
    return keep[:m], flags[:m]


@njit
def _ordered(
    ts: np.ndarray, values: np.ndarray, order: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_order_readings`, returning the kept readings themselves: (ts, values, flags)."""
    keep, flags = _order_readings(ts, values, order)
    m = keep.shape[0]
    t_out = np.empty(m, dtype=np.int64)
    v_out = np.empty(m, dtype=np.float64)
    for i in range(m):
        t_out[i] = ts[keep[i]]
        v_out[i] = values[keep[i]]
    return t_out, v_out, flags


@njit
def _min_rise(values: np.ndarray) -> float:
    """Smallest rise between consecutive finite values (0 when there is none)."""
    best = math.inf
    prev = math.nan
    for v in values:
        if not math.isfinite(v):
            continue
        if math.isfinite(prev) and v > prev and v - prev < best:
            best = v - prev
        prev = v
    return best if math.isfinite(best) else 0.0


@njit
def _plausible(delta: float, dt: float, max_rate_per_s: float, resolution: float) -> bool:
    """Whether ``delta`` counter units in ``dt`` seconds stay within the rated maximum.

    One ``resolution`` step is always allowed: a coarse counter (a float32 register holding
    millions) advances in steps larger than the meter can pass in one polling period.
    """
    if delta < 0.0:
        return False
    if max_rate_per_s > 0.0:
        return delta <= max_rate_per_s * dt * (1.0 + 1e-9) + resolution + 1e-12
    return True


@njit
def _wrap(
    prev: float, cur: float, dt: float, rollover: float, max_rate_per_s: float, resolution: float
) -> float:
    """Consumption across a register wrap from ``prev`` to ``cur``, or NaN if not a wrap.

    A given ``rollover`` (> 0) is the only candidate; otherwise 16/32/64-bit maxima times a
    power of ten are tried, smallest first. Without a rated maximum the wrap must go from
    the top tenth of the register to its bottom tenth.
    """
    if cur < 0.0:
        return math.nan
    if rollover > 0.0:
        wrapped = cur + (rollover - prev)
        if prev < rollover and _wrap_ok(
            prev, cur, wrapped, dt, rollover, max_rate_per_s, resolution
        ):
            return wrapped
        return math.nan
    best = math.inf
    best_wrapped = math.nan
    for width in _WIDTHS:
        for scale in _SCALES:
            r = width * scale
            if prev < r and r < best:
                wrapped = cur + (r - prev)
                if _wrap_ok(prev, cur, wrapped, dt, r, max_rate_per_s, resolution):
                    best = r
                    best_wrapped = wrapped
    return best_wrapped


@njit
def _wrap_ok(
    prev: float,
    cur: float,
    wrapped: float,
    dt: float,
    r: float,
    max_rate_per_s: float,
    resolution: float,
) -> bool:
    if max_rate_per_s > 0.0:
        return _plausible(wrapped, dt, max_rate_per_s, resolution)
    return prev >= 0.9 * r and cur <= 0.1 * r


@njit
def _counter_segments(
    ts: np.ndarray,
    values: np.ndarray,
    in_flags: np.ndarray,
    rollover: float,
    max_rate_per_s: float,
    resolution: float,
    gap_s: float,
    jitter_abs: float,
    jitter_rel: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Consumption between consecutive accepted readings of a sorted, deduplicated counter.

    Returns (t0, t1, delta, flags, before, level): one segment per accepted reading after
    the first, ``delta`` the consumption over [t0, t1) (NaN when unknown), ``before`` the
    reference reading it starts from and ``level`` the reading at t1. The rules are
    :func:`_clean_pass`'s (this is that pass keeping every segment, with an empty grid).
    """
    out = _clean_pass(ts, values, in_flags, rollover, max_rate_per_s, resolution, gap_s,
                      jitter_abs, jitter_rel, 0, 1, 0, True)  # fmt: skip
    return out[2], out[3], out[4], out[5], out[6], out[7]


@njit
def _resample_segments(
    t0: np.ndarray,
    t1: np.ndarray,
    delta: np.ndarray,
    seg_flags: np.ndarray,
    grid_start: int,
    interval_s: int,
    n: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spread each segment's consumption over the grid intervals it spans, by time.

    Returns (consumption, flags, covered_s) per interval [grid_start + j * interval_s, ...).
    A NaN delta makes every interval it touches NaN; segment flags are OR-ed into every
    interval they touch. Intervals covered only in part are flagged PARTIAL, those not
    covered at all NO_DATA (consumption NaN). Parts of segments outside the grid are dropped.
    """
    cons = np.zeros(n, dtype=np.float64)
    flags = np.zeros(n, dtype=np.int32)
    covered = np.zeros(n, dtype=np.int64)
    grid_end = grid_start + n * interval_s
    for s in range(t0.shape[0]):
        a = max(t0[s], grid_start)
        b = min(t1[s], grid_end)
        if b <= a:
            continue
        span_s = t1[s] - t0[s]
        span = float(span_s)
        j = (a - grid_start) // interval_s
        lo = grid_start + j * interval_s
        if b - lo <= interval_s:  # the usual case: the pair lies inside one interval
            overlap = b - a
            # delta * (overlap / span) is delta when all of the pair is on the grid
            cons[j] += delta[s] if overlap == span_s else delta[s] * (overlap / span)
            flags[j] |= seg_flags[s]
            covered[j] += overlap
            continue
        while j < n:
            lo = grid_start + j * interval_s
            if lo >= b:
                break
            hi = lo + interval_s
            overlap = min(b, hi) - max(a, lo)
            if overlap > 0:
                cons[j] += delta[s] * (overlap / span)
                flags[j] |= seg_flags[s]
                covered[j] += overlap
            j += 1
    for j in range(n):
        if covered[j] == 0:
            cons[j] = math.nan
            flags[j] |= NO_DATA
        elif covered[j] < interval_s:
            flags[j] |= PARTIAL
    return cons, flags, covered


@njit
def _resample_gauge(
    ts: np.ndarray, values: np.ndarray, grid_start: int, interval_s: int, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and count of the finite readings in each grid interval (NaN mean when none)."""
    total = np.zeros(n, dtype=np.float64)
    count = np.zeros(n, dtype=np.int64)
    for i in range(ts.shape[0]):
        v = values[i]
        if not math.isfinite(v) or ts[i] < grid_start:
            continue
        j = (ts[i] - grid_start) // interval_s
        if j < n:
            total[j] += v
            count[j] += 1
    mean = np.empty(n, dtype=np.float64)
    for j in range(n):
        mean[j] = total[j] / count[j] if count[j] > 0 else math.nan
    return mean, count


# ------------------------------------------------------------------ the fused cleaning pass

# Reading pairs that give an event; the fused pass keeps only these.
NOTABLE = ROLLOVER | RESET | GAP | IMPOSSIBLE_RATE


@njit
def _in_order(ts: np.ndarray) -> bool:
    """Whether the timestamps strictly increase (nothing to sort or deduplicate)."""
    for i in range(1, ts.shape[0]):  # noqa: SIM110 - numba compiles no generator in all()
        if ts[i] <= ts[i - 1]:
            return False
    return True


@njit
def _sort_nearly(
    ts: np.ndarray, values: np.ndarray, budget: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """:func:`_sort_nearly_into` fresh arrays: (ts, values, flags, done)."""
    n = ts.shape[0]
    t = np.empty(n, dtype=np.int64)
    v = np.empty(n, dtype=np.float64)
    f = np.empty(n, dtype=np.int32)
    m, done = _sort_nearly_into(ts, values, budget, t, v, f)
    return t[:m], v[:m], f[:m], done


@njit
def _sort_nearly_into(
    ts: np.ndarray, values: np.ndarray, budget: int, t: np.ndarray, v: np.ndarray, f: np.ndarray
) -> tuple[int, bool]:
    """:func:`_ordered` for readings only a little out of order, into ``t``, ``v``, ``f``.

    One pass of a stable insertion sort into the buffers (at least as long as ``ts``; time
    proportional to how far readings are out of place) that folds each repeated timestamp
    into the reading already kept, as :func:`_order_readings` does: the last finite one
    wins. Returns (readings kept, done); when more than ``budget`` moves are needed it
    gives up (``done`` False): the caller sorts with numpy instead.
    """
    n = ts.shape[0]
    moves = 0
    m = 0
    for i in range(n):
        ti = ts[i]
        vi = values[i]
        if m == 0 or ti > t[m - 1]:  # the usual case: later than every reading so far
            t[m] = ti
            v[m] = vi
            f[m] = 0
            m += 1
            continue
        # t[m - 1] is the latest timestamp received so far
        fi = OUT_OF_ORDER if ti < t[m - 1] else 0
        j = m - 1
        while j >= 0 and t[j] > ti:
            j -= 1
        moves += m - 1 - j
        if moves > budget:
            return 0, False
        if j >= 0 and t[j] == ti:  # a repeated timestamp: the last finite reading wins
            if math.isfinite(vi) or not math.isfinite(v[j]):
                v[j] = vi
            f[j] |= fi | DUPLICATE
            continue
        for q in range(m, j + 1, -1):
            t[q] = t[q - 1]
            v[q] = v[q - 1]
            f[q] = f[q - 1]
        t[j + 1] = ti
        v[j + 1] = vi
        f[j + 1] = fi
        m += 1
    return m, True


@njit
def _clean(
    ts: np.ndarray,
    values: np.ndarray,
    in_flags: np.ndarray,
    rollover: float,
    max_rate_per_s: float,
    resolution: float,
    gap_s: float,
    jitter_abs: float,
    jitter_rel: float,
    grid_start: int,
    interval_s: int,
    n: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
           np.ndarray, np.ndarray]:  # fmt: skip
    """Consumption and flags per grid interval, then the NOTABLE segments (:func:`_clean_pass`)."""
    return _clean_pass(ts, values, in_flags, rollover, max_rate_per_s, resolution, gap_s,
                       jitter_abs, jitter_rel, grid_start, interval_s, n, False)  # fmt: skip


@njit
def _clean_pass(
    ts: np.ndarray,
    values: np.ndarray,
    in_flags: np.ndarray,
    rollover: float,
    max_rate_per_s: float,
    resolution: float,
    gap_s: float,
    jitter_abs: float,
    jitter_rel: float,
    grid_start: int,
    interval_s: int,
    n: int,
    keep_all: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
           np.ndarray, np.ndarray]:  # fmt: skip
    """The counter's reading pairs (segments), spread onto a grid, in one pass.

    Returns (consumption, flags) per interval of the grid (``n`` intervals of
    ``interval_s`` from ``grid_start``; intervals covered in part are PARTIAL, not at all
    NO_DATA and NaN), then (t0, t1, delta, flags, before, level) of the NOTABLE segments,
    or of every segment with ``keep_all``. Readings are sorted and deduplicated;
    ``in_flags`` (may be empty: none) are their flags. Per reading, in order:

    * NaN/inf value: skipped, the next segment is flagged INVALID.
    * rise within the rated maximum (plus one ``resolution`` step): ordinary consumption.
    * rise above it (IMPOSSIBLE_RATE): the reading is held back. If the next reading fits
      the old level it was a glitch and is dropped; if it fits the new level the jump is
      accepted with unknown consumption (NaN); otherwise the newer reading is held instead.
    * drop up to ``max(jitter_abs, jitter_rel * |level|, resolution)``: JITTER, zero
      consumption, the higher level stays the reference (no double counting on recovery).
    * larger drop that a register wrap explains: ROLLOVER.
    * any other drop: RESET; the new reading is the consumption since the reset when
      plausible at the rated maximum, otherwise UNKNOWN (NaN).

    A segment longer than ``gap_s`` is flagged GAP; its delta is still exact. Each
    segment's consumption is spread over the intervals it spans by time, the current
    interval summed in registers; the per-reading segments are never stored (fresh
    memory, faulted in page by page, cost more than the arithmetic). The usual reading,
    an ordinary rise inside the interval being summed, takes a short path with the same
    arithmetic. Tested against the plain-Python twins of segments and resampling.
    """
    cons = np.zeros(n, dtype=np.float64)
    flags = np.zeros(n, dtype=np.int32)
    covered = np.zeros(n, dtype=np.int64)
    grid_end = grid_start + n * interval_s
    # room for every segment; pages never written are never touched (arrays reassigned
    # inside the loop, grown on demand, would cost reference counting on every reading)
    cap = ts.shape[0] + 1
    nt0 = np.empty(cap, dtype=np.int64)
    nt1 = np.empty(cap, dtype=np.int64)
    nd = np.empty(cap, dtype=np.float64)
    nf = np.empty(cap, dtype=np.int32)
    nb = np.empty(cap, dtype=np.float64)
    nl = np.empty(cap, dtype=np.float64)
    m = 0
    # a reading gives at most two segments: a held jump's unknown one ("u_"), then its own
    u_t0 = 0
    u_t1 = 0
    u_before = 0.0
    u_level = 0.0
    u_f = 0
    s_t0 = 0
    s_t1 = 0
    s_d = 0.0
    s_before = 0.0
    s_level = 0.0
    s_f = 0
    j = 0  # grid interval holding the last segment's start (segments start in order)
    j_lo = grid_start
    acc_j = -1  # the interval being summed in registers, and its sums so far
    acc_c = 0.0
    acc_f = 0
    acc_cov = 0
    acc_lo = 1  # [acc_lo, acc_hi]: the summed interval (empty until there is one)
    acc_hi = 0
    has_flags = in_flags.shape[0] > 0
    n_in = ts.shape[0]
    have_ref = False
    ref_t = 0
    ref_v = 0.0
    held = False
    held_t = 0
    held_v = 0.0
    held_f = 0
    pending = 0
    for i in range(n_in + 1):
        if i < n_in and have_ref and not held and not keep_all:
            # the usual reading: an ordinary rise inside the interval being summed
            t = ts[i]
            f = (in_flags[i] if has_flags else 0) | pending
            if acc_lo <= ref_t and ref_t < t and t <= acc_hi and not f & NOTABLE:
                v = values[i]
                dt = float(t - ref_t)
                d = v - ref_v
                if (
                    math.isfinite(v)
                    and d >= 0.0
                    and dt <= gap_s
                    and _plausible(d, dt, max_rate_per_s, resolution)
                ):
                    acc_c += d
                    acc_f |= f
                    acc_cov += t - ref_t
                    pending = 0
                    ref_t = t
                    ref_v = v
                    continue
        ne = 0
        if i == n_in:  # past the last reading: a held one ends the series unresolved
            if not held:
                break
            s_t0 = ref_t
            s_t1 = held_t
            s_d = math.nan
            s_before = ref_v
            s_level = held_v
            s_f = held_f | IMPOSSIBLE_RATE | UNKNOWN
            ne = 1
        else:
            t = ts[i]
            v = values[i]
            f = (in_flags[i] if has_flags else 0) | pending
            if not math.isfinite(v):
                pending = f | INVALID
                continue
            pending = 0
            if not have_ref:
                have_ref = True
                ref_t = t
                ref_v = v
                pending = f
                continue
            dt = float(t - ref_t)
            d = v - ref_v
            jitter = False
            if d >= 0.0:
                if _plausible(d, dt, max_rate_per_s, resolution):
                    if held:  # the held reading was a glitch
                        f |= held_f | IMPOSSIBLE_RATE
                        held = False
                    seg_d = d
                elif held and _plausible(
                    v - held_v, float(t - held_t), max_rate_per_s, resolution
                ):
                    # the level really jumped at held_t: unknown consumption up to there
                    u_t0 = ref_t
                    u_t1 = held_t
                    u_before = ref_v
                    u_level = held_v
                    u_f = held_f | IMPOSSIBLE_RATE | UNKNOWN
                    ne = 1
                    ref_t = held_t
                    ref_v = held_v
                    held = False
                    dt = float(t - ref_t)
                    seg_d = v - ref_v
                else:
                    if held:
                        pending = held_f | IMPOSSIBLE_RATE
                    held = True
                    held_t = t
                    held_v = v
                    held_f = f | pending
                    pending = 0
                    continue
            else:
                if held:
                    f |= held_f | IMPOSSIBLE_RATE
                    held = False
                drop = -d
                if drop <= max(jitter_abs, jitter_rel * abs(ref_v), resolution):
                    jitter = True
                    seg_d = 0.0
                    f |= JITTER
                else:
                    wrapped = _wrap(ref_v, v, dt, rollover, max_rate_per_s, resolution)
                    if math.isfinite(wrapped):
                        seg_d = wrapped
                        f |= ROLLOVER
                    else:
                        f |= RESET
                        if max_rate_per_s > 0.0 and _plausible(
                            v, dt, max_rate_per_s, resolution
                        ):
                            seg_d = v
                        elif v == 0.0:
                            seg_d = 0.0
                        else:
                            seg_d = math.nan
                            f |= UNKNOWN
            s_t0 = ref_t
            s_t1 = t
            s_d = seg_d
            s_before = ref_v
            s_level = v
            s_f = f
            ne += 1
            ref_t = t
            if not jitter:  # after jitter the higher reading stays the reference
                ref_v = v
        for e in range(ne):
            if e + 1 < ne:  # a held jump's unknown segment, before the reading's own
                s0 = u_t0
                s1 = u_t1
                sd = math.nan
                sf = u_f
                before = u_before
                level = u_level
            else:
                s0 = s_t0
                s1 = s_t1
                sd = s_d
                sf = s_f
                before = s_before
                level = s_level
            if float(s1 - s0) > gap_s:
                sf |= GAP
            if keep_all or sf & NOTABLE:
                nt0[m] = s0
                nt1[m] = s1
                nd[m] = sd
                nf[m] = sf
                nb[m] = before
                nl[m] = level
                m += 1
            a = max(s0, grid_start)
            b = min(s1, grid_end)
            if b <= a:
                continue
            span_s = s1 - s0
            while j < n and j_lo + interval_s <= a:
                j += 1
                j_lo += interval_s
            jj = j
            lo = j_lo
            while jj < n and lo < b:
                hi = lo + interval_s
                overlap = min(b, hi) - max(a, lo)
                if overlap > 0:
                    if jj != acc_j:  # intervals are reached in order
                        if acc_j >= 0:
                            cons[acc_j] = acc_c
                            flags[acc_j] = acc_f
                            covered[acc_j] = acc_cov
                        acc_j = jj
                        acc_lo = lo
                        acc_hi = hi
                        acc_c = 0.0
                        acc_f = 0
                        acc_cov = 0
                    # sd * (overlap / span) is sd when the pair lies inside the interval
                    acc_c += sd if overlap == span_s else sd * (overlap / float(span_s))
                    acc_f |= sf
                    acc_cov += overlap
                jj += 1
                lo = hi
    if acc_j >= 0:
        cons[acc_j] = acc_c
        flags[acc_j] = acc_f
        covered[acc_j] = acc_cov
    for q in range(n):
        if covered[q] == 0:
            cons[q] = math.nan
            flags[q] |= NO_DATA
        elif covered[q] < interval_s:
            flags[q] |= PARTIAL
    return (cons, flags, nt0[:m].copy(), nt1[:m].copy(), nd[:m].copy(), nf[:m].copy(),
            nb[:m].copy(), nl[:m].copy())  # fmt: skip

