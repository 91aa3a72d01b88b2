"""Tests of the bar distribution with half-normal tails (the PFN output distribution)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from probinfer.distributions.bar import HALF_NORMAL_MEDIAN, BarDistribution

BORDERS = jnp.array([-3.0, -1.5, -1.0, -0.2, 0.0, 0.5, 1.7, 2.0, 4.0])  # K = 8, uneven widths


def _dist(seed: int = 0, batch=(3,)) -> BarDistribution:
    logits = 1.5 * jax.random.normal(jax.random.PRNGKey(seed), batch + (BORDERS.shape[0] - 1,))
    return BarDistribution(BORDERS, logits)


def _gauss_legendre(lo: float, hi: float, panels: int, order: int = 16):
    """Nodes and weights of composite Gauss-Legendre quadrature on [lo, hi] (float64)."""
    x, w = np.polynomial.legendre.leggauss(order)
    edges = np.linspace(lo, hi, panels + 1)
    half = 0.5 * np.diff(edges)[:, None]
    mid = 0.5 * (edges[:-1] + edges[1:])[:, None]
    return (mid + half * x).ravel(), (half * w).ravel()


def _quadrature_grid(borders, tail_sd: float = 40.0):
    """Nodes/weights integrating exactly over each bucket and the half-normal tails.

    Tails are truncated at ``tail_sd`` tail scales (the remaining mass is below 1e-300).
    """
    b = np.asarray(borders, dtype=float)
    s_left = (b[1] - b[0]) / HALF_NORMAL_MEDIAN
    s_right = (b[-1] - b[-2]) / HALF_NORMAL_MEDIAN
    pieces = [_gauss_legendre(b[1] - tail_sd * s_left, b[1], 400)]
    pieces += [_gauss_legendre(lo, hi, 1) for lo, hi in zip(b[1:-2], b[2:-1])]
    pieces.append(_gauss_legendre(b[-2], b[-2] + tail_sd * s_right, 400))
    return np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces])


def test_half_normal_median_constant():
    assert HALF_NORMAL_MEDIAN == pytest.approx(stats.norm.ppf(0.75), abs=1e-15)
    assert stats.halfnorm.median() == pytest.approx(HALF_NORMAL_MEDIAN, abs=1e-12)


def test_integrates_to_one_and_moments_match_quadrature():
    d = _dist()
    x, w = _quadrature_grid(BORDERS)
    logf = np.asarray(d.log_prob(jnp.asarray(x, jnp.float32)[:, None]), dtype=float)  # (n, 3)
    f = np.exp(logf)
    total = w @ f
    m1 = w @ (x[:, None] * f)
    m2 = w @ ((x[:, None] - m1) ** 2 * f)
    h = -(w @ (f * logf))
    np.testing.assert_allclose(total, 1.0, atol=2e-6)
    np.testing.assert_allclose(d.mean, m1, atol=1e-5)
    np.testing.assert_allclose(d.variance, m2, rtol=1e-5)
    np.testing.assert_allclose(d.entropy(), h, atol=1e-5)


def test_tail_convention_half_normal_median_equals_bucket_width():
    # all mass in the left bucket: P(Y >= borders[1] - width0) = 1/2 (half-normal median = width)
    k = BORDERS.shape[0] - 1
    logits = jnp.full((2, k), -1e4).at[0, 0].set(0.0).at[1, -1].set(0.0)
    d = BarDistribution(BORDERS, logits)
    w0 = float(BORDERS[1] - BORDERS[0])
    wl = float(BORDERS[-1] - BORDERS[-2])
    c = d.cdf(jnp.array([BORDERS[0], BORDERS[-1]]))
    assert float(c[0]) == pytest.approx(0.5, abs=1e-6)
    assert float(c[1]) == pytest.approx(0.5, abs=1e-6)
    # density = scipy half-normal with scale width / z_{3/4}
    y = jnp.array([-2.0, 3.0])
    ref = [
        stats.halfnorm.logpdf(float(BORDERS[1]) - (-2.0), scale=w0 / HALF_NORMAL_MEDIAN),
        stats.halfnorm.logpdf(3.0 - float(BORDERS[-2]), scale=wl / HALF_NORMAL_MEDIAN),
    ]
    np.testing.assert_allclose(d.log_prob(y), ref, rtol=1e-5)


def test_inner_bucket_is_uniform():
    k = BORDERS.shape[0] - 1
    logits = jnp.zeros((k,))
    d = BarDistribution(BORDERS, logits)
    y = jnp.array([-0.9, -0.5, -0.21])  # bucket 2: [-1.0, -0.2)
    np.testing.assert_allclose(d.log_prob(y), np.log(1 / k / 0.8), rtol=1e-6)


def test_sample_moments_within_monte_carlo_error():
    d = _dist(seed=1)
    n = 200_000
    ys = np.asarray(d.sample(jax.random.PRNGKey(7), (n,)), dtype=float)
    assert ys.shape == (n, 3)
    mean, var = np.asarray(d.mean), np.asarray(d.variance)
    # standard error of the mean sqrt(var/n); of the variance sqrt((m4 - var^2)/n)
    se_mean = np.sqrt(var / n)
    m4 = np.mean((ys - mean) ** 4, axis=0)
    se_var = np.sqrt((m4 - var**2) / n)
    assert np.all(np.abs(ys.mean(0) - mean) < 5 * se_mean)
    assert np.all(np.abs(ys.var(0) - var) < 5 * se_var)
    # same key, same draws
    np.testing.assert_array_equal(d.sample(jax.random.PRNGKey(7), (5,)), ys[:5].astype(np.float32))


def test_sample_distribution_matches_cdf_ks():
    d = BarDistribution(BORDERS, jnp.linspace(-1.0, 1.0, BORDERS.shape[0] - 1))
    ys = np.asarray(d.sample(jax.random.PRNGKey(3), (20_000,)), dtype=float)
    res = stats.kstest(ys, lambda y: np.asarray(d.cdf(jnp.asarray(y, jnp.float32)), float))
    assert res.pvalue > 1e-3


def test_cdf_icdf_are_inverses():
    d = _dist(seed=2)
    u = jnp.linspace(1e-4, 1 - 1e-4, 2001)[:, None]
    np.testing.assert_allclose(d.cdf(d.icdf(u)), jnp.broadcast_to(u, (2001, 3)), atol=2e-6)
    y = jnp.linspace(-8.0, 9.0, 1001)[:, None]
    c = d.cdf(y)
    ok = (c > 1e-3) & (c < 1 - 1e-3)  # away from float32 saturation of 1 - cdf
    np.testing.assert_allclose(np.where(ok, d.icdf(c), y), np.broadcast_to(y, c.shape), atol=1e-4)
    assert np.all(np.diff(np.asarray(c), axis=0) >= 0)


def test_cdf_is_integral_of_density():
    d = _dist(seed=4)
    b = np.asarray(BORDERS, dtype=float)
    for y in [-4.0, -1.2, 0.3, 1.9, 5.0]:
        # integrate the density up to y, splitting at every border below y (smooth pieces)
        s_left = (b[1] - b[0]) / HALF_NORMAL_MEDIAN
        cuts = [b[1] - 40.0 * s_left] + [c for c in b[1:-1] if c < y] + [y]
        cuts = sorted(set(cuts))
        xs, ws = zip(*(_gauss_legendre(lo, hi, 100) for lo, hi in zip(cuts[:-1], cuts[1:])))
        xs, ws = np.concatenate(xs), np.concatenate(ws)
        ref = ws @ np.exp(np.asarray(d.log_prob(jnp.asarray(xs, jnp.float32)[:, None]), float))
        np.testing.assert_allclose(d.cdf(jnp.full(3, y)), ref, atol=2e-6)


def test_jit_vmap_and_batching():
    d = _dist(seed=5, batch=(4, 3))
    assert d.batch_shape == (4, 3) and d.event_shape == ()
    y = jnp.linspace(-5, 5, 12).reshape(4, 3)
    lp_jit = jax.jit(lambda dist, v: dist.log_prob(v))(d, y)
    np.testing.assert_allclose(lp_jit, d.log_prob(y), rtol=1e-6)
    # vmap over the leading batch axis of logits agrees with the batched evaluation
    lp_vmap = jax.vmap(lambda lg, v: BarDistribution(BORDERS, lg).log_prob(v))(d.logits, y)
    np.testing.assert_allclose(lp_vmap, d.log_prob(y), rtol=1e-6)
    # broadcasting a sample axis
    assert d.log_prob(jnp.zeros((7, 1, 1))).shape == (7, 4, 3)
    assert d.icdf(jnp.full((2, 4, 3), 0.5)).shape == (2, 4, 3)
    assert jax.jit(lambda dist: dist.mean)(d).shape == (4, 3)


def test_finite_gradients_at_tails():
    d = _dist(seed=6)

    def loss(logits, y):
        return -jnp.sum(BarDistribution(BORDERS, logits).log_prob(y))

    for y in [-50.0, -3.0, -1.5, 2.0, 4.0, 50.0, 1e3]:
        g = jax.grad(loss)(d.logits, jnp.full(3, y))
        assert np.all(np.isfinite(np.asarray(g))), y
    # the gradient wrt logits is softmax - onehot(bucket): rows sum to zero
    g = jax.grad(loss)(d.logits, jnp.array([-10.0, 0.1, 10.0]))
    np.testing.assert_allclose(g.sum(-1), 0.0, atol=1e-6)
    np.testing.assert_allclose(g[0, 0], d.probs[0, 0] - 1.0, atol=1e-6)
    np.testing.assert_allclose(g[2, -1], d.probs[2, -1] - 1.0, atol=1e-6)


def test_two_buckets_is_two_half_normals():
    d = BarDistribution(jnp.array([-1.0, 0.0, 2.0]), jnp.array([0.3, -0.2]))
    assert d.batch_shape == ()

    x, w = _quadrature_grid(jnp.array([-1.0, 0.0, 2.0]))
    total = w @ np.exp(np.asarray(d.log_prob(jnp.asarray(x, jnp.float32)), dtype=float))
    assert total == pytest.approx(1.0, abs=2e-6)
    u = jnp.linspace(0.01, 0.99, 99)
    np.testing.assert_allclose(d.cdf(d.icdf(u)), u, atol=2e-6)


@pytest.mark.parametrize(
    "borders, logits, match",
    [
        (jnp.array([0.0, 1.0, 1.0, 2.0]), jnp.zeros(3), "borders"),
        (jnp.array([0.0, 2.0, 1.0, 3.0]), jnp.zeros(3), "borders"),
        (jnp.array([0.0, jnp.nan, 1.0, 2.0]), jnp.zeros(3), "borders"),
        (jnp.array([[0.0, 1.0, 2.0]]), jnp.zeros(2), "borders"),
        (jnp.array([0.0, 1.0]), jnp.zeros(1), "borders"),
        (jnp.array([0.0, 1.0, 2.0, 3.0]), jnp.zeros(4), "logits"),
        (jnp.array([0.0, 1.0, 2.0, 3.0]), jnp.array([0.0, jnp.nan, 0.0]), "logits"),
    ],
)
def test_bad_input_raises_value_error_naming_argument(borders, logits, match):
    with pytest.raises(ValueError, match=match):
        BarDistribution(borders, logits)


@pytest.mark.parametrize("method", ["icdf", "cdf", "log_prob"])
def test_padded_eager_calls_equal_the_unpadded_jitted_ones(method):
    """Eagerly, sample and batch sizes are padded to powers of two (issue 22, item 10);
    under jit they are not: the same values to float rounding, for every broadcast."""
    d = _dist(3, batch=(5,))
    rng = np.random.default_rng(0)
    lo, hi = (0.0, 1.0) if method == "icdf" else (-4.0, 5.0)
    for shape in [(), (5,), (3, 5), (2, 1, 5), (1,)]:
        v = rng.uniform(lo, hi, size=shape).astype(np.float32)
        got = getattr(d, method)(v)
        want = jax.jit(lambda x: getattr(d, method)(x))(v)
        assert got.shape == want.shape == np.broadcast_shapes(shape, (5,))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("batch", [(), (5,), (2, 3)])
def test_padded_moments_equal_the_unpadded_jitted_ones(batch):
    d = _dist(4, batch=batch)
    for name in ("mean", "variance"):
        got, want = getattr(d, name), jax.jit(lambda x, n=name: getattr(x, n))(d)
        assert got.shape == want.shape == batch
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(d.entropy(), jax.jit(lambda x: x.entropy())(d), rtol=1e-6)


def test_new_numbers_of_test_points_in_a_seen_bucket_compile_nothing(xla_compiles):
    """The PFN workload: m test points, a new m every call. Each new m compiled about 56
    programs (every eager operation of icdf); now m shares its power-of-two bucket."""
    rng = np.random.default_rng(0)
    borders = np.asarray(BORDERS)

    def call(m):
        d = BarDistribution(borders, rng.normal(size=(m, 8)).astype(np.float32))
        d.mean, d.variance  # noqa: B018 (the computation)
        return d.icdf(np.float32(0.9)), d.icdf(rng.uniform(size=(4, m))), d.cdf(0.3)

    call(16)
    with xla_compiles() as compiled:
        for m in (9, 13, 15):
            q, qs, c = call(m)
            assert q.shape == (m,) and qs.shape == (4, m) and c.shape == (m,)
    assert compiled == []
