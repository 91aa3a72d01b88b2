"""Exact posteriors of the DT tasks, each checked against an independent computation.

* GMM prior + linear-Gaussian likelihood: brute-force quadrature of prior x likelihood on a 2-D
  grid (weights, means, covariances, density);
* Inverse-Gamma variance: quadrature in sigma^2 with scipy's own ``invgamma``/``norm`` densities;
* GMM predict + update with one component: the Kalman filter of ``probinfer.lgssm``;
* GMM fit of log sigma^2: KL(IG || fit) by quadrature, and the location-family shift;
* batched float64 GMM density and draws (used by the evaluation): scipy's
  ``multivariate_normal`` and the mixture moments (5 standard errors).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from amortized.exact import (
    gmm_draws,
    gmm_linear_predict,
    gmm_log_density,
    inverse_gamma_log_gmm,
    inverse_gamma_posterior,
    kl_monte_carlo,
    linear_gaussian_posterior,
    log_inverse_gamma_log_prob,
)
from probinfer.lgssm import LinearGaussianSSM, kalman_filter

W = np.array([0.5, 0.3, 0.2])
MU = np.array([[-1.5, 0.5], [1.0, 1.0], [0.5, -2.0]])
COV = np.array([[[0.6, 0.2], [0.2, 0.5]], [[0.3, -0.1], [-0.1, 0.8]], [[1.0, 0.0], [0.0, 0.4]]])


def _grid_posterior(x, y, s):
    g = np.linspace(-7, 7, 701)
    t1, t2 = np.meshgrid(g, g, indexing="ij")
    pts = np.stack([t1, t2], -1).reshape(-1, 2)
    comp = np.stack(
        [stats.multivariate_normal(MU[k], COV[k]).pdf(pts) * W[k] for k in range(3)], -1
    )
    lik = np.prod(stats.norm(pts @ x.T, s).pdf(y), axis=-1)
    joint = comp * lik[:, None]
    z = joint.sum()
    post = joint.sum(-1) / z
    mean = post @ pts
    cov = (pts - mean).T @ ((pts - mean) * post[:, None])
    return pts, joint.sum(0) / z, mean, cov, post / (g[1] - g[0]) ** 2


def test_linear_gaussian_posterior_matches_quadrature():
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, size=(3, 2))
    y = x @ np.array([0.8, 0.2]) + 0.5 * rng.standard_normal(3)
    w, mu, cov = linear_gaussian_posterior(W, MU, COV, x, y, 0.5)
    pts, w_q, mean_q, cov_q, dens_q = _grid_posterior(x, y, 0.5)
    np.testing.assert_allclose(w, w_q, atol=1e-6)
    mix_mean = w @ mu
    centred = mu - mix_mean
    mix_cov = np.einsum("k,kij->ij", w, cov + centred[:, :, None] * centred[:, None, :])
    np.testing.assert_allclose(mix_mean, mean_q, atol=1e-6)
    np.testing.assert_allclose(mix_cov, cov_q, atol=1e-6)
    dens = sum(w[k] * stats.multivariate_normal(mu[k], cov[k]).pdf(pts) for k in range(3))
    top = dens_q > 1e-3 * dens_q.max()
    np.testing.assert_allclose(dens[top], dens_q[top], rtol=1e-5)


def test_natural_update_with_the_linear_sites_is_the_quadrature_posterior():
    """The DT's natural-parameter decoder, given the exact Gaussian sites of the data
    (``sum x x^T / s^2``, ``sum x y / s^2``), reproduces the posterior by quadrature."""
    import torch

    from amortized.dt_model import natural_update

    rng = np.random.default_rng(3)
    x = rng.uniform(-2, 2, size=(5, 2))
    s = 0.7
    y = x @ np.array([0.8, -1.2]) + s * rng.standard_normal(5)
    pts, w_grid, mean_grid, cov_grid, dens = _grid_posterior(x, y, s)
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    lg, mu, tril = natural_update(
        t(np.log(W)), t(MU), t(np.linalg.cholesky(COV)), t(x.T @ x / s**2), t(x.T @ y / s**2)
    )
    w = torch.softmax(lg, -1).numpy()
    np.testing.assert_allclose(w, w_grid, atol=1e-4)
    mu, tril = mu.numpy(), tril.numpy()
    assert np.all(np.triu(tril, 1) == 0) and np.all(np.diagonal(tril, axis1=-2, axis2=-1) > 0)
    cov = tril @ np.swapaxes(tril, -1, -2)
    mean = w @ mu
    total = np.einsum("k,kij->ij", w, cov + np.einsum("ki,kj->kij", mu - mean, mu - mean))
    np.testing.assert_allclose(mean, mean_grid, atol=1e-4)
    np.testing.assert_allclose(total, cov_grid, atol=1e-4)
    # zero sites return the prior exactly; a non-PSD increment is lifted, never widening
    z = natural_update(
        t(np.log(W)), t(MU), t(np.linalg.cholesky(COV)), t(np.zeros((2, 2))), t(np.zeros(2))
    )
    np.testing.assert_array_equal(z[1].numpy(), MU)
    np.testing.assert_array_equal(z[2].numpy(), np.linalg.cholesky(COV))
    neg = natural_update(
        t(np.log(W)), t(MU), t(np.linalg.cholesky(COV)), -t(np.eye(2)), t(np.zeros(2))
    )
    cov_neg = (neg[2] @ neg[2].transpose(-1, -2)).numpy()
    assert np.all(np.linalg.eigvalsh(COV - cov_neg) > -1e-12)


def test_linear_gaussian_posterior_batched_masked_and_empty():
    rng = np.random.default_rng(1)
    x = rng.uniform(-2, 2, size=(2, 5, 2))
    y = rng.standard_normal((2, 5))
    mask = np.array([[True] * 5, [True, True, False, False, False]])
    w, mu, cov = linear_gaussian_posterior(
        np.stack([W, W]), np.stack([MU, MU]), np.stack([COV, COV]), x, y, 0.5, mask=mask
    )
    w1, mu1, cov1 = linear_gaussian_posterior(W, MU, COV, x[1, :2], y[1, :2], 0.5)
    np.testing.assert_allclose(w[1], w1, rtol=1e-10)
    np.testing.assert_allclose(mu[1], mu1, rtol=1e-10)
    np.testing.assert_allclose(cov[1], cov1, rtol=1e-10)
    w0, mu0, cov0 = linear_gaussian_posterior(W, MU, COV, np.zeros((0, 2)), np.zeros(0), 0.5)
    np.testing.assert_allclose(w0, W, rtol=1e-12)
    np.testing.assert_allclose(mu0, MU, rtol=1e-12)
    np.testing.assert_allclose(cov0, COV, rtol=1e-12)
    with pytest.raises(ValueError, match="y"):
        linear_gaussian_posterior(W, MU, COV, x[0], y[0] * np.nan, 0.5)
    with pytest.raises(ValueError, match="x"):
        linear_gaussian_posterior(W, MU, COV, x[0, :, :1], y[0], 0.5)


def test_gmm_predict_and_update_with_one_component_is_the_kalman_filter():
    A = np.array([[0.9, -0.2], [0.2, 0.9]])
    Q = np.array([[0.15, 0.02], [0.02, 0.1]])
    C = np.array([[1.0, 0.5]])
    ssm = LinearGaussianSSM(A=A, Q=Q, C=C, R=0.25, m0=[0.5, -0.5], P0=np.eye(2))
    rng = np.random.default_rng(2)
    ys = rng.standard_normal((15, 1))
    kf = kalman_filter(ssm, ys)
    w, mu, cov = np.ones(1), np.array([[0.5, -0.5]]), np.eye(2)[None]
    for t in range(15):
        if t > 0:
            w, mu, cov = gmm_linear_predict(w, mu, cov, A, Q)
        w, mu, cov = linear_gaussian_posterior(w, mu, cov, C, ys[t], 0.5)
        np.testing.assert_allclose(mu[0], kf.means[t], atol=1e-10)
        np.testing.assert_allclose(cov[0], kf.covariances[t], atol=1e-10)


def test_gmm_predict_moments():
    A = np.array([[0.9, -0.2], [0.2, 0.9]])
    Q = 0.1 * np.eye(2)
    w, mu, cov = gmm_linear_predict(W, MU, COV, A, Q)
    np.testing.assert_array_equal(w, W)
    # mixture moments of A theta + e from those of theta
    m0 = W @ MU
    c0 = np.einsum("k,kij->ij", W, COV + (MU - m0)[:, :, None] * (MU - m0)[:, None, :])
    m1 = w @ mu
    c1 = np.einsum("k,kij->ij", w, cov + (mu - m1)[:, :, None] * (mu - m1)[:, None, :])
    np.testing.assert_allclose(m1, A @ m0, atol=1e-12)
    np.testing.assert_allclose(c1, A @ c0 @ A.T + Q, atol=1e-12)


def test_inverse_gamma_posterior_matches_quadrature():
    rng = np.random.default_rng(3)
    a, b = 3.0, 2.0
    y = 1.3 * rng.standard_normal(7)
    a1, b1 = inverse_gamma_posterior(a, b, y)
    s = np.exp(np.linspace(-8, 6, 400001))
    unnorm = stats.invgamma(a, scale=b).pdf(s) * np.prod(
        stats.norm(0, np.sqrt(s)[:, None]).pdf(y), -1
    )
    z = np.trapezoid(unnorm, s)
    mean_q = np.trapezoid(s * unnorm, s) / z
    var_q = np.trapezoid((s - mean_q) ** 2 * unnorm, s) / z
    np.testing.assert_allclose(mean_q, b1 / (a1 - 1), rtol=1e-6)
    np.testing.assert_allclose(var_q, b1**2 / ((a1 - 1) ** 2 * (a1 - 2)), rtol=1e-5)
    # density of log sigma^2: scipy's invgamma density times the Jacobian sigma^2
    zz = np.linspace(-3, 3, 7)
    np.testing.assert_allclose(
        log_inverse_gamma_log_prob(zz, a1, b1),
        stats.invgamma(a1, scale=b1).logpdf(np.exp(zz)) + zz,
        rtol=1e-10,
    )


@pytest.mark.parametrize("a", [2.0, 6.5])
def test_inverse_gamma_log_gmm_fit(a):
    w, mu, sd = inverse_gamma_log_gmm(a, 1.0, 5)
    z = np.linspace(-10, 8, 100001)
    lp = log_inverse_gamma_log_prob(z, a, 1.0)
    q = np.sum(w * stats.norm(mu, sd).pdf(z[:, None]), -1)
    kl = np.trapezoid(np.exp(lp) * (lp - np.log(q)), z)
    assert 0 <= kl < 5e-4
    w3, mu3, sd3 = inverse_gamma_log_gmm(a, 3.0, 5)
    np.testing.assert_allclose(w3, w, rtol=1e-12)
    np.testing.assert_allclose(mu3, mu + np.log(3.0), rtol=1e-12)
    np.testing.assert_allclose(sd3, sd, rtol=1e-12)
    with pytest.raises(ValueError, match="a and b"):
        inverse_gamma_log_gmm(-1.0, 1.0)


def test_kl_monte_carlo_of_two_normals():
    # KL(N(0,1) || N(1, 2^2)) = log 2 + (1 + 1) / 8 - 1/2
    rng = np.random.default_rng(4)
    x = rng.standard_normal(20000)
    kl, se = kl_monte_carlo(stats.norm(0, 1).logpdf(x), stats.norm(1, 2).logpdf(x))
    exact = np.log(2) + 2 / 8 - 0.5
    assert abs(kl - exact) < 4 * se


def test_gmm_log_density_and_draws_batched_with_zero_weights():
    w = np.stack([W, np.array([0.6, 0.4, 0.0])])
    mu, tril = np.stack([MU, MU[::-1]]), np.linalg.cholesky(np.stack([COV, COV[::-1]]))
    x = np.random.default_rng(0).normal(size=(7, 2, 2))
    ref = np.zeros((7, 2))
    for b in range(2):
        ref[:, b] = np.log(
            sum(
                w[b, k]
                * stats.multivariate_normal(mu[b, k], tril[b, k] @ tril[b, k].T).pdf(x[:, b])
                for k in range(3)
            )
        )
    np.testing.assert_allclose(gmm_log_density(x, w, mu, tril), ref, rtol=1e-10)
    n = 40_000
    d = gmm_draws(np.random.default_rng(1), n, w, mu, tril)
    assert d.shape == (n, 2, 2)
    for b in range(2):
        cov_k = tril[b] @ np.swapaxes(tril[b], -1, -2)
        mean = w[b] @ mu[b]
        var = w[b] @ (np.diagonal(cov_k, 0, -2, -1) + mu[b] ** 2) - mean**2
        se = np.sqrt(var / n)
        assert np.all(np.abs(d[:, b].mean(0) - mean) < 5 * se)
