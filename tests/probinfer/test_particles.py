import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probinfer import Particles


def _weighted(n=500, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    values = {"mu": jax.random.normal(k1, (n,)), "beta": jax.random.normal(k2, (n, 3))}
    log_weights = -0.5 * values["mu"] ** 2  # importance weights for N(0, 1/2) from N(0, 1)
    return Particles(values, log_weights)


def test_weights_properties_and_evidence_increment():
    p = _weighted()
    w = np.exp(np.asarray(p.log_weights, dtype=np.float64))
    np.testing.assert_allclose(p.normalized_weights, w / w.sum(), rtol=1e-5)
    assert float(p.ess) == pytest.approx(w.sum() ** 2 / np.sum(w**2), rel=1e-5)
    assert float(p.log_mean_weight) == pytest.approx(np.log(w.mean()), rel=1e-6)
    assert p.num_particles == len(p) == 500


def test_expectation_is_the_exact_weighted_sum():
    p = _weighted()
    w = np.asarray(p.normalized_weights, dtype=np.float64)
    mu = np.asarray(p.values["mu"], dtype=np.float64)
    np.testing.assert_allclose(p.expectation(lambda v: v["mu"] ** 2), np.sum(w * mu**2), rtol=1e-5)
    out = p.expectation()
    np.testing.assert_allclose(out["beta"], w @ np.asarray(p.values["beta"]), rtol=1e-5, atol=1e-6)


def test_self_normalised_importance_sampling_matches_the_exact_answer():
    # Proposal N(0,1), target N(0,1/2): E[mu^2] = 1/2. SNIS error ~ sqrt(var/ESS).
    p = _weighted(n=20_000, seed=3)
    est = float(p.expectation(lambda v: v["mu"] ** 2))
    se = float(np.sqrt(2 * 0.25 / p.ess))  # Var(mu^2) = 2 sigma^4 under the target
    assert abs(est - 0.5) < 5 * se


def test_resample_returns_equal_weights_and_preserves_the_target():
    p = _weighted(n=20_000, seed=4)
    r = p.resample(jax.random.key(1))
    assert r.num_particles == 20_000
    np.testing.assert_array_equal(r.log_weights, 0.0)
    est = float(jnp.mean(r.values["mu"] ** 2))
    se = float(np.sqrt(2 * 0.25 / p.ess))
    assert abs(est - 0.5) < 6 * se
    assert p.resample(jax.random.key(1), num=10).num_particles == 10
    same = p.resample(jax.random.key(1))
    np.testing.assert_array_equal(same.values["mu"], r.values["mu"])


def test_is_a_pytree_usable_under_jit():
    p = _weighted(n=50)
    f = jax.jit(lambda q, key: q.reweight(q.values["mu"]).resample(key, scheme="stratified"))
    out = f(p, jax.random.key(0))
    assert isinstance(out, Particles) and out.values["beta"].shape == (50, 3)
    leaves = jax.tree_util.tree_leaves(p)
    assert len(leaves) == 3


class TokenStore:
    """A non-array particle store, as the LLM backends use."""

    def __init__(self, seqs):
        self.seqs = list(seqs)

    def __len__(self):
        return len(self.seqs)

    def take(self, indices):
        return TokenStore([self.seqs[int(i)] for i in np.asarray(indices)])


def test_non_array_store_plugs_in_through_take():
    store = TokenStore(["a", "bb", "ccc", "dddd"])
    p = Particles(store, jnp.log(jnp.array([0.0, 0.0, 1.0, 0.0]) + 1e-30))
    r = p.resample(jax.random.key(0))
    assert r.values.seqs == ["ccc"] * 4
    assert p.take(jnp.array([3, 0])).values.seqs == ["dddd", "a"]


def test_bad_input():
    with pytest.raises(ValueError, match="leading axis"):
        Particles(jnp.zeros((4, 2)), jnp.zeros(3))
    with pytest.raises(ValueError, match="1-D"):
        Particles(jnp.zeros(4), jnp.zeros((4, 1)))
    with pytest.raises(ValueError, match="share a leading"):
        Particles({"a": jnp.zeros(4), "b": jnp.zeros(5)}, jnp.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        Particles(jnp.zeros(3), jnp.array([0.0, jnp.nan, 0.0])).resample(jax.random.key(0))
    with pytest.raises(ValueError, match="all -inf"):
        Particles(jnp.zeros(2), jnp.full(2, -jnp.inf)).resample(jax.random.key(0))
    with pytest.raises(ValueError, match="leading axis of 4"):
        Particles(jnp.zeros(4)).expectation(lambda v: v.sum())
