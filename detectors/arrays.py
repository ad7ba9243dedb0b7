"""Input checks shared by the public detector wrappers, and UTC time formatting.

Kernels trust their inputs; the wrappers call these once so a wrong dtype or shape fails
with a message that says how to fix it instead of a numba typing error.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


def as_timestamps(name: str, value: ArrayLike) -> IntArray:
    """``value`` as a 1-D int64 array of UTC epoch seconds, or a TypeError/ValueError."""
    arr = np.asarray(value)
    if arr.dtype.kind == "M":
        raise TypeError(
            f"{name} must be int64 epoch seconds, got {arr.dtype}; convert with "
            f"{name}.astype('datetime64[s]').astype(np.int64)"
        )
    if arr.dtype.kind not in "iu":
        raise TypeError(
            f"{name} must be integer epoch seconds (UTC), got dtype {arr.dtype}; "
            f"round first, e.g. np.round({name}).astype(np.int64)"
        )
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}; try np.ravel({name})")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} holds values beyond int64 range; these are not epoch seconds")
    return np.ascontiguousarray(arr, dtype=np.int64)


def as_values(name: str, value: ArrayLike, n: int | None = None) -> FloatArray:
    """``value`` as a 1-D float64 array (NaN allowed), of length ``n`` when given."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf":
        raise TypeError(
            f"{name} must hold real numbers, got dtype {arr.dtype}; convert it first, "
            f"e.g. np.asarray({name}, dtype=np.float64) (missing values as NaN)"
        )
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}; try np.ravel({name})")
    if n is not None and arr.shape[0] != n:
        raise ValueError(
            f"{name} has {arr.shape[0]} values but the timestamps have {n}; pass one value "
            "per timestamp"
        )
    return np.ascontiguousarray(arr, dtype=np.float64)


def optional_values(name: str, value: ArrayLike | None, n: int) -> FloatArray:
    """Like :func:`as_values`, with None meaning "unknown everywhere" (all NaN)."""
    if value is None:
        return np.full(n, np.nan)
    return as_values(name, value, n)


def positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (or >= 0), or a ValueError naming the parameter."""
    v = float(value)
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return v


def utc(t_s: float) -> dt.datetime:
    """Epoch seconds -> aware UTC datetime."""
    return dt.datetime.fromtimestamp(float(t_s), dt.timezone.utc)


def fmt_utc(t_s: float) -> str:
    """Epoch seconds -> ``2026-01-19 22:00 UTC`` for explanations."""
    return utc(t_s).strftime("%Y-%m-%d %H:%M UTC")


def fmt_qty(value: float) -> str:
    """A quantity with about three significant digits, no exponent for everyday sizes."""
    a = abs(value)
    if a >= 100 or a == 0:
        return f"{value:,.0f}"
    if a >= 10:
        return f"{value:.1f}"
    if a >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"
