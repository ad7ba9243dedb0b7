"""Measurement and verification statistics: ASHRAE Guideline 14-2014 without SciPy.

* :func:`t_quantile` - Student's t quantile (regularised incomplete beta + bisection).
* :func:`effective_n` - n' = n (1 - rho) / (1 + rho), the number of independent residuals
  when consecutive residuals are correlated with lag-1 autocorrelation rho.
* :func:`fsu` - fractional savings uncertainty (Guideline 14-2014 Annex B, the Reddy and
  Claridge form used for daily and hourly models):

      U / S = 1.26 t(conf, n' - p) CV * sqrt((n / n') (1 + 2 / n') / m) / F

  with CV the baseline CV(RMSE) as a fraction, m the reporting intervals and F = S / E the
  savings as a fraction of the adjusted baseline E. Times S this is U = 1.26 t CV E
  sqrt((n / n') (1 + 2 / n') / m), the half-width of the savings' confidence interval.
* :class:`Thresholds` and :func:`verdict` - Guideline 14 and data-sufficiency rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

CONFIDENCES = (0.68, 0.80, 0.90)
GUIDELINE14_FACTOR = 1.26  # Annex B's empirical factor for daily and hourly data


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x)
    ln += b * math.log1p(-x)
    front = math.exp(ln)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, dof: float) -> float:
    """P(T <= t) for Student's t with ``dof`` degrees of freedom."""
    tail = 0.5 * incomplete_beta(dof / 2.0, 0.5, dof / (dof + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, dof: float) -> float:
    """The ``p`` quantile of Student's t (two-sided confidence c: ``p = (1 + c) / 2``)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if not dof > 0:
        raise ValueError(f"degrees of freedom must be positive, got {dof}")
    if p < 0.5:
        return -t_quantile(1.0 - p, dof)
    z = NormalDist().inv_cdf(p)
    if dof > 1e5:
        return z
    lo, hi = 0.0, max(2.0 * z, 1.0)
    while t_cdf(hi, dof) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, dof) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def effective_n(n: int, rho: float) -> float:
    """n' = n (1 - rho) / (1 + rho); rho below 0 counts as 0 (no credit for alternation)."""
    r = min(max(rho, 0.0), 0.99)
    return n * (1.0 - r) / (1.0 + r)


def savings_halfwidth(
    *,
    cv_rmse_pct: float,
    n: int,
    n_params: int,
    rho: float,
    m: int,
    adjusted_total: float,
    confidence: float,
) -> float | None:
    """Half-width U of the savings' confidence interval, in the meter's unit (None: unknown).

    U = 1.26 t CV E sqrt((n / n') (1 + 2 / n') / m); None when n' - p is not positive or m
    is zero (the uncertainty cannot be estimated).
    """
    n_eff = effective_n(n, rho)
    dof = n_eff - n_params
    if m <= 0 or n <= 0 or dof <= 0 or n_eff <= 0:
        return None
    t = t_quantile((1.0 + confidence) / 2.0, dof)
    cv = cv_rmse_pct / 100.0
    return (
        GUIDELINE14_FACTOR
        * t
        * cv
        * abs(adjusted_total)
        * math.sqrt((n / n_eff) * (1.0 + 2.0 / n_eff) / m)
    )


def fsu(halfwidth: float | None, savings: float) -> float | None:
    """Fractional savings uncertainty U / S (None when U is unknown or S is zero)."""
    if halfwidth is None or savings == 0:
        return None
    return halfwidth / abs(savings)


@dataclass(frozen=True)
class Thresholds:
    """Pass/fail rules; the defaults follow Guideline 14-2014 and CalTRACK's sufficiency.

    ``cv_rmse_max_pct`` and ``nmbe_max_pct`` depend on the interval: hourly models 30 % and
    +-10 %, daily (and longer) 25 % and +-5 % (Guideline 14's calibration criteria, which
    CalTRACK applies to baselines). ``fsu68_max`` is Guideline 14's rule that the savings
    uncertainty at 68 % confidence be below 50 % of the savings. A baseline needs
    ``min_baseline_days`` and ``min_coverage`` of its intervals; the reporting period too.
    """

    cv_rmse_max_pct: float
    nmbe_max_pct: float
    fsu68_max: float = 0.5
    min_coverage: float = 0.9
    min_baseline_days: float = 28.0
    min_reporting_days: float = 1.0
    baseline_days_why: str = "so that every time of week is seen several times"

    @classmethod
    def for_interval(cls, interval_s: int) -> Thresholds:
        if interval_s < 86400:
            return cls(cv_rmse_max_pct=30.0, nmbe_max_pct=10.0)
        return cls(cv_rmse_max_pct=25.0, nmbe_max_pct=5.0)

    @classmethod
    def caltrack_daily(cls) -> Thresholds:
        """CalTRACK 2.0's daily data sufficiency: a 365-day baseline, 90 % of its days valid
        (at most 37 missing); Guideline 14's daily CV(RMSE) and NMBE limits."""
        return cls(
            cv_rmse_max_pct=25.0,
            nmbe_max_pct=5.0,
            min_baseline_days=365.0,
            baseline_days_why="by CalTRACK's daily method, so that every season is seen",
        )

    @classmethod
    def caltrack_hourly(cls) -> Thresholds:
        """CalTRACK 2.0's hourly data sufficiency (a 365-day baseline, so that every
        calendar month has a model of its own) with Guideline 14's hourly limits."""
        return cls(
            cv_rmse_max_pct=30.0,
            nmbe_max_pct=10.0,
            min_baseline_days=365.0,
            baseline_days_why="by CalTRACK's hourly method, so that every calendar month "
            "has its own model",
        )


@dataclass(frozen=True)
class Verdict:
    """Whether the savings figure can be relied on, and why not when it cannot."""

    passed: bool
    reasons: tuple[str, ...]  # each rule that failed, in words
    warnings: tuple[str, ...]  # things worth knowing that do not fail the verdict

    def to_dict(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "reasons": list(self.reasons),
            "warnings": list(self.warnings),
        }


def verdict(
    *,
    thresholds: Thresholds,
    cv_rmse_pct: float | None,
    nmbe_pct: float | None,
    r2: float | None,
    fsu68: float | None,
    savings: float,
    baseline_days: float,
    reporting_days: float,
    baseline_coverage: float,
    reporting_coverage: float,
    empty_groups: int,
    n_eff: float,
    n_params: int,
) -> Verdict:
    """Apply every rule; each failing one adds a reason a person can act on."""
    th = thresholds
    reasons: list[str] = []
    warnings: list[str] = []
    if baseline_days < th.min_baseline_days:
        reasons.append(
            f"baseline period is {baseline_days:.1f} days; at least {th.min_baseline_days:g} "
            f"are needed {th.baseline_days_why}"
        )
    if reporting_days < th.min_reporting_days:
        reasons.append(
            f"reporting period is {reporting_days:.2f} days; at least "
            f"{th.min_reporting_days:g} is needed"
        )
    if baseline_coverage < th.min_coverage:
        reasons.append(
            f"only {100 * baseline_coverage:.0f} % of the baseline intervals have data "
            f"(at least {100 * th.min_coverage:.0f} % needed)"
        )
    if reporting_coverage < th.min_coverage:
        reasons.append(
            f"only {100 * reporting_coverage:.0f} % of the reporting intervals have data "
            f"(at least {100 * th.min_coverage:.0f} % needed)"
        )
    if empty_groups:
        reasons.append(
            f"{empty_groups} time-of-week slots have no baseline data, so the baseline cannot "
            "be projected there; use a longer baseline or daily data"
        )
    if n_eff - n_params <= 0:
        reasons.append(
            f"too few independent baseline intervals ({n_eff:.0f} after autocorrelation) for "
            f"the model's {n_params} parameters"
        )
    if cv_rmse_pct is None:
        reasons.append("CV(RMSE) is undefined (mean baseline consumption is zero)")
    elif cv_rmse_pct > th.cv_rmse_max_pct:
        reasons.append(
            f"CV(RMSE) {cv_rmse_pct:.1f} % exceeds Guideline 14's {th.cv_rmse_max_pct:g} %: "
            "the model does not explain the meter well enough (missing driver, wrong meter, "
            "or a change inside the baseline period)"
        )
    if nmbe_pct is not None and abs(nmbe_pct) > th.nmbe_max_pct:
        reasons.append(f"NMBE {nmbe_pct:+.2f} % is outside Guideline 14's +-{th.nmbe_max_pct:g} %")
    if fsu68 is None:
        if savings != 0:
            reasons.append("the savings uncertainty cannot be estimated")
    elif fsu68 > th.fsu68_max:
        reasons.append(
            f"savings uncertainty at 68 % confidence is {100 * fsu68:.0f} % of the savings; "
            f"Guideline 14 requires below {100 * th.fsu68_max:.0f} % (savings too small "
            "against the model's noise, or a reporting period too short)"
        )
    if r2 is not None and r2 < 0.5:
        warnings.append(f"R2 is only {r2:.2f}: the drivers explain little of the variation")
    if savings < 0:
        warnings.append("consumption rose against the adjusted baseline (negative savings)")
    return Verdict(not reasons, tuple(reasons), tuple(warnings))
