"""The torch training loss computes exactly BarDistribution's log density."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from amortized.bar_torch import bar_log_prob, bar_nll, borders_from_samples
from probinfer.distributions.bar import BarDistribution


def _case(seed=0, k=40, n=500):
    rng = np.random.default_rng(seed)
    borders = np.sort(rng.normal(size=k + 1)).astype(np.float32) * 2.0
    logits = (2.0 * rng.normal(size=(n, k))).astype(np.float32)
    # values in every region: far tails, borders themselves, inner buckets
    y = np.concatenate(
        [
            rng.normal(scale=3.0, size=n - 2 * (k + 1) - 4),
            borders,
            borders + 1e-4,
            [-1e3, -50.0, 50.0, 1e3],
        ]
    ).astype(np.float32)
    return borders, logits, y


@pytest.mark.parametrize("seed", [0, 1])
def test_torch_log_prob_equals_bar_distribution(seed):
    borders, logits, y = _case(seed)
    lp_t = bar_log_prob(torch.from_numpy(borders), torch.from_numpy(logits), torch.from_numpy(y))
    lp_j = BarDistribution(jnp.asarray(borders), jnp.asarray(logits)).log_prob(jnp.asarray(y))
    np.testing.assert_allclose(lp_t.numpy(), np.asarray(lp_j), rtol=1e-5, atol=1e-5)


def test_torch_loss_gradients_finite_at_tails():
    borders, logits, _ = _case(2)
    lg = torch.from_numpy(logits[:6].copy()).requires_grad_(True)
    y = torch.tensor([-1e4, -20.0, float(borders[1]), float(borders[-2]), 20.0, 1e4])
    loss = bar_nll(torch.from_numpy(borders), lg, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.all(torch.isfinite(lg.grad))
    # d(-log f)/d logits = (softmax - onehot(bucket)) / n: rows sum to zero
    np.testing.assert_allclose(lg.grad.sum(-1).numpy(), 0.0, atol=1e-6)


def test_bad_logits_shape():
    with pytest.raises(ValueError, match="logits"):
        bar_log_prob(torch.linspace(0, 1, 5), torch.zeros(3, 5), torch.zeros(3))


def test_borders_from_samples_are_quantiles():
    rng = np.random.default_rng(0)
    y = rng.normal(size=100_000)
    b = borders_from_samples(y, 100)
    assert b.shape == (101,) and np.all(np.diff(b) > 0)
    assert b[0] == pytest.approx(y.min()) and b[-1] == pytest.approx(y.max())
    # each inner bucket holds 1/100 of the samples
    counts = np.histogram(y, bins=b)[0]
    np.testing.assert_allclose(counts / y.size, 0.01, atol=2e-4)
    # ties are nudged apart
    b2 = borders_from_samples(np.r_[np.zeros(1000), rng.normal(size=1000)], 10)
    assert np.all(np.diff(b2) > 0)
    with pytest.raises(ValueError, match="n_buckets"):
        borders_from_samples(y, 1)
