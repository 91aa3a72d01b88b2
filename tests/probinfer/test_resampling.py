"""Resampling: unbiasedness, variance ordering and float32 exactness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probinfer.resampling import SCHEMES, offspring_counts, resample

NUM_KEYS = 4000


def _counts_over_keys(log_weights, num, scheme, seed=0):
    keys = jax.random.split(jax.random.key(seed), NUM_KEYS)
    f = jax.jit(jax.vmap(lambda k: offspring_counts(k, log_weights, num=num, scheme=scheme)))
    return np.asarray(f(keys), dtype=np.float64)


WEIGHTS = np.array([0.31, 0.005, 0.12, 0.0, 0.2, 0.045, 0.08, 0.14, 0.1, 0.0])


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("num", [10, 7, 25])
def test_each_scheme_is_unbiased(scheme, num):
    lw = jnp.log(jnp.asarray(WEIGHTS, dtype=jnp.float32))
    counts = _counts_over_keys(lw, num, scheme)
    assert np.all(counts.sum(axis=1) == num)
    assert np.all(counts[:, WEIGHTS == 0] == 0), "zero-weight particles must never be chosen"
    expected = num * WEIGHTS
    # Standard error of the mean count from the empirical variance over independent keys;
    # 1/NUM_KEYS floors it for counts that are (almost) deterministic.
    se = np.maximum(np.sqrt(counts.var(axis=0, ddof=1) / NUM_KEYS), 1.0 / NUM_KEYS)
    z = np.abs(counts.mean(axis=0) - expected) / se
    assert np.all(z < 5.0), (scheme, num, z)


@pytest.mark.parametrize("scheme", ["systematic", "stratified", "residual"])
def test_lower_offspring_variance_than_multinomial(scheme):
    num = 10
    lw = jnp.log(jnp.asarray(WEIGHTS, dtype=jnp.float32))
    exact_multinomial = num * WEIGHTS * (1 - WEIGHTS)  # Var of Multinomial(num, w) counts
    counts = _counts_over_keys(lw, num, scheme, seed=1)
    total_var = counts.var(axis=0, ddof=1).sum()
    # The empirical multinomial variance agrees with the exact one...
    mult = _counts_over_keys(lw, num, "multinomial", seed=2).var(axis=0, ddof=1).sum()
    assert mult == pytest.approx(exact_multinomial.sum(), rel=0.1)
    # ...and the low-variance schemes are far below it (sampling error of a variance
    # over 4000 keys is a few percent).
    assert total_var < 0.8 * exact_multinomial.sum(), (scheme, total_var)


def _adversarial_log_weights(key, n):
    """Random float32 log weights of several shapes, including ones whose float32
    cumulative sum ends below 1 and trailing zero-weight particles."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    kind = jax.random.randint(k1, (), 0, 5)
    gauss = 5.0 * jax.random.normal(k2, (n,))
    flat = jnp.zeros(n) + 1e-3 * jax.random.normal(k2, (n,))  # cumsum of ~1/n drifts below 1
    spiky = jnp.where(jax.random.uniform(k3, (n,)) < 0.05, 0.0, -30.0)
    tail_zero = jnp.where(
        jnp.arange(n) >= n - 1 - jax.random.randint(k4, (), 0, n // 2), -jnp.inf, gauss
    )
    # one dominant early particle followed by many tiny ones
    dominant = jnp.where(jnp.arange(n) == 0, 0.0, -17.0 + jax.random.normal(k3, (n,)))
    return jnp.select(
        [kind == 0, kind == 1, kind == 2, kind == 3], [gauss, flat, spiky, tail_zero], dominant
    )


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("n", [3, 1000])
def test_never_out_of_range_over_random_float32_weights(scheme, n):
    keys = jax.random.split(jax.random.key(7), 10_000)

    def one(key):
        kw, kr = jax.random.split(key)
        lw = _adversarial_log_weights(kw, n).astype(jnp.float32)
        idx = resample(kr, lw, scheme=scheme)
        w = jnp.exp(lw - jax.scipy.special.logsumexp(lw))
        return jnp.min(idx), jnp.max(idx), jnp.min(w[idx])

    lo, hi, wmin = jax.jit(jax.vmap(one))(keys)
    assert int(jnp.min(lo)) >= 0
    assert int(jnp.max(hi)) <= n - 1
    assert float(jnp.min(wmin)) > 0.0, "a zero-weight particle was selected"


def test_cumulative_sum_below_one_is_handled():
    n = 1_000_003
    lw = jnp.zeros(n, dtype=jnp.float32)
    w = jnp.exp(lw - jax.scipy.special.logsumexp(lw))
    assert float(jnp.cumsum(w)[-1]) != 1.0  # the float32 cumsum really misses 1
    for scheme in SCHEMES:
        idx = resample(jax.random.key(3), lw, scheme=scheme)
        assert int(idx.max()) <= n - 1 and idx.shape == (n,)


def test_sorted_same_key_same_result_and_jit():
    lw = jnp.log(jnp.asarray(WEIGHTS + 0.01))
    a = resample(jax.random.key(5), lw, scheme="stratified")
    b = jax.jit(lambda k: resample(k, lw, scheme="stratified"))(jax.random.key(5))
    np.testing.assert_array_equal(a, b)
    assert np.all(np.diff(np.asarray(a)) >= 0)
    assert a.dtype == jnp.int32


def test_single_particle_and_degenerate_weights():
    assert resample(jax.random.key(0), jnp.zeros(1), num=4).tolist() == [0, 0, 0, 0]
    lw = jnp.array([-jnp.inf, 0.0, -jnp.inf])
    for scheme in SCHEMES:
        assert resample(jax.random.key(0), lw, scheme=scheme).tolist() == [1, 1, 1]


@pytest.mark.parametrize(
    "log_weights, kwargs, match",
    [
        (jnp.array([0.0, jnp.nan, 1.0]), {}, "NaN"),
        (jnp.full(4, -jnp.inf), {}, "all -inf"),
        (jnp.zeros(3), {"num": 0}, "num"),
        (jnp.zeros(3), {"num": 2.5}, "num"),
        (jnp.zeros(3), {"scheme": "bogus"}, "scheme"),
    ],
)
def test_bad_input_raises(log_weights, kwargs, match):
    with pytest.raises(ValueError, match=match):
        resample(jax.random.key(0), log_weights, **kwargs)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_float64_log_weights_beyond_float32_range_resample_correctly(scheme):
    # Issue 22, item 3: [1e39, 0] passed the float64 check, became [inf, 0] in float32 and
    # gave [15, 15] (a padding slot) for N = 2. Shifted in float64 first, index 0 has all
    # the weight.
    for seed in range(5):
        key = jax.random.key(seed)
        np.testing.assert_array_equal(resample(key, np.array([1e39, 0.0]), scheme=scheme), [0, 0])
        np.testing.assert_array_equal(
            resample(key, np.array([-1e39, 3e38, 3e38]), num=4, scheme=scheme) > 0, True
        )
        idx = np.asarray(resample(key, np.array([-1e39, -1e39]), scheme=scheme))  # equal
        assert idx.min() >= 0 and idx.max() <= 1


def test_non_real_log_weights_raise_type_error():
    with pytest.raises(TypeError, match="log_weights"):
        resample(jax.random.key(0), np.array([1 + 1j, 0.0]))
