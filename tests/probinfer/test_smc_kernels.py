"""Each MCMC move of tempered SMC (RWMH, HMC, NUTS) leaves its tempered target invariant.

The target is ``pi_lambda(theta) ∝ p(theta) L(theta)^lambda`` with a Gaussian prior and a
Gaussian likelihood in ``theta``, so ``pi_lambda`` is Gaussian with a closed-form mean and
covariance (computed here from the precisions, independently of the kernels). Many chains
start from exact draws of ``pi_lambda``; after the move their marginals must still be
those of ``pi_lambda``: means and variances within 5 standard errors and a KS test per
coordinate (and along the principal axes, which catches a wrong correlation). A negative
control moves the same draws with a kernel for another temperature and checks that the
same test rejects it, so the test can fail.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from probinfer.smc.kernels import Densities, hmc_move, nuts_move, rwmh_move

M0 = np.array([0.5, -1.0])
S0 = np.array([[2.0, 0.6], [0.6, 1.0]])  # prior covariance
C = np.array([1.5, 0.5])
P = np.array([[4.0, -1.5], [-1.5, 2.0]])  # likelihood precision
LAM = 0.6
NUM_CHAINS = 10_000
KS_ALPHA = 1e-3


def _densities() -> Densities:
    s0_inv, m0, c, p = (jnp.asarray(a, jnp.float32) for a in (np.linalg.inv(S0), M0, C, P))

    def log_prior(th):
        r = th - m0
        return -0.5 * jnp.einsum("nd,de,ne->n", r, s0_inv, r)

    def log_lik(th):
        r = th - c
        return -0.5 * jnp.einsum("nd,de,ne->n", r, p, r)

    return Densities(log_prior, log_lik)


def _exact(lam: float):
    """Mean and covariance of the Gaussian ``pi_lam`` (precisions add)."""
    prec = np.linalg.inv(S0) + lam * P
    cov = np.linalg.inv(prec)
    return cov @ (np.linalg.solve(S0, M0) + lam * P @ C), cov


def _exact_draws(key, lam: float, n: int):
    mean, cov = _exact(lam)
    z = np.asarray(jax.random.normal(key, (n, 2)), np.float64)
    return jnp.asarray(mean + z @ np.linalg.cholesky(cov).T, jnp.float32)


def _invariance_failures(theta, lam: float) -> list[str]:
    """What differs between the chains' marginals and ``pi_lam``'s (empty if nothing)."""
    mean, cov = _exact(lam)
    x = np.asarray(theta, np.float64)
    n = x.shape[0]
    eigval, eigvec = np.linalg.eigh(cov)
    fails = []
    # coordinates and principal axes: projections a^T theta ~ N(a^T mean, a^T cov a)
    for name, a in [("x0", [1, 0]), ("x1", [0, 1]), ("pc0", eigvec[:, 0]), ("pc1", eigvec[:, 1])]:
        a = np.asarray(a, np.float64)
        proj, m, v = x @ a, a @ mean, a @ cov @ a
        se_mean = np.sqrt(v / n)
        se_var = v * np.sqrt(2.0 / (n - 1))  # Gaussian: Var(s^2) = 2 v^2 / (n - 1)
        if abs(proj.mean() - m) > 5 * se_mean:
            fails.append(f"{name} mean {proj.mean():.4f} vs {m:.4f} (SE {se_mean:.4f})")
        if abs(proj.var(ddof=1) - v) > 5 * se_var:
            fails.append(f"{name} variance {proj.var(ddof=1):.4f} vs {v:.4f} (SE {se_var:.4f})")
        p_value = stats.kstest(proj, stats.norm(m, np.sqrt(v)).cdf).pvalue
        if p_value < KS_ALPHA:
            fails.append(f"{name} KS p-value {p_value:.2e}")
    return fails


# (kernel, tuning): a fine and a coarse setting each; the coarse ones reject often, so the
# Metropolis-Hastings correction is what keeps pi_lambda invariant
SETTINGS = {
    "rwmh": ("rwmh", dict(scale=1.0, num_steps=5)),
    "rwmh-coarse": ("rwmh", dict(scale=3.0, num_steps=5)),
    "hmc": ("hmc", dict(step_size=0.12, num_steps=3, num_leapfrog=10)),
    "hmc-coarse": ("hmc", dict(step_size=0.75, num_steps=3, num_leapfrog=2)),
    "nuts": ("nuts", dict(step_size=0.4, num_steps=2, max_tree_depth=5)),
    "nuts-coarse": ("nuts", dict(step_size=1.6, num_steps=2, max_tree_depth=5)),
}
MOVES = {"rwmh": rwmh_move, "hmc": hmc_move, "nuts": nuts_move}


def _move(setting: str, key, theta, lam: float):
    kernel, tuning = SETTINGS[setting]
    dens = _densities()
    lp, ll = dens.log_prior(theta), dens.log_lik(theta)
    return MOVES[kernel](key, theta, lp, ll, lam, dens, **tuning)


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_move_leaves_tempered_target_invariant(setting):
    theta0 = _exact_draws(jax.random.key(0), LAM, NUM_CHAINS)
    assert _invariance_failures(theta0, LAM) == []  # the exact draws pass
    theta, lp, ll, acc = jax.jit(_move, static_argnums=0)(setting, jax.random.key(1), theta0, LAM)
    # the move moves (a kernel that never moves would be trivially invariant) ...
    assert 0.1 < float(acc) <= 1.0
    moved = np.mean(np.any(np.asarray(theta) != np.asarray(theta0), axis=1))
    assert moved > 0.3
    # ... the carried log densities are those of the returned particles ...
    dens = _densities()
    np.testing.assert_allclose(lp, dens.log_prior(theta), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ll, dens.log_lik(theta), rtol=1e-4, atol=1e-4)
    # ... and pi_lambda is preserved
    assert _invariance_failures(theta, LAM) == []


@pytest.mark.parametrize("setting", ["rwmh", "hmc", "nuts"])
def test_invariance_check_rejects_the_wrong_temperature(setting):
    """Negative control: a move for pi_{2 lambda} applied to draws of pi_lambda changes
    the distribution, and the invariance check above detects it."""
    theta0 = _exact_draws(jax.random.key(0), LAM, NUM_CHAINS)
    theta, *_ = jax.jit(_move, static_argnums=0)(setting, jax.random.key(1), theta0, 2 * LAM)
    assert _invariance_failures(theta, LAM) != []
