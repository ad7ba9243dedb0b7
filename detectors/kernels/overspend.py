"""Overspend kernels: a tabular CUSUM of residuals with hysteresis, one step at a time.

The whole detector state is a small float64 vector, so the streaming detector can snapshot
it, and the batch run and the streaming step are the same loop (:func:`_advance`; same
events, by construction). Per interval with residual r = actual - expected and its expected spread
``scale`` (the baseline's prediction std for that interval), with k and h in units of it
and the allowance at least ``k_rel`` of the expected consumption (a shift smaller than a
few per cent of the load is a model bias, not a loss worth an alert):

    S = min(cap, max(0, S + min(r / scale, clip) - max(k, k_rel * expected / scale)))

An alert opens when S exceeds h. Its start is the first interval of the run of positive S
that led there (the CUSUM change-point estimate); it closes after S has stayed below
``h_low`` for ``min_close`` intervals (hysteresis: no flapping around h); its end is the last
interval at which S was at its peak, i.e. where the excess stopped growing. Capping S bounds
the time a long alert needs to close once the overspend stops; clipping each standardised
residual at ``clip`` means a single outlier (a spike, a glitch) cannot open an alert alone.
The excess is summed from the raw residuals. Intervals where actual, expected or scale is
NaN leave the state alone.
"""

from __future__ import annotations

import math

import numpy as np

from ..jit import njit

# state vector slots
S = 0  # current CUSUM value
OPEN = 1  # 1.0 while an alert is open
RUN_T = 2  # start time of the current run of positive S (epoch s), NaN when S == 0
RUN_R = 3  # sum of residuals since RUN_T
RUN_E = 4  # sum of expected since RUN_T
ALARM_T = 5  # when the open alert crossed h
PEAK_S = 6  # highest S of the open alert
PEAK_T = 7  # last interval at PEAK_S
PEAK_R = 8  # RUN_R at PEAK_T
PEAK_E = 9  # RUN_E at PEAK_T
BELOW = 10  # consecutive intervals with S < h_low while open
SEEN = 11  # intervals with finite input so far
# the alert closed by the last step (valid when the step returned CLOSED)
DONE_START = 12
DONE_ALARM = 13
DONE_END = 14
DONE_R = 15
DONE_E = 16
DONE_PEAK = 17
SCORE = 18  # CUSUM computed by the last step, before a closing alert resets it
NSTATE = 19

# parameter vector slots
K = 0
H = 1
H_LOW = 2
CAP = 3
MIN_CLOSE = 4
CLIP = 5  # standardised residuals above this count as this much (one outlier cannot alert)
K_REL = 6  # allowance as a share of expected: the allowance is max(k, k_rel * expected / scale)
NPARAM = 7

# step results
NOTHING = 0
OPENED = 1
CLOSED = 2


@njit
def _new_state() -> np.ndarray:
    """A fresh CUSUM state (nothing seen, no alert)."""
    st = np.zeros(NSTATE)  # S = 0, no alert, nothing seen
    st[RUN_T] = np.nan
    st[ALARM_T] = np.nan
    st[PEAK_T] = np.nan
    for j in range(DONE_START, NSTATE):
        st[j] = np.nan
    return st


@njit
def _peek(
    st: np.ndarray, actual: float, expected: float, scale: float, params: np.ndarray
) -> float:
    """The CUSUM value one more interval would give, without changing the state."""
    if not (scale > 0.0 and math.isfinite(actual - expected) and math.isfinite(scale)):
        return st[S]
    z = min((actual - expected) / scale, params[CLIP])
    k = max(params[K], params[K_REL] * expected / scale)
    return min(params[CAP], max(0.0, st[S] + z - k))


@njit
def _step(
    st: np.ndarray,
    t: float,
    actual: float,
    expected: float,
    scale: float,
    params: np.ndarray,
    io: np.ndarray,
) -> int:
    """Advance the state by one interval starting at ``t``; returns NOTHING/OPENED/CLOSED.

    The streaming form of :func:`_advance`: the interval goes through ``io`` (5 floats,
    the caller's buffer), so a step allocates nothing.
    """
    io[0] = t
    io[1] = actual
    io[2] = expected
    io[3] = scale
    _, code = _advance(st, io[0:1], io[1:2], io[2:3], io[3:4], params, io[4:5], 0)
    return code


@njit
def _advance(
    st: np.ndarray,
    t: np.ndarray,
    actual: np.ndarray,
    expected: np.ndarray,
    scale: np.ndarray,
    params: np.ndarray,
    cusum: np.ndarray,
    start: int,
) -> tuple[int, int]:
    """Step through the intervals from ``start`` until an alert closes or the data ends.

    Writes each step's CUSUM into ``cusum``; returns (index after the last step, that
    step's result NOTHING/OPENED/CLOSED). The step is written inside the loop: calling a
    per-interval function with the state arrays costs numba a reference count update per
    array per interval, most of the CUSUM's time.
    """
    code = NOTHING
    i = start
    n = t.shape[0]
    while i < n:
        code = NOTHING
        e = expected[i]
        sc = scale[i]
        r = actual[i] - e
        if not (sc > 0.0 and math.isfinite(r) and math.isfinite(sc)):
            st[SCORE] = st[S]
        else:
            z = min(r / sc, params[CLIP])
            k = max(params[K], params[K_REL] * e / sc)
            st[SEEN] += 1.0
            s_new = min(params[CAP], max(0.0, st[S] + z - k))
            st[SCORE] = s_new
            if st[OPEN] == 0.0:
                if s_new == 0.0:
                    st[RUN_T] = np.nan
                    st[RUN_R] = 0.0
                    st[RUN_E] = 0.0
                else:
                    if st[S] == 0.0:
                        st[RUN_T] = t[i]
                        st[RUN_R] = 0.0
                        st[RUN_E] = 0.0
                    st[RUN_R] += r
                    st[RUN_E] += e
                st[S] = s_new
                if s_new > params[H]:
                    st[OPEN] = 1.0
                    st[ALARM_T] = t[i]
                    st[PEAK_S] = s_new
                    st[PEAK_T] = t[i]
                    st[PEAK_R] = st[RUN_R]
                    st[PEAK_E] = st[RUN_E]
                    st[BELOW] = 0.0
                    code = OPENED
            else:
                st[RUN_R] += r
                st[RUN_E] += e
                st[S] = s_new
                if s_new >= st[PEAK_S]:
                    st[PEAK_S] = s_new
                    st[PEAK_T] = t[i]
                    st[PEAK_R] = st[RUN_R]
                    st[PEAK_E] = st[RUN_E]
                if s_new < params[H_LOW]:
                    st[BELOW] += 1.0
                else:
                    st[BELOW] = 0.0
                if st[BELOW] >= params[MIN_CLOSE]:
                    st[DONE_START] = st[RUN_T]
                    st[DONE_ALARM] = st[ALARM_T]
                    st[DONE_END] = st[PEAK_T]
                    st[DONE_R] = st[PEAK_R]
                    st[DONE_E] = st[PEAK_E]
                    st[DONE_PEAK] = st[PEAK_S]
                    st[OPEN] = 0.0
                    st[S] = 0.0
                    st[RUN_T] = np.nan
                    st[RUN_R] = 0.0
                    st[RUN_E] = 0.0
                    st[ALARM_T] = np.nan
                    st[PEAK_S] = 0.0
                    st[PEAK_T] = np.nan
                    st[BELOW] = 0.0
                    code = CLOSED
        cusum[i] = st[SCORE]
        i += 1
        if code == CLOSED:
            break
    return i, code


@njit
def _run(
    st: np.ndarray,
    t: np.ndarray,
    actual: np.ndarray,
    expected: np.ndarray,
    scale: np.ndarray,
    params: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Step through every interval; returns (CUSUM of each step, closed alerts).

    Closed alerts are rows of (start, alarm, end, excess, expected, peak); the state is
    updated in place, so a run can continue where another stopped.
    """
    n = t.size
    cusum = np.empty(n)
    done = np.empty((8, 6))
    count = 0
    i = 0
    while i < n:
        i, code = _advance(st, t, actual, expected, scale, params, cusum, i)
        if code == CLOSED:
            if count == done.shape[0]:
                bigger = np.empty((2 * count, 6))
                bigger[:count] = done
                done = bigger
            done[count, 0] = st[DONE_START]
            done[count, 1] = st[DONE_ALARM]
            done[count, 2] = st[DONE_END]
            done[count, 3] = st[DONE_R]
            done[count, 4] = st[DONE_E]
            done[count, 5] = st[DONE_PEAK]
            count += 1
    return cusum, done[:count].copy()
