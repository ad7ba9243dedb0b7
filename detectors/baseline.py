"""Per-meter baselines: the consumption a meter is expected to have in each interval.

The model, fitted by least squares on a baseline period (compiled with numba, no SciPy):

    expected = alpha[time-of-week group]
             + production_coef * production + running_coef * [production > 0]
             + heating_coef * max(0, heating_balance_c - T)
             + cooling_coef * max(0, T - cooling_balance_c)

Time of week is the local weekday x slot of the day (hour of week for hourly data, day of
week for daily data) or, with ``time_of_week="daytype"``, workday/weekend x slot, as
CalTRACK's time-of-week terms, or with ``"none"`` the slot of the day alone (one intercept
for daily data, as CalTRACK's daily method: :meth:`BaselineConfig.caltrack_daily`).
Temperature enters as heating and cooling degree terms whose balance points are searched
on a grid, as CalTRACK's and ASHRAE's change-point models do; production enters as
specific consumption (ISO 50006 energy performance indicator: counter units per unit
produced) plus a fixed load while producing. Every combination of terms and balance points
is a candidate; the best by adjusted R2 (default) or by blocked cross-validation wins, with
degree slopes required positive and significant (t >= min_t).

The fitted :class:`BaselineModel` is frozen, predicts with :meth:`BaselineModel.predict`,
carries ASHRAE Guideline 14 fit statistics and serialises to a small versioned JSON.
It also knows its own uncertainty per interval: residuals of meters whose noise scales with
the load are larger at high load, so the residual variance is modelled as
noise_floor^2 + (noise_rel * expected)^2 and widened for out-of-sample prediction.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
from numpy.typing import ArrayLike

from .arrays import FloatArray, IntArray, as_timestamps, as_values
from .kernels.baseline import _accumulate, _evaluate, _fit_candidate, _predict, _time_groups
from .lstsq import lstsq_normal

FORMAT = "recp-baseline/1"
HOURLY_S = 3600
DAILY_S = 86400
DAY_S = 86400

# CalTRACK 2.0 daily (methods 3.2.1, 3.2.3): balance points 30..90 degF, at most 3 degF
# apart; 1 degF steps as eemeter's reference implementation (range(30, 91)). Our own
# significance rule for `recp savings --method daily`, p < 0.1 for a slope, as a t threshold
# (the normal quantile 0.95; with a year of days t(0.95, ~360) is 1.649); CalTRACK 2.0 has
# none (technical appendix 3.4.3.2: the p-value screen was removed).
CALTRACK_BALANCE_POINTS_C = tuple((f - 32.0) * 5.0 / 9.0 for f in range(30, 91))
CALTRACK_MIN_T = 1.645

TimeOfWeek = Literal["week", "daytype", "none"]
Selection = Literal["adj_r2", "cv"]


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class BaselineConfig:
    """How to fit a baseline; the defaults suit hourly data of a few weeks to years.

    ``interval_s`` is the length of one interval (3600 hourly, 86400 daily, any divisor of a
    day); timestamps are interval starts and time of week is taken in ``timezone`` (a daily
    baseline expects intervals starting at local midnight). ``balance_points_c`` is the grid
    searched for both degree terms; a balance point is only tried when at least
    ``min_degree_share`` of the intervals lie on its active side, and kept only when its
    slope is positive with a t statistic of at least ``min_t``. ``tol``: a term whose
    information left after the others is below this share of its own is dropped as
    dependent; ``ridge`` (relative, default none) shrinks the dense terms.
    ``min_degree_nonzero`` and ``min_degree_total_c`` are CalTRACK's degree-day sufficiency
    per candidate balance point: at least that many intervals with a non-zero degree value
    and at least that sum of degree values (degC x intervals); 0 turns them off.
    ``nonnegative_intercept``: a candidate whose intercept (any time-of-week level) is
    negative is disqualified, as CalTRACK's daily method does (3.4.3.2.3).
    """

    interval_s: int = HOURLY_S
    time_of_week: TimeOfWeek = "week"
    timezone: str = "UTC"
    balance_points_c: tuple[float, ...] = tuple(float(t) for t in range(-5, 31))
    selection: Selection = "adj_r2"
    cv_folds: int = 5
    min_degree_share: float = 0.1
    min_t: float = 3.0
    ridge: float = 0.0
    tol: float = 1e-9
    min_degree_nonzero: int = 0
    min_degree_total_c: float = 0.0
    nonnegative_intercept: bool = False

    @classmethod
    def caltrack_daily(cls, timezone: str = "UTC", *, significance: bool = False) -> BaselineConfig:
        """CalTRACK 2.0's daily method: one intercept, HDD/CDD of the daily mean temperature.

        As the CalTRACK 2.0 methods state it: balance points searched over 30..90 degF in
        1 degF steps (here in degC; 3.2.1, 3.2.3), the heating one not above the cooling one
        (3.2.2.1); a candidate needs at least 10 days with non-zero degree days and 20
        degF-days in all (11.1 degC-days; 3.2.2.2); intercept and slopes not negative
        (3.4.3.2); intercept-only, HDD, CDD and HDD+CDD (with production terms when given)
        compete on adjusted R2 (3.4.3.3). ``significance`` adds our own rule (``recp
        savings --method daily``): a slope must also be significant at p < 0.1 (two-sided t
        test), the p-value screen CalTRACK 1.0 had and 2.0 removed.
        """
        return cls(
            interval_s=DAY_S,
            time_of_week="none",
            timezone=timezone,
            balance_points_c=CALTRACK_BALANCE_POINTS_C,
            min_degree_share=1e-9,
            min_t=CALTRACK_MIN_T if significance else 0.0,
            min_degree_nonzero=10,
            min_degree_total_c=20.0 * 5.0 / 9.0,
            nonnegative_intercept=True,
        )

    def __post_init__(self) -> None:
        if not (60 <= self.interval_s <= DAY_S and DAY_S % self.interval_s == 0):
            raise ValueError(
                f"interval_s must divide a day (86400 s) and be at least 60 s, got "
                f"{self.interval_s}; use 3600 (hourly) or 86400 (daily)"
            )
        if self.time_of_week not in ("week", "daytype", "none"):
            raise ValueError(
                f"time_of_week must be 'week', 'daytype' or 'none', not {self.time_of_week!r}"
            )
        if self.selection not in ("adj_r2", "cv"):
            raise ValueError(f"selection must be 'adj_r2' or 'cv', not {self.selection!r}")
        if self.selection == "cv" and self.cv_folds < 2:
            raise ValueError(f"cv_folds must be at least 2, got {self.cv_folds}")
        grid = np.asarray(self.balance_points_c, dtype=np.float64)
        if grid.ndim != 1 or not np.isfinite(grid).all():
            raise ValueError("balance_points_c must be a flat sequence of finite temperatures")
        if not 0.0 < self.min_degree_share < 1.0:
            raise ValueError(f"min_degree_share must be in (0, 1), got {self.min_degree_share}")
        tz_offsets(np.zeros(1, dtype=np.int64), self.timezone)  # fails early on a bad name

    @property
    def n_groups(self) -> int:
        days = {"week": 7, "daytype": 2, "none": 1}[self.time_of_week]
        return days * (DAY_S // self.interval_s)


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class FitStats:
    """How well the baseline fits its baseline period (ASHRAE Guideline 14 terms).

    Quantities are in the meter's counter unit per interval. ``cv_rmse_pct`` and
    ``nmbe_pct`` use n - p degrees of freedom as Guideline 14 does; ``residual_lag1`` is
    the lag-1 autocorrelation of standardised residuals over consecutive intervals (the
    overspend CUSUM widens its thresholds with it); ``noise_floor`` and ``noise_rel`` model
    the residual std as sqrt(noise_floor^2 + (noise_rel * expected)^2).
    ``specific_consumption`` is total consumption over total production in the period
    (counter units per unit produced), the ISO 50006 ratio EnPI.
    """

    n: int
    n_params: int
    r2: float | None
    adj_r2: float | None
    cv_rmse_pct: float | None
    nmbe_pct: float | None
    residual_std: float
    residual_lag1: float
    noise_floor: float
    noise_rel: float
    mean: float
    specific_consumption: float | None
    start: str
    end: str
    empty_groups: int
    selection: str
    score: float | None
    candidates: int


@dataclass(frozen=True)
class BaselineModel:
    """A fitted baseline of one meter: expected consumption per interval.

    Coefficients are in counter units per interval (``production_coef`` per unit produced,
    the degree coefficients per degree C); a term that is not in the model is None.
    ``intercepts`` holds one value per time-of-week group (None: no data in that group, the
    prediction there is NaN).
    """

    FORMAT: ClassVar[str] = FORMAT

    meter: str
    unit: str
    interval_s: int
    timezone: str
    time_of_week: str
    intercepts: tuple[float | None, ...]
    production_coef: float | None
    running_coef: float | None
    heating_balance_c: float | None
    heating_coef: float | None
    cooling_balance_c: float | None
    cooling_coef: float | None
    stats: FitStats

    @property
    def uses_temperature(self) -> bool:
        return self.heating_coef is not None or self.cooling_coef is not None

    @property
    def uses_production(self) -> bool:
        return self.production_coef is not None or self.running_coef is not None

    def prediction_std(self, expected: ArrayLike, *, long_run: bool = False) -> FloatArray:
        """Std of actual - expected outside the baseline period, per interval.

        The fitted noise model at each expected value, widened by sqrt(1 + p/n) for the
        coefficients' own uncertainty. ``long_run`` widens it further for positive lag-1
        autocorrelation (the AR(1) long-run variance): the spread that matters when
        residuals are summed over consecutive intervals, as a CUSUM does.
        """
        e = np.abs(as_values("expected", expected))
        s = self.stats
        std = np.sqrt(s.noise_floor**2 + (s.noise_rel * e) ** 2)
        std *= math.sqrt(1.0 + s.n_params / max(s.n, 1))
        if long_run:
            rho = min(max(s.residual_lag1, 0.0), 0.95)
            std *= math.sqrt((1 + rho) / (1 - rho))
        return std

    def describe(self) -> str:
        """One line naming the terms, e.g. for a CLI listing."""
        parts = [f"{self.time_of_week} x {self.interval_s} s"]
        if self.production_coef is not None:
            parts.append(f"{self.production_coef:.4g} {self.unit}/unit produced")
        if self.running_coef is not None:
            parts.append(f"{self.running_coef:.4g} {self.unit} while producing")
        if self.heating_coef is not None:
            parts.append(
                f"heating {self.heating_coef:.4g} {self.unit}/K below {self.heating_balance_c:g} C"
            )
        if self.cooling_coef is not None:
            parts.append(
                f"cooling {self.cooling_coef:.4g} {self.unit}/K above {self.cooling_balance_c:g} C"
            )
        s = self.stats
        r2 = "n/a" if s.r2 is None else f"{s.r2:.3f}"
        cv = "n/a" if s.cv_rmse_pct is None else f"{s.cv_rmse_pct:.1f} %"
        return f"{self.meter}: " + ", ".join(parts) + f"; R2 {r2}, CV(RMSE) {cv}, n {s.n}"

    # -- prediction --------------------------------------------------------------------
    @cached_property
    def _alpha(self) -> FloatArray:
        """Intercepts as a float array (NaN for empty groups), built once per model."""
        return np.array([_nan_if_none(a) for a in self.intercepts], dtype=np.float64)

    def predict(
        self,
        timestamps: ArrayLike,
        temperature: ArrayLike | None = None,
        production: ArrayLike | None = None,
    ) -> FloatArray:
        """Expected consumption per interval (counter units), NaN where it cannot be known.

        ``timestamps``: int64 UTC epoch seconds of interval starts; ``temperature``: mean
        outdoor temperature per interval in degrees C; ``production``: units produced per
        interval. Each is required only when the model uses it.
        """
        ts = as_timestamps("timestamps", timestamps)
        n = ts.size
        if self.uses_temperature and temperature is None:
            raise ValueError(
                f"the baseline of {self.meter} uses outdoor temperature; pass temperature= "
                "(degrees C per interval, NaN where unknown)"
            )
        if self.uses_production and production is None:
            raise ValueError(
                f"the baseline of {self.meter} uses production; pass production= "
                "(units produced per interval, NaN where unknown)"
            )
        T = as_values("temperature", temperature, n) if temperature is not None else _nan(n)
        P = as_values("production", production, n) if production is not None else _nan(n)
        groups = time_groups(ts, self.timezone, self.interval_s, self.time_of_week)
        return self._expected(groups, T, P)

    def _expected(self, groups: IntArray, T: FloatArray, P: FloatArray) -> FloatArray:
        """:meth:`predict` on the intervals' time-of-week groups (the fit has them already)."""
        beta = np.array([_nan_if_none(self.production_coef), _nan_if_none(self.running_coef)])
        return _predict(
            groups,
            _production_columns(P),
            T,
            self._alpha,
            beta,
            np.isfinite(beta),
            _nan_if_none(self.heating_balance_c),
            _nan_if_none(self.heating_coef),
            _nan_if_none(self.cooling_balance_c),
            _nan_if_none(self.cooling_coef),
        )

    # -- serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict, ``format`` first."""
        data: dict[str, Any] = {"format": FORMAT}
        data.update(asdict(self))
        data["intercepts"] = list(self.intercepts)
        return data

    def to_json(self, indent: int | None = None) -> str:
        """Versioned JSON; :meth:`from_json` reads it back to an equal model."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaselineModel:
        """Inverse of :meth:`to_dict`; rejects unknown formats, unknown and missing keys."""
        if not isinstance(data, dict):
            raise ValueError(f"a baseline must be a JSON object, got {type(data).__name__}")
        fmt = data.get("format")
        if fmt != FORMAT:
            raise ValueError(
                f"unsupported baseline format {fmt!r}: this version of recp-monitor reads "
                f"{FORMAT!r}; refit the baseline or upgrade recp-monitor"
            )
        body = {k: v for k, v in data.items() if k != "format"}
        _check_keys("baseline", body, {f.name for f in fields(cls)})
        stats = body["stats"]
        if not isinstance(stats, dict):
            raise ValueError("baseline stats must be a JSON object")
        _check_keys("baseline stats", stats, {f.name for f in fields(FitStats)})
        model = cls(
            meter=_typed("meter", body["meter"], str),
            unit=_typed("unit", body["unit"], str),
            interval_s=_typed("interval_s", body["interval_s"], int),
            timezone=_typed("timezone", body["timezone"], str),
            time_of_week=_typed("time_of_week", body["time_of_week"], str),
            intercepts=tuple(_number("intercepts[]", a) for a in _list(body["intercepts"])),
            production_coef=_number("production_coef", body["production_coef"]),
            running_coef=_number("running_coef", body["running_coef"]),
            heating_balance_c=_number("heating_balance_c", body["heating_balance_c"]),
            heating_coef=_number("heating_coef", body["heating_coef"]),
            cooling_balance_c=_number("cooling_balance_c", body["cooling_balance_c"]),
            cooling_coef=_number("cooling_coef", body["cooling_coef"]),
            stats=FitStats(**stats),
        )
        config = BaselineConfig(
            interval_s=model.interval_s,
            time_of_week=model.time_of_week,  # type: ignore[arg-type]
            timezone=model.timezone,
        )
        if len(model.intercepts) != config.n_groups:
            raise ValueError(
                f"baseline has {len(model.intercepts)} intercepts, expected {config.n_groups} "
                f"for {model.time_of_week} groups of {model.interval_s} s"
            )
        if (model.heating_coef is None) != (model.heating_balance_c is None) or (
            model.cooling_coef is None
        ) != (model.cooling_balance_c is None):
            raise ValueError("a degree term needs both its coefficient and its balance point")
        return model

    @classmethod
    def from_json(cls, text: str | bytes) -> BaselineModel:
        """Read :meth:`to_json` output; ``ValueError`` for bad JSON or an unknown version."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"baseline is not valid JSON: {exc}") from None
        return cls.from_dict(data)


# --------------------------------------------------------------------------- fitting


@dataclass(frozen=True)
class _Candidates:
    zmask: np.ndarray  # (n, 2) bool: production, running
    heat: np.ndarray  # (n,) int64 grid index or -1
    cool: np.ndarray  # (n,) int64 grid index or -1
    grid: np.ndarray = field(repr=False)


def fit_baseline(
    timestamps: ArrayLike,
    consumption: ArrayLike,
    *,
    temperature: ArrayLike | None = None,
    production: ArrayLike | None = None,
    meter: str = "",
    unit: str = "",
    config: BaselineConfig | None = None,
    resolution: float | None = None,
) -> BaselineModel:
    """Fit a baseline on one meter's baseline period.

    ``timestamps``: int64 UTC epoch seconds of interval starts (one interval of
    ``config.interval_s`` each); ``consumption``: counter units per interval, NaN where
    unknown (such intervals are skipped). ``temperature`` (degrees C) and ``production``
    (units per interval) are optional; when given, intervals where they are NaN are skipped
    too. ``resolution`` is the counter's step in counter units (``Consumption.resolution``
    of :func:`detectors.clean.clean_counter`): the noise floor is then at least the
    quantisation noise of a difference of two readings, resolution / sqrt(6), so a coarse
    counter that happened to read steadily during the baseline period does not make its
    next one-step flicker look significant. Raises ``ValueError`` when there is too little
    data for the model.
    """
    cfg = config or BaselineConfig()
    ts = as_timestamps("timestamps", timestamps)
    n = ts.size
    y = as_values("consumption", consumption, n)
    T = as_values("temperature", temperature, n) if temperature is not None else _nan(n)
    P = as_values("production", production, n) if production is not None else None
    use_t = temperature is not None and bool(np.isfinite(T).any())
    Z = _production_columns(P) if P is not None else np.zeros((n, 0))

    groups = time_groups(ts, cfg.timezone, cfg.interval_s, cfg.time_of_week)
    usable = np.isfinite(y) & np.isfinite(Z).all(axis=1)
    if use_t:
        usable &= np.isfinite(T)
    n_used = int(usable.sum())
    if n_used == 0:
        raise ValueError(
            f"no usable intervals to fit the baseline of {meter or 'the meter'}: every interval "
            "misses consumption"
            + (", temperature" if use_t else "")
            + (" or production" if P is not None else "")
        )
    folds = cfg.cv_folds if cfg.selection == "cv" else 1
    fold = np.zeros(n, dtype=np.int64)
    fold[usable] = (np.arange(n_used) * folds) // n_used
    grid = np.unique(np.asarray(cfg.balance_points_c, dtype=np.float64)) if use_t else _nan(0)
    weights = np.ones(n)
    stats = _accumulate(groups, y, weights, Z, T, grid, cfg.n_groups, fold, folds)
    cands = _candidates(
        P is not None, T[usable], grid, cfg.min_degree_share,
        cfg.min_degree_nonzero, cfg.min_degree_total_c,
    )  # fmt: skip
    rss, cv_sse, n_par, coef_h, t_h, coef_c, t_c = _evaluate(
        stats, folds, cands.zmask, cands.heat, cands.cool, grid, cfg.ridge, cfg.tol
    )
    yu = y[usable]
    tss = float(np.sum((yu - yu.mean()) ** 2))
    dof = n_used - n_par
    ok = dof > 0
    ok &= (cands.heat < 0) | ((coef_h > 0) & (t_h >= cfg.min_t))
    ok &= (cands.cool < 0) | ((coef_c > 0) & (t_c >= cfg.min_t))
    if not ok.any():
        raise ValueError(
            f"too little data to fit the baseline of {meter or 'the meter'}: {n_used} usable "
            f"intervals for at least {int(n_par.min())} parameters; use a longer baseline "
            "period or time_of_week='daytype'"
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        adj = 1.0 - (rss / np.maximum(dof, 1)) / (tss / max(n_used - 1, 1))
    if cfg.selection == "cv":
        score = -np.where(ok & np.isfinite(cv_sse), cv_sse, np.inf)
    else:
        score = np.where(ok, np.nan_to_num(adj, nan=-np.inf), -np.inf)
    while True:
        best = int(np.argmax(score))
        alpha, beta_z, ch, cc = _fit_candidate(
            stats,
            cands.zmask[best],
            int(cands.heat[best]),
            int(cands.cool[best]),
            grid,
            cfg.ridge,
            cfg.tol,
        )
        if not cfg.nonnegative_intercept or not np.any(alpha[np.isfinite(alpha)] < 0):
            break
        # disqualified (a negative intercept); the kernel does not know intercepts, so
        # the next best is tried: rare, a few refits at most
        score[best] = -np.inf
        if not np.isfinite(score).any():
            raise ValueError(
                f"no baseline model of {meter or 'the meter'} has a non-negative intercept "
                "(every candidate's base load came out below zero)"
            )
    chosen_score: float | None = (
        math.sqrt(float(cv_sse[best]) / n_used)
        if cfg.selection == "cv"
        else _finite_or_none(float(adj[best]))
    )
    hb = float(grid[cands.heat[best]]) if cands.heat[best] >= 0 and math.isfinite(ch) else None
    cb = float(grid[cands.cool[best]]) if cands.cool[best] >= 0 and math.isfinite(cc) else None
    beta = [_finite_or_none(float(b)) for b in beta_z] + [None, None]
    model = BaselineModel(
        meter=meter,
        unit=unit,
        interval_s=cfg.interval_s,
        timezone=cfg.timezone,
        time_of_week=cfg.time_of_week,
        intercepts=tuple(_finite_or_none(float(a)) for a in alpha),
        production_coef=beta[0],
        running_coef=beta[1],
        heating_balance_c=hb,
        heating_coef=_finite_or_none(float(ch)) if hb is not None else None,
        cooling_balance_c=cb,
        cooling_coef=_finite_or_none(float(cc)) if cb is not None else None,
        stats=_placeholder_stats(),
    )
    expected = model._expected(groups, T, P if P is not None else _nan(n))
    fit_stats = _fit_stats(
        ts[usable],
        yu,
        expected[usable],
        P[usable] if P is not None else None,
        int(n_par[best]),
        int(np.sum(stats[3][:, :, 0].sum(axis=0) == 0)),
        cfg,
        chosen_score,
        cands.heat.size,
        (resolution or 0.0) / math.sqrt(6.0),
    )
    return replace(model, stats=fit_stats)


def _candidates(
    with_production: bool,
    t_used: FloatArray,
    grid: FloatArray,
    min_share: float,
    min_nonzero: int = 0,
    min_total: float = 0.0,
) -> _Candidates:
    """Every term combination: production terms x (none, heating, cooling, both b <= c).

    A balance point is a candidate when enough intervals lie on its active side (a share,
    and CalTRACK's count of non-zero degree values and their sum).
    """
    zmasks = [(False, False), (True, False), (True, True)]
    if not with_production:
        zmasks = zmasks[:1]
    n = max(t_used.size, 1)
    ordered = np.sort(t_used)
    n_below = np.searchsorted(ordered, grid, side="left")  # intervals with T < b
    n_above = t_used.size - np.searchsorted(ordered, grid, side="right")  # T > c
    total = float(ordered.sum())
    cum = np.concatenate([[0.0], np.cumsum(ordered)])
    hdd = grid * n_below - cum[n_below]  # sum of max(0, b - T)
    cdd = (total - cum[t_used.size - n_above]) - grid * n_above  # sum of max(0, T - c)
    heat_ok = [
        j for j in range(grid.size)
        if n_below[j] / n >= min_share and n_below[j] >= min_nonzero and hdd[j] >= min_total
    ]  # fmt: skip
    cool_ok = [
        j for j in range(grid.size)
        if n_above[j] / n >= min_share and n_above[j] >= min_nonzero and cdd[j] >= min_total
    ]  # fmt: skip
    degree = [(-1, -1)] + [(h, -1) for h in heat_ok] + [(-1, c) for c in cool_ok]
    degree += [(h, c) for h in heat_ok for c in cool_ok if c >= h]
    rows = [(z, h, c) for z in zmasks for h, c in degree]
    kz = 2 if with_production else 0
    zmask = np.array([list(z)[:kz] for z, _, _ in rows], dtype=np.bool_).reshape(len(rows), kz)
    heat = np.array([h for _, h, _ in rows], dtype=np.int64)
    cool = np.array([c for _, _, c in rows], dtype=np.int64)
    return _Candidates(zmask, heat, cool, grid)


def _fit_stats(
    ts: IntArray,
    y: FloatArray,
    expected: FloatArray,
    production: FloatArray | None,
    n_params: int,
    empty_groups: int,
    cfg: BaselineConfig,
    score: float | None,
    candidates: int,
    floor_min: float = 0.0,
) -> FitStats:
    """Guideline 14 statistics over the intervals the fit used."""
    n = y.size
    resid = y - expected
    rss = float(np.sum(resid**2))
    mean = float(np.mean(y))
    tss = float(np.sum((y - mean) ** 2))
    dof = max(n - n_params, 1)
    std = math.sqrt(rss / dof)
    r2 = 1.0 - rss / tss if tss > 0 else None
    adj = 1.0 - (rss / dof) / (tss / max(n - 1, 1)) if tss > 0 else None
    cv_rmse = 100.0 * std / mean if mean != 0 else None
    nmbe = 100.0 * float(np.sum(resid)) / (dof * mean) if mean != 0 else None
    floor, rel = _noise_model(resid, expected, n_params, floor_min)
    scale = np.sqrt(floor**2 + (rel * np.abs(expected)) ** 2)
    z = np.divide(resid, scale, out=np.zeros(n), where=scale > 0)
    consecutive = np.diff(ts) == cfg.interval_s
    zz = float(np.sum(z * z))
    lag1 = float(np.sum(z[:-1][consecutive] * z[1:][consecutive])) / zz if zz > 0 else 0.0
    sc = None
    if production is not None:
        total_p = float(np.sum(production))
        sc = float(np.sum(y)) / total_p if total_p > 0 else None
    return FitStats(
        n=n,
        n_params=n_params,
        r2=_finite_or_none(r2),
        adj_r2=_finite_or_none(adj),
        cv_rmse_pct=_finite_or_none(cv_rmse),
        nmbe_pct=_finite_or_none(nmbe),
        residual_std=std,
        residual_lag1=lag1,
        noise_floor=floor,
        noise_rel=rel,
        mean=mean,
        specific_consumption=_finite_or_none(sc),
        start=_iso(int(ts[0])),
        end=_iso(int(ts[-1]) + cfg.interval_s),
        empty_groups=empty_groups,
        selection=cfg.selection,
        score=score,
        candidates=candidates,
    )


def _noise_model(
    resid: FloatArray, expected: FloatArray, n_params: int, floor_min: float = 0.0
) -> tuple[float, float]:
    """(floor, rel) with resid^2 ~ floor^2 + rel^2 * expected^2, both >= 0.

    Squared residuals (corrected for the in-sample shrinkage 1 - p/n) regressed on
    [1, expected^2] by iteratively reweighted least squares with weights 1/variance^2 (the
    variance of a squared Gaussian residual is 2 variance^2): plain least squares would let
    the few high-load intervals decide alone and lose the floor, which is what quiet hours
    and coarse counters need. A negative coefficient is set to zero and the other refitted;
    the floor is at least ``floor_min``.
    """
    n = resid.size
    if n == 0:
        return floor_min, 0.0
    shrink = max(1.0 - n_params / n, 0.05)
    r2 = resid**2 / shrink
    e2 = expected**2
    mean_r2 = float(np.mean(r2))
    if not mean_r2 > 0:
        return floor_min, 0.0  # a perfect fit
    v_min = max(floor_min**2, 1e-6 * mean_r2)
    X = np.column_stack([np.ones(n), e2])
    a, b = mean_r2, 0.0
    for _ in range(20):
        w = (v_min / np.maximum(a + b * e2, v_min)) ** 2  # 1 / variance^2, scaled to <= 1
        if n >= 2 and float(np.ptp(e2)) > 0:
            coef = lstsq_normal(X, r2, w).coef
            a_new, b_new = float(coef[0]), float(coef[1])
        else:
            a_new, b_new = mean_r2, 0.0
        if b_new < 0:
            a_new, b_new = float(np.sum(w * r2) / np.sum(w)), 0.0
        if a_new < 0:
            denom = float(np.sum(w * e2 * e2))
            a_new, b_new = 0.0, (float(np.sum(w * r2 * e2)) / denom if denom > 0 else 0.0)
        done = abs(a_new - a) <= 1e-6 * (a + v_min) and abs(b_new - b) <= 1e-6 * (b + 1e-300)
        a, b = a_new, b_new
        if done:
            break
    return math.sqrt(max(a, floor_min**2)), math.sqrt(max(b, 0.0))


# --------------------------------------------------------------------------- helpers


def tz_offsets(epoch_s: IntArray, timezone: str) -> IntArray:
    """UTC offset in seconds of each timestamp in ``timezone`` (an IANA name or "UTC").

    Looks the zone up twice per calendar day rather than once per timestamp: days without
    a DST change get one offset, the rare days with one are resolved timestamp by timestamp.
    """
    if timezone == "UTC":
        return np.zeros(epoch_s.size, dtype=np.int64)
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {timezone!r}; use an IANA name such as 'Europe/Vienna' or 'UTC'"
        ) from None
    out = np.empty(epoch_s.size, dtype=np.int64)
    if epoch_s.size == 0:
        return out
    days = epoch_s // DAY_S
    uniq, inverse = np.unique(days, return_inverse=True)

    def offset(t: int) -> int:
        delta = dt.datetime.fromtimestamp(t, zone).utcoffset()
        return int(delta.total_seconds()) if delta is not None else 0

    first = np.array([offset(int(d) * DAY_S) for d in uniq], dtype=np.int64)
    last = np.array([offset(int(d) * DAY_S + DAY_S - 1) for d in uniq], dtype=np.int64)
    out[:] = first[inverse]
    changing = np.flatnonzero(first != last)
    for k in changing:
        for i in np.flatnonzero(inverse == k):
            out[i] = offset(int(epoch_s[i]))
    return out


def time_groups(epoch_s: IntArray, timezone: str, interval_s: int, time_of_week: str) -> IntArray:
    """Time-of-week group of each interval start (see :class:`BaselineConfig`)."""
    offsets = tz_offsets(epoch_s, timezone)
    if time_of_week == "none":  # the slot of the local day only
        return np.asarray(((epoch_s + offsets) % DAY_S) // interval_s, dtype=np.int64)
    return _time_groups(epoch_s, offsets, interval_s, time_of_week == "daytype")


def _production_columns(P: FloatArray) -> FloatArray:
    """Dense columns from production per interval: the volume and a producing indicator."""
    running = np.where(np.isfinite(P), (P > 0).astype(np.float64), np.nan)
    return np.ascontiguousarray(np.column_stack([P, running]))


def _nan(n: int) -> FloatArray:
    return np.full(n, np.nan)


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _iso(t_s: int) -> str:
    return dt.datetime.fromtimestamp(t_s, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _placeholder_stats() -> FitStats:
    return FitStats(
        0, 0, None, None, None, None, 0.0, 0.0, 0.0, 0.0, 0.0, None, "", "", 0, "", None, 0
    )


def _check_keys(what: str, data: dict[str, Any], expected: set[str]) -> None:
    unknown = sorted(set(data) - expected)
    missing = sorted(expected - set(data))
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown keys {unknown}")
        if missing:
            parts.append(f"missing keys {missing}")
        raise ValueError(f"{what}: " + " and ".join(parts) + f" (format {FORMAT})")


def _typed(name: str, value: Any, kind: type) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"baseline {name} must be {kind.__name__}, got {value!r}")
    return value


def _number(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"baseline {name} must be a number or null, got {value!r}")
    return float(value)


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"baseline intercepts must be a list, got {type(value).__name__}")
    return value
