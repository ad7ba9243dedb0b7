"""Least-squares kernels without SciPy: Householder QR, Cholesky, and a grouped solver.

numba's ``np.linalg`` calls SciPy's LAPACK, which the project does not depend on, so the
factorisations are written out here. Public wrappers live in :mod:`detectors.lstsq`.

Rows with a NaN or inf anywhere (design, response or weight) and rows with weight <= 0 are
skipped. A column that is (numerically) a combination of earlier ones is reported through
the returned rank; the Cholesky solvers drop such a column (coefficient 0) instead.
"""

from __future__ import annotations

import math

import numpy as np

from ..jit import njit


@njit
def _valid_rows(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Boolean mask of rows whose design, response and weight are finite, weight > 0."""
    m, p = X.shape
    ok = np.empty(m, dtype=np.bool_)
    for i in range(m):
        good = math.isfinite(y[i]) and math.isfinite(w[i]) and w[i] > 0.0
        j = 0
        while good and j < p:
            good = math.isfinite(X[i, j])
            j += 1
        ok[i] = good
    return ok


@njit
def _householder_lstsq(
    X: np.ndarray, y: np.ndarray, w: np.ndarray, ridge: float, rcond: float
) -> tuple[np.ndarray, int, int, float]:
    """Weighted ridge least squares by Householder QR on column-scaled data.

    Minimises sum w_i (y_i - x_i b)^2 + ridge * sum_j (s_j b_j)^2 where s_j is the norm of
    column j over the used rows (so ``ridge`` is scale free). Returns (coef, rank, n_used,
    rss); ``coef`` is all NaN when the rank is below the column count.
    """
    m, p = X.shape
    ok = _valid_rows(X, y, w)
    n = 0
    for i in range(m):
        if ok[i]:
            n += 1
    extra = p if ridge > 0.0 else 0
    rows = n + extra
    A = np.zeros((rows, p))
    b = np.zeros(rows)
    r = 0
    for i in range(m):
        if ok[i]:
            sw = math.sqrt(w[i])
            for j in range(p):
                A[r, j] = X[i, j] * sw
            b[r] = y[i] * sw
            r += 1
    scale = np.ones(p)
    for j in range(p):
        s = 0.0
        for i in range(n):
            s += A[i, j] * A[i, j]
        if s > 0.0:
            scale[j] = math.sqrt(s)
        for i in range(n):
            A[i, j] /= scale[j]
    if extra:
        sr = math.sqrt(ridge)
        for j in range(p):
            A[n + j, j] = sr
    coef = np.full(p, np.nan)
    if p == 0:
        rss = 0.0
        for i in range(n):
            rss += b[i] * b[i]
        return coef, 0, n, rss
    steps = min(rows, p)
    diag = np.zeros(p)
    for k in range(steps):
        norm = 0.0
        for i in range(k, rows):
            norm += A[i, k] * A[i, k]
        norm = math.sqrt(norm)
        if norm == 0.0:
            diag[k] = 0.0
            continue
        alpha = -norm if A[k, k] >= 0.0 else norm
        # v = a_k - alpha e_k, stored in A[k:, k]; H = I - 2 v v^T / (v^T v)
        A[k, k] -= alpha
        vnorm2 = 0.0
        for i in range(k, rows):
            vnorm2 += A[i, k] * A[i, k]
        for j in range(k + 1, p):
            dot = 0.0
            for i in range(k, rows):
                dot += A[i, k] * A[i, j]
            f = 2.0 * dot / vnorm2
            for i in range(k, rows):
                A[i, j] -= f * A[i, k]
        dot = 0.0
        for i in range(k, rows):
            dot += A[i, k] * b[i]
        f = 2.0 * dot / vnorm2
        for i in range(k, rows):
            b[i] -= f * A[i, k]
        diag[k] = alpha
    biggest = 0.0
    for k in range(p):
        biggest = max(biggest, abs(diag[k]))
    rank = 0
    for k in range(p):
        if biggest > 0.0 and abs(diag[k]) > rcond * biggest:
            rank += 1
    if rank == p:
        for k in range(p - 1, -1, -1):
            s = b[k]
            for j in range(k + 1, p):
                s -= A[k, j] * coef[j]
            coef[k] = s / diag[k]
        for j in range(p):
            coef[j] /= scale[j]
    rss = 0.0
    for i in range(m):
        if ok[i]:
            e = y[i]
            for j in range(p):
                e -= X[i, j] * coef[j]
            rss += w[i] * e * e
    return coef, rank, n, rss


@njit
def _cholesky_solve(
    G: np.ndarray, c: np.ndarray, ref: np.ndarray, ridge: float, tol: float
) -> tuple[np.ndarray, np.ndarray]:
    """Solve (G + ridge * diag(ref)) x = c for symmetric positive semi-definite G.

    A pivot at or below ``tol * ref[j]`` (or an empty column, G[j, j] = 0) means column j
    adds nothing new: it is dropped (x_j = 0, ``kept[j]`` False) and the rest is solved
    without it. ``ref`` is the scale of
    each column (typically its own diagonal entry before elimination).
    """
    k = G.shape[0]
    L = np.zeros((k, k))
    kept = np.zeros(k, dtype=np.bool_)
    for j in range(k):
        d = G[j, j] + ridge * ref[j]
        for m in range(j):
            d -= L[j, m] * L[j, m]
        if not (G[j, j] > 0.0 and d > tol * ref[j] and math.isfinite(d)):
            continue
        kept[j] = True
        L[j, j] = math.sqrt(d)
        for i in range(j + 1, k):
            s = G[i, j]
            for m in range(j):
                s -= L[i, m] * L[j, m]
            L[i, j] = s / L[j, j]
    z = np.zeros(k)
    for j in range(k):
        if kept[j]:
            s = c[j]
            for m in range(j):
                s -= L[j, m] * z[m]
            z[j] = s / L[j, j]
    x = np.zeros(k)
    for j in range(k - 1, -1, -1):
        if kept[j]:
            s = z[j]
            for m in range(j + 1, k):
                s -= L[m, j] * x[m]
            x[j] = s / L[j, j]
    return x, kept


@njit
def _normal_lstsq(
    X: np.ndarray, y: np.ndarray, w: np.ndarray, ridge: float, tol: float
) -> tuple[np.ndarray, int, int, float]:
    """Weighted least squares by Cholesky on the normal equations (fast, less exact than QR).

    Same return shape as :func:`_householder_lstsq`; dependent columns get coefficient 0 and
    do not count in the rank.
    """
    m, p = X.shape
    ok = _valid_rows(X, y, w)
    G = np.zeros((p, p))
    c = np.zeros(p)
    n = 0
    for i in range(m):
        if not ok[i]:
            continue
        n += 1
        wi = w[i]
        for a in range(p):
            xa = wi * X[i, a]
            c[a] += xa * y[i]
            for b in range(a + 1):
                G[a, b] += xa * X[i, b]
    for a in range(p):
        for b in range(a):
            G[b, a] = G[a, b]
    ref = np.empty(p)
    for a in range(p):
        ref[a] = G[a, a] if G[a, a] > 0.0 else 1.0
    coef, kept = _cholesky_solve(G, c, ref, ridge, tol)
    rank = 0
    for a in range(p):
        if kept[a]:
            rank += 1
    rss = 0.0
    for i in range(m):
        if ok[i]:
            e = y[i]
            for a in range(p):
                e -= X[i, a] * coef[a]
            rss += w[i] * e * e
    return coef, rank, n, rss


@njit
def _grouped_solve(
    D: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    gy: np.ndarray,
    cy: np.ndarray,
    ridge: float,
    tol: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Least squares with one-hot groups plus dense columns, by the Schur complement.

    The normal equations are [[diag(D), B], [B^T, C]] [alpha; beta] = [gy; cy]: one
    intercept per group (D: weight per group, B: group sums of the dense columns) and k dense
    columns. Eliminating the diagonal block leaves a k x k system, so the cost is
    O(groups * k^2 + k^3) whatever the number of rows. Empty groups get alpha NaN.
    Returns (alpha, beta, kept, var_diag): var_diag is diag of the inverse reduced matrix
    (coefficient variance per unit residual variance), NaN for dropped columns.
    """
    g, k = B.shape
    S = C.copy()
    r = cy.copy()
    for q in range(g):
        if D[q] > 0.0:
            inv = 1.0 / D[q]
            for a in range(k):
                ba = B[q, a] * inv
                r[a] -= ba * gy[q]
                for b in range(k):
                    S[a, b] -= ba * B[q, b]
    ref = np.empty(k)
    for a in range(k):
        ref[a] = C[a, a] if C[a, a] > 0.0 else 1.0
    beta, kept = _cholesky_solve(S, r, ref, ridge, tol)
    var_diag = np.full(k, np.nan)
    e = np.zeros(k)
    for a in range(k):
        if kept[a]:
            e[:] = 0.0
            e[a] = 1.0
            col, _ = _cholesky_solve(S, e, ref, ridge, tol)
            var_diag[a] = col[a]
    alpha = np.full(g, np.nan)
    for q in range(g):
        if D[q] > 0.0:
            s = gy[q]
            for a in range(k):
                s -= B[q, a] * beta[a]
            alpha[q] = s / D[q]
    return alpha, beta, kept, var_diag
