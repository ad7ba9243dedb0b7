"""Slow, obviously correct twins of the baseline, least-squares and overspend kernels.

Plain Python floats and lists, one textbook step at a time: no numpy maths, no numba. The
property tests check each kernel against its twin; when they disagree, read this file first.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

Row = Sequence[float]


# --------------------------------------------------------------------------- linear algebra


def usable_rows(X: Sequence[Row], y: Row, w: Row) -> list[int]:
    """Indices of rows with finite design, response and weight, and weight > 0."""
    keep = []
    for i, row in enumerate(X):
        finite = all(math.isfinite(v) for v in row) and math.isfinite(y[i])
        if finite and math.isfinite(w[i]) and w[i] > 0:
            keep.append(i)
    return keep


def normal_equations(
    X: Sequence[Row], y: Row, w: Row, rows: list[int], p: int
) -> tuple[list[list[float]], list[float]]:
    """G = X^T W X and c = X^T W y (p columns) over the given rows."""
    G = [[0.0] * p for _ in range(p)]
    c = [0.0] * p
    for i in rows:
        for a in range(p):
            c[a] += w[i] * X[i][a] * y[i]
            for b in range(p):
                G[a][b] += w[i] * X[i][a] * X[i][b]
    return G, c


def solve_dropping(
    G: list[list[float]], c: list[float], tol: float, ridge: float = 0.0
) -> tuple[list[float], list[bool]]:
    """Solve G x = c column by column, Gram-Schmidt style on the normal equations.

    Column j is kept when it is not empty (G[j][j] > 0) and, after removing the kept earlier
    columns, what is left of it (its pivot) exceeds tol times its own G[j][j]; dropped
    columns get x_j = 0. Symmetric
    Gaussian elimination without pivoting does exactly that.
    """
    p = len(c)
    ref = [G[j][j] if G[j][j] > 0 else 1.0 for j in range(p)]
    A = [[G[i][j] + (ridge * ref[i] if i == j else 0.0) for j in range(p)] for i in range(p)]
    b = list(c)
    kept = [False] * p
    for j in range(p):
        pivot = A[j][j]
        if not (G[j][j] > 0 and pivot > tol * ref[j]):
            for i in range(p):  # take column j out of the problem
                A[i][j] = 0.0
                A[j][i] = 0.0
            b[j] = 0.0
            continue
        kept[j] = True
        for i in range(j + 1, p):
            f = A[i][j] / pivot
            for k in range(j, p):
                A[i][k] -= f * A[j][k]
            b[i] -= f * b[j]
    x = [0.0] * p
    for j in range(p - 1, -1, -1):
        if kept[j]:
            s = b[j] - sum(A[j][k] * x[k] for k in range(j + 1, p))
            x[j] = s / A[j][j]
    return x, kept


def rss_of(X: Sequence[Row], y: Row, w: Row, rows: list[int], coef: list[float]) -> float:
    total = 0.0
    for i in rows:
        e = y[i] - sum(X[i][a] * coef[a] for a in range(len(coef)))
        total += w[i] * e * e
    return total


def naive_lstsq(
    X: Sequence[Row], y: Row, w: Row, p: int, ridge: float = 0.0, tol: float = 1e-10
) -> tuple[list[float], int, int, float]:
    """(coef, rank, n_used, rss) of weighted ridge least squares with p columns (ridge
    relative to each column's sum of squares), dependent columns dropped."""
    rows = usable_rows(X, y, w)
    G, c = normal_equations(X, y, w, rows, p)
    coef, kept = solve_dropping(G, c, tol, ridge)
    return coef, sum(kept), len(rows), rss_of(X, y, w, rows, coef)


# --------------------------------------------------------------------------- baseline


def naive_time_group(epoch_s: int, offset_s: int, interval_s: int, daytype: bool) -> int:
    """Time-of-week group through the datetime module."""
    local = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=epoch_s + offset_s)
    slots = 86400 // interval_s
    seconds = local.hour * 3600 + local.minute * 60 + local.second
    slot = seconds // interval_s
    weekday = local.weekday()
    if daytype:
        return (0 if weekday < 5 else 1) * slots + slot
    return weekday * slots + slot


def design_row(
    group: int,
    n_groups: int,
    z: Row,
    t: float,
    zmask: Sequence[bool],
    heat_c: float | None,
    cool_c: float | None,
) -> list[float]:
    """One row of the dense design: group indicators, chosen z, degree terms."""
    row = [1.0 if q == group else 0.0 for q in range(n_groups)]
    row += [z[a] for a in range(len(zmask)) if zmask[a]]
    if heat_c is not None:
        row.append(max(0.0, heat_c - t))
    if cool_c is not None:
        row.append(max(0.0, t - cool_c))
    return row


def naive_fit(
    group: Sequence[int],
    y: Row,
    w: Row,
    Z: Sequence[Row],
    T: Row,
    n_groups: int,
    zmask: Sequence[bool],
    heat_c: float | None,
    cool_c: float | None,
    use_t: bool,
    rows: Sequence[int] | None = None,
    tol: float = 1e-9,
) -> dict:
    """Fit one candidate with an explicit dense design over ``rows`` (default: all usable).

    Returns alpha (None for empty groups), beta (chosen z, then heating, cooling; 0 when
    dropped), kept flags, rss, n_used, n_params and the t statistics of the degree terms.
    """
    usable = []
    for i in range(len(y)):
        if group[i] < 0 or group[i] >= n_groups:
            continue
        if not (math.isfinite(y[i]) and math.isfinite(w[i]) and w[i] > 0):
            continue
        if not all(math.isfinite(v) for v in Z[i]) or (use_t and not math.isfinite(T[i])):
            continue
        usable.append(i)
    if rows is not None:
        usable = [i for i in usable if i in set(rows)]
    X = [design_row(group[i], n_groups, Z[i], T[i], zmask, heat_c, cool_c) for i in range(len(y))]
    p = n_groups + sum(bool(v) for v in zmask) + (heat_c is not None) + (cool_c is not None)
    G, c = normal_equations(X, y, w, usable, p)
    # empty groups have an all-zero column: drop them up front (their alpha is undefined)
    present = [G[q][q] > 0 for q in range(n_groups)]
    coef, kept = solve_dropping(G, c, tol)
    for q in range(n_groups):
        kept[q] = present[q]
    rss = rss_of(X, y, w, usable, coef)
    k = len(coef) - n_groups
    n_params = sum(kept)
    dof = len(usable) - n_params
    t_stats: list[float | None] = [None] * k
    sigma2 = rss / dof if dof > 0 else math.nan
    for u in range(k):
        j = n_groups + u
        if not kept[j]:
            continue
        e = [1.0 if v == j else 0.0 for v in range(len(coef))]
        inv_col, _ = solve_dropping(G, e, tol)
        var = inv_col[j]
        se = math.sqrt(sigma2 * var) if sigma2 > 0 and var > 0 else math.nan
        t_stats[u] = coef[j] / se if se > 0 else math.nan
    return {
        "alpha": [coef[q] if present[q] else None for q in range(n_groups)],
        "beta": coef[n_groups:],
        "kept": kept[n_groups:],
        "rss": rss,
        "n_used": len(usable),
        "n_params": n_params,
        "t": t_stats,
        "design": X,
        "usable": usable,
    }


def naive_cv_sse(
    group: Sequence[int],
    y: Row,
    w: Row,
    Z: Sequence[Row],
    T: Row,
    n_groups: int,
    zmask: Sequence[bool],
    heat_c: float | None,
    cool_c: float | None,
    use_t: bool,
    fold: Sequence[int],
    n_folds: int,
) -> float:
    """Blocked cross-validation: fit on all folds but one, sum squared errors on that one;
    a group unseen in training predicts with intercept 0."""
    total = 0.0
    for f in range(n_folds):
        train = [i for i in range(len(y)) if fold[i] != f]
        fit = naive_fit(group, y, w, Z, T, n_groups, zmask, heat_c, cool_c, use_t, train)
        test = [i for i in range(len(y)) if fold[i] == f]
        full = naive_fit(group, y, w, Z, T, n_groups, zmask, heat_c, cool_c, use_t, test)
        for i in full["usable"]:
            a = fit["alpha"][group[i]]
            e = (a if a is not None else 0.0) + sum(
                full["design"][i][n_groups + u] * fit["beta"][u] for u in range(len(fit["beta"]))
            )
            total += w[i] * (y[i] - e) ** 2
    return total


def naive_predict(
    group: Sequence[int],
    Z: Sequence[Row],
    T: Row,
    alpha: Sequence[float | None],
    beta_z: Row,
    use_z: Sequence[bool],
    heat_c: float | None,
    coef_h: float,
    cool_c: float | None,
    coef_c: float,
) -> list[float]:
    """Expected value per row; NaN for a group without intercept or a missing input."""
    out = []
    for i in range(len(group)):
        q = group[i]
        a = alpha[q] if 0 <= q < len(alpha) else None
        if a is None or not math.isfinite(a):
            out.append(math.nan)
            continue
        e = a + sum(beta_z[j] * Z[i][j] for j in range(len(beta_z)) if use_z[j])
        if heat_c is not None:
            e += coef_h * max(0.0, heat_c - T[i]) if math.isfinite(T[i]) else math.nan
        if cool_c is not None:
            e += coef_c * max(0.0, T[i] - cool_c) if math.isfinite(T[i]) else math.nan
        out.append(e)
    return out


# --------------------------------------------------------------------------- overspend


def naive_cusum(
    t: Row,
    actual: Row,
    expected: Row,
    scale: Row,
    k: float,
    h: float,
    h_low: float,
    cap: float,
    min_close: int,
    clip: float = math.inf,
    k_rel: float = 0.0,
) -> tuple[list[float], list[tuple[float, ...]], tuple[float, ...] | None]:
    """Tabular CUSUM of standardised residuals (clipped at ``clip``, allowance at least
    ``k_rel`` of expected) with hysteresis.

    Returns (CUSUM computed at each interval, closed alerts, the alert still open or None);
    an alert is (start, alarm time, end = last time at its peak, residual sum from start to
    peak, expected sum from start to peak, peak CUSUM); the open alert has end None and
    sums up to now. NaN inputs (or scale <= 0) skip the interval.
    """
    cusum = 0.0
    scores: list[float] = []
    closed: list[tuple[float, ...]] = []
    alert: dict | None = None  # the open alert
    run: dict | None = None  # the current run of positive CUSUM (candidate start)
    for i in range(len(t)):
        r = actual[i] - expected[i]
        if not (scale[i] > 0 and math.isfinite(scale[i]) and math.isfinite(r)):
            scores.append(cusum)
            continue
        allowance = max(k, k_rel * expected[i] / scale[i])
        new = min(cap, max(0.0, cusum + min(r / scale[i], clip) - allowance))
        scores.append(new)
        if alert is None:
            if new == 0.0:
                run = None
            else:
                if run is None:
                    run = {"start": t[i], "r": 0.0, "e": 0.0}
                run["r"] += r
                run["e"] += expected[i]
            cusum = new
            if new > h:
                assert run is not None
                alert = {
                    "alarm": t[i],
                    "peak": new,
                    "peak_t": t[i],
                    "peak_r": run["r"],
                    "peak_e": run["e"],
                    "below": 0,
                }
            continue
        assert run is not None
        run["r"] += r
        run["e"] += expected[i]
        cusum = new
        if new >= alert["peak"]:
            alert.update(peak=new, peak_t=t[i], peak_r=run["r"], peak_e=run["e"])
        alert["below"] = alert["below"] + 1 if new < h_low else 0
        if alert["below"] >= min_close:
            closed.append(
                (
                    run["start"],
                    alert["alarm"],
                    alert["peak_t"],
                    alert["peak_r"],
                    alert["peak_e"],
                    alert["peak"],
                )
            )
            alert = None
            run = None
            cusum = 0.0
    still = None
    if alert is not None and run is not None:
        still = (run["start"], alert["alarm"], math.nan, run["r"], run["e"], alert["peak"])
    return scores, closed, still
