"""Least squares without SciPy: both solvers against the plain-Python twin, known answers,
NaN rows, empty input, rank deficiency and the wrappers' error messages."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from naive_baseline import naive_lstsq, solve_dropping

from detectors.kernels.lstsq import _cholesky_solve, _householder_lstsq, _normal_lstsq
from detectors.lstsq import lstsq, lstsq_normal

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# values at a meter's resolution: sub-normal numbers (1e-152) make systems so ill-scaled
# that no two solvers agree, and never come out of a meter
values = st.one_of(
    st.integers(-10000, 10000).map(lambda v: v / 100),
    st.sampled_from([np.nan, np.inf, -np.inf, 0.0]),
)
small = st.integers(-1000, 1000).map(lambda v: v / 100)


@st.composite
def problems(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m = draw(st.integers(0, 25))
    p = draw(st.integers(0, 4))
    X = draw(hnp.arrays(np.float64, (m, p), elements=values))
    y = draw(hnp.arrays(np.float64, m, elements=values))
    w = draw(
        hnp.arrays(
            np.float64,
            m,
            elements=st.one_of(st.floats(0.1, 10), st.sampled_from([1.0, 0.0, np.nan])),
        )
    )
    return X, y, w


def _used(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    return np.isfinite(X).all(axis=1) & np.isfinite(y) & np.isfinite(w) & (w > 0)


def _well_posed(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> bool:
    """Enough usable rows and a design far from singular (so coefficients are unique)."""
    ok = _used(X, y, w)
    A = X[ok] * np.sqrt(w[ok])[:, None]
    if A.shape[0] <= A.shape[1] or A.shape[1] == 0:
        return False
    norms = np.linalg.norm(A, axis=0)
    if (norms == 0).any():
        return False
    return bool(np.linalg.cond(A / norms) < 1e5)


@SETTINGS
@given(problems(), st.sampled_from([0.0, 1e-3]))
def test_normal_kernel_equals_naive_twin(prob: tuple, ridge: float) -> None:
    X, y, w = prob
    coef, rank, n, rss = _normal_lstsq(X, y, w, ridge, 1e-10)
    n_coef, n_rank, n_n, n_rss = naive_lstsq(
        X.tolist(), y.tolist(), w.tolist(), X.shape[1], ridge, 1e-10
    )
    assert n == n_n
    scale = 1.0 + float(np.sum(w[_used(X, y, w)] * y[_used(X, y, w)] ** 2))
    if _well_posed(X, y, w) or ridge > 0:
        assert rank == n_rank
        np.testing.assert_allclose(
            coef, n_coef, rtol=1e-6, atol=1e-6 * (1 + np.abs(coef).max(initial=0))
        )
    assert abs(rss - n_rss) <= 1e-6 * scale


@SETTINGS
@given(problems(), st.sampled_from([0.0, 1e-3]))
def test_householder_kernel_equals_naive_twin(prob: tuple, ridge: float) -> None:
    X, y, w = prob
    coef, rank, n, rss = _householder_lstsq(X, y, w, ridge, 1e-10)
    assert n == int(_used(X, y, w).sum())
    if not (_well_posed(X, y, w) or (ridge > 0 and n > 0 and X.shape[1] > 0)):
        return
    n_coef, _, _, n_rss = naive_lstsq(X.tolist(), y.tolist(), w.tolist(), X.shape[1], ridge, 1e-12)
    assert rank == X.shape[1]
    big = 1 + np.abs(n_coef).max(initial=0)
    np.testing.assert_allclose(coef, n_coef, rtol=1e-5, atol=1e-5 * big)
    scale = 1.0 + float(np.sum(w[_used(X, y, w)] * y[_used(X, y, w)] ** 2))
    assert abs(rss - n_rss) <= 1e-6 * scale


@SETTINGS
@given(
    hnp.arrays(np.float64, (3, 3), elements=small),
    hnp.arrays(np.float64, 3, elements=small),
)
def test_cholesky_kernel_equals_naive_twin(A: np.ndarray, c: np.ndarray) -> None:
    G = A.T @ A  # symmetric positive semi-definite
    ref = np.where(np.diag(G) > 0, np.diag(G), 1.0)
    x, kept = _cholesky_solve(G, c, ref, 0.0, 1e-9)
    nx, nkept = solve_dropping(G.tolist(), c.tolist(), 1e-9)
    assert list(kept) == nkept
    np.testing.assert_allclose(x, nx, rtol=1e-6, atol=1e-6 * (1 + np.abs(nx).max()))


@pytest.mark.parametrize("solver", [lstsq, lstsq_normal])
def test_recovers_known_coefficients(solver) -> None:
    rng = np.random.default_rng(4)
    X = np.c_[np.ones(500), rng.normal(size=(500, 3)) * [1.0, 100.0, 0.01]]
    truth = np.array([12.5, -3.0, 0.25, 400.0])
    result = solver(X, X @ truth)
    np.testing.assert_allclose(result.coef, truth, rtol=1e-9)
    assert result.rank == 4 and result.n == 500 and result.rss < 1e-12


@pytest.mark.parametrize("solver", [lstsq, lstsq_normal])
def test_nan_rows_are_skipped_as_if_absent(solver) -> None:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(100, 3))
    y = X @ [1.0, 2.0, 3.0] + rng.normal(size=100)
    Xn, yn = X.copy(), y.copy()
    Xn[3, 1] = np.nan
    yn[10] = np.inf
    keep = np.ones(100, bool)
    keep[[3, 10]] = False
    got = solver(Xn, yn)
    want = solver(X[keep], y[keep])
    np.testing.assert_allclose(got.coef, want.coef, rtol=1e-12)
    assert got.n == 98 and got.rss == pytest.approx(want.rss, rel=1e-12)


@pytest.mark.parametrize("solver", [lstsq, lstsq_normal])
def test_integer_weights_equal_repeated_rows(solver) -> None:
    rng = np.random.default_rng(6)
    X = rng.normal(size=(40, 2))
    y = rng.normal(size=40)
    w = rng.integers(1, 4, size=40).astype(float)
    rep = np.repeat(np.arange(40), w.astype(int))
    np.testing.assert_allclose(solver(X, y, w).coef, solver(X[rep], y[rep]).coef, rtol=1e-10)


def test_rank_deficient_design_is_refused_or_regularised() -> None:
    rng = np.random.default_rng(7)
    X = rng.normal(size=(50, 2))
    X = np.c_[X, X[:, 0] - 2 * X[:, 1]]
    y = X[:, 0] + rng.normal(size=50) * 0.1
    with pytest.raises(ValueError, match="ridge=1e-10"):
        lstsq(X, y)
    ridged = lstsq(X, y, ridge=1e-10)
    dropped = lstsq_normal(X, y)
    assert dropped.rank == 2 and dropped.coef[2] == 0.0
    # the fitted values are unique even when the coefficients are not
    np.testing.assert_allclose(X @ ridged.coef, X @ dropped.coef, atol=1e-6)


def test_empty_and_all_nan_input() -> None:
    with pytest.raises(ValueError, match="no rows"):
        lstsq(np.zeros((0, 2)), np.zeros(0))
    with pytest.raises(ValueError, match="rank 0"):
        lstsq(np.full((5, 2), np.nan), np.ones(5))
    empty = lstsq_normal(np.zeros((0, 2)), np.zeros(0))
    assert empty.n == 0 and empty.rank == 0 and list(empty.coef) == [0.0, 0.0]
    none = lstsq(np.zeros((3, 0)), np.ones(3))
    assert none.coef.shape == (0,) and none.rss == 3.0


def test_wrappers_explain_bad_arguments() -> None:
    with pytest.raises(TypeError, match=r"dtype=np\.float64"):
        lstsq(np.array([["a"], ["b"]]), np.ones(2))
    with pytest.raises(TypeError, match="real numbers"):
        lstsq_normal(np.ones((2, 1)), np.array([True, False]))
    with pytest.raises(ValueError, match=r"X\[:, None\]"):
        lstsq(np.ones(4), np.ones(4))
    with pytest.raises(ValueError, match="one y per row"):
        lstsq(np.ones((4, 1)), np.ones(3))
    with pytest.raises(ValueError, match="weights has 2"):
        lstsq(np.ones((4, 1)), np.ones(4), np.ones(2))
    with pytest.raises(ValueError, match="ridge"):
        lstsq(np.ones((4, 1)), np.ones(4), ridge=-1.0)
    # integers are fine
    assert lstsq(np.arange(4)[:, None], np.arange(4) * 2).coef[0] == pytest.approx(2.0)
