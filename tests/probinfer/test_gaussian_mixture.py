"""Tests for probinfer.distributions.gaussian_mixture.GaussianMixture against exact answers."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from scipy import integrate, optimize, stats

from probinfer.distributions.gaussian_mixture import GaussianMixture

W2 = np.array([0.3, 0.5, 0.2])
MU2 = np.array([[0.0, 1.0], [2.0, -1.0], [-1.5, -0.5]])
COV2 = np.array(
    [
        [[1.0, 0.3], [0.3, 2.0]],
        [[0.5, -0.2], [-0.2, 0.4]],
        [[0.3, 0.0], [0.0, 1.5]],
    ]
)
W1 = np.array([0.2, 0.5, 0.3])
LOC1 = np.array([-2.0, 0.5, 3.0])
SCALE1 = np.array([0.7, 1.0, 0.4])


def gmm2():
    return GaussianMixture(jnp.asarray(MU2), jnp.asarray(COV2), weights=jnp.asarray(W2))


def gmm1():
    return GaussianMixture.univariate(jnp.asarray(W1), jnp.asarray(LOC1), jnp.asarray(SCALE1))


def exact_pdf2(x):
    return sum(w * stats.multivariate_normal(m, c).pdf(x) for w, m, c in zip(W2, MU2, COV2))


def exact_moments2():
    mean = W2 @ MU2
    cov = sum(w * (c + np.outer(m - mean, m - mean)) for w, m, c in zip(W2, MU2, COV2))
    return mean, cov


def test_log_prob_matches_scipy_mixture():
    g = gmm2()
    x = np.random.default_rng(0).normal(size=(50, 2)) * 2
    np.testing.assert_allclose(np.exp(g.log_prob(jnp.asarray(x))), exact_pdf2(x), rtol=2e-5)
    comp = np.stack([stats.multivariate_normal(m, c).logpdf(x) for m, c in zip(MU2, COV2)], -1)
    np.testing.assert_allclose(g.component_log_probs(jnp.asarray(x)), comp, rtol=1e-5, atol=1e-5)
    resp = np.exp(np.log(W2) + comp)
    resp /= resp.sum(-1, keepdims=True)
    np.testing.assert_allclose(g.responsibilities(jnp.asarray(x)), resp, atol=1e-5)


def test_density_integrates_to_one_1d():
    g = gmm1()
    val, err = integrate.quad(lambda t: float(jnp.exp(g.log_prob(jnp.array([t])))), -np.inf, np.inf)
    assert abs(val - 1.0) < 1e-5


def test_density_integrates_to_one_2d():
    g = gmm2()
    t = np.linspace(-9.0, 9.0, 601)
    xx, yy = np.meshgrid(t, t, indexing="ij")
    pts = jnp.asarray(np.stack([xx, yy], -1), dtype=jnp.float32)
    dens = np.asarray(jnp.exp(g.log_prob(pts)), dtype=np.float64)
    total = integrate.trapezoid(integrate.trapezoid(dens, t, axis=1), t)
    # the tails beyond +-9 hold < 1e-9 mass; trapezoid error ~ h^2 on a smooth density
    assert abs(total - 1.0) < 1e-4


def test_moments_closed_form():
    g = gmm2()
    mean, cov = exact_moments2()
    np.testing.assert_allclose(g.mean, mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g.covariance_matrix, cov, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g.variance, np.diag(cov), rtol=1e-5)


def test_sample_moments_within_monte_carlo_error():
    g = gmm2()
    n = 200_000
    x = np.asarray(g.sample(jax.random.key(0), (n,)), dtype=np.float64)
    assert x.shape == (n, 2)
    mean, cov = exact_moments2()
    var = np.diag(cov)
    # exact fourth central moment of each coordinate (a 1-D mixture of normals)
    d = MU2 - mean
    s2 = COV2[:, [0, 1], [0, 1]]
    m4 = np.sum(W2[:, None] * (d**4 + 6 * d**2 * s2 + 3 * s2**2), axis=0)
    assert np.all(np.abs(x.mean(0) - mean) < 5 * np.sqrt(var / n))
    assert np.all(np.abs(x.var(0) - var) < 5 * np.sqrt((m4 - var**2) / n))
    # cross moment: E[(x0-m0)(x1-m1)], standard error from the sample itself
    prod = (x[:, 0] - mean[0]) * (x[:, 1] - mean[1])
    assert abs(prod.mean() - cov[0, 1]) < 5 * prod.std() / np.sqrt(n)


def test_sample_same_key_same_result():
    g = gmm2()
    a = g.sample(jax.random.key(3), (7,))
    b = g.sample(jax.random.key(3), (7,))
    np.testing.assert_array_equal(a, b)


def test_single_component_equals_multivariate_normal():
    mu = jnp.array([[[0.5, -1.0]], [[1.0, 2.0]]])  # batch (2,), K = 1
    cov = jnp.array([[[[2.0, 0.4], [0.4, 1.0]]], [[[0.5, 0.1], [0.1, 0.3]]]])
    g = GaussianMixture(mu, cov, logits=jnp.zeros((2, 1)))
    mvn = dist.MultivariateNormal(mu[:, 0], cov[:, 0])
    x = jax.random.normal(jax.random.key(1), (5, 2, 2))
    np.testing.assert_allclose(g.log_prob(x), mvn.log_prob(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g.mean, mvn.mean, rtol=1e-6)
    np.testing.assert_allclose(g.variance, mvn.variance, rtol=1e-5)
    np.testing.assert_allclose(g.covariance_matrix, mvn.covariance_matrix, rtol=1e-5)
    assert g.batch_shape == mvn.batch_shape and g.event_shape == mvn.event_shape


def test_univariate_cdf_matches_quadrature_and_scipy():
    g = gmm1()
    for t in [-3.0, -1.0, 0.5, 2.9, 4.0]:
        exact = np.sum(W1 * stats.norm.cdf(t, LOC1, SCALE1))
        # from -15: the mass below is < 1e-50, and the float32 density's rounding noise in
        # the far tail only trips quad's round-off detection
        quad, _ = integrate.quad(lambda s: float(jnp.exp(g.log_prob(jnp.array([s])))), -15.0, t)
        got = float(g.cdf(jnp.array([t]))[0])
        assert abs(got - exact) < 1e-6
        assert abs(quad - exact) < 1e-6


def test_icdf_inverts_cdf_on_grid():
    g = gmm1()
    u = np.linspace(0.001, 0.999, 101)
    q = np.asarray(g.icdf(jnp.asarray(u)[:, None]))[:, 0]
    # reference root in float64
    ref = np.array(
        [
            optimize.brentq(
                lambda t, ui=ui: np.sum(W1 * stats.norm.cdf(t, LOC1, SCALE1)) - ui,
                -20,
                20,
                xtol=1e-14,
            )
            for ui in u
        ]
    )
    np.testing.assert_allclose(q, ref, rtol=1e-5, atol=1e-5)
    back = np.asarray(g.cdf(jnp.asarray(q)[:, None]))[:, 0]
    np.testing.assert_allclose(back, u, atol=1e-6)
    edge = np.asarray(g.icdf(jnp.array([[0.0], [1.0], [1.5]])))[:, 0]
    assert edge[0] == -np.inf and edge[1] == np.inf and np.isnan(edge[2])


def test_icdf_batched_and_under_jit():
    w = jnp.array([[0.2, 0.8], [0.5, 0.5], [0.9, 0.1]])
    g = GaussianMixture.univariate(w, jnp.array([-1.0, 2.0]), jnp.array([0.5, 1.0]))
    assert g.batch_shape == (3,) and g.event_shape == (1,)
    u = jnp.linspace(0.01, 0.99, 9)[:, None, None] * jnp.ones((1, 3, 1))
    q = jax.jit(lambda d, u: d.icdf(u))(g, u)
    assert q.shape == (9, 3, 1)
    np.testing.assert_allclose(g.cdf(q), u, atol=2e-6)


def test_cdf_requires_one_dimension():
    with pytest.raises(NotImplementedError, match="one-dimensional"):
        gmm2().cdf(jnp.zeros(2))


def test_batched_shapes_and_broadcasting():
    k, d = 3, 2
    logits = jax.random.normal(jax.random.key(0), (4, 1, k))
    means = jax.random.normal(jax.random.key(1), (5, k, d))
    g = GaussianMixture(means, jnp.asarray(COV2), logits=logits)
    assert g.batch_shape == (4, 5) and g.event_shape == (d,)
    x = g.sample(jax.random.key(2), (6,))
    assert x.shape == (6, 4, 5, d)
    lp = g.log_prob(x)
    assert lp.shape == (6, 4, 5)
    assert g.mean.shape == (4, 5, d) and g.variance.shape == (4, 5, d)
    assert g.covariance_matrix.shape == (4, 5, d, d)
    # each batch element equals the unbatched mixture with its own parameters
    single = GaussianMixture(means[2], jnp.asarray(COV2), logits=logits[1, 0])
    np.testing.assert_allclose(lp[:, 1, 2], single.log_prob(x[:, 1, 2]), rtol=1e-5)
    np.testing.assert_allclose(g.mean[1, 2], single.mean, rtol=1e-5, atol=1e-6)


def test_jit_and_vmap_as_pytree():
    g = gmm2()
    x = jnp.array([[0.1, 0.2], [1.0, -1.0]])
    np.testing.assert_allclose(jax.jit(lambda d, x: d.log_prob(x))(g, x), g.log_prob(x), rtol=1e-6)

    @jax.jit
    def build_and_eval(means, x):
        return GaussianMixture(means, jnp.asarray(COV2), weights=jnp.asarray(W2)).log_prob(x)

    np.testing.assert_allclose(build_and_eval(jnp.asarray(MU2), x), g.log_prob(x), rtol=1e-6)
    shifts = jnp.arange(3.0)
    out = jax.vmap(
        lambda s: (
            GaussianMixture(jnp.asarray(MU2) + s, jnp.asarray(COV2), weights=jnp.asarray(W2)).mean
        )
    )(shifts)
    np.testing.assert_allclose(
        out, np.asarray(g.mean)[None] + np.asarray(shifts)[:, None], rtol=1e-6
    )
    leaves, treedef = jax.tree_util.tree_flatten(g)
    g2 = jax.tree_util.tree_unflatten(treedef, leaves)
    np.testing.assert_allclose(g2.log_prob(x), g.log_prob(x))


def test_marginal_integrates_joint():
    g = gmm2()
    m = g.marginal([1])
    assert m.event_shape == (1,)
    for t in [-1.0, 0.3, 2.0]:
        ref, _ = integrate.quad(lambda s, t=t: exact_pdf2(np.array([s, t])), -np.inf, np.inf)
        assert abs(float(jnp.exp(m.log_prob(jnp.array([t])))) - ref) < 1e-5
    with pytest.raises(ValueError, match="dims"):
        g.marginal([0, 0])


def test_univariate_equals_covariance_parameterisation():
    g = gmm1()
    h = GaussianMixture(
        jnp.asarray(LOC1)[:, None], jnp.asarray(SCALE1**2)[:, None, None], weights=jnp.asarray(W1)
    )
    x = jnp.linspace(-4, 4, 11)[:, None]
    np.testing.assert_allclose(g.log_prob(x), h.log_prob(x), rtol=1e-6)
    np.testing.assert_allclose(g.mean[0], W1 @ LOC1, rtol=1e-6)
    np.testing.assert_allclose(
        g.variance[0], W1 @ (SCALE1**2 + LOC1**2) - (W1 @ LOC1) ** 2, rtol=1e-5
    )


def test_zero_weight_component_is_ignored():
    g = GaussianMixture.univariate(jnp.array([1.0, 0.0]), jnp.array([0.0, 5.0]), jnp.ones(2))
    x = jnp.linspace(-3, 8, 5)[:, None]
    np.testing.assert_allclose(g.log_prob(x), stats.norm.logpdf(np.asarray(x)[:, 0]), rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(means=MU2, covariances=COV2, weights=-W2), "weights"),
        (dict(means=MU2, covariances=COV2, weights=np.array([0.3, np.nan, 0.2])), "weights"),
        (dict(means=MU2, covariances=COV2, weights=W2[:2]), "weights"),
        (dict(means=MU2, covariances=COV2, weights=W2, logits=np.log(W2)), "weights"),
        (dict(means=MU2, covariances=COV2), "weights"),
        (dict(means=MU2, covariances=COV2[:, :1, :1], weights=W2), "covariances"),
        (dict(means=MU2, covariances=-COV2, weights=W2), "covariances"),
        (
            dict(means=MU2, covariances=COV2 + np.array([[0, 1.0], [0, 0]]), weights=W2),
            "covariances",
        ),
        (
            dict(
                means=MU2, scale_trils=np.transpose(np.linalg.cholesky(COV2), (0, 2, 1)), weights=W2
            ),
            "scale_trils",
        ),
        (dict(means=MU2[0], covariances=COV2, weights=W2), "means"),
        (dict(means=MU2, logits=np.full(3, -np.inf), covariances=COV2), "logits"),
    ],
)
def test_bad_input_raises_value_error(kwargs, match):
    kwargs = dict(kwargs)
    means = kwargs.pop("means")
    with pytest.raises(ValueError, match=match):
        GaussianMixture(means, **kwargs)


def test_bad_univariate_scales():
    with pytest.raises(ValueError, match="scales"):
        GaussianMixture.univariate(W1, LOC1, -SCALE1)


def test_construction_compiles_nothing(xla_compiles):
    """Concrete parameters are checked, normalised and factorised on the host and cross to
    the device with ``device_put`` (a compiled call, or ``jnp.asarray`` of a numpy array,
    compiles and keeps one program per new shape); ``validate_args`` keeps numpyro's
    meaning."""
    rng = np.random.default_rng(0)
    means = rng.normal(size=(7, 3, 2)).astype(np.float32)
    cov = np.broadcast_to(np.eye(2, dtype=np.float32), (3, 2, 2))
    with xla_compiles() as compiled:
        g = GaussianMixture(means, cov, weights=np.ones((7, 3), np.float32))
    assert compiled == []
    assert g._validate_args == dist.Distribution._validate_args
    assert not GaussianMixture(means, cov, logits=np.zeros(3), validate_args=False)._validate_args
    np.testing.assert_allclose(np.asarray(g.scale_trils), np.broadcast_to(cov, (7, 3, 2, 2)))
    np.testing.assert_allclose(np.asarray(g.logits), np.full((7, 3), -np.log(3.0)), rtol=1e-6)


def _random_mixture(rng, b: int, k: int = 3, d: int = 2) -> GaussianMixture:
    a = rng.normal(size=(b, k, d, d))
    cov = a @ np.swapaxes(a, -1, -2) + np.eye(d)
    return GaussianMixture(
        rng.normal(size=(b, k, d)), cov, weights=rng.dirichlet(np.ones(k), size=b)
    )


@pytest.mark.parametrize("batch,sample_shape", [(3, ()), (5, (7,)), (1, (4, 3)), (6, (2,))])
def test_padded_eager_calls_equal_the_unpadded_jitted_ones(batch, sample_shape):
    """Eagerly, sample and batch sizes are padded to powers of two (issue 22, item 10);
    under jit they are not. Same draws bit for bit, same densities to float rounding."""
    rng = np.random.default_rng(batch)
    g = _random_mixture(rng, batch)
    key = jax.random.key(batch)
    eager = g.sample(key, sample_shape)
    assert eager.shape == sample_shape + (batch, 2)
    np.testing.assert_array_equal(eager, jax.jit(lambda k: g.sample(k, sample_shape))(key))
    x = rng.normal(size=sample_shape + (batch, 2)).astype(np.float32)
    for method in ("log_prob", "component_log_probs"):
        got = getattr(g, method)(x)
        want = jax.jit(lambda v, m=method: getattr(g, m)(v))(x)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert g.log_prob(x[..., :1, :]).shape == sample_shape + (batch,)  # broadcast over batch
    for name in ("weights", "covariances", "mean", "covariance_matrix", "variance"):
        got, want = getattr(g, name), jax.jit(lambda m, n=name: getattr(m, n))(g)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_new_batch_sizes_in_a_seen_bucket_compile_nothing(xla_compiles):
    """Construction, log_prob, component_log_probs, sample and the moments at a batch size
    whose power-of-two bucket was seen compile nothing (each new size compiled 7 programs
    for the first four, and one per operation for the moments)."""
    rng = np.random.default_rng(0)

    def call(b):
        g = _random_mixture(rng, b)
        x = rng.normal(size=(b, 2))
        g.mean, g.variance, g.covariance_matrix, g.weights  # noqa: B018 (the computation)
        return g.log_prob(x), g.component_log_probs(x), g.sample(jax.random.key(0), (3,))

    call(8)
    with xla_compiles() as compiled:
        for b in (5, 6, 7):
            lp, clp, draws = call(b)
            assert lp.shape == (b,) and clp.shape == (b, 3) and draws.shape == (3, b, 2)
    assert compiled == []


@pytest.mark.parametrize("batch", [(), (3,), (2, 4)])
def test_univariate_cdf_icdf_padded_equal_unpadded_and_compile_once(batch, xla_compiles):
    """cdf/icdf (D == 1) run as one compiled call per power-of-two bucket (each new shape
    compiled every operation of the bisection); eager values equal the jitted ones."""
    rng = np.random.default_rng(1)
    g = GaussianMixture.univariate(
        rng.dirichlet(np.ones(3), size=batch or None),
        rng.normal(size=batch + (3,)),
        rng.uniform(0.5, 2.0, size=batch + (3,)),
    )
    for shape in [(), batch + (1,), (5,) + batch + (1,)]:
        for method, lo, hi in (("cdf", -3.0, 3.0), ("icdf", 0.0, 1.0)):
            v = rng.uniform(lo, hi, size=shape).astype(np.float32)
            got = getattr(g, method)(v)
            want = jax.jit(lambda x, m=method: getattr(g, m)(x))(v)
            assert got.shape == want.shape == np.broadcast_shapes(shape, batch + (1,))
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    with xla_compiles() as compiled:
        for n in (5, 6, 7):  # the bucket of 8 draws was seen above (5 draws)
            v = rng.uniform(size=(n,) + batch + (1,)).astype(np.float32)
            assert g.icdf(v).shape == g.cdf(v).shape == v.shape
    assert compiled == []
