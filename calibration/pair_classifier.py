"""Pair head and pair loss for any torch classifier with categorical outputs (torch module).

:class:`PairClassifier` puts two heads on an encoder ``x -> features (n, F)`` (any torch
module: an MLP, a CNN, a sequence model read at its last position, or a classifier's logits
with ``F = K``): the first-order head gives ``p_hat(y | x)`` and the pair head gives
``p_hat(y2 | y1, x)`` from the features and an embedding of ``y1``. The pair loss is
``-log p_hat(y1 | x) - log p_hat(y2 | y1, x)`` on triples ``(x, y1, y2)`` of two independent
responses. :meth:`PairClassifier.predict_pair` returns the NumPy arrays that
:mod:`calibration.second_order` consumes: ``p`` and ``p_same[i, y] = p_hat(Y2 = y | Y1 = y, x_i)``.

This module imports torch; :mod:`calibration.second_order` imports it only on first use.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._validation import check_class_codes, check_positive_int, check_same_length

__all__ = ["PairClassifier", "fit_pair_classifier"]


class PairClassifier(nn.Module):
    """An encoder with a first-order head and a pair head.

    Parameters
    ----------
    encoder : torch.nn.Module
        Maps a batch of inputs to features of shape ``(n, feature_dim)``.
    num_classes : int
        ``K``, the number of categories.
    feature_dim : int
        ``F``, the encoder's output width.
    hidden : int
        Width of the pair head's hidden layer.
    label_dim : int
        Width of the embedding of ``y1``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        feature_dim: int,
        *,
        hidden: int = 64,
        label_dim: int = 16,
    ):
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
        self.num_classes = check_positive_int(num_classes, "num_classes", 2)
        feature_dim = check_positive_int(feature_dim, "feature_dim")
        hidden = check_positive_int(hidden, "hidden")
        label_dim = check_positive_int(label_dim, "label_dim")
        self.encoder = encoder
        self.head = nn.Linear(feature_dim, self.num_classes)
        self.label_embedding = nn.Embedding(self.num_classes, label_dim)
        self.pair_head = nn.Sequential(
            nn.Linear(feature_dim + label_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, self.num_classes),
        )

    def forward(self, x) -> torch.Tensor:
        """First-order logits ``(n, K)``."""
        return self.head(self.encoder(x))

    def _pair_logits(self, features: torch.Tensor, y1: torch.Tensor) -> torch.Tensor:
        return self.pair_head(torch.cat([features, self.label_embedding(y1)], dim=-1))

    def pair_logits(self, x, y1: torch.Tensor) -> torch.Tensor:
        """Logits of ``y2`` given ``y1`` and ``x``, ``(n, K)``."""
        return self._pair_logits(self.encoder(x), y1)

    def pair_loss(self, x, y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
        """Mean of ``-log p_hat(y1 | x) - log p_hat(y2 | y1, x)`` over the batch."""
        h = self.encoder(x)
        ce = nn.functional.cross_entropy
        return ce(self.head(h), y1) + ce(self._pair_logits(h, y1), y2)

    @torch.no_grad()
    def predict_pair(self, x, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """``p (n, K)`` and ``p_same (n, K)`` as float64 NumPy arrays (no gradients).

        ``p_same[i, y]`` evaluates the pair head with ``y1 = y`` for every class ``y``.
        """
        self.eval()
        k = self.num_classes
        ps, qs = [], []
        n = len(x)
        for start in range(0, n, batch_size):
            xb = x[start : start + batch_size]
            h = self.encoder(xb)
            ps.append(torch.softmax(self.head(h), dim=-1))
            m = h.shape[0]
            hk = h.repeat_interleave(k, dim=0)  # (m K, F): every class as y1
            y1 = torch.arange(k, device=h.device).repeat(m)
            q = torch.softmax(self._pair_logits(hk, y1), dim=-1).reshape(m, k, k)
            qs.append(torch.diagonal(q, dim1=1, dim2=2))
        return (
            torch.cat(ps).double().cpu().numpy(),
            torch.cat(qs).double().cpu().numpy(),
        )


def _as_labels(y, k: int, name: str) -> torch.Tensor:
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    return torch.from_numpy(np.ascontiguousarray(check_class_codes(y, k, name)))


def fit_pair_classifier(
    model: PairClassifier,
    x,
    y1,
    y2,
    *,
    key,
    epochs: int = 50,
    batch_size: int = 512,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
) -> list[float]:
    """Train ``model`` with the pair loss (AdamW with a cosine learning-rate decay to 0,
    shuffled mini-batches); returns the mean loss of each epoch.

    Parameters
    ----------
    model : PairClassifier
    x : torch.Tensor
        Inputs (first axis: examples), on the model's device.
    y1, y2 : array_like of shape (n,)
        Two independent responses per input.
    key
        ``jax.random`` key; the shuffling generator is seeded from it (same key, same run
        for the same initial parameters).
    """
    from probinfer._random import key_to_seed

    if not isinstance(model, PairClassifier):
        raise TypeError(f"model must be a PairClassifier, got {type(model).__name__}")
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    if not (lr > 0):
        raise ValueError(f"lr must be positive, got {lr!r}")
    k = model.num_classes
    y1 = _as_labels(y1, k, "y1")
    y2 = _as_labels(y2, k, "y2")
    n = check_same_length(x=x, y1=y1, y2=y2)
    device = next(model.parameters()).device
    y1, y2 = y1.to(device), y2.to(device)
    gen = torch.Generator(device="cpu").manual_seed(key_to_seed(key))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * -(-n // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    history = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen).to(device)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            loss = model.pair_loss(x[idx], y1[idx], y2[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        history.append(total / n)
    model.eval()
    return history
