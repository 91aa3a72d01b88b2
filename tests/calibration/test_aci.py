"""Adaptive conformal inference: the deterministic long-run miss-rate bound."""

import numpy as np
import pytest

from calibration import adaptive_conformal_intervals


@pytest.mark.parametrize("gamma", [0.005, 0.05])
def test_long_run_miss_rate_bound_under_shift(gamma):
    rng = np.random.default_rng(0)
    T = 3000
    scale = np.where(np.arange(T) < T // 2, 1.0, 4.0)  # abrupt variance shift
    y = np.cumsum(rng.normal(size=T)) * 0.01 + scale * rng.standard_t(3, size=T)
    y_pred = np.zeros(T)
    res = adaptive_conformal_intervals(y, y_pred, 0.1, gamma=gamma, window=200)
    bound = (max(0.1, 0.9) + gamma) / (gamma * T)
    assert abs(res.miss_rate - 0.1) <= bound
    assert np.all(res.alphas >= -gamma) and np.all(res.alphas <= 1 + gamma)
    # the update rule, exactly
    np.testing.assert_allclose(np.diff(res.alphas), gamma * (0.1 - res.errors[:-1]))


def test_first_steps_infinite_then_finite_and_bad_input():
    res = adaptive_conformal_intervals(np.arange(30.0), np.zeros(30), 0.1, gamma=0.01)
    assert np.all(np.isinf(res.intervals[:9]))  # fewer than 9 past scores
    assert np.isfinite(res.intervals[20]).all()
    with pytest.raises(ValueError, match="gamma"):
        adaptive_conformal_intervals(np.zeros(3), np.zeros(3), 0.1, gamma=0.0)
    with pytest.raises(ValueError, match="length mismatch"):
        adaptive_conformal_intervals(np.zeros(3), np.zeros(2), 0.1)
