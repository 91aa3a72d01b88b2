"""The PFN network (torch): encoder of (x, y), PFN-masked transformer, bar-distribution head.

Attention pattern (Müller et al. 2022): training positions attend to training positions, query
positions attend to training positions only. It is implemented as two attention calls per layer
sharing weights, self-attention among the context and cross-attention from the queries to the
context, so the context keys/values do not depend on the queries (they can be cached and queries
of any number are independent of each other). A learned "empty context" token is always part of
the context, so an empty training set is valid and gives the learned prior predictive.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from amortized.attention import AttentionProjections
from amortized.model_files import JSONConfig

__all__ = ["PFNConfig", "PFNTransformer"]


@dataclass(frozen=True)
class PFNConfig(JSONConfig):
    """Architecture of a PFN (everything needed to rebuild the module)."""

    x_dim: int = 1
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 4
    d_ff: int = 256
    n_buckets: int = 256

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{f.name} must be a positive integer, got {v!r}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.n_buckets < 2:
            raise ValueError(f"n_buckets must be >= 2, got {self.n_buckets}")


class _Block(AttentionProjections):
    """Pre-LayerNorm transformer block whose queries and keys/values may differ."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__(d_model, n_heads)
        self.ln_ff = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))

    def forward(self, h: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        h = h + self.merge(F.scaled_dot_product_attention(self.queries(h), kv[0], kv[1]))
        return h + self.ff(self.ln_ff(h))


class PFNTransformer(nn.Module):
    """PFN: maps (training set, query inputs) to bucket logits for each query."""

    def __init__(self, config: PFNConfig):
        super().__init__()
        self.config = config
        c = config
        self.x_encoder = nn.Linear(c.x_dim, c.d_model)
        self.y_encoder = nn.Linear(1, c.d_model)
        self.empty_token = nn.Parameter(torch.zeros(1, 1, c.d_model))
        self.blocks = nn.ModuleList(_Block(c.d_model, c.n_heads, c.d_ff) for _ in range(c.n_layers))
        self.head = nn.Sequential(
            nn.LayerNorm(c.d_model),
            nn.Linear(c.d_model, c.d_ff),
            nn.GELU(),
            nn.Linear(c.d_ff, c.n_buckets),
        )
        nn.init.normal_(self.empty_token, std=0.02)

    def encode_context(
        self, x_train: torch.Tensor, y_train: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Run the context through all layers and return each layer's keys/values (the cache).

        ``x_train (B, n, d)``, ``y_train (B, n)``; ``n`` may be 0.
        """
        b = x_train.shape[0]
        ctx = self.x_encoder(x_train) + self.y_encoder(y_train.unsqueeze(-1))
        ctx = torch.cat([self.empty_token.expand(b, 1, -1), ctx], dim=1)
        cache = []
        for block in self.blocks:
            kv = block.keys_values(ctx)
            cache.append(kv)
            ctx = block(ctx, kv)
        return cache

    def query(
        self, cache: list[tuple[torch.Tensor, torch.Tensor]], x_test: torch.Tensor
    ) -> torch.Tensor:
        """Bucket logits ``(B, m, K)`` of queries ``x_test (B, m, d)`` given a context cache."""
        h = self.x_encoder(x_test)
        for block, kv in zip(self.blocks, cache):
            h = block(h, kv)
        return self.head(h)

    def forward(
        self, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor
    ) -> torch.Tensor:
        return self.query(self.encode_context(x_train, y_train), x_test)
