"""Multi-head attention projections shared by the PFN and the Distribution Transformer.

Pre-LayerNorm: queries come from ``ln_q(h)``, keys and values from ``ln_kv(ctx)`` through one
linear map ``kv`` (so a context's keys/values can be computed once and cached, as the PFN
does), and the heads are merged back through ``out``. The parameter names (``ln_q``,
``ln_kv``, ``q``, ``kv``, ``out``) are those of the shipped weight files.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["AttentionProjections"]


class AttentionProjections(nn.Module):
    """The projections of a multi-head attention whose queries and keys/values may differ.

    Parameters
    ----------
    d_model : int
        Token width (divisible by ``n_heads``).
    n_heads : int
        Number of heads.
    """

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_kv = nn.LayerNorm(d_model)
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, d = t.shape
        return t.view(b, n, self.n_heads, d // self.n_heads).transpose(1, 2)

    def queries(self, h: torch.Tensor) -> torch.Tensor:
        """The queries of ``h (B, n, d)``, split into heads ``(B, heads, n, d / heads)``."""
        return self._heads(self.q(self.ln_q(h)))

    def keys_values(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values of ``ctx (B, N, d)``, each split into heads."""
        k, v = self.kv(self.ln_kv(ctx)).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def merge(self, a: torch.Tensor) -> torch.Tensor:
        """The output projection of the attention result ``a (B, heads, n, d / heads)``."""
        b, h, n, dh = a.shape
        return self.out(a.transpose(1, 2).reshape(b, n, h * dh))
