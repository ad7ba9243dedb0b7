"""Least squares for the detectors, compiled with numba and free of SciPy.

Two solvers over the same inputs: :func:`lstsq` (Householder QR, accurate, refuses a
rank-deficient design unless given a ridge) and :func:`lstsq_normal` (Cholesky on the
normal equations, fast, drops dependent columns). Rows with NaN/inf or weight <= 0 are
skipped, so gaps in meter data need no special handling by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .kernels.lstsq import _householder_lstsq, _normal_lstsq

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class LstsqResult:
    """Coefficients of a least-squares fit and what it used.

    ``rank`` counts independent columns; ``n`` the rows used (finite, positive weight);
    ``rss`` the weighted residual sum of squares over those rows.
    """

    coef: FloatArray
    rank: int
    n: int
    rss: float


def as_float_array(name: str, value: ArrayLike, ndim: int) -> FloatArray:
    """``value`` as a C-contiguous float64 array of ``ndim`` dimensions, or a clear error.

    Integers are converted; booleans, complex, strings and objects are refused because a
    silent conversion would hide a bug upstream (a mask or a text column passed by mistake).
    """
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf":
        raise TypeError(
            f"{name} must hold real numbers, got dtype {arr.dtype}; convert it first, "
            f"e.g. np.asarray({name}, dtype=np.float64)"
        )
    if arr.ndim != ndim:
        hint = f"{name}[:, None] for a single column" if ndim == 2 else f"np.ravel({name})"
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}; try {hint}")
    return np.ascontiguousarray(arr, dtype=np.float64)


def _inputs(
    X: ArrayLike, y: ArrayLike, weights: ArrayLike | None, ridge: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    Xa = as_float_array("X", X, 2)
    ya = as_float_array("y", y, 1)
    if Xa.shape[0] != ya.shape[0]:
        raise ValueError(
            f"X has {Xa.shape[0]} rows but y has {ya.shape[0]} values; pass one y per row of X"
        )
    if weights is None:
        wa = np.ones(ya.shape[0])
    else:
        wa = as_float_array("weights", weights, 1)
        if wa.shape != ya.shape:
            raise ValueError(
                f"weights has {wa.shape[0]} values but y has {ya.shape[0]}; pass one per row"
            )
    if not (np.isfinite(ridge) and ridge >= 0.0):
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")
    return Xa, ya, wa


def lstsq(
    X: ArrayLike,
    y: ArrayLike,
    weights: ArrayLike | None = None,
    *,
    ridge: float = 0.0,
    rcond: float = 1e-10,
) -> LstsqResult:
    """Minimise sum w (y - X b)^2 (+ ridge * sum (|X_j| b_j)^2) by Householder QR.

    ``ridge`` is relative to each column's norm, so a tiny value (1e-10) regularises a
    rank-deficient design without visibly biasing a well-posed one. Without a ridge a
    rank-deficient design raises ``ValueError``.
    """
    Xa, ya, wa = _inputs(X, y, weights, ridge)
    p = Xa.shape[1]
    if p > 0 and Xa.shape[0] == 0:
        raise ValueError("no rows to fit: X is empty")
    coef, rank, n, rss = _householder_lstsq(Xa, ya, wa, float(ridge), float(rcond))
    if rank < p:
        raise ValueError(
            f"the design has rank {rank} < {p} columns over the {n} usable rows (a column is "
            "constant zero or a combination of others, or there are fewer rows than columns); "
            "drop the dependent columns, add data, or pass ridge=1e-10"
        )
    return LstsqResult(coef, int(rank), int(n), float(rss))


def lstsq_normal(
    X: ArrayLike,
    y: ArrayLike,
    weights: ArrayLike | None = None,
    *,
    ridge: float = 0.0,
    tol: float = 1e-10,
) -> LstsqResult:
    """Minimise sum w (y - X b)^2 by Cholesky on the normal equations.

    Faster than :func:`lstsq` for many rows and few columns; a column whose pivot falls
    below ``tol`` times its own scale is dropped (coefficient 0, not counted in ``rank``).
    """
    Xa, ya, wa = _inputs(X, y, weights, ridge)
    coef, rank, n, rss = _normal_lstsq(Xa, ya, wa, float(ridge), float(tol))
    return LstsqResult(coef, int(rank), int(n), float(rss))
