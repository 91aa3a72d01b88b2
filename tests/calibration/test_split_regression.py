"""Split conformal regression, CQR and conformal predictive distributions.

Coverage is checked against the exact law: with continuous scores the
conditional coverage of one calibration draw is Beta(k, n + 1 - k) with
k = ceil((n + 1)(1 - alpha)) (n = 100, alpha = 0.1: mean 91/101).  Tolerances are
4.5 Monte-Carlo standard errors of the mean over R draws.
"""

import numpy as np
import pytest
from scipy import stats

from calibration import (
    ConformalizedQuantileRegressor,
    ConformalPredictiveDistribution,
    SplitConformalRegressor,
    conformal_quantile,
    conformal_rank,
    min_calibration_size,
)

N, ALPHA, R = 100, 0.1, 2000
K = 91  # ceil(101 * 0.9)
BETA = stats.beta(K, N + 1 - K)


def _check_beta(cond_cov):
    cond_cov = np.asarray(cond_cov)
    se = BETA.std() / np.sqrt(len(cond_cov))
    mean = cond_cov.mean()
    assert 0.900 - 4.5 * se <= mean <= 0.9099 + 4.5 * se
    assert abs(mean - BETA.mean()) <= 4.5 * se
    # per-draw coverage follows Beta(k, n + 1 - k): KS at the 0.1% level
    d = stats.kstest(cond_cov, BETA.cdf).statistic
    assert d < 1.95 / np.sqrt(len(cond_cov))


def test_conformal_rank_exact_and_edges():
    assert conformal_rank(100, 0.1) == 91
    assert conformal_rank(9, 0.1) == 9  # 10 * 0.9 exactly, no float round-up
    assert min_calibration_size(0.1) == 9
    assert min_calibration_size(0.05) == 19
    s = np.arange(9.0)
    assert conformal_quantile(s, 0.1) == 8.0  # n = ceil(1/alpha) - 1: the max score
    assert conformal_quantile(s[:8], 0.1) == np.inf  # below it: infinite
    assert conformal_quantile(s[:8], 0.1, upper_bound=50.0) == 50.0


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):  # validated in calibrate, not __init__
        SplitConformalRegressor(alpha=alpha).calibrate(y=[0.0], y_pred=[0.0])


def test_bad_inputs():
    cp = SplitConformalRegressor(alpha=0.1)
    with pytest.raises(ValueError, match="NaN"):
        cp.calibrate(y=[1.0, np.nan], y_pred=[0.0, 0.0])
    with pytest.raises(ValueError, match="length mismatch"):
        cp.calibrate(y=[1.0, 2.0], y_pred=[0.0])
    with pytest.raises(ValueError, match="calibrate"):
        SplitConformalRegressor().predict_interval(y_pred=[0.0])
    with pytest.raises(ValueError, match="score"):
        SplitConformalRegressor(conformity_score="bogus").calibrate(y=[0.0], y_pred=[0.0])
    with pytest.raises(ValueError, match="scale"):
        SplitConformalRegressor(conformity_score="normalized").calibrate(
            y=[1.0], y_pred=[0.0], scale=[0.0]
        )


def test_small_n_gives_infinite_interval():
    cp = SplitConformalRegressor(alpha=0.1).calibrate(y=np.arange(8.0), y_pred=np.zeros(8))
    assert np.all(cp.predict_interval(y_pred=np.zeros(3)) == [-np.inf, np.inf])
    cp = SplitConformalRegressor(alpha=0.1).calibrate(y=np.arange(9.0), y_pred=np.zeros(9))
    np.testing.assert_array_equal(cp.predict_interval(y_pred=[1.0]), [[-7.0, 9.0]])


class _Linear:
    def __init__(self, w):
        self.w = w

    def predict(self, X):
        return X @ self.w


def test_absolute_score_coverage_beta():
    rng = np.random.default_rng(0)
    w = np.array([1.0, -2.0])
    X = rng.normal(size=(R, N, 2))
    y = X @ w + rng.normal(size=(R, N))
    model = _Linear(w)
    q = np.array([SplitConformalRegressor(model).calibrate(X[r], y[r]).quantile_ for r in range(R)])
    _check_beta(2 * stats.norm.cdf(q) - 1)
    # the interval is exactly y_pred +- q
    cp = SplitConformalRegressor(model).calibrate(X[0], y[0])
    xt = rng.normal(size=(4, 2))
    np.testing.assert_allclose(cp.predict_interval(xt), np.c_[xt @ w - q[0], xt @ w + q[0]])


def test_normalized_score_coverage_beta():
    rng = np.random.default_rng(1)
    mu = rng.normal(size=(R, N))
    sigma = np.exp(rng.normal(size=(R, N)))
    y = mu + sigma * rng.normal(size=(R, N))
    cps = [
        SplitConformalRegressor(conformity_score="normalized").calibrate(
            y=y[r], y_pred=mu[r], scale=sigma[r]
        )
        for r in range(R)
    ]
    _check_beta(2 * stats.norm.cdf([c.quantile_ for c in cps]) - 1)
    out = cps[0].predict_interval(y_pred=[1.0, 2.0], scale=[0.5, 2.0])
    q = cps[0].quantile_
    np.testing.assert_allclose(out, [[1 - 0.5 * q, 1 + 0.5 * q], [2 - 2 * q, 2 + 2 * q]])


def test_cqr_from_numpyro_icdf_coverage_beta():
    import numpyro.distributions as dist

    rng = np.random.default_rng(2)
    mu = rng.normal(size=(R, N))
    y = mu + rng.normal(size=(R, N))
    # a miscalibrated predictive distribution (too narrow) through the shared interface
    pred = dist.Normal(mu, 0.7)
    lo = np.asarray(pred.icdf(ALPHA / 2))
    hi = np.asarray(pred.icdf(1 - ALPHA / 2))
    q = np.array(
        [
            ConformalizedQuantileRegressor(alpha=ALPHA)
            .calibrate(y=y[r], lower=lo[r], upper=hi[r])
            .quantile_
            for r in range(R)
        ]
    )
    z = stats.norm.ppf(1 - ALPHA / 2)
    _check_beta(stats.norm.cdf(0.7 * z + q) - stats.norm.cdf(-0.7 * z - q))
    # the distribution path gives the same scores and intervals
    cq = ConformalizedQuantileRegressor(alpha=ALPHA).calibrate(
        y=y[0], distribution=dist.Normal(mu[0], 0.7)
    )
    assert cq.quantile_ == pytest.approx(q[0], abs=1e-6)
    out = cq.predict_interval(distribution=dist.Normal(np.array([0.0, 3.0]), 0.7))
    np.testing.assert_allclose(out[:, 1] - out[:, 0], 2 * (0.7 * z + q[0]), rtol=1e-5)


class _ScipyNormal:
    """Duck-typed predictive distribution (cdf/icdf) for fast looping."""

    def __init__(self, loc, scale):
        self.loc, self.scale = np.asarray(loc), scale

    def cdf(self, y):
        return stats.norm.cdf(y, self.loc, self.scale)

    def icdf(self, u):
        return stats.norm.ppf(u, self.loc, self.scale)


def test_conformal_predictive_distribution_coverage_beta():
    rng = np.random.default_rng(3)
    mu = rng.normal(size=(R, N))
    y = mu + rng.normal(size=(R, N))
    cov = []
    for r in range(R):
        cpd = ConformalPredictiveDistribution().calibrate(
            y=y[r], distribution=_ScipyNormal(mu[r], 2.0)
        )
        lo, hi = cpd.predict_interval(distribution=_ScipyNormal([0.0], 2.0), alpha=ALPHA)[0]
        cov.append(stats.norm.cdf(hi) - stats.norm.cdf(lo))
    # k_hi - k_lo = 96 - 5 = 91: the same Beta(91, 10) law
    _check_beta(cov)


def test_cpd_randomized_pit_is_uniform_and_numpyro_interface():
    import numpyro.distributions as dist

    rng = np.random.default_rng(4)
    n, reps = 20, 4000
    y = rng.standard_t(3, size=(reps, n + 1))
    vals = []
    for r in range(reps):
        cpd = ConformalPredictiveDistribution(random_state=r)
        cpd.calibrate(y=y[r, :n], distribution=_ScipyNormal(np.zeros(n), 1.0))
        vals.append(cpd.cdf(y=[y[r, n]], distribution=_ScipyNormal([0.0], 1.0))[0])
    # exactly uniform: KS at the 0.1% level
    assert stats.kstest(vals, "uniform").statistic < 1.95 / np.sqrt(reps)
    cpd = ConformalPredictiveDistribution().calibrate(
        y=y[0, :n], distribution=dist.Normal(np.zeros(n), 1.0)
    )
    ((lower, upper),) = cpd.cdf_bounds(y=[0.0], distribution=dist.Normal(0.0, 1.0))
    assert 0 <= lower < upper <= 1
    assert cpd.predict_interval(distribution=dist.Normal(np.zeros(2), 1.0)).shape == (2, 2)


# ---- issue 22, item 5: infinite point predictions, crossing quantiles ------------------------


def test_infinite_point_predictions_are_rejected_by_name():
    cp = SplitConformalRegressor(alpha=0.5).calibrate(y=np.zeros(10), y_pred=np.ones(10))
    with pytest.raises(ValueError, match="y_pred"):
        cp.predict_interval(y_pred=[np.inf])  # gave [inf, inf]
    with pytest.raises(ValueError, match="y_pred"):
        SplitConformalRegressor(alpha=0.5).calibrate(y=np.ones(10), y_pred=np.full(10, np.inf))


def test_cqr_rearranges_crossing_quantiles_and_never_returns_an_empty_interval():
    y = np.linspace(-1.0, 1.0, 19)
    cq = ConformalizedQuantileRegressor(alpha=0.5).calibrate(
        y=y,
        lower=np.full(19, 3.0),
        upper=np.full(19, -3.0),  # crossing: the band [-3, 3]
    )
    assert cq.quantile_ < 0  # the band is wider than needed
    q = cq.quantile_
    out = cq.predict_interval(lower=[5.0, -1.0], upper=[-5.0, 1.0])  # gave [6, -6] (q = -1)
    np.testing.assert_allclose(out[0], [-5.0 - q, 5.0 + q])
    assert np.all(out[:, 0] <= out[:, 1])
    narrow = cq.predict_interval(lower=[2.0], upper=[2.5])  # lo - q > hi + q: empty
    np.testing.assert_allclose(narrow, [[2.25, 2.25]])
    with pytest.raises(ValueError, match="upper"):
        cq.predict_interval(lower=[0.0], upper=[np.inf])
