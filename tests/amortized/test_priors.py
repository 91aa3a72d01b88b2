"""Dataset priors: exact second moments (Monte-Carlo with derived tolerances), exact GP algebra."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from amortized.priors import (
    BayesianLinearPrior,
    GPPrior,
    MLPPrior,
    NumPyroPrior,
    Prior,
    gp_posterior_predictive,
    rbf_kernel,
)


def _z_of_mean(samples: np.ndarray, expected: np.ndarray, var: np.ndarray) -> float:
    """Standardised mean of (samples - expected) with known per-sample variance."""
    return float(np.sum(samples - expected) / np.sqrt(np.sum(var)))


def test_gp_prior_covariance_matches_kernel():
    prior = GPPrior(lengthscale=0.3, outputscale=1.7, noise=0.2)
    x, y = prior.sample(jax.random.key(0), 20_000, 2)
    assert x.shape == (20_000, 2, 1) and y.shape == (20_000, 2) and y.dtype == np.float32
    x64, y64 = x.astype(float), y.astype(float)
    k12 = 1.7 * np.exp(-0.5 * (x64[:, 0, 0] - x64[:, 1, 0]) ** 2 / 0.3**2)
    k11 = 1.7 + 0.2
    # E[y1 y2 | x] = k12, Var[y1 y2 | x] = k11 k22 + k12^2 (Isserlis); same for y1^2: 2 k11^2
    assert abs(_z_of_mean(y64[:, 0] * y64[:, 1], k12, k11**2 + k12**2)) < 5
    assert abs(_z_of_mean(y64[:, 0] ** 2, k11, 2 * k11**2 * np.ones(len(y)))) < 5
    assert abs(_z_of_mean(y64[:, 0], 0.0, k11 * np.ones(len(y)))) < 5


def test_gp_prior_same_key_same_data_and_protocol():
    prior = GPPrior()
    assert isinstance(prior, Prior)
    a = prior.sample(np.array([1, 2], dtype=np.uint32), 3, 7)
    b = prior.sample(np.array([1, 2], dtype=np.uint32), 3, 7)
    c = prior.sample(np.array([1, 3], dtype=np.uint32), 3, 7)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.allclose(a[1], c[1])
    import jax

    d = prior.sample(jax.random.PRNGKey(4), 3, 7)
    e = prior.sample(jax.random.key(4), 3, 7)
    np.testing.assert_array_equal(d[1], e[1])


def test_gp_hyperprior_varies_hyperparameters():
    prior = GPPrior(hyperprior_sd=0.5)
    ls, os_, nz = prior.hyperparameters(np.random.default_rng(0), 10_000)
    # log-normal: log ls ~ N(log 0.25, 0.5^2)
    assert abs(np.mean(np.log(ls)) - np.log(0.25)) < 5 * 0.5 / 100
    assert abs(np.std(np.log(os_)) - 0.5) < 0.02
    x, y = prior.sample(jax.random.key(1), 4, 5)
    assert np.all(np.isfinite(y))


def test_gp_posterior_predictive_matches_dense_formula():
    rng = np.random.default_rng(0)
    xt, xs = rng.uniform(size=(2, 6, 1)), rng.uniform(size=(2, 4, 1))
    yt = rng.normal(size=(2, 6))
    mean, var = gp_posterior_predictive(xt, yt, xs, 0.3, 1.5, 0.1)
    for b in range(2):
        k = rbf_kernel(xt[b], xt[b], 0.3, 1.5) + 0.1 * np.eye(6)
        ks = rbf_kernel(xt[b], xs[b], 0.3, 1.5)
        kss = rbf_kernel(xs[b], xs[b], 0.3, 1.5)
        np.testing.assert_allclose(mean[b], ks.T @ np.linalg.solve(k, yt[b]), rtol=1e-10)
        cov = kss - ks.T @ np.linalg.solve(k, ks)
        np.testing.assert_allclose(var[b], np.diag(cov) + 0.1, rtol=1e-10)
    m0, v0 = gp_posterior_predictive(xt[:, :0], yt[:, :0], xs, 0.3, 1.5, 0.1)
    np.testing.assert_array_equal(m0, 0.0)
    np.testing.assert_allclose(v0, 1.6)


def test_gp_posterior_is_the_conditional_of_the_prior():
    # Monte-Carlo: y_test - mean(y_train) standardised by the predictive sd is N(0, 1)
    prior = GPPrior(lengthscale=0.2, outputscale=1.0, noise=0.05)
    x, y = prior.sample(jax.random.key(3), 4000, 8)
    mean, var = prior.posterior_predictive(x[:, :5], y[:, :5], x[:, 5:])
    z = (y[:, 5:] - mean) / np.sqrt(var)
    n = z[:, 0].size
    assert abs(z[:, 0].mean()) < 5 / np.sqrt(n)
    assert abs(np.mean(z[:, 0] ** 2) - 1.0) < 5 * np.sqrt(2 / n)


def test_bayesian_linear_prior_variance():
    prior = BayesianLinearPrior(x_dim=2, weight_sd=0.7, noise_sd=0.2)
    x, y = prior.sample(jax.random.key(5), 50_000, 3)
    x64, y64 = x.astype(float), y.astype(float)
    var = 0.49 * (np.sum(x64[:, 0] ** 2, axis=-1) + 1.0) + 0.04
    assert abs(_z_of_mean(y64[:, 0] ** 2, var, 2 * var**2)) < 5


def test_mlp_prior_shapes_and_determinism():
    prior = MLPPrior(x_dim=2, hidden=8, layers=2)
    x, y = prior.sample(jax.random.key(0), 5, 11)
    assert x.shape == (5, 11, 2) and y.shape == (5, 11)
    np.testing.assert_array_equal(y, prior.sample(jax.random.key(0), 5, 11)[1])
    assert np.all(np.isfinite(y)) and y.std() > 0.05


def test_numpyro_prior_adapter_matches_linear_prior_moments():
    import numpyro
    import numpyro.distributions as dist

    def model(x):
        w = numpyro.sample("w", dist.Normal(0.0, 0.7))
        b = numpyro.sample("b", dist.Normal(0.0, 0.7))
        numpyro.sample("y", dist.Normal(w * x[:, 0] + b, 0.2))

    prior = NumPyroPrior(model, x_dim=1)
    x, y = prior.sample(jax.random.key(0), 4000, 2)
    assert x.shape == (4000, 2, 1) and y.shape == (4000, 2)
    np.testing.assert_array_equal(y, prior.sample(jax.random.key(0), 4000, 2)[1])
    x64, y64 = x.astype(float), y.astype(float)
    var = 0.49 * (x64[:, 0, 0] ** 2 + 1.0) + 0.04
    assert abs(_z_of_mean(y64[:, 0] ** 2, var, 2 * var**2)) < 5
    # E[y1 y2] = 0.49 (x1 x2 + 1)
    c = 0.49 * (x64[:, 0, 0] * x64[:, 1, 0] + 1.0)
    assert (
        abs(
            _z_of_mean(
                y64[:, 0] * y64[:, 1], c, var * (0.49 * (x64[:, 1, 0] ** 2 + 1) + 0.04) + c**2
            )
        )
        < 5
    )


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: GPPrior(lengthscale=-1.0), "lengthscale"),
        (lambda: GPPrior(noise=float("nan")), "noise"),
        (lambda: GPPrior(x_dim=0), "x_dim"),
        (lambda: GPPrior(hyperprior_sd=-0.1), "hyperprior_sd"),
        (lambda: BayesianLinearPrior(x_dim=0), "x_dim"),
        (lambda: BayesianLinearPrior(noise_sd=-1.0), "noise_sd"),
        (lambda: MLPPrior(hidden=0), "hidden"),
        (lambda: MLPPrior(noise_sd=float("inf")), "noise_sd"),
        (lambda: GPPrior().sample(jax.random.key(0), 0, 3), "n_datasets"),
        (lambda: GPPrior().sample(jax.random.key(0), 2, -1), "n_points"),
    ],
)
def test_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_numpyro_prior_rejects_non_callable():
    with pytest.raises(TypeError, match="model"):
        NumPyroPrior("not a model")


def test_keys_are_jax_random_keys_only():
    from amortized.priors import indexed_key, numpy_rng

    prior = GPPrior()
    for bad in (0, 3.0, np.array([1, 2]), np.zeros(3, dtype=np.uint32), "k"):
        with pytest.raises(TypeError, match="key must be a jax.random key"):
            prior.sample(bad, 2, 3)
    # typed and legacy keys with the same words give the same data
    typed, legacy = indexed_key(7, 11), np.array([7, 11], dtype=np.uint32)
    np.testing.assert_array_equal(jax.random.key_data(typed), legacy)
    np.testing.assert_array_equal(prior.sample(typed, 2, 5)[1], prior.sample(legacy, 2, 5)[1])
    np.testing.assert_array_equal(jax.random.key_data(indexed_key(0, 5)), jax.random.PRNGKey(5))
    # the numpy stream is the one seeded by the key's words
    np.testing.assert_array_equal(
        numpy_rng(typed).standard_normal(4), np.random.default_rng([7, 11]).standard_normal(4)
    )
