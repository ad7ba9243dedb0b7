"""Slow, obviously correct plain-Python twins of every detector kernel.

Each function mirrors one kernel in ``detectors/kernels`` (same arguments, same results)
but is written for reading, not speed: lists, ``statistics``, one rule per line. Tests
compare kernel and twin on generated inputs (NaN, inf, empty, constant stretches).
"""

from __future__ import annotations

import math
import statistics

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
