"""PFN range guards (issue 15, point 5): a :class:`PFNRangeWarning` naming the trained range when
``x``, the number of training points or the ``y`` scale leave the prior of the shipped model; no
warning inside it; the documented standardisation recovers the exact GP answer on rescaled data.
"""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from amortized.pfn import PFNRangeWarning
from amortized.pretrained import load_pretrained, prior_of


@pytest.fixture(scope="module")
def pfn():
    return load_pretrained("gp-1d")


def test_training_domain_of_shipped_model(pfn):
    dom = pfn.training_domain
    assert dom["x"] == (0.0, 1.0) and dom["max_train"] == 50
    assert dom["y"] == (float(pfn.borders[0]), float(pfn.borders[-1]))


@pytest.mark.parametrize(
    "case, match",
    [
        ("huge_y", r"y_train spans \[1e\+06, 1e\+06\], outside the trained y range"),
        ("far_x", r"x_train spans \[5, 6\], outside the trained x range \[0, 1\]"),
        ("many_points", r"1000 training points, more than the 50"),
    ],
)
def test_warns_outside_the_prior(pfn, case, match):
    rng = np.random.default_rng(0)
    if case == "huge_y":
        args = ([0.1, 0.5, 0.9], [1e6] * 3, [0.5])
    elif case == "far_x":
        x = np.linspace(5, 6, 10)
        args = (x, np.sin(x), [5.5])
    else:
        args = (rng.uniform(size=1000), 0.1 * rng.normal(size=1000), [0.5])
    with pytest.warns(PFNRangeWarning, match=match) as rec:
        pfn.predict(*args)
    assert rec[0].filename == __file__  # points at the caller
    with pytest.warns(PFNRangeWarning):
        pfn.predict_logits(*args)


def test_silent_inside_the_prior(pfn):
    x, y = prior_of("gp-1d").sample(jax.random.key(1), 4, 30)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PFNRangeWarning)
        pfn.predict(x[:, :20, 0], y[:, :20], x[:, 20:, 0])
        pfn.predict(np.zeros(0), np.zeros(0), [0.5])  # empty context: the learned prior


def test_documented_standardisation_matches_exact_gp(pfn):
    # data from the GP prior, affinely rescaled: x -> 100 + 50 x, y -> 7 + 20 y
    prior = prior_of("gp-1d")
    x, y = prior.sample(jax.random.key(2), 1, 40)
    x, y = x[0, :, 0], y[0]
    xr, yr = 100 + 50 * x, 7 + 20 * y
    with pytest.warns(PFNRangeWarning):
        pfn.predict(xr[:30], yr[:30], xr[30:])
    a, b = 100.0, 150.0  # known x range of the rescaled data
    m, s = yr[:30].mean(), yr[:30].std()
    s0 = np.sqrt(prior.outputscale + prior.noise)
    xs = lambda v: (v - a) / (b - a)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error", PFNRangeWarning)
        d = pfn.predict(xs(xr[:30]), s0 * (yr[:30] - m) / s, xs(xr[30:]))
    mean = m + s / s0 * np.asarray(d.mean)
    # the exact GP on the standardised data, mapped back the same way
    gp_mean, _ = prior.posterior_predictive(
        xs(xr[:30])[None, :, None], (s0 * (yr[:30] - m) / s)[None], xs(xr[30:])[None, :, None]
    )
    np.testing.assert_allclose(mean, m + s / s0 * np.asarray(gp_mean)[0], atol=0.15 * s / s0)


@settings(max_examples=80, derandomize=True, database=None, deadline=None)
@given(
    st.integers(0, 6),
    st.integers(1, 4),
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=16, max_size=16),
    st.sampled_from(["ok", "short_y", "2d_x", "empty_test"]),
)
def test_fuzz_predict(pfn, n, m, pool, shape):
    """Random values (NaN, inf, float32 extremes) and shapes: only ValueError/TypeError, and
    a prediction that is returned has finite logits."""
    v = np.asarray(pool, dtype=np.float32)
    x, y, xs = v[:n], v[6 : 6 + n], v[12 : 12 + m]
    if shape == "short_y":
        y = y[: max(n - 1, 0)] if n else v[:1]
    elif shape == "2d_x":
        x = np.stack([x, x], axis=-1)
    elif shape == "empty_test":
        xs = xs[:0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PFNRangeWarning)
        try:
            logits = pfn.predict_logits(x, y, xs)
        except (ValueError, TypeError):
            return
    assert torch.isfinite(logits).all()
