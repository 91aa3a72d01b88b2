"""Every shared predictive distribution runs through calibration: ``pit_scores``, CQR and the
conformal predictive distribution, for a 1-D ``GaussianMixture`` (event shape (1,)), a
``BarDistribution``, particle distributions (``WeightedEmpirical``, one per point) and numpyro's
``Normal``.

Each family gets predictive laws ``F_i`` and responses ``y_i ~ F_i`` drawn with NumPy
(independently of the code under test). Checked against exact answers:

* ``pit_scores`` equals the cdf computed independently (scipy / closed form / weighted ECDF);
* CQR with ``n = 19`` calibration points at ``alpha = 0.1`` covers with probability exactly
  ``18/20`` (continuous families), within 4.5 binomial standard errors over ``R`` independent
  repetitions; for particle distributions the CQR scores equal NumPy weighted quantiles;
* the randomised conformal predictive cdf ``Q(Y, tau)`` of a test point is exactly uniform
  (Kolmogorov-Smirnov at the 0.1% level), ``cdf`` always returns one ndarray of shape (n,).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from scipy import stats

from calibration import ConformalizedQuantileRegressor, ConformalPredictiveDistribution, pit_scores
from calibration.quantile import conformal_quantile
from probinfer.distributions import BarDistribution, GaussianMixture, WeightedEmpirical

ALPHA, N, R = 0.1, 19, 400  # k = ceil(20 * 0.9) = 18: coverage 18/20 exactly
M = R * (N + 1)
SE = np.sqrt(0.9 * 0.1 / R)


class Family:
    """Predictive laws of M points: ``make(idx)`` builds the distribution of points ``idx``;
    ``y`` are draws from them and ``exact_cdf`` their cdf at ``y``, both computed with NumPy."""


class Normal(Family):
    def __init__(self, rng):
        self.loc, self.scale = rng.normal(size=M), rng.uniform(0.5, 2.0, size=M)
        self.y = self.loc + self.scale * rng.normal(size=M)
        self.exact_cdf = stats.norm.cdf(self.y, self.loc, self.scale)

    def make(self, idx):
        return dist.Normal(jnp.asarray(self.loc[idx]), jnp.asarray(self.scale[idx]))


class Mixture(Family):
    def __init__(self, rng, k=3):
        self.w = rng.dirichlet(np.ones(k), size=M)
        self.locs = rng.normal(scale=3.0, size=(M, k))
        self.scales = rng.uniform(0.3, 1.5, size=(M, k))
        comp = (rng.uniform(size=(M, 1)) > np.cumsum(self.w, axis=1)).sum(axis=1)
        pick = np.arange(M), comp
        self.y = self.locs[pick] + self.scales[pick] * rng.normal(size=M)
        self.exact_cdf = np.sum(
            self.w * stats.norm.cdf(self.y[:, None], self.locs, self.scales), axis=1
        )

    def make(self, idx):
        return GaussianMixture.univariate(self.w[idx], self.locs[idx], self.scales[idx])


class Bar(Family):
    def __init__(self, rng, k=12):
        self.borders = np.linspace(-3.0, 3.0, k + 1)
        self.logits = rng.normal(size=(M, k))
        self.logits[:, [0, -1]] = -40.0  # no mass in the half-normal tails: uniform buckets
        p = np.exp(self.logits - self.logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        bucket = (rng.uniform(size=(M, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
        frac = rng.uniform(size=M)
        width = np.diff(self.borders)
        self.y = self.borders[bucket] + frac * width[bucket]
        before = np.cumsum(p, axis=1) - p
        pick = np.arange(M), bucket
        self.exact_cdf = before[pick] + p[pick] * frac

    def make(self, idx):
        return BarDistribution(jnp.asarray(self.borders), jnp.asarray(self.logits[idx]))


class Particles(Family):
    def __init__(self, rng, n_atoms=40):
        self.values = rng.normal(size=(M, n_atoms)) * rng.uniform(0.5, 2, size=(M, 1))
        self.log_w = rng.normal(size=(M, n_atoms))
        w = np.exp(self.log_w)
        w /= w.sum(axis=1, keepdims=True)
        atom = (rng.uniform(size=(M, 1)) > np.cumsum(w, axis=1)).sum(axis=1)
        atom = np.minimum(atom, n_atoms - 1)
        self.y = self.values[np.arange(M), atom]
        self.exact_cdf = np.sum(w * (self.values <= self.y[:, None]), axis=1)

    def make(self, idx):
        idx = np.arange(M)[idx]
        return [WeightedEmpirical(jnp.asarray(self.values[i]), jnp.asarray(self.log_w[i]))
                for i in idx]  # fmt: skip


FAMILIES = {"normal": Normal, "gmm-1d": Mixture, "bar": Bar, "particles": Particles}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    return FAMILIES[request.param](np.random.default_rng(sorted(FAMILIES).index(request.param)))


def test_pit_scores_equal_the_exact_cdf(family):
    sl = slice(0, 300) if isinstance(family, Particles) else slice(None)  # per-point objects
    u = pit_scores(family.make(sl), family.y[sl])
    assert isinstance(u, np.ndarray) and u.shape == family.y[sl].shape
    np.testing.assert_allclose(u, family.exact_cdf[sl], atol=2e-5)


def _weighted_quantile(values, w, q):
    """Smallest atom x with F(x) >= q (NumPy, independent of the code under test)."""
    order = np.argsort(values)
    cum = np.cumsum(w[order])
    return values[order][min(np.searchsorted(cum, q - 1e-12), len(values) - 1)]


def test_cqr_coverage_is_exact(family):
    if isinstance(family, Particles):  # per-point objects: check the scores against NumPy
        n_pts = 200
        scores = (
            ConformalizedQuantileRegressor(alpha=ALPHA)
            .calibrate(y=family.y[:n_pts], distribution=family.make(slice(0, n_pts)))
            .conformity_scores_
        )
        w = np.exp(family.log_w[:n_pts])
        w /= w.sum(axis=1, keepdims=True)
        lo = [_weighted_quantile(family.values[i], w[i], ALPHA / 2) for i in range(n_pts)]
        hi = [_weighted_quantile(family.values[i], w[i], 1 - ALPHA / 2) for i in range(n_pts)]
        expected = np.maximum(np.array(lo) - family.y[:n_pts], family.y[:n_pts] - np.array(hi))
        np.testing.assert_allclose(scores, expected, atol=1e-5)
        return
    # the CQR scores of all M points through the estimator, then R independent splits
    cqr = ConformalizedQuantileRegressor(alpha=ALPHA)
    scores = cqr.calibrate(y=family.y, distribution=family.make(slice(None))).conformity_scores_
    assert scores.shape == (M,)
    reps = scores.reshape(-1, N + 1)
    q = np.array([conformal_quantile(s[:N], ALPHA) for s in reps])
    covered = reps[:, N] <= q
    assert 0.9 - 4.5 * SE <= covered.mean() <= 0.9 + 4.5 * SE, covered.mean()
    # one repetition end to end: the band of a test point is [lo - q, hi + q]
    cal, test = np.arange(N), np.arange(N, 2 * (N + 1))
    cqr.calibrate(y=family.y[cal], distribution=family.make(cal))
    band = cqr.predict_interval(distribution=family.make(test))
    assert band.shape == (len(test), 2) and np.all(band[:, 0] <= band[:, 1])


def test_conformal_predictive_cdf_is_exactly_uniform(family):
    reps = 60 if isinstance(family, Particles) else 150  # one calibration per repetition
    vals = np.empty(reps)
    for r in range(reps):
        cal = np.arange(r * (N + 1), r * (N + 1) + N)
        test = np.array([r * (N + 1) + N])
        cpd = ConformalPredictiveDistribution(random_state=r)
        cpd.calibrate(y=family.y[cal], distribution=family.make(cal))
        out = cpd.cdf(y=family.y[test], distribution=family.make(test))
        assert isinstance(out, np.ndarray) and out.shape == (1,)
        vals[r] = out[0]
    assert stats.kstest(vals, "uniform").statistic < 1.95 / np.sqrt(reps)
    bounds = cpd.cdf_bounds(y=family.y[test], distribution=family.make(test))
    assert bounds.shape == (1, 2) and bounds[0, 0] <= vals[-1] <= bounds[0, 1]
    band = cpd.predict_interval(distribution=family.make(np.arange(3)), alpha=0.5)
    assert band.shape == (3, 2) and np.all(band[:, 0] <= band[:, 1])
