"""Plain JAX log densities (BlackJAX's convention) as targets: exact conjugate posterior
and evidence under tempered SMC, the ArviZ groups, and a compiled path (a trace count)."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import norm
from scipy.stats import multivariate_normal

from probinfer import from_logdensity
from probinfer.smc import tempered_smc, tempered_smc_loop

RNG = np.random.default_rng(3)
N_OBS, SIGMA, TAU = 15, 0.7, 1.5
X = RNG.normal(size=(N_OBS, 2)).astype(np.float32)
Y = (0.4 + X @ np.array([1.0, -0.5]) + SIGMA * RNG.normal(size=N_OBS)).astype(np.float32)
DESIGN = np.column_stack([np.ones(N_OBS), X])  # (intercept, slope_0, slope_1)


def _mean(p):
    return p["intercept"] + X @ p["slope"]


def log_prior(p):
    return norm.logpdf(p["intercept"], 0.0, TAU) + norm.logpdf(p["slope"], 0.0, TAU).sum()


def log_lik_pointwise(p):
    return norm.logpdf(Y, _mean(p), SIGMA)


def log_lik(p):
    return log_lik_pointwise(p).sum()


def sample_prior(key):
    k1, k2 = jax.random.split(key)
    return {"intercept": TAU * jax.random.normal(k1), "slope": TAU * jax.random.normal(k2, (2,))}


@pytest.fixture(scope="module")
def exact():
    """Closed-form posterior of (intercept, slope_0, slope_1) and log evidence."""
    prec = np.eye(3) / TAU**2 + DESIGN.T @ DESIGN / SIGMA**2
    cov = np.linalg.inv(prec)
    mean = cov @ DESIGN.T @ Y / SIGMA**2
    log_z = multivariate_normal(
        np.zeros(N_OBS), SIGMA**2 * np.eye(N_OBS) + TAU**2 * DESIGN @ DESIGN.T
    ).logpdf(Y)
    return mean, np.diag(cov), log_z


def test_flat_layout_sites_and_batched_densities():
    t = from_logdensity(
        log_prior, log_lik, sample_prior, log_likelihood_pointwise=log_lik_pointwise
    )
    assert t.dim == 3 and t.num_observations == N_OBS and t.has_pointwise
    assert [(s.name, s.shape, s.offset) for s in t.sites] == [
        ("intercept", (), 0),
        ("slope", (2,), 1),
    ]
    theta = t.sample_prior(jax.random.key(0), 7)
    assert theta.shape == (7, 3)
    p = {"intercept": theta[:, 0], "slope": theta[:, 1:]}
    ref_lp = norm.logpdf(p["intercept"], 0, TAU) + norm.logpdf(p["slope"], 0, TAU).sum(-1)
    ref_pw = norm.logpdf(Y, p["intercept"][:, None] + p["slope"] @ X.T, SIGMA)
    np.testing.assert_allclose(t.log_prior(theta), ref_lp, rtol=1e-5)
    np.testing.assert_allclose(t.log_likelihood(theta, pointwise=True), ref_pw, rtol=1e-5)
    np.testing.assert_allclose(t.log_likelihood(theta), ref_pw.sum(-1), rtol=1e-5)
    c = t.constrain(theta)
    np.testing.assert_array_equal(c["slope"], theta[:, 1:])
    # same functions: equal targets (compiled code keyed on the target is shared)
    assert t == from_logdensity(
        log_prior, log_lik, sample_prior, log_likelihood_pointwise=log_lik_pointwise
    )
    assert hash(t) == hash(
        from_logdensity(
            log_prior, log_lik, sample_prior, log_likelihood_pointwise=log_lik_pointwise
        )
    )


def test_tempered_smc_exact_posterior_and_evidence(exact):
    """Independent vmapped runs; tolerances from their spread (4 SE for the moments and the
    log evidence)."""
    mean, var, log_z = exact
    t = from_logdensity(log_prior, log_lik, sample_prior)
    keys = jax.random.split(jax.random.key(0), 16)
    out = jax.vmap(lambda k: tempered_smc_loop(k, t, 400))(keys)
    assert np.all(np.asarray(out.state.data.lam) == 1.0)
    theta = np.asarray(out.state.values.theta, np.float64)  # (runs, N, 3), equally weighted
    lz = np.nansum(np.asarray(out.summaries.log_evidence_increment_zv, np.float64), axis=1)
    r = len(keys)
    m_runs, v_runs = theta.mean(1), theta.var(1)
    assert np.all(np.abs(m_runs.mean(0) - mean) <= 4 * m_runs.std(0, ddof=1) / np.sqrt(r))
    # the particle variance has an O(1/N) downward bias: allowed explicitly
    assert np.all(
        np.abs(v_runs.mean(0) - var) <= 4 * v_runs.std(0, ddof=1) / np.sqrt(r) + 2e-3 * var
    )
    assert abs(lz.mean() - log_z) <= 4 * lz.std(ddof=1) / np.sqrt(r), (lz.mean(), log_z)


def test_result_groups_with_pointwise_terms_and_loo():
    import arviz as az

    t = from_logdensity(
        log_prior,
        log_lik,
        sample_prior,
        constrain=lambda p: {"intercept": p["intercept"], "slope": p["slope"], "s": SIGMA},
        log_likelihood_pointwise=log_lik_pointwise,
    )
    res = tempered_smc(jax.random.key(2), t, 300, progress=False)
    assert res.log_likelihood["obs"].shape == (300, N_OBS)
    np.testing.assert_allclose(
        res.log_likelihood["obs"].sum(-1), t.log_likelihood(res.particles.values), rtol=1e-4
    )
    assert set(res.samples) == {"intercept", "slope", "s"}
    idata = res.to_arviz()
    assert "log_likelihood" in idata.groups()
    loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo)


def test_without_pointwise_terms():
    t = from_logdensity(log_prior, log_lik, sample_prior)
    assert not t.has_pointwise and t.num_observations == 0
    theta = t.sample_prior(jax.random.key(0), 4)
    with pytest.raises(NotImplementedError, match="log_likelihood_pointwise"):
        t.log_likelihood(theta, pointwise=True)


def test_tempered_smc_leaves_out_the_log_likelihood_group():
    t = from_logdensity(log_prior, log_lik, sample_prior)
    res = tempered_smc(jax.random.key(1), t, 64, progress=False)
    assert res.log_likelihood is None
    assert "log_likelihood" not in res.to_arviz().groups()


def test_plain_densities_stay_on_the_compiled_path(caplog):
    """Timing-free guard: the user's functions are traced a bounded number of times (never
    called on concrete arrays, op by op), however many steps the run takes, and a second
    run of the same target compiles nothing."""
    seen = []

    def counted_prior(p):
        seen.append(isinstance(p["slope"], jax.core.Tracer))
        return log_prior(p)

    def counted_lik(p):
        seen.append(isinstance(p["slope"], jax.core.Tracer))
        return log_lik(p)

    t = from_logdensity(
        counted_prior, counted_lik, sample_prior, log_likelihood_pointwise=log_lik_pointwise
    )
    res = tempered_smc(jax.random.key(0), t, 100, progress=True)
    assert len(res.temperatures) >= 4  # several steps: an eager path would call per step
    first = len(seen)
    assert all(seen) and first <= 8, seen
    with caplog.at_level(logging.WARNING, logger="jax"):
        jax.config.update("jax_log_compiles", True)
        try:
            tempered_smc(jax.random.key(1), t, 100, progress=True)
        finally:
            jax.config.update("jax_log_compiles", False)
    assert len(seen) == first
    compiled = [r.getMessage() for r in caplog.records if "XLA compilation" in r.getMessage()]
    assert compiled == [], compiled


def test_bad_input():
    with pytest.raises(TypeError, match="log_prior"):
        from_logdensity(None, log_lik, sample_prior)
    with pytest.raises(TypeError, match="log_likelihood_pointwise"):
        from_logdensity(log_prior, log_lik, sample_prior, log_likelihood_pointwise=3)
    with pytest.raises(ValueError, match="sample_prior"):
        from_logdensity(log_prior, log_lik, lambda key, n: key)
    with pytest.raises(ValueError, match="log_likelihood must return a scalar"):
        from_logdensity(log_prior, log_lik_pointwise, sample_prior)
    with pytest.raises(ValueError, match="floating-point"):
        from_logdensity(log_prior, log_lik, lambda key: {"k": jnp.arange(3)})
    t = from_logdensity(log_prior, log_lik, sample_prior)
    with pytest.raises(ValueError, match="theta must have shape"):
        t.log_prior(jnp.zeros((4, 2)))
