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
