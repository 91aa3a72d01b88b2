"""Tests for probinfer.distributions.weighted_empirical.WeightedEmpirical (exact weighted sums)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probinfer.distributions.weighted_empirical import WeightedEmpirical

RNG = np.random.default_rng(42)
N = 64
VALUES = RNG.normal(size=N).astype(np.float32)
LOGW = (RNG.normal(size=N) * 2.0).astype(np.float32)


def weights64(lw):
    lw = np.asarray(lw, dtype=np.float64)
    w = np.exp(lw - lw.max())
    return w / w.sum()


def test_moments_equal_exact_weighted_sums():
    d = WeightedEmpirical(jnp.asarray(VALUES), jnp.asarray(LOGW))
    w = weights64(LOGW)
    mean = w @ VALUES
    np.testing.assert_allclose(d.mean, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d.variance, w @ (VALUES - mean) ** 2, rtol=1e-5)
    np.testing.assert_allclose(d.expectation(jnp.sin), w @ np.sin(VALUES), atol=1e-6)
    np.testing.assert_allclose(d.ess, 1.0 / np.sum(w**2), rtol=1e-5)
    np.testing.assert_allclose(d.normalized_weights, w, rtol=1e-5, atol=1e-7)


def test_multivariate_moments_and_shapes():
    vals = RNG.normal(size=(N, 2, 3)).astype(np.float32)
    d = WeightedEmpirical(jnp.asarray(vals), jnp.asarray(LOGW))
    assert d.batch_shape == () and d.event_shape == (2, 3)
    w = weights64(LOGW)
    mean = np.einsum("i,ijk->jk", w, vals)
    np.testing.assert_allclose(d.mean, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        d.variance, np.einsum("i,ijk->jk", w, (vals - mean) ** 2), rtol=1e-5, atol=1e-7
    )
    assert d.sample(jax.random.key(0), (4, 5)).shape == (4, 5, 2, 3)
    # atoms are matched on the whole event
    lp = d.log_prob(jnp.asarray(np.stack([vals[3], vals[3] + 1.0])))
    np.testing.assert_allclose(lp[0], np.log(w[3]), rtol=1e-5)
    assert lp[1] == -np.inf


def test_log_prob_is_total_mass_of_equal_atoms():
    vals = jnp.array([3.0, 1.0, 2.0, 2.0, 1.0])
    w = np.array([0.1, 0.2, 0.3, 0.15, 0.25])
    d = WeightedEmpirical(vals, jnp.log(jnp.asarray(w)) + 7.0)  # unnormalised on purpose
    lp = d.log_prob(jnp.array([1.0, 2.0, 3.0, 2.5]))
    np.testing.assert_allclose(np.exp(lp[:3]), [0.45, 0.45, 0.1], rtol=1e-5)
    assert lp[3] == -np.inf


def test_cdf_is_right_continuous_weighted_ecdf():
    d = WeightedEmpirical(jnp.asarray(VALUES), jnp.asarray(LOGW))
    w = weights64(LOGW)
    grid = np.concatenate([np.sort(VALUES), np.linspace(-4, 4, 41)]).astype(np.float32)
    exact = np.array([w[VALUES <= t].sum() for t in grid])
    np.testing.assert_allclose(d.cdf(jnp.asarray(grid)), exact, atol=1e-5)
    assert float(d.cdf(jnp.array(-np.inf))) == 0.0


def test_icdf_is_smallest_atom_with_cdf_at_least_u():
    d = WeightedEmpirical(jnp.asarray(VALUES), jnp.asarray(LOGW))
    w = weights64(LOGW)
    order = np.argsort(VALUES)
    cum = np.cumsum(w[order])
    u = np.linspace(0.0005, 0.9995, 97)
    # skip u within float32 rounding of a jump
    keep = np.min(np.abs(u[:, None] - cum[None, :]), axis=1) > 1e-5
    u = u[keep]
    exact = VALUES[order][np.searchsorted(cum, u, side="left")]
    q = np.asarray(d.icdf(jnp.asarray(u, dtype=jnp.float32)))
    np.testing.assert_array_equal(q, exact)
    assert np.all(np.asarray(d.cdf(jnp.asarray(q))) >= u - 1e-6)
    # icdf(cdf(x_i)) = x_i for atoms of positive weight
    np.testing.assert_array_equal(d.icdf(d.cdf(jnp.asarray(VALUES))), VALUES)


def test_icdf_edges_and_zero_weight_atoms():
    d = WeightedEmpirical(
        jnp.array([-5.0, 1.0, 2.0, 9.0]), jnp.log(jnp.array([0.0, 0.4, 0.6, 0.0]))
    )
    q = d.icdf(jnp.array([0.0, 0.4, 0.41, 1.0, 1.2, -0.1]))
    np.testing.assert_array_equal(q[:4], [1.0, 1.0, 2.0, 2.0])
    assert np.all(np.isnan(q[4:]))


def test_event_shape_one_cdf():
    d = WeightedEmpirical(jnp.asarray(VALUES)[:, None], jnp.asarray(LOGW))
    assert d.event_shape == (1,)
    w = weights64(LOGW)
    t = np.float32(0.1)
    np.testing.assert_allclose(d.cdf(jnp.array([[t]]))[0, 0], w[VALUES <= t].sum(), atol=1e-5)
    with pytest.raises(NotImplementedError, match="scalar"):
        WeightedEmpirical(jnp.zeros((3, 2))).cdf(jnp.zeros(2))


def test_sample_frequencies_match_weights():
    vals = jnp.array([0.0, 1.0, 2.0, 3.0])
    p = np.array([0.1, 0.2, 0.3, 0.4])
    d = WeightedEmpirical(vals, jnp.log(jnp.asarray(p)))
    n = 40_000
    x = np.asarray(d.sample(jax.random.key(7), (n,)))
    freq = np.array([(x == v).mean() for v in range(4)])
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / n))
    # the draws are exchangeable (not sorted ancestors): the halves have the same mean
    half = n // 2
    sd = np.sqrt(p @ (np.arange(4) - p @ np.arange(4)) ** 2)
    assert abs(x[:half].mean() - x[half:].mean()) < 5 * sd * np.sqrt(2 / half)
    np.testing.assert_array_equal(
        d.sample(jax.random.key(7), (10,)), d.sample(jax.random.key(7), (10,))
    )


def test_sample_mean_within_monte_carlo_error():
    d = WeightedEmpirical(jnp.asarray(VALUES), jnp.asarray(LOGW))
    n = 50_000
    x = np.asarray(d.sample(jax.random.key(1), (n,)), dtype=np.float64)
    w = weights64(LOGW)
    mean = w @ VALUES
    var = w @ (VALUES - mean) ** 2
    assert abs(x.mean() - mean) < 5 * np.sqrt(var / n)


def test_jit_and_pytree():
    d = WeightedEmpirical(jnp.asarray(VALUES), jnp.asarray(LOGW))
    out = jax.jit(lambda d: (d.mean, d.variance, d.cdf(jnp.array(0.0)), d.icdf(jnp.array(0.5))))(d)
    np.testing.assert_allclose(out[0], d.mean, rtol=1e-6)
    np.testing.assert_allclose(out[2], d.cdf(jnp.array(0.0)), rtol=1e-6)
    assert out[3] == d.icdf(jnp.array(0.5))

    @jax.jit
    def build(lw):
        e = WeightedEmpirical(jnp.asarray(VALUES), lw)
        return e.mean, e.sample(jax.random.key(0), (3,))

    m, s = build(jnp.asarray(LOGW))
    np.testing.assert_allclose(m, d.mean, rtol=1e-6)
    assert s.shape == (3,)


@pytest.mark.parametrize(
    "values, log_weights, match",
    [
        (np.zeros(3), np.array([0.0, np.nan, 0.0]), "log_weights"),
        (np.zeros(3), np.array([0.0, np.inf, 0.0]), "log_weights"),
        (np.zeros(3), np.full(3, -np.inf), "log_weights"),
        (np.zeros(3), np.zeros(4), "log_weights"),
        (np.zeros(3), np.zeros((3, 1)), "log_weights"),
        (np.zeros(0), np.zeros(0), "values"),
        (np.array([0.0, np.nan]), np.zeros(2), "values"),
    ],
)
def test_bad_input_raises_value_error(values, log_weights, match):
    with pytest.raises(ValueError, match=match):
        WeightedEmpirical(jnp.asarray(values), jnp.asarray(log_weights))
