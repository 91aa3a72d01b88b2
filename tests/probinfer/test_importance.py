"""Importance resampling against closed-form Gaussian answers: the evidence, the ESS of
the weights and the resampled moments, over independent replicates (a batch of identical
problems), with tolerances of 4 Monte-Carlo standard errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probinfer.distributions import GaussianMixture
from probinfer.importance import importance_resample

MU, S, SIGMA_Q, LOG_C = 1.0, 0.5, 1.0, 1.7  # target c N(MU, S^2), proposal N(0, SIGMA_Q^2)
B, M, NUM = 40, 4000, 1000


def _proposal(b=B):
    tril = jnp.full((b, 1, 1, 1), SIGMA_Q)
    return GaussianMixture(jnp.zeros((b, 1, 1)), scale_trils=tril, logits=jnp.zeros((b, 1)))


def _log_target(theta):  # (M, B, 1) -> (M, B)
    x = theta[..., 0]
    return LOG_C - 0.5 * ((x - MU) / S) ** 2 - jnp.log(S * jnp.sqrt(2 * jnp.pi))


def _se(v):
    v = np.asarray(v, np.float64)
    return v.std(ddof=1) / np.sqrt(v.size)


def test_evidence_ess_and_moments_match_the_closed_forms():
    res = importance_resample(jax.random.key(0), _proposal(), _log_target, NUM, M)
    assert res.draws.shape == (NUM, B, 1) and res.log_weights.shape == (M, B)
    assert res.proposals.shape == (M, B, 1) and res.ess.shape == res.log_evidence.shape == (B,)
    np.testing.assert_allclose(np.exp(res.log_weights).sum(0), 1.0, rtol=1e-5)
    # evidence: E[Z_hat] = c (unbiased on the natural scale)
    ratio = np.exp(np.asarray(res.log_evidence, np.float64) - LOG_C)
    assert abs(ratio.mean() - 1) <= 4 * _se(ratio)
    # ESS / M -> 1 / int p^2 / q for p = N(MU, S^2), q = N(0, SIGMA_Q^2) (Gaussian integral)
    a = 1 / S**2 - 1 / (2 * SIGMA_Q**2)
    chi = SIGMA_Q / (np.sqrt(2 * np.pi) * S**2) * np.sqrt(np.pi / a)
    chi *= np.exp(MU**2 / (S**4 * a) - MU**2 / S**2)
    ess = np.asarray(res.ess) / M
    assert abs(ess.mean() - 1 / chi) <= 4 * _se(ess) + 2e-3, (ess.mean(), 1 / chi)
    # resampled draws: the target's mean and variance
    d = np.asarray(res.draws[..., 0], np.float64)
    means, variances = d.mean(0), d.var(0, ddof=1)
    assert abs(means.mean() - MU) <= 4 * _se(means)
    assert abs(variances.mean() - S**2) <= 4 * _se(variances) + 2e-3 * S**2


def test_same_key_same_draws_and_any_batch_shape():
    prop = GaussianMixture(jnp.array([[0.0], [1.0]]), jnp.full((2, 1, 1), 1.0), logits=jnp.zeros(2))
    a = importance_resample(jax.random.key(1), prop, lambda t: -0.5 * t[..., 0] ** 2, 50, 200)
    b = importance_resample(jax.random.key(1), prop, lambda t: -0.5 * t[..., 0] ** 2, 50, 200)
    assert a.draws.shape == (50, 1) and a.ess.shape == ()
    np.testing.assert_array_equal(np.asarray(a.draws), np.asarray(b.draws))
    grid = GaussianMixture(
        jnp.zeros((2, 3, 1, 2)), jnp.broadcast_to(jnp.eye(2), (2, 3, 1, 2, 2)), weights=jnp.ones(1)
    )
    r = importance_resample(jax.random.key(2), grid, lambda t: -jnp.sum(t**2, -1), 7)
    assert r.draws.shape == (7, 2, 3, 2) and r.log_weights.shape == (70, 2, 3)


def test_bad_input():
    prop = _proposal(2)
    with pytest.raises(ValueError, match="num must"):
        importance_resample(jax.random.key(0), prop, _log_target, 0)
    with pytest.raises(ValueError, match="num_proposals"):
        importance_resample(jax.random.key(0), prop, _log_target, 5, 2.5)
    with pytest.raises(ValueError, match="scheme"):
        importance_resample(jax.random.key(0), prop, _log_target, 5, scheme="best")
    with pytest.raises(ValueError, match="log_target must return shape"):
        importance_resample(jax.random.key(0), prop, lambda t: t, 5)
    with pytest.raises(ValueError, match="NaN"):
        importance_resample(jax.random.key(0), prop, lambda t: t[..., 0] * jnp.nan, 5)
    with pytest.raises(ValueError, match="does not cover"):
        importance_resample(jax.random.key(0), prop, lambda t: t[..., 0] - jnp.inf, 5)
