"""NumPyro and Pyro targets: the same model gives the same densities; exact Jacobians."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy import stats

from probinfer.targets import from_numpyro, from_pyro

RNG = np.random.default_rng(0)
X = RNG.normal(size=(25, 2)).astype(np.float32)
Y = (X @ np.array([1.0, -1.0]) + 0.5 * RNG.normal(size=25)).astype(np.float32)


def np_model(X, y):
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    with numpyro.plate("n", X.shape[0]):
        numpyro.sample("y", dist.Normal(jnp.sum(X * b, -1), s), obs=y)


def _pyro_models():
    import pyro
    import pyro.distributions as pdist

    def vectorised(X, y):  # broadcasts over a leading particle dimension
        b = pyro.sample("b", pdist.Normal(0.0, 1.0).expand([2]).to_event(1))
        s = pyro.sample("s", pdist.HalfNormal(1.0))
        with pyro.plate("n", X.shape[0], dim=-1):
            pyro.sample("y", pdist.Normal((X * b).sum(-1), s), obs=y)

    def matmul(X, y):  # does not broadcast (X @ b): evaluated with torch.func.vmap
        b = pyro.sample("b", pdist.Normal(0.0, 1.0).expand([2]).to_event(1))
        s = pyro.sample("s", pdist.HalfNormal(1.0))
        with pyro.plate("n", X.shape[0]):
            pyro.sample("y", pdist.Normal(X @ b, s), obs=y)

    return vectorised, matmul


@pytest.mark.parametrize("which", [0, 1])
def test_numpyro_and_pyro_agree(which):
    torch = pytest.importorskip("torch")
    pm = _pyro_models()[which]
    tn = from_numpyro(np_model, X, Y)
    tp = from_pyro(pm, torch.tensor(X), torch.tensor(Y))
    assert tn.dim == tp.dim == 3 and tn.num_observations == tp.num_observations == 25
    theta = tn.sample_prior(jax.random.key(0), 7)
    for a, b in [
        (tn.log_prior(theta), tp.log_prior(theta)),
        (tn.log_likelihood(theta), tp.log_likelihood(theta)),
        (tn.log_likelihood(theta, pointwise=True), tp.log_likelihood(theta, pointwise=True)),
    ]:
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tn.constrain(theta)["s"], tp.constrain(theta)["s"], rtol=1e-6)
    draws = tp.sample_prior(jax.random.key(1), 2000)
    assert draws.shape == (2000, 3)
    # HalfNormal(1) draws: E[s] = sqrt(2/pi); SE = sqrt((1 - 2/pi)/2000)
    s = np.exp(np.asarray(draws[:, 2]))
    assert abs(s.mean() - np.sqrt(2 / np.pi)) < 5 * np.sqrt((1 - 2 / np.pi) / 2000)
    # same key, same draws; works under jit (pure_callback)
    np.testing.assert_array_equal(tp.sample_prior(jax.random.key(1), 2000), draws)
    jitted = jax.jit(lambda th: tp.log_likelihood(th))(theta)
    np.testing.assert_allclose(jitted, tp.log_likelihood(theta), rtol=1e-6)


def test_log_prior_has_exact_jacobian():
    t = from_numpyro(np_model, X, Y)
    theta = t.sample_prior(jax.random.key(2), 5)
    th = np.asarray(theta, np.float64)
    s = np.exp(th[:, 2])
    expected = stats.norm.logpdf(th[:, :2]).sum(1) + stats.halfnorm.logpdf(s) + th[:, 2]
    np.testing.assert_allclose(np.asarray(t.log_prior(theta)), expected, rtol=1e-5)
    mean = th[:, :2] @ X.T.astype(np.float64)
    ll = stats.norm.logpdf(Y[None], mean, s[:, None])
    np.testing.assert_allclose(t.log_likelihood(theta, pointwise=True), ll, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(t.log_joint(theta), expected + ll.sum(1), rtol=1e-5)
    # prior draws: b ~ N(0, I)
    draws = np.asarray(t.sample_prior(jax.random.key(3), 4000))
    assert np.all(np.abs(draws[:, :2].mean(0)) < 5 / np.sqrt(4000))


def test_bad_input():
    torch = pytest.importorskip("torch")
    import pyro
    import pyro.distributions as pdist

    def no_obs():
        numpyro.sample("mu", dist.Normal(0, 1))

    def p_no_obs():
        pyro.sample("mu", pdist.Normal(0.0, 1.0))

    def discrete(y):
        k = numpyro.sample("k", dist.Bernoulli(0.5))
        numpyro.sample("y", dist.Normal(k, 1.0), obs=y)

    with pytest.raises(ValueError, match="no observed site"):
        from_numpyro(no_obs)
    with pytest.raises(ValueError, match="no observed site"):
        from_pyro(p_no_obs)
    with pytest.raises(ValueError, match="discrete"):
        from_numpyro(discrete, 1.0)
    bad = Y.copy()
    bad[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        from_numpyro(np_model, X, bad)
    with pytest.raises(ValueError, match="NaN"):
        from_pyro(_pyro_models()[0], torch.tensor(X), torch.tensor(bad))
    # built per problem inside vmap (traced data: nothing to check on the host), the
    # densities are those of the targets built from each problem's concrete data
    ys = np.stack([Y, Y[::-1]])
    u = jnp.asarray(RNG.normal(size=(3, 3)), jnp.float32)
    traced = jax.vmap(lambda y: from_numpyro(np_model, X, y).log_likelihood(u))(ys)
    eager = np.stack([from_numpyro(np_model, X, y).log_likelihood(u) for y in ys])
    np.testing.assert_allclose(traced, eager, rtol=1e-6)
    t = from_numpyro(np_model, X, Y)
    with pytest.raises(ValueError, match="theta must have shape"):
        t.log_prior(jnp.zeros((4, 5)))
    with pytest.raises(ValueError, match="num"):
        t.sample_prior(jax.random.key(0), 0)


def test_import_probinfer_smc_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, probinfer, probinfer.smc, probinfer.targets, probinfer.engine; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_numpyro_target_is_a_pytree_of_its_data():
    """Leaves: the floating-point data; a jitted function
    of the target evaluates each target's own densities, and compiles once for two
    datasets of the same shapes."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 2)), rng.normal(size=30)
    a, b = from_numpyro(np_model, X, y), from_numpyro(np_model, X + 1.0, y - 1.0)
    assert a.traced_data
    leaves, treedef = jax.tree_util.tree_flatten(a)
    assert [np.shape(x) for x in leaves] == [(30, 2), (30,)]
    again = jax.tree_util.tree_unflatten(treedef, leaves)
    theta = np.asarray(a.sample_prior(jax.random.key(0), 4))
    np.testing.assert_allclose(again.log_likelihood(theta), a.log_likelihood(theta), rtol=1e-6)

    @jax.jit
    def log_joint(target, theta):
        return target.log_prior(theta) + target.log_likelihood(theta)

    for t in (a, b):
        np.testing.assert_allclose(log_joint(t, theta), t.log_joint(theta), rtol=1e-5)
    assert log_joint._cache_size() == 1
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)


class _Options:
    """A model option that is not hashable (equality without a hash)."""

    def __eq__(self, other):
        return isinstance(other, _Options)

    __hash__ = None


def test_unhashable_model_argument_keeps_the_data_constant():
    """Static arguments key compiled code, so an unhashable one keeps the data as constants
    (``traced_data`` False) instead of failing inside ``jit``; densities are unchanged."""

    def model(X, y, options):
        np_model(X, y)

    t, ref = from_numpyro(model, X, Y, _Options()), from_numpyro(np_model, X, Y)
    assert not t.traced_data and ref.traced_data
    theta = np.asarray(ref.sample_prior(jax.random.key(1), 5))
    np.testing.assert_allclose(t.log_joint(theta), ref.log_joint(theta), rtol=1e-6)
