"""Torch twin of :class:`probinfer.distributions.BarDistribution`: the PFN training loss.

:func:`bar_log_prob` computes exactly the log density of
:class:`~probinfer.distributions.bar.BarDistribution` (same bucket rule, same half-normal tails
with scale ``width / Phi^{-1}(3/4)``), so the network is trained on the density it later returns.
:func:`borders_from_samples` places the bucket borders at quantiles of prior draws of ``y``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from probinfer.distributions.bar import HALF_NORMAL_MEDIAN

__all__ = ["bar_log_prob", "bar_nll", "borders_from_samples"]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def bar_log_prob(borders: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Log density of the bar distribution with half-normal tails.

    Parameters
    ----------
    borders : tensor (K+1,)
        Strictly increasing bucket borders.
    logits : tensor batch + (K,)
    y : tensor broadcastable to batch

    Returns
    -------
    tensor of shape batch: ``log f(y)``.
    """
    k = borders.shape[0] - 1
    if logits.shape[-1] != k:
        raise ValueError(
            f"logits must have last dimension K = {k}, got shape {tuple(logits.shape)}"
        )
    y = torch.as_tensor(y, dtype=logits.dtype, device=logits.device)
    y = y.expand(logits.shape[:-1]) if y.dim() < logits.dim() else y
    borders = borders.to(dtype=logits.dtype, device=logits.device)
    widths = borders[1:] - borders[:-1]
    s_left = widths[0] / HALF_NORMAL_MEDIAN
    s_right = widths[-1] / HALF_NORMAL_MEDIAN
    logp = torch.log_softmax(logits, dim=-1)
    idx = torch.searchsorted(borders[1:-1].contiguous(), y.contiguous(), right=True)
    logp_idx = torch.gather(logp, -1, idx.unsqueeze(-1)).squeeze(-1)
    log_w = torch.log(widths)[idx]
    # finite everywhere, so gradients through the unused branch of `where` stay finite
    log_left = _half_normal_log_pdf(borders[1] - y, s_left)
    log_right = _half_normal_log_pdf(y - borders[-2], s_right)
    log_shape = torch.where(idx == 0, log_left, torch.where(idx == k - 1, log_right, -log_w))
    return logp_idx + log_shape


def _half_normal_log_pdf(distance: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Log density of a tail at ``distance`` beyond its inner border: the half-normal of
    ``scale`` (evaluated for any sign of ``distance``)."""
    z = distance / scale
    return math.log(2.0) - torch.log(scale) - _LOG_SQRT_2PI - 0.5 * z**2


def bar_nll(borders: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean negative log density (the PFN training loss)."""
    return -bar_log_prob(borders, logits, y).mean()


def borders_from_samples(y: np.ndarray, n_buckets: int, widen: float = 0.0) -> np.ndarray:
    """Bucket borders at equally spaced quantiles of prior draws ``y`` (``n_buckets + 1`` values).

    The outermost borders are the sample minimum and maximum (then the half-normal tails take
    over); duplicates are removed by a tiny monotone nudge so borders are strictly increasing.
    """
    y = np.sort(np.asarray(y, dtype=np.float64).ravel())
    if y.size < 2 * n_buckets:
        raise ValueError(f"need at least 2 * n_buckets = {2 * n_buckets} samples, got {y.size}")
    if n_buckets < 2:
        raise ValueError(f"n_buckets must be >= 2, got {n_buckets}")
    b = np.quantile(y, np.linspace(0.0, 1.0, n_buckets + 1))
    if widen:
        b[0] -= widen
        b[-1] += widen
    eps = 1e-6 * max(1.0, float(np.abs(b).max()))
    for i in range(1, b.size):
        if b[i] <= b[i - 1]:
            b[i] = b[i - 1] + eps
    return b.astype(np.float32)
