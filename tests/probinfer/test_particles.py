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


# ---- issue 22: degenerate input (item 5), bounded compilations (item 10) ---------------------


def test_zero_weight_particles_do_not_poison_the_expectation():
    p = Particles(
        jnp.array([1.0, jnp.inf, jnp.nan, 3.0]), jnp.array([0.0, -jnp.inf, -jnp.inf, 0.0])
    )
    assert float(p.expectation()) == 2.0  # was nan: 0 * inf
    assert float(jax.jit(lambda q: q.expectation())(p)) == 2.0  # traced: same selection
    assert float(Particles(np.arange(4)).expectation()) == 1.5  # integers: was 0 (cast weights)


def test_undefined_or_overflowing_expectations_raise_naming_the_values():
    both = Particles(np.array([np.inf, -np.inf]))
    with pytest.raises(ValueError, match="values"):
        both.expectation()
    with pytest.raises(ValueError, match=r"f\(values\)"):
        Particles(np.zeros(2)).expectation(lambda v: v + np.array([np.nan, 0.0]))
    with pytest.raises(ValueError, match="values.*beyond the range"):
        Particles(np.array([1e39, 1e39])).expectation()  # float64 beyond float32
    assert float(Particles(np.array([3e38, 3.4e38], np.float32)).expectation()) <= 3.4e38
    with pytest.raises(ValueError, match="log_weights"):
        Particles(np.zeros(2), np.array([np.inf, 0.0])).ess  # noqa: B018


def test_take_checks_its_indices():
    p = Particles(np.arange(3.0))
    np.testing.assert_array_equal(p.take(np.array([2, -1])).values, [2.0, 2.0])
    with pytest.raises(ValueError, match="indices"):
        p.take(np.array([3]))  # jnp.take filled NaN
    with pytest.raises(TypeError, match="indices"):
        p.take(np.array([0.5]))


def test_particles_eager_entry_points_compile_a_bounded_number_of_programs(xla_compiles):
    """300 distinct N through ess/expectation/resample/should_resample/log_mean_weight: the
    even N first (every bucket), then the odd N, which must compile (almost) nothing."""
    from probinfer.weights import ess, log_mean_weight, should_resample

    key = jax.random.key(0)

    def call(n):
        lw = np.linspace(-3.0, 0.0, n, dtype=np.float32)
        values = {"x": jax.device_put(np.arange(n, dtype=np.float32)), "y": np.ones((n, 2))}
        p = Particles(values, lw)
        float(p.ess), float(p.log_mean_weight), p.expectation(), p.resample(key)
        ess(lw), should_resample(lw), log_mean_weight(lw)

    sizes = range(2, 302)
    for n in sizes[::2]:
        call(n)
    with xla_compiles() as compiled:
        for n in sizes[1::2]:
            call(n)
    assert len(compiled) <= 2, f"{len(compiled)} compilations: {compiled[:5]}"
