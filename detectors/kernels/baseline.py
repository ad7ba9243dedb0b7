"""Baseline kernels: time-of-week groups, the balance-point grid search, prediction.

The model is  y = alpha[group] + sum_a beta_a z_a + beta_h (b - T)+ + beta_c (T - c)+ :
one intercept per time-of-week group, a few dense columns z (production, running), and
heating/cooling degree terms with balance points b <= c taken from a grid.

The grid search does not go over the rows once per candidate. One pass sorts every row into
a temperature bin between grid points and accumulates per-bin sums (of w, y, z and the
distance of T to the bin's edges); since (b - T)+ is linear in T below b, every entry of
every candidate's normal equations follows from the bins below b (heating) or above c
(cooling). A candidate then costs O(groups * k^2) instead of O(rows * k^2). The same sums,
kept per time fold, give blocked cross-validation errors without refitting rows.
"""

from __future__ import annotations

import math

import numpy as np

from ..jit import njit
from .lstsq import _grouped_solve

DAY_S = 86400


@njit
def _time_groups(
    epoch_s: np.ndarray, offset_s: np.ndarray, interval_s: int, daytype: bool
) -> np.ndarray:
    """Group of each timestamp: local weekday (or weekday/weekend) x slot of the day.

    ``offset_s`` is the local UTC offset of each timestamp; ``interval_s`` divides a day.
    Weekdays count from Monday = 0. Groups: 7 * slots (or 2 * slots with ``daytype``).
    """
    slots = DAY_S // interval_s
    out = np.empty(epoch_s.size, dtype=np.int64)
    for i in range(epoch_s.size):
        local = epoch_s[i] + offset_s[i]
        day = local // DAY_S
        weekday = (day + 3) % 7  # 1970-01-01 was a Thursday
        slot = (local - day * DAY_S) // interval_s
        if daytype:
            kind = 0 if weekday < 5 else 1
            out[i] = kind * slots + slot
        else:
            out[i] = weekday * slots + slot
    return out


@njit
def _bin_index(grid: np.ndarray, t: float) -> int:
    """Number of grid points strictly below t (np.searchsorted side='left')."""
    lo = 0
    hi = grid.size
    while lo < hi:
        mid = (lo + hi) // 2
        if grid[mid] < t:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit
def _usable(
    i: int,
    group: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    Z: np.ndarray,
    T: np.ndarray,
    n_groups: int,
    use_t: bool,
) -> bool:
    """Row i has a group, a finite response, positive weight and every input it needs."""
    if group[i] < 0 or group[i] >= n_groups:
        return False
    if not (math.isfinite(y[i]) and math.isfinite(w[i]) and w[i] > 0.0):
        return False
    for a in range(Z.shape[1]):
        if not math.isfinite(Z[i, a]):
            return False
    return not (use_t and not math.isfinite(T[i]))


@njit
def _accumulate(
    group: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    Z: np.ndarray,
    T: np.ndarray,
    grid: np.ndarray,
    n_groups: int,
    fold: np.ndarray,
    n_folds: int,
) -> tuple:
    """One pass over the rows: the sufficient statistics per fold and temperature bin.

    Bin r holds grid[r-1] < T <= grid[r] (r = number of grid points below T). Inside a bin
    temperatures are kept relative to its edges, d = grid[r] - T >= 0 (heating side) and
    e = T - grid[r-1] > 0 (cooling side), so degree sums are built from non-negative parts
    and never cancel. Returns (GR, BR, ZR, GQ, AA, n_used):
      GR[f, q, r] = (sum w, wd, we) per group and bin
      BR[f, r]    = (sum w, wd, wd^2, we, we^2, wy, wyd, wye) per bin
      ZR[f, r, a] = (sum w z_a, w z_a d, w z_a e) per bin
      GQ[f, q]    = (sum w, wy, w z_0, w z_1, ...) per group
      AA[f]       = Gram matrix of [z_0, z_1, ..., y]
    Unusable rows are skipped; with an empty grid temperature is ignored (and may be NaN).
    """
    kz = Z.shape[1]
    J = grid.size
    use_t = J > 0
    GR = np.zeros((n_folds, n_groups, J + 1, 3))
    BR = np.zeros((n_folds, J + 1, 8))
    ZR = np.zeros((n_folds, J + 1, kz, 3))
    GQ = np.zeros((n_folds, n_groups, 2 + kz))
    AA = np.zeros((n_folds, kz + 1, kz + 1))
    n_used = 0
    for i in range(y.size):
        if not _usable(i, group, y, w, Z, T, n_groups, use_t):
            continue
        n_used += 1
        f = fold[i]
        q = group[i]
        wi = w[i]
        yi = y[i]
        r = _bin_index(grid, T[i]) if use_t else 0
        d = grid[r] - T[i] if r < J else 0.0
        e = T[i] - grid[r - 1] if r > 0 else 0.0
        GR[f, q, r, 0] += wi
        GR[f, q, r, 1] += wi * d
        GR[f, q, r, 2] += wi * e
        BR[f, r, 0] += wi
        BR[f, r, 1] += wi * d
        BR[f, r, 2] += wi * d * d
        BR[f, r, 3] += wi * e
        BR[f, r, 4] += wi * e * e
        BR[f, r, 5] += wi * yi
        BR[f, r, 6] += wi * yi * d
        BR[f, r, 7] += wi * yi * e
        GQ[f, q, 0] += wi
        GQ[f, q, 1] += wi * yi
        AA[f, kz, kz] += wi * yi * yi
        for a in range(kz):
            za = wi * Z[i, a]
            ZR[f, r, a, 0] += za
            ZR[f, r, a, 1] += za * d
            ZR[f, r, a, 2] += za * e
            GQ[f, q, 2 + a] += za
            AA[f, a, kz] += za * yi
            AA[f, kz, a] += za * yi
            for b in range(kz):
                AA[f, a, b] += za * Z[i, b]
    return GR, BR, ZR, GQ, AA, n_used


@njit
def _reduce(a: np.ndarray, mode: int, f: int) -> np.ndarray:
    """Sum over the fold axis: all folds (mode 0), all but f (1), fold f alone (2).

    All but f is summed directly, not as total minus fold, which could cancel."""
    if mode == 2:
        return a[f].copy()
    out = np.zeros(a.shape[1:])
    for h in range(a.shape[0]):
        if mode == 0 or h != f:
            out += a[h]
    return out


@njit
def _level(st: tuple, mode: int, f: int, grid: np.ndarray) -> tuple:
    """Degree-term sums of one data subset (see :func:`_reduce` for ``mode``) for every
    balance point on the grid: (HB, HH, HY, HZ, KB, KK, KY, KZ, GQ, AA).

    For heating at b = grid[j] (rows with T <= b) each bin r <= j contributes with
    b - T = (b - grid[r]) + d, both parts >= 0; for cooling at c = grid[j] (rows with
    T > c) each bin r > j contributes with T - c = e + (grid[r-1] - c), both >= 0. HB/KB
    are per group, HH/KK the squared sums, HY/KY the sums against y, HZ/KZ against z.
    """
    GR = _reduce(st[0], mode, f)
    BR = _reduce(st[1], mode, f)
    ZR = _reduce(st[2], mode, f)
    GQ = _reduce(st[3], mode, f)
    AA = _reduce(st[4], mode, f)
    J = grid.size
    g = GQ.shape[0]
    kz = AA.shape[0] - 1
    HB = np.zeros((g, J))
    HH = np.zeros(J)
    HY = np.zeros(J)
    HZ = np.zeros((J, kz))
    KB = np.zeros((g, J))
    KK = np.zeros(J)
    KY = np.zeros(J)
    KZ = np.zeros((J, kz))
    for j in range(J):
        for r in range(j + 1):
            dl = grid[j] - grid[r]
            HH[j] += dl * dl * BR[r, 0] + 2.0 * dl * BR[r, 1] + BR[r, 2]
            HY[j] += dl * BR[r, 5] + BR[r, 6]
            for q in range(g):
                HB[q, j] += dl * GR[q, r, 0] + GR[q, r, 1]
            for a in range(kz):
                HZ[j, a] += dl * ZR[r, a, 0] + ZR[r, a, 1]
        for r in range(j + 1, J + 1):
            ep = grid[r - 1] - grid[j]
            KK[j] += ep * ep * BR[r, 0] + 2.0 * ep * BR[r, 3] + BR[r, 4]
            KY[j] += ep * BR[r, 5] + BR[r, 7]
            for q in range(g):
                KB[q, j] += ep * GR[q, r, 0] + GR[q, r, 2]
            for a in range(kz):
                KZ[j, a] += ep * ZR[r, a, 0] + ZR[r, a, 2]
    return HB, HH, HY, HZ, KB, KK, KY, KZ, GQ, AA


@njit
def _system(lv: tuple, zmask: np.ndarray, hj: int, cj: int) -> tuple:
    """Normal equations (D, B, C, gy, cy, yy, cols) of one candidate from a level.

    Dense columns in order: the z columns picked by ``zmask``, then heating (grid[hj],
    if hj >= 0), then cooling (grid[cj], if cj >= 0); ``cols`` names each (a >= 0 for z_a,
    -1 heating, -2 cooling). Requires hj <= cj when both are used, so no row has both
    degree terms and their cross product is zero.
    """
    HB, HH, HY, HZ, KB, KK, KY, KZ, GQ, AA = lv
    g = GQ.shape[0]
    kz = zmask.size
    cols = np.empty(kz + 2, dtype=np.int64)
    k = 0
    for a in range(kz):
        if zmask[a]:
            cols[k] = a
            k += 1
    if hj >= 0:
        cols[k] = -1
        k += 1
    if cj >= 0:
        cols[k] = -2
        k += 1
    cols = cols[:k]
    D = GQ[:, 0].copy()
    gy = GQ[:, 1].copy()
    B = np.zeros((g, k))
    C = np.zeros((k, k))
    cy = np.zeros(k)
    for u in range(k):
        cu = cols[u]
        if cu >= 0:
            for q in range(g):
                B[q, u] = GQ[q, 2 + cu]
            cy[u] = AA[cu, kz]
            for v in range(k):
                cv = cols[v]
                if cv >= 0:
                    C[u, v] = AA[cu, cv]
                elif cv == -1:
                    C[u, v] = HZ[hj, cu]
                else:
                    C[u, v] = KZ[cj, cu]
                C[v, u] = C[u, v]
        elif cu == -1:
            for q in range(g):
                B[q, u] = HB[q, hj]
            cy[u] = HY[hj]
            C[u, u] = HH[hj]
        else:
            for q in range(g):
                B[q, u] = KB[q, cj]
            cy[u] = KY[cj]
            C[u, u] = KK[cj]
    return D, B, C, gy, cy, AA[kz, kz], cols


@njit
def _sse(
    alpha: np.ndarray,
    beta: np.ndarray,
    D: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    gy: np.ndarray,
    cy: np.ndarray,
    yy: float,
) -> float:
    """Weighted sum of squared errors of coefficients (alpha, beta) on a data subset,
    from its normal equations alone; groups without a coefficient count alpha = 0."""
    g, k = B.shape
    s = yy
    for q in range(g):
        a = alpha[q]
        if not math.isfinite(a):
            a = 0.0
        bq = 0.0
        for u in range(k):
            bq += B[q, u] * beta[u]
        s += D[q] * a * a + 2.0 * a * bq - 2.0 * a * gy[q]
    for u in range(k):
        s -= 2.0 * beta[u] * cy[u]
        for v in range(k):
            s += beta[u] * C[u, v] * beta[v]
    return max(s, 0.0)


@njit
def _evaluate(
    st: tuple,
    n_folds: int,
    cand_z: np.ndarray,
    cand_h: np.ndarray,
    cand_c: np.ndarray,
    grid: np.ndarray,
    ridge: float,
    tol: float,
) -> tuple:
    """Score every candidate model: in-sample SSE, parameter count, degree slopes and their
    t statistics, and (with n_folds > 1) the blocked cross-validation SSE."""
    n_cand = cand_h.size
    rss = np.full(n_cand, np.nan)
    cv = np.full(n_cand, np.nan)
    n_par = np.zeros(n_cand, dtype=np.int64)
    coef_h = np.full(n_cand, np.nan)
    t_h = np.full(n_cand, np.nan)
    coef_c = np.full(n_cand, np.nan)
    t_c = np.full(n_cand, np.nan)
    full = _level(st, 0, 0, grid)
    n = 0.0
    n_used = st[5]
    for q in range(full[8].shape[0]):
        if full[8][q, 0] > 0.0:
            n += 1.0
    nf = n_folds if n_folds > 1 else 0
    trains = [_level(st, 1, f, grid) for f in range(nf)]
    tests = [_level(st, 2, f, grid) for f in range(nf)]
    for c in range(n_cand):
        D, B, C, gy, cy, yy, cols = _system(full, cand_z[c], cand_h[c], cand_c[c])
        alpha, beta, kept, var = _grouped_solve(D, B, C, gy, cy, ridge, tol)
        s = _sse(alpha, beta, D, B, C, gy, cy, yy)
        p = n
        for u in range(kept.size):
            if kept[u]:
                p += 1.0
        rss[c] = s
        n_par[c] = int(p)
        dof = n_used - p
        sigma2 = s / dof if dof > 0 else np.nan
        for u in range(kept.size):
            if cols[u] == -1 or cols[u] == -2:
                se = math.sqrt(sigma2 * var[u]) if kept[u] and sigma2 > 0 else np.nan
                tv = beta[u] / se if se > 0 else (np.inf if kept[u] and beta[u] > 0 else np.nan)
                if cols[u] == -1:
                    coef_h[c] = beta[u] if kept[u] else np.nan
                    t_h[c] = tv
                else:
                    coef_c[c] = beta[u] if kept[u] else np.nan
                    t_c[c] = tv
        if n_folds > 1:
            tot = 0.0
            for f in range(n_folds):
                Dt, Bt, Ct, gyt, cyt, _yyt, _ = _system(trains[f], cand_z[c], cand_h[c], cand_c[c])
                a_f, b_f, _, _ = _grouped_solve(Dt, Bt, Ct, gyt, cyt, ridge, tol)
                Dv, Bv, Cv, gyv, cyv, yyv, _ = _system(tests[f], cand_z[c], cand_h[c], cand_c[c])
                tot += _sse(a_f, b_f, Dv, Bv, Cv, gyv, cyv, yyv)
            cv[c] = tot
    return rss, cv, n_par, coef_h, t_h, coef_c, t_c


@njit
def _fit_candidate(
    st: tuple, zmask: np.ndarray, hj: int, cj: int, grid: np.ndarray, ridge: float, tol: float
) -> tuple:
    """Coefficients of one candidate on all folds: (alpha, beta_z, coef_h, coef_c).

    Terms not in the candidate, or dropped as dependent, get NaN; empty groups alpha NaN."""
    full = _level(st, 0, 0, grid)
    D, B, C, gy, cy, _yy, cols = _system(full, zmask, hj, cj)
    alpha, beta, kept, _ = _grouped_solve(D, B, C, gy, cy, ridge, tol)
    beta_z = np.full(zmask.size, np.nan)
    ch = np.nan
    cc = np.nan
    for u in range(beta.size):
        value = beta[u] if kept[u] else np.nan
        if cols[u] >= 0:
            beta_z[cols[u]] = value
        elif cols[u] == -1:
            ch = value
        else:
            cc = value
    return alpha, beta_z, ch, cc


@njit
def _predict(
    group: np.ndarray,
    Z: np.ndarray,
    T: np.ndarray,
    alpha: np.ndarray,
    beta_z: np.ndarray,
    use_z: np.ndarray,
    heat_c: float,
    coef_h: float,
    cool_c: float,
    coef_c: float,
) -> np.ndarray:
    """Expected value per row; NaN where the group has no intercept or an input the model
    uses is missing. A NaN balance point means the degree term is not in the model."""
    m = group.size
    out = np.empty(m)
    n_groups = alpha.size
    use_h = math.isfinite(heat_c)
    use_c = math.isfinite(cool_c)
    for i in range(m):
        q = group[i]
        if q < 0 or q >= n_groups or not math.isfinite(alpha[q]):
            out[i] = np.nan
            continue
        if (use_h or use_c) and not math.isfinite(T[i]):
            out[i] = np.nan
            continue
        e = alpha[q]
        for a in range(beta_z.size):
            if use_z[a]:
                e += beta_z[a] * Z[i, a]
        if use_h:
            e += coef_h * max(0.0, heat_c - T[i])
        if use_c:
            e += coef_c * max(0.0, T[i] - cool_c)
        out[i] = e
    return out
