"""Pyro targets with gradients: exact gradients under jit/grad/vmap, torch.func.vmap for a
model that does not broadcast over particles, the one warning for one that vmap cannot
batch, and tempered SMC with HMC on a conjugate Pyro model against its exact posterior."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from probinfer.smc import tempered_smc
from probinfer.targets import from_numpyro, from_pyro

torch = pytest.importorskip("torch")
pyro = pytest.importorskip("pyro")
pdist = pytest.importorskip("pyro.distributions")

RNG = np.random.default_rng(0)
X = RNG.normal(size=(40, 2)).astype(np.float32)
Y = (X @ np.array([1.0, -0.5]) + 0.5 * RNG.normal(size=40)).astype(np.float32)
SIGMA = 0.5  # known noise: b | y is Gaussian (conjugate)


def pyro_conjugate(X, y):
    b = pyro.sample("b", pdist.Normal(0.0, 1.0).expand([2]).to_event(1))
    with pyro.plate("n", X.shape[0], dim=-1):
        pyro.sample("y", pdist.Normal((X * b).sum(-1), SIGMA), obs=y)


def pyro_scale(X, y):  # a constrained latent: the Jacobian enters the gradient
    b = pyro.sample("b", pdist.Normal(0.0, 1.0).expand([2]).to_event(1))
    s = pyro.sample("s", pdist.HalfNormal(1.0))
    with pyro.plate("n", X.shape[0], dim=-1):
        pyro.sample("y", pdist.Normal((X * b).sum(-1), s), obs=y)


def pyro_matmul(X, y):  # X @ b does not broadcast over a leading particle axis
    b = pyro.sample("b", pdist.Normal(0.0, 1.0).expand([2]).to_event(1))
    s = pyro.sample("s", pdist.HalfNormal(1.0))
    with pyro.plate("n", X.shape[0]):
        pyro.sample("y", pdist.Normal(X @ b, s), obs=y)


def pyro_first_particle(X, y):  # broadcasts silently but wrongly: every particle uses row 0
    b = pyro.sample("b", pdist.Normal(0.0, 1.0).expand([2]).to_event(1))
    s = pyro.sample("s", pdist.HalfNormal(1.0))
    b0 = b.reshape(-1)[:2]
    with pyro.plate("n", X.shape[0], dim=-1):
        pyro.sample("y", pdist.Normal((X * b0).sum(-1), s), obs=y)


def numpyro_scale(X, y):
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    with numpyro.plate("n", X.shape[0]):
        numpyro.sample("y", dist.Normal(jnp.sum(X * b, -1), s), obs=y)


def _tensors():
    return torch.tensor(X), torch.tensor(Y)


def _exact_posterior():
    prec = np.eye(2) + X.T.astype(np.float64) @ X / SIGMA**2
    cov = np.linalg.inv(prec)
    return cov @ X.T.astype(np.float64) @ Y / SIGMA**2, cov


def test_gradients_match_closed_form_under_jit_and_vmap():
    t = from_pyro(pyro_conjugate, *_tensors())
    assert t.has_gradients and t.backend == "torch"
    theta = jax.random.normal(jax.random.key(0), (6, 2))
    # closed form: grad log prior = -b, grad log lik = X^T (y - X b) / sigma^2 per particle
    th = np.asarray(theta, np.float64)
    g_prior = -th
    g_lik = (Y[None, :] - th @ X.T) @ X / SIGMA**2
    lik_exact = -0.5 * np.sum((Y[None, :] - th @ X.T) ** 2, -1) / SIGMA**2 - 40 * np.log(
        SIGMA * np.sqrt(2 * np.pi)
    )

    def total(th, lam):
        return jnp.sum(t.log_prior(th) + lam * t.log_likelihood(th))

    for grad in (jax.grad(total), jax.jit(jax.grad(total))):
        np.testing.assert_allclose(grad(theta, 0.3), g_prior + 0.3 * g_lik, rtol=2e-4, atol=2e-3)
    value, g = jax.jit(jax.value_and_grad(lambda th: t.log_likelihood(th).sum()))(theta)
    np.testing.assert_allclose(value, lik_exact.sum(), rtol=1e-5)
    np.testing.assert_allclose(g, g_lik, rtol=2e-4, atol=2e-3)
    # one particle at a time under vmap (as NUTS evaluates it)
    per = jax.jit(jax.vmap(jax.grad(lambda z: t.log_prior(z[None])[0])))(theta)
    np.testing.assert_allclose(per, g_prior, rtol=1e-6, atol=1e-6)


def test_gradients_match_numpyro_with_jacobian():
    tp = from_pyro(pyro_scale, *_tensors())
    tn = from_numpyro(numpyro_scale, X, Y)
    assert tn.has_gradients
    theta = tn.sample_prior(jax.random.key(1), 9)
    for fn in ("log_prior", "log_likelihood"):

        def summed(target, fn=fn):
            return jax.jit(jax.value_and_grad(lambda th: getattr(target, fn)(th).sum()))

        (vp, gp), (vn, gn) = summed(tp)(theta), summed(tn)(theta)
        np.testing.assert_allclose(vp, vn, rtol=1e-5)
        np.testing.assert_allclose(gp, gn, rtol=1e-4, atol=1e-3)


def pyro_item(X, y):  # .item() on a latent: neither the plate nor torch.func.vmap batch it
    b = pyro.sample("b", pdist.Normal(0.0, 1.0).expand([2]).to_event(1))
    s = pyro.sample("s", pdist.HalfNormal(1.0))
    scale = s if b[..., 0].item() < 100.0 else 2 * s  # always s, but data-dependent
    with pyro.plate("n", X.shape[0]):
        pyro.sample("y", pdist.Normal(X @ b, scale), obs=y)


@pytest.mark.parametrize("model", [pyro_matmul, pyro_first_particle])
def test_non_broadcasting_model_runs_vectorised_through_vmap(model):
    """The usual way (``X @ b``), and a model that broadcasts wrongly, are evaluated in one
    ``torch.func.vmap`` pass (no loop, no warning) and agree with the per-particle loop."""
    reference = from_pyro(pyro_scale, *_tensors())
    theta = reference.sample_prior(jax.random.key(2), 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = from_pyro(model, *_tensors())
        lp, ll = t.log_prior(theta), t.log_likelihood(theta)
        pw = t.log_likelihood(theta, pointwise=True)
        g = jax.jit(jax.grad(lambda th: jnp.sum(t.log_likelihood(th))))(theta)
        t.sample_prior(jax.random.key(3), 4)
    assert t.evaluation == "vmap"
    loop = from_pyro(model, *_tensors())
    loop._mode[0] = "loop"  # the per-particle evaluation, for comparison
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(lp, loop.log_prior(theta), rtol=1e-6)
        np.testing.assert_allclose(pw, loop.log_likelihood(theta, pointwise=True), rtol=1e-6)
        g_loop = jax.grad(lambda th: jnp.sum(loop.log_likelihood(th)))(theta)
    np.testing.assert_allclose(g, g_loop, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ll, reference.log_likelihood(theta), rtol=1e-5)
    g_ref = jax.grad(lambda th: jnp.sum(reference.log_likelihood(th)))(theta)
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-3)


def test_model_that_vmap_cannot_batch_warns_once_and_stays_correct():
    reference = from_pyro(pyro_scale, *_tensors())
    theta = reference.sample_prior(jax.random.key(2), 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = from_pyro(pyro_item, *_tensors())
        lp, ll = t.log_prior(theta), t.log_likelihood(theta)
        g = jax.jit(jax.grad(lambda th: jnp.sum(t.log_likelihood(th))))(theta)
        t.sample_prior(jax.random.key(3), 4)
    assert t.evaluation == "loop"
    mine = [w for w in caught if "does not vectorise" in str(w.message)]
    assert len(mine) == 1, [str(w.message) for w in caught]
    msg = str(mine[0].message)
    assert "pyro_item" in msg and "(X * beta).sum(-1)" in msg and "explicit negative dim" in msg
    # the shapes the latents have inside the particle plate (the idiom that works with them)
    assert "b: (N, 1, 2)" in msg and "s: (N, 1)" in msg and ".item()" in msg
    np.testing.assert_allclose(lp, reference.log_prior(theta), rtol=1e-5)
    np.testing.assert_allclose(ll, reference.log_likelihood(theta), rtol=1e-5)
    g_ref = jax.grad(lambda th: jnp.sum(reference.log_likelihood(th)))(theta)
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-3)


def test_vectorised_model_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = from_pyro(pyro_scale, *_tensors())
        theta = t.sample_prior(jax.random.key(0), 8)
        jax.grad(lambda th: jnp.sum(t.log_prior(th) + t.log_likelihood(th)))(theta)
    assert t.evaluation == "plate"


def test_tempered_smc_hmc_on_pyro_matches_exact_posterior():
    """R independent runs; the mean of the run means is compared with the exact posterior
    mean, with the standard error from the spread of the run means (resampling correlates
    particles within a run, so the particles' own spread would understate it)."""
    t = from_pyro(pyro_conjugate, *_tensors())
    mean, cov = _exact_posterior()
    runs, n = 8, 300
    means, variances = [], []
    for r in range(runs):
        res = tempered_smc(
            jax.random.key(100 + r), t, n, kernel="hmc", num_mcmc_steps=3, progress=False
        )
        b = np.asarray(res.samples["b"], np.float64)
        means.append(b.mean(0))
        variances.append(b.var(0, ddof=1))
        assert res.acceptance_rates[-1] > 0.5
    means, variances = np.asarray(means), np.asarray(variances)
    se = means.std(0, ddof=1) / np.sqrt(runs)
    # the SE is not degenerate: at least that of n/10 independent posterior draws ...
    assert np.all(se < np.sqrt(np.diag(cov) / (n / 10) / runs))
    # ... and the posterior mean is matched within 5 standard errors
    assert np.all(np.abs(means.mean(0) - mean) < 5 * se), (means.mean(0), mean, se)
    # posterior variances within 5 SE of the exact ones
    se_var = variances.std(0, ddof=1) / np.sqrt(runs)
    assert np.all(np.abs(variances.mean(0) - np.diag(cov)) < 5 * se_var)
