import jax.numpy as jnp
import numpy as np
import pytest

from probinfer.weights import (
    check_log_weights,
    ess,
    log_mean_weight,
    log_normalize,
    normalize,
    should_resample,
)


def test_normalize_matches_numpy_for_extreme_log_weights():
    lw = jnp.array([-1000.0, -1001.0, -1002.5, -jnp.inf])
    w = np.exp(np.array([0.0, -1.0, -2.5, -np.inf]))
    w /= w.sum()
    # float32 spacing at |x| = 1000 is 6e-5, which bounds the relative error of w.
    np.testing.assert_allclose(normalize(lw), w, rtol=1e-4)
    np.testing.assert_allclose(jnp.exp(log_normalize(lw)).sum(), 1.0, rtol=1e-6)


def test_ess_bounds_and_known_values():
    assert float(ess(jnp.zeros(7))) == pytest.approx(7.0, rel=1e-6)
    assert float(ess(jnp.array([0.0, -jnp.inf, -jnp.inf]))) == pytest.approx(1.0)
    w = np.array([0.5, 0.25, 0.25])
    assert float(ess(jnp.log(w) + 300.0)) == pytest.approx(1 / np.sum(w**2), rel=1e-5)


def test_log_mean_weight_is_log_of_mean():
    lw = jnp.array([0.1, -2.0, 3.0, 0.5])
    expected = np.log(np.mean(np.exp(np.asarray(lw, dtype=np.float64))))
    assert float(log_mean_weight(lw)) == pytest.approx(expected, rel=1e-6)


def test_should_resample_thresholds():
    lw = jnp.log(jnp.array([0.7, 0.1, 0.1, 0.1]))  # ESS = 1/0.52 ~ 1.92
    assert bool(should_resample(lw, 0.5))  # 1.92 < 2
    assert not bool(should_resample(lw, 0.4))  # 1.92 >= 1.6
    assert bool(should_resample(jnp.zeros(4), 1.0))  # every step, even at ESS = N
    assert not bool(should_resample(lw, 0.0))


@pytest.mark.parametrize(
    "bad, match",
    [
        (jnp.array([0.0, jnp.nan]), "NaN"),
        (jnp.array([-jnp.inf, -jnp.inf]), "all -inf"),
        (jnp.array([0.0, jnp.inf]), r"\+inf"),
        (jnp.zeros((2, 2)), "1-D"),
        (jnp.zeros(0), "non-empty"),
    ],
)
def test_check_log_weights_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        check_log_weights(bad)


# ---- issue 22: degenerate input (item 5), float64 beyond float32 (item 3) -------------------


@pytest.mark.parametrize("fn", [ess, should_resample, log_mean_weight, normalize, log_normalize])
@pytest.mark.parametrize(
    "bad, error",
    [
        (np.array([np.inf, 0.0]), ValueError),  # ess gave nan, should_resample False
        (np.array([0.0, np.nan]), ValueError),
        (np.zeros(0), ValueError),  # log_mean_weight gave nan
        (np.float64(0.5), ValueError),  # no particle axis
        (np.array([1 + 2j, 0]), TypeError),
        (np.array(["0", "1"]), TypeError),
        ([[0.0], [0.0, 1.0]], TypeError),  # ragged
    ],
)
def test_invalid_log_weights_raise_naming_the_argument(fn, bad, error):
    with pytest.raises(error, match="log_weights"):
        fn(bad)


def test_all_minus_inf_has_documented_results():
    dead = np.full(3, -np.inf)
    assert float(ess(dead)) == 0.0
    assert float(log_mean_weight(dead)) == -np.inf
    assert bool(should_resample(dead, 0.5))
    for fn in (normalize, log_normalize):  # no distribution to normalise
        with pytest.raises(ValueError, match="log_weights are all -inf"):
            fn(dead)


def test_should_resample_rejects_a_nan_or_non_real_threshold():
    with pytest.raises(ValueError, match="threshold"):
        should_resample(np.zeros(3), float("nan"))
    with pytest.raises(TypeError, match="threshold"):
        should_resample(np.zeros(3), "0.5")


def test_float64_log_weights_beyond_float32_range_are_exact_where_shift_invariant():
    huge = np.array([1e39, 0.0])  # finite in float64, inf in float32
    assert float(ess(huge)) == 1.0
    np.testing.assert_array_equal(normalize(huge), [1.0, 0.0])
    np.testing.assert_array_equal(log_normalize(huge), [0.0, -np.inf])
    assert not bool(should_resample(huge, 0.4)) and bool(should_resample(huge, 0.6))
    assert float(ess(np.array([-1e39, -1e39]))) == 2.0  # both -inf in float32
    with pytest.raises(ValueError, match="log_weights.*beyond the range"):
        log_mean_weight(huge)  # the result itself (1e39) does not fit float32
    with pytest.raises(ValueError, match="log_weights.*beyond the range"):
        check_log_weights(huge)


def test_results_are_in_range_and_traced_calls_agree():
    import jax

    lw = np.log(np.array([0.5, 0.25, 0.25, 1e-3]))
    assert 1.0 <= float(ess(lw)) <= 4.0
    assert float(ess(np.zeros(600))) == 600.0  # clipped to N, never N(1 + eps)
    for fn in (ess, log_mean_weight, normalize, log_normalize, should_resample):
        np.testing.assert_allclose(jax.jit(fn)(lw), fn(lw), rtol=1e-5)
    batch = np.stack([lw, lw[::-1] + 3.0])  # vmap over two weight vectors
    np.testing.assert_allclose(jax.vmap(ess)(batch), [ess(b) for b in batch], rtol=1e-6)
    np.testing.assert_allclose(ess(batch.T), [ess(b) for b in batch], rtol=1e-6)  # axis 0
