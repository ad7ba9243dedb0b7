"""CalTRACK 2.0 hourly (``detectors.caltrack_hourly``): each step against a plain reference.

The month fits against a dense weighted least squares (numpy) of the same design, the bin
merging against a line-by-line transcription of eemeter 4.1.1's ``_fit_temperature_bins``,
the bin features against their definition, the effective parameters against the trace of
the dense hat matrix; occupancy on a meter with known working hours; a re-fit is
identical; too little data gets a clear error. The agreement with eemeter itself is in
``benchmarks/bench_savings.py`` (eemeter does not run in the test environment).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.baseline import time_groups
from detectors.caltrack_hourly import (
    HOURS_OF_WEEK,
    CaltrackHourlyConfig,
    _leverage,
    _wls,
    bin_features,
    f_to_c,
    fit_caltrack_hourly,
    local_months,
    merge_bins,
    week_hours_and_months,
)

T0 = 1_451_606_400  # 2016-01-01T00:00:00Z, a Friday
EDGES_C = tuple(f_to_c(f) for f in (30.0, 45.0, 55.0, 65.0, 75.0, 90.0))


def synthetic_year(seed: int = 1, days: int = 366) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hourly: weekday working hours 8-18 add load; heating below 12 C, cooling above 20 C."""
    rng = np.random.default_rng(seed)
    n = days * 24
    t = T0 + 3600 * np.arange(n, dtype=np.int64)
    day = np.arange(n) / 24
    temp = 10 - 12 * np.cos(2 * np.pi * day / 365) + 4 * np.sin(2 * np.pi * (day % 1))
    temp += rng.normal(0, 2, n)
    how = time_groups(t, "UTC", 3600, "week")
    work = (how // 24 < 5) & (how % 24 >= 8) & (how % 24 < 18)
    y = 2 + 3 * work + 0.2 * np.maximum(0, 12 - temp) + 0.3 * np.maximum(0, temp - 20) * work
    return t, temp, y + rng.normal(0, 0.3, n)


# ----------------------------------------------------------------------------- bins


def eemeter_merge_bins(temps: list[float], edges: list[float], min_count: int) -> list[float]:
    """eemeter 4.1.1's ``_fit_temperature_bins`` in plain Python (no pandas)."""

    def summary(bins: list[float]) -> list[int]:
        b = [-math.inf, *bins, math.inf]
        return [sum(1 for x in temps if lo < x <= hi) for lo, hi in itertools.pairwise(b)]

    test = set(edges)
    while True:
        bins = sorted(test)
        counts = summary(bins)
        remove: set[float] = set()
        if len(counts) > 1:
            if counts[0] < min_count:
                remove.add(bins[0])  # the first bin's right endpoint
            if counts[-1] < min_count:
                remove.add(bins[-1])  # the last bin's left endpoint
            if not remove:
                for i in range(1, len(counts) - 1):
                    if counts[i] < min_count:
                        remove.add(bins[i])
        if not remove:
            return bins
        test -= remove


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(-30, 45, allow_nan=False), max_size=200),
    st.integers(1, 40),
)
def test_bin_merging_equals_eemeters_algorithm(temps: list[float], min_count: int) -> None:
    got = merge_bins(np.array(temps, dtype=np.float64), EDGES_C, min_count)
    assert list(got) == eemeter_merge_bins(temps, list(EDGES_C), min_count)
    # every bin left is full, unless one bin is all that is left
    b = [-math.inf, *got, math.inf]
    counts = [sum(1 for x in temps if lo < x <= hi) for lo, hi in itertools.pairwise(b)]
    assert len(counts) == 1 or min(counts) >= min_count


def test_bin_merging_examples() -> None:
    # nothing below 30 degF (-1.1 C) nor above 90 degF (32.2 C): both end edges go
    temps = np.linspace(0.0, 30.0, 400)
    assert merge_bins(temps, EDGES_C, 20) == EDGES_C[1:-1]
    assert merge_bins(np.zeros(0), EDGES_C, 20) == ()  # no temperatures: one bin
    assert merge_bins(np.full(5, 10.0), EDGES_C, 20) == ()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(st.floats(-40, 50), st.just(math.nan)), max_size=50),
    st.lists(st.sampled_from(EDGES_C), unique=True).map(sorted),
)
def test_bin_features_follow_their_definition(temps: list[float], edges: list[float]) -> None:
    T = np.array(temps, dtype=np.float64)
    F = bin_features(T, tuple(edges))
    assert F.shape == (T.size, len(edges) + 1)
    bounds = [-math.inf, *edges, math.inf]
    for i, x in enumerate(temps):
        if math.isnan(x):
            assert np.isnan(F[i]).all()
            continue
        assert F[i].sum() == pytest.approx(x, abs=1e-9)  # the bins add up to T
        for k, (lo, hi) in enumerate(itertools.pairwise(bounds)):
            want = min(x, hi) if k == 0 else min(max(x - lo, 0.0), hi - lo)
            assert F[i, k] == pytest.approx(want, abs=1e-12)


# ----------------------------------------------------------------------------- the fit


def dense_month_fit(
    t: np.ndarray, y: np.ndarray, T: np.ndarray, month: int, occupied: np.ndarray,
    e_occ: tuple[float, ...], e_un: tuple[float, ...],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """The month's design (one-hot hour of week + occupancy-split bins) fitted densely by
    numpy's weighted least squares; returns (fitted values of the month's own hours, the
    hat matrix's diagonal over them, their mask)."""
    mon = local_months(t, "UTC")
    prev, nxt = (month - 2) % 12 + 1, month % 12 + 1
    w = np.where(mon == month, 1.0, np.where((mon == prev) | (mon == nxt), 0.5, 0.0))
    use = w > 0
    how = time_groups(t, "UTC", 3600, "week")
    occ = occupied[how]
    X = np.hstack([
        (how[:, None] == np.arange(HOURS_OF_WEEK)).astype(float),
        bin_features(T, e_occ) * occ[:, None],
        bin_features(T, e_un) * (~occ)[:, None],
    ])  # fmt: skip
    Xu = X[use]
    G_inv = np.linalg.pinv(Xu.T @ (Xu * w[use][:, None]))  # (X' W X)^+
    beta = G_inv @ (Xu.T @ (w[use] * y[use]))
    own = mon == month
    lev = np.sum((X[own] @ G_inv) * X[own], axis=1)
    return X[own] @ beta, lev, own


def test_month_models_equal_a_dense_weighted_least_squares() -> None:
    t, T, y = synthetic_year()
    model = fit_caltrack_hourly(t, y, temperature=T)
    ours = model.predict(t, T)
    lev_total = 0.0
    for mm in model.months:
        assert mm is not None
        want, lev, own = dense_month_fit(t, y, T, mm.month, np.array(mm.occupied),
                                         mm.occupied_bins_c, mm.unoccupied_bins_c)  # fmt: skip
        np.testing.assert_allclose(ours[own], want, rtol=1e-8, atol=1e-8)
        lev_total += float(lev.sum())
    # Guideline 14's p: the effective number of parameters, the hat matrix's trace
    assert model.stats.n_params == round(lev_total)
    assert 12 * 60 < model.stats.n_params < 12 * 180  # each month's ~180 shared with neighbours
    # not unbiased (each month's levels are shared with its neighbours' hours), but nearly
    assert abs(model.stats.nmbe_pct or 0.0) < 0.1


def test_each_hours_leverage_equals_the_dense_hat_matrix_diagonal() -> None:
    """The leverage from the fit's own sums (``_wls``'s D and B) is, hour by hour, the
    diagonal of the dense weighted hat matrix: neighbour hours at weight 1/2, an hour of
    the week without data, a dropped (all-zero) column."""
    rng = np.random.default_rng(5)
    how = np.tile(np.arange(HOURS_OF_WEEK), 4)
    how = how[how != 5]  # hour of week 5 never seen
    n = how.size
    w = np.where(rng.random(n) < 0.5, 1.0, 0.5)
    Z = rng.normal(size=(n, 4))
    Z[:, 2] = 0.0  # an empty bin: dropped
    y = rng.normal(size=n)
    _alpha, _beta, kept, S, D, B = _wls(how, y, w, Z)
    assert kept.tolist() == [True, True, False, True]
    own = w == 1.0
    lev = _leverage(D, B, kept, S, how[own], Z[own])
    X = np.hstack([(how[:, None] == np.arange(HOURS_OF_WEEK)).astype(float), Z])
    G_inv = np.linalg.pinv(X.T @ (X * w[:, None]))  # (X' W X)^+
    want = np.sum((X[own] @ G_inv) * X[own], axis=1)
    np.testing.assert_allclose(lev, want, rtol=1e-9, atol=1e-12)


def test_occupancy_finds_the_working_hours_and_bins_split_by_it() -> None:
    t, T, y = synthetic_year()
    model = fit_caltrack_hourly(t, y, temperature=T)
    hours = np.arange(HOURS_OF_WEEK)
    work = (hours // 24 < 5) & (hours % 24 >= 8) & (hours % 24 < 18)
    for mm in model.months:
        assert mm is not None
        assert np.array_equal(np.array(mm.occupied), work), mm.month
    july = model.months[6]
    assert july is not None and july.occupied_slopes[-1] is not None
    # cooling only while occupied: July's warmest occupied bin has the steepest slope
    assert max(s for s in july.occupied_slopes if s is not None) > 0.2


def test_a_refit_is_identical_and_the_json_is_complete() -> None:
    t, T, y = synthetic_year(seed=3)
    a = fit_caltrack_hourly(t, y, temperature=T, meter="m", unit="kWh")
    b = fit_caltrack_hourly(t, y, temperature=T, meter="m", unit="kWh")
    assert a.to_json() == b.to_json()
    assert np.array_equal(a.predict(t, T), b.predict(t, T), equal_nan=True)
    d = a.to_dict()
    assert d["format"] == "recp-caltrack-hourly/1" and len(d["months"]) == 12
    assert len(d["months"][0]["intercepts"]) == 168
    # the hours' groups worked out once by a caller (compute_savings) give the same
    groups = week_hours_and_months(t, "UTC")
    assert np.array_equal(a.predict(t, T, groups=groups), a.predict(t, T), equal_nan=True)
    assert np.array_equal(groups[1], local_months(t, "UTC"))
    with pytest.raises(ValueError, match="one per timestamp"):
        a.predict(t, T, groups=(groups[0][1:], groups[1][1:]))


def test_months_without_data_have_no_model_and_no_prediction() -> None:
    t, T, y = synthetic_year()
    keep = local_months(t, "UTC") <= 4  # January..April: models for Dec..May
    model = fit_caltrack_hourly(t[keep], y[keep], temperature=T[keep])
    assert [mm.month for mm in model.months if mm] == [1, 2, 3, 4, 5, 12]
    pred = model.predict(t, T)
    mon = local_months(t, "UTC")
    assert np.isnan(pred[(mon >= 6) & (mon <= 11)]).all()
    assert np.isfinite(pred[mon == 5]).all()  # May from April's hours at half weight


def test_too_little_data_and_bad_input_get_clear_errors() -> None:
    t, T, y = synthetic_year(days=2)
    with pytest.raises(ValueError, match="too little data to fit the CalTRACK hourly"):
        fit_caltrack_hourly(t, y, temperature=T)
    with pytest.raises(ValueError, match="every hour misses consumption or temperature"):
        fit_caltrack_hourly(t, y, temperature=np.full(t.size, np.nan))
    with pytest.raises(ValueError, match="needs hourly data"):
        fit_caltrack_hourly(t + 900, y, temperature=T)
    with pytest.raises(ValueError, match="unknown time zone"):
        CaltrackHourlyConfig(timezone="Mars/Olympus")


def test_savings_over_a_year_and_reporting_months_without_a_model() -> None:
    from detectors.meter import MeterInfo
    from detectors.savings import Period, SavingsError, Series, compute_savings

    t, T, y = synthetic_year(days=731)
    mon = local_months(t, "UTC")
    year = t < T0 + 366 * 86400
    y = np.where(year, y, 0.9 * y)  # 10 % saved in the second year
    series = Series(t, 3600, y, MeterInfo("m", "kWh"), T, None)
    base = Period(int(t[0]), T0 + 366 * 86400)
    rep = Period(T0 + 366 * 86400, int(t[-1]) + 3600)
    s = compute_savings(series, base, rep, method="caltrack-hourly")
    assert s.method == "caltrack-hourly" and s.fraction is not None
    assert s.fraction == pytest.approx(0.10, abs=0.005)
    u = s.halfwidth[0.90]
    assert u is not None and 0 < u < 0.02 * s.adjusted_total
    assert s.verdict.reasons == ()  # a year of baseline, a good fit
    assert s.to_dict()["method"] == "caltrack-hourly"
    # a baseline of January and February has no model for June
    jan_feb = Period(T0, T0 + 60 * 86400)
    june = Period(int(t[(mon == 6) & ~year][0]), int(t[(mon == 6) & ~year][-1]) + 3600)
    with pytest.raises(SavingsError, match="CalTRACK hourly has no model for them"):
        compute_savings(series, jan_feb, june, method="caltrack-hourly")
    # a reporting period partly in months without a model: those hours are left out
    april = Period(int(t[(mon == 3) & ~year][0]), int(t[(mon == 4) & ~year][-1]) + 3600)
    s = compute_savings(series, jan_feb, april, method="caltrack-hourly")
    assert any("calendar months without a baseline model (apr)" in w for w in s.verdict.warnings)
    # January and three days of February: March's model has 72 hours for 72 levels
    short = Period(T0, T0 + 34 * 86400)
    s = compute_savings(series, short, april, method="caltrack-hourly")
    assert any("one hour per hour of the week (mar: 72 h)" in w for w in s.verdict.warnings)
