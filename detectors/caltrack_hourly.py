"""CalTRACK 2.0's hourly method, as eemeter 4.1.1's ``HourlyCaltrackModel`` implements it.

One model per calendar month, fitted by weighted least squares on that month (weight 1) and
its two neighbours (weight 1/2; December and January are neighbours):

    expected = alpha[hour of week]
             + sum_k beta_k^occ   bin_k(T) [hour occupied]
             + sum_k beta_k^unocc bin_k(T) [hour unoccupied]
             (+ production terms, which CalTRACK does not have, when production is given)

* **Occupancy**, per month model: a weighted fit of consumption on an intercept, CDD at
  65 degF and HDD at 50 degF (hourly degree values) over the model's three months; an hour
  of the week is *occupied* when more than 65 % of its residuals are positive (a plain
  count, not weighted), else unoccupied. An hour without data counts as occupied.
* **Temperature bins**, per month model and occupancy: endpoints 30, 45, 55, 65, 75,
  90 degF; while a bin holds fewer than 20 hours of that occupancy's temperatures, an end
  bin is merged inward (the first bin's right endpoint or the last bin's left endpoint is
  removed, both in one round), and only when both end bins are full every thin middle bin
  loses its right endpoint; repeated until every bin is full or one bin is left. The bin
  features are piecewise linear: bin 0 is min(T, e1), bin k the part of T inside
  (e_k, e_k+1], so they sum to T.
* **Prediction**: each hour with the model of its own calendar month; an hour of the week
  a month's three months never saw, or a month whose three months have no data, has no
  prediction (NaN).

The weighted fit is the grouped least squares of :mod:`detectors.baseline` (a level per
hour of week plus a few dense columns, solved by the Schur complement with numba:
``_accumulate`` then ``_grouped_solve``), so a meter-year is 12 fits of at most 14 dense
columns. Temperatures are degrees C here; the bin edges and degree-hour balance points are
eemeter's degF values converted, which gives the same bins and, as the first bin's offset of
32 degF falls into the hour-of-week levels, the same fitted values.

The Guideline 14 statistics count the *effective* number of parameters: the trace of the
fit's hat matrix over the baseline hours (each hour's leverage in its own month's model),
not the 12 x ~180 coefficients, since each model's coefficients are shared with its
neighbours' months. Deterministic: no random numbers, no iteration order that can vary.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike

from .arrays import FloatArray, IntArray, as_timestamps, as_values
from .baseline import (
    BaselineConfig,
    FitStats,
    _fit_stats,
    _production_columns,
    tz_offsets,
)
from .kernels.baseline import _accumulate, _time_groups
from .kernels.lstsq import _grouped_solve
from .lstsq import lstsq_normal

FORMAT = "recp-caltrack-hourly/1"
HOUR_S = 3600
HOURS_OF_WEEK = 168
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")


def f_to_c(f: float) -> float:
    """degF -> degC, the same expression the benchmark uses for eemeter's temperatures."""
    return (f - 32.0) * 5.0 / 9.0


@dataclass(frozen=True)
class CaltrackHourlyConfig:
    """CalTRACK 2.0 hourly's constants (eemeter 4.1.1's defaults) and the local time zone.

    ``timezone``: hour of week and calendar month are taken in it (eemeter takes them in
    the time zone of the data's index; UTC in the benchmark). ``bin_endpoints_f`` and the
    occupancy balance points are degF as CalTRACK states them.
    """

    timezone: str = "UTC"
    bin_endpoints_f: tuple[float, ...] = (30.0, 45.0, 55.0, 65.0, 75.0, 90.0)
    min_bin_hours: int = 20
    occupancy_threshold: float = 0.65
    occupancy_cooling_f: float = 65.0
    occupancy_heating_f: float = 50.0
    neighbour_weight: float = 0.5

    def __post_init__(self) -> None:
        edges = self.bin_endpoints_f
        if list(edges) != sorted(set(edges)) or not all(math.isfinite(e) for e in edges):
            raise ValueError("bin_endpoints_f must be finite, distinct and increasing")
        if self.min_bin_hours < 1:
            raise ValueError(f"min_bin_hours must be at least 1, got {self.min_bin_hours}")
        if not 0.0 < self.occupancy_threshold < 1.0:
            raise ValueError(
                f"occupancy_threshold must be in (0, 1), got {self.occupancy_threshold}"
            )
        if not 0.0 < self.neighbour_weight <= 1.0:
            raise ValueError(f"neighbour_weight must be in (0, 1], got {self.neighbour_weight}")
        tz_offsets(np.zeros(1, dtype=np.int64), self.timezone)  # fails early on a bad name


@dataclass(frozen=True)
class MonthModel:
    """The model of one calendar month (``month`` 1..12), fitted on it and its neighbours.

    ``occupied`` per hour of week (Monday 00:00 = 0); bin edges in degC; ``intercepts`` per
    hour of week (None: never seen, no prediction); the bin slopes per degC (None: a column
    dropped as empty or dependent); ``hours`` and ``weight`` of the fit.
    """

    month: int
    occupied: tuple[bool, ...]
    occupied_bins_c: tuple[float, ...]
    unoccupied_bins_c: tuple[float, ...]
    intercepts: tuple[float | None, ...]
    occupied_slopes: tuple[float | None, ...]
    unoccupied_slopes: tuple[float | None, ...]
    production_coef: float | None
    running_coef: float | None
    hours: int
    weight: float

    def describe(self) -> str:
        def bins(edges: tuple[float, ...], slopes: tuple[float | None, ...]) -> str:
            edge = ", ".join(f"{e:.1f}" for e in edges)
            slope = ", ".join("-" if s is None else f"{s:.3g}" for s in slopes)
            return f"edges [{edge}] C, slopes [{slope}]/K"

        known = [a for a in self.intercepts if a is not None]
        return (
            f"{MONTHS[self.month - 1]}: {self.hours} h (weight {self.weight:g}), "
            f"{sum(self.occupied)} occupied hours of week; hour-of-week levels "
            f"{min(known):.4g}..{max(known):.4g}; occupied {bins(self.occupied_bins_c, self.occupied_slopes)}; "  # noqa: E501
            f"unoccupied {bins(self.unoccupied_bins_c, self.unoccupied_slopes)}"
            + ("" if self.production_coef is None else f"; {self.production_coef:.4g} per unit")
            + ("" if self.running_coef is None else f", {self.running_coef:.4g} while producing")
        )


@dataclass(frozen=True)
class CaltrackHourlyModel:
    """A fitted CalTRACK hourly baseline: twelve month models (None: no data for a month).

    Offers what :mod:`detectors.savings` needs of a baseline model: ``predict``, ``stats``
    (Guideline 14, over the baseline hours), ``describe`` and a versioned ``to_dict``.
    """

    FORMAT: ClassVar[str] = FORMAT

    meter: str
    unit: str
    timezone: str
    months: tuple[MonthModel | None, ...]
    stats: FitStats
    uses_production: bool = False
    interval_s: int = HOUR_S
    time_of_week: str = "week"
    uses_temperature: bool = True

    @property
    def intercepts(self) -> tuple[float | None, ...]:
        """Hour-of-week levels of the first fitted month (for a count of levels in reports)."""
        first = next((m for m in self.months if m is not None), None)
        return first.intercepts if first is not None else (None,) * HOURS_OF_WEEK

    # the single-model terms the report lists: none here (each month has its own)
    production_coef = None
    running_coef = None
    heating_coef = None
    cooling_coef = None
    heating_balance_c = None
    cooling_balance_c = None

    def describe(self) -> str:
        s = self.stats
        fitted = [MONTHS[m.month - 1] for m in self.months if m is not None]
        r2 = "n/a" if s.r2 is None else f"{s.r2:.3f}"
        cv = "n/a" if s.cv_rmse_pct is None else f"{s.cv_rmse_pct:.1f} %"
        return (
            f"{self.meter}: CalTRACK hourly, {len(fitted)} month models "
            f"({', '.join(fitted)}), 168 hour-of-week levels and occupied/unoccupied "
            f"temperature bins each"
            + (", production terms" if self.uses_production else "")
            + f"; R2 {r2}, CV(RMSE) {cv}, n {s.n}, effective parameters {s.n_params}"
        )

    def predict(
        self,
        timestamps: ArrayLike,
        temperature: ArrayLike | None = None,
        production: ArrayLike | None = None,
        *,
        groups: tuple[IntArray, IntArray] | None = None,
    ) -> FloatArray:
        """Expected consumption per hour; NaN where a month has no model or T is unknown.

        ``groups``: the timestamps' hour of week and local month, as
        :func:`week_hours_and_months` gives them, for a caller that needs them too."""
        ts = as_timestamps("timestamps", timestamps)
        n = ts.size
        if temperature is None:
            raise ValueError(
                f"the CalTRACK hourly baseline of {self.meter} uses outdoor temperature; pass "
                "temperature= (degrees C per hour, NaN where unknown)"
            )
        T = as_values("temperature", temperature, n)
        if self.uses_production and production is None:
            raise ValueError(
                f"the baseline of {self.meter} uses production; pass production= "
                "(units produced per hour, NaN where unknown)"
            )
        P = as_values("production", production, n) if production is not None else None
        if not self.uses_production:
            P = None
        how, month = groups if groups is not None else week_hours_and_months(ts, self.timezone)
        if how.shape != (n,) or month.shape != (n,):
            raise ValueError(f"groups: {n} hours of week and months expected, one per timestamp")
        out = np.full(n, np.nan)
        for mm in self.months:
            if mm is None:
                continue
            rows = np.flatnonzero(month == mm.month)
            if rows.size == 0:
                continue
            occ = np.asarray(mm.occupied, dtype=bool)[how[rows]]
            Z = _design(T[rows], occ, mm.occupied_bins_c, mm.unoccupied_bins_c,
                        None if P is None else P[rows])  # fmt: skip
            beta = np.array(
                [_nan(b) for b in mm.occupied_slopes + mm.unoccupied_slopes]
                + ([_nan(mm.production_coef), _nan(mm.running_coef)] if P is not None else [])
            )
            alpha = np.array([_nan(a) for a in mm.intercepts])
            # a dropped column (None) contributes nothing, as in the fit
            contrib = np.where(np.isfinite(beta), beta, 0.0)
            out[rows] = alpha[how[rows]] + Z @ contrib
        return out

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"format": FORMAT}
        data.update(asdict(self))
        data["months"] = [None if m is None else asdict(m) for m in self.months]
        return data

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


# --------------------------------------------------------------------------- the fit


def fit_caltrack_hourly(
    timestamps: ArrayLike,
    consumption: ArrayLike,
    *,
    temperature: ArrayLike,
    production: ArrayLike | None = None,
    meter: str = "",
    unit: str = "",
    config: CaltrackHourlyConfig | None = None,
) -> CaltrackHourlyModel:
    """Fit CalTRACK 2.0's hourly model on hourly baseline data (see the module docstring).

    ``timestamps``: int64 UTC epoch seconds of hour starts; ``consumption`` per hour (NaN
    unknown); ``temperature`` in degC per hour (required: CalTRACK hourly is a weather
    model); ``production`` per hour, optional (adds production terms to every month model).
    Raises ``ValueError`` naming what is missing when no month model can be fitted.
    """
    cfg = config or CaltrackHourlyConfig()
    ts = as_timestamps("timestamps", timestamps)
    n = ts.size
    y = as_values("consumption", consumption, n)
    T = as_values("temperature", temperature, n)
    P = as_values("production", production, n) if production is not None else None
    if n and (np.any(np.diff(ts) % HOUR_S) or ts[0] % HOUR_S):
        raise ValueError("CalTRACK hourly needs hourly data: timestamps on whole UTC hours")
    usable = np.isfinite(y) & np.isfinite(T)
    if P is not None:
        usable &= np.isfinite(P)
    if not usable.any():
        raise ValueError(
            f"no usable hours to fit the CalTRACK hourly baseline of {meter or 'the meter'}: "
            "every hour misses consumption or temperature"
            + (" or production" if P is not None else "")
        )
    how, month = week_hours_and_months(ts, cfg.timezone)
    occ_edges = tuple(f_to_c(e) for e in cfg.bin_endpoints_f)
    hdd = np.maximum(f_to_c(cfg.occupancy_heating_f) - T, 0.0)
    cdd = np.maximum(T - f_to_c(cfg.occupancy_cooling_f), 0.0)

    models: list[MonthModel | None] = []
    expected = np.full(n, np.nan)
    leverage = np.zeros(n)
    for m in range(1, 13):
        prev, nxt = (m - 2) % 12 + 1, m % 12 + 1
        w = np.where(month == m, 1.0, np.where((month == prev) | (month == nxt),
                                               cfg.neighbour_weight, 0.0))  # fmt: skip
        rows = np.flatnonzero(usable & (w > 0))
        own = np.flatnonzero(usable & (month == m))
        if rows.size == 0:
            models.append(None)
            continue
        occupied = occupancy(y[rows], hdd[rows], cdd[rows], w[rows], how[rows],
                             cfg.occupancy_threshold)  # fmt: skip
        occ_rows = occupied[how[rows]]
        e_occ = merge_bins(T[rows][occ_rows], occ_edges, cfg.min_bin_hours)
        e_un = merge_bins(T[rows][~occ_rows], occ_edges, cfg.min_bin_hours)
        Z = _design(T[rows], occ_rows, e_occ, e_un, None if P is None else P[rows])
        alpha, beta, kept, S, D, B = _wls(how[rows], y[rows], w[rows], Z)
        k_occ, k_un = len(e_occ) + 1, len(e_un) + 1
        coef = [float(b) if kept[a] else None for a, b in enumerate(beta)]
        mm = MonthModel(
            month=m,
            occupied=tuple(bool(o) for o in occupied),
            occupied_bins_c=e_occ,
            unoccupied_bins_c=e_un,
            intercepts=tuple(float(a) if math.isfinite(a) else None for a in alpha),
            occupied_slopes=tuple(coef[:k_occ]),
            unoccupied_slopes=tuple(coef[k_occ:k_occ + k_un]),
            production_coef=coef[k_occ + k_un] if P is not None else None,
            running_coef=coef[k_occ + k_un + 1] if P is not None else None,
            hours=int(rows.size),
            weight=float(w[rows].sum()),
        )
        models.append(mm)
        if own.size:
            # fitted values of the month's own hours and their leverage in its model
            sel = month[rows] == m
            contrib = np.where(kept, beta, 0.0)
            expected[own] = alpha[how[own]] + Z[sel] @ contrib
            leverage[own] = _leverage(D, B, kept, S, how[own], Z[sel])
    if all(mm is None for mm in models):  # pragma: no cover - usable rows exist
        raise ValueError("no month of the baseline has data")
    fitted = usable & np.isfinite(expected)
    if int(fitted.sum()) == 0:
        raise ValueError("no baseline hour could be fitted")
    p_eff = float(leverage[fitted].sum())
    n_fit = int(fitted.sum())
    if n_fit <= math.ceil(p_eff) + 1:
        raise ValueError(
            f"too little data to fit the CalTRACK hourly baseline of {meter or 'the meter'}: "
            f"{n_fit} usable hours for about {p_eff:.0f} effective parameters (each calendar "
            "month's model has 168 hour-of-week levels and up to 14 temperature slopes); "
            "CalTRACK hourly asks for a 365-day baseline. For a baseline of a few weeks use "
            "--method hourly --time-of-week daytype"
        )
    seen = np.zeros(HOURS_OF_WEEK, dtype=bool)
    seen[how[fitted]] = True
    stats = _fit_stats(
        ts[fitted], y[fitted], expected[fitted], None if P is None else P[fitted],
        round(p_eff), int((~seen).sum()),
        BaselineConfig(interval_s=HOUR_S, timezone=cfg.timezone), None, 12, 0.0,
    )  # fmt: skip
    return CaltrackHourlyModel(
        meter=meter, unit=unit, timezone=cfg.timezone, months=tuple(models), stats=stats,
        uses_production=P is not None,
    )  # fmt: skip


def occupancy(
    y: FloatArray,
    hdd: FloatArray,
    cdd: FloatArray,
    w: FloatArray,
    how: IntArray,
    threshold: float,
) -> np.ndarray:
    """Occupied hours of week: over threshold of their residuals positive (eemeter's rule).

    The residuals are of a weighted least-squares fit y ~ 1 + CDD(65 degF) + HDD(50 degF) on
    hourly degree values; an hour of the week without data is occupied (eemeter's NaN).
    """
    X = np.column_stack([np.ones(y.size), cdd, hdd])
    coef = lstsq_normal(X, y, w).coef
    positive = (y - X @ coef) > 0
    count = np.bincount(how, minlength=HOURS_OF_WEEK)
    pos = np.bincount(how, weights=positive.astype(np.float64), minlength=HOURS_OF_WEEK)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = pos / count
    return np.asarray((count == 0) | (ratio > threshold), dtype=bool)


def merge_bins(temps: FloatArray, edges: tuple[float, ...], min_count: int) -> tuple[float, ...]:
    """The bin edges left after CalTRACK's merging (eemeter's ``_fit_temperature_bins``).

    Bins are (-inf, e1], (e1, e2], ..., (ek, inf). Each round: an end bin with fewer than
    ``min_count`` temperatures loses its inner edge (first and last in the same round);
    only when neither end bin is thin, every thin middle bin loses its right edge.
    """
    kept = sorted(edges)
    ordered = np.sort(temps)
    while True:
        bounds = np.array([-np.inf, *kept, np.inf])
        # counts per (left, right]: number of temps <= right minus number <= left
        le = np.searchsorted(ordered, bounds, side="right")
        counts = np.diff(le)
        if counts.size == 1:
            break
        drop: set[float] = set()
        if counts[0] < min_count:
            drop.add(kept[0])
        if counts[-1] < min_count:
            drop.add(kept[-1])
        if not drop:
            for i in range(1, counts.size - 1):
                if counts[i] < min_count:
                    drop.add(kept[i])
        if not drop:
            break
        kept = [e for e in kept if e not in drop]
    return tuple(float(e) for e in kept)


def bin_features(T: FloatArray, edges: tuple[float, ...]) -> FloatArray:
    """Piecewise-linear temperature bins: column 0 min(T, e1), column k the part of T in
    (e_k, e_k+1] (0 below, the width above), the last T - e_k above e_k; they sum to T."""
    out = np.empty((T.size, len(edges) + 1))
    if not edges:
        out[:, 0] = T
        return out
    e = np.asarray(edges, dtype=np.float64)
    out[:, 0] = np.minimum(T, e[0])
    if e.size > 1:
        out[:, 1:-1] = np.minimum(np.maximum(T[:, None] - e[:-1], 0.0), np.diff(e))
    out[:, -1] = np.maximum(T - e[-1], 0.0)
    return out


def _design(
    T: FloatArray,
    occupied: np.ndarray,
    e_occ: tuple[float, ...],
    e_un: tuple[float, ...],
    P: FloatArray | None,
) -> FloatArray:
    """[occupied bins | unoccupied bins (| production, running)] of some hours."""
    occ = bin_features(T, e_occ) * occupied[:, None]
    un = bin_features(T, e_un) * (~occupied)[:, None]
    cols = [occ, un]
    if P is not None:
        cols.append(_production_columns(P))
    return np.ascontiguousarray(np.hstack(cols))


def _wls(
    how: IntArray, y: FloatArray, w: FloatArray, Z: FloatArray
) -> tuple[FloatArray, FloatArray, np.ndarray, FloatArray, FloatArray, FloatArray]:
    """Weighted least squares with a level per hour of week plus the dense columns Z.

    The numba kernels of the baseline fit: sufficient statistics in one pass
    (``_accumulate``, no temperature grid), the Schur complement solve (``_grouped_solve``;
    an empty or dependent column is dropped, as statsmodels' pseudo-inverse gives it
    coefficient 0 too). Returns (alpha, beta, kept, S, D, B): S is the reduced k x k
    matrix, D the weight and B the weighted sums of Z per hour of week (for
    :func:`_leverage`).
    """
    n = y.size
    fold = np.zeros(n, dtype=np.int64)
    empty = np.zeros(0)
    _gr, _br, _zr, GQ, AA, _ = _accumulate(
        how, y, w, Z, np.full(n, np.nan), empty, HOURS_OF_WEEK, fold, 1
    )
    k = Z.shape[1]
    D = GQ[0, :, 0].copy()
    gy = GQ[0, :, 1].copy()
    B = np.ascontiguousarray(GQ[0, :, 2:])
    C = np.ascontiguousarray(AA[0, :k, :k])
    cy = AA[0, :k, k].copy()
    alpha, beta, kept, _ = _grouped_solve(D, B, C, gy, cy, 0.0, 1e-9)
    has = D > 0
    S = C - B[has].T @ (B[has] / D[has, None])
    return alpha, beta, kept, S, D, B


def _leverage(
    D: FloatArray,
    B: FloatArray,
    kept: np.ndarray,
    S: FloatArray,
    how_own: IntArray,
    Z_own: FloatArray,
) -> FloatArray:
    """Leverage (hat-matrix diagonal) of weight-1 rows in a groups + dense columns fit:
    1 / D_q + (z - zbar_q)' S^-1 (z - zbar_q), zbar_q the weighted mean of z in group q
    (D, B: the fit's weight and weighted sums of z per group, as :func:`_wls` has them)."""
    lev = 1.0 / D[how_own]
    idx = np.flatnonzero(kept)
    if idx.size:
        zbar = B[:, idx] / np.where(D > 0, D, 1.0)[:, None]
        dz = Z_own[:, idx] - zbar[how_own]
        Sk = S[np.ix_(idx, idx)]
        try:  # the kept columns are independent: S is positive definite on them
            sol = np.linalg.solve(Sk, dz.T)
        except np.linalg.LinAlgError:  # pragma: no cover - numerically singular after all
            sol = np.linalg.pinv(Sk) @ dz.T
        lev = lev + np.sum(dz.T * sol, axis=0)
    return np.asarray(lev, dtype=np.float64)


def local_months(epoch_s: IntArray, timezone: str) -> IntArray:
    """Calendar month (1..12) of each timestamp in ``timezone``."""
    return _months(epoch_s + tz_offsets(epoch_s, timezone))


def week_hours_and_months(epoch_s: IntArray, timezone: str) -> tuple[IntArray, IntArray]:
    """Hour of week (Monday 00:00 = 0) and calendar month of each hour start in
    ``timezone``: one look-up of the zone's offsets serves both."""
    offsets = tz_offsets(epoch_s, timezone)
    return _time_groups(epoch_s, offsets, HOUR_S, False), _months(epoch_s + offsets)


def _months(local_s: IntArray) -> IntArray:
    """Calendar month (1..12) of local epoch seconds."""
    local = local_s.astype("datetime64[s]")
    return np.asarray(local.astype("datetime64[M]").astype(np.int64) % 12 + 1, dtype=np.int64)


def month_names(months: ArrayLike) -> str:
    """``jan, feb`` for a set of month numbers."""
    return ", ".join(MONTHS[m - 1] for m in sorted({int(x) for x in np.ravel(months)}))


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)

