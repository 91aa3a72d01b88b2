"""Key/value cache rows of LLM particles, carried through resampling.

:class:`KVRows` is the per-particle state that :class:`~probinfer.llm.hf.HFCausalLM`
attaches to a :class:`~probinfer.llm.store.Trajectories` store. It holds one batched
key/value cache (one row per particle that has one) in the layout of transformers'
:class:`~transformers.DynamicCache` (``[rows, heads, length, head_dim]`` per layer), the
attention mask over the cached positions, each row's next position and the row's
*pending* token: the last sampled token, whose key/value is not computed yet (it is fed
first at the next step, so no token is ever encoded twice).

Rows share one physical length: when some rows stop early within a step, the others go
on and the stopped rows get masked positions (attention mask 0), so positions and
attention stay exact. ``take(indices)`` gathers rows (``-1``: no row), which is how
children inherit their parent's cache on resampling and how finished particles drop
theirs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["KVRows"]


@dataclass(frozen=True, eq=False)
class KVRows:
    """Cache rows of ``len(row_of)`` particles.

    Attributes
    ----------
    layers
        Per model layer, ``(keys, values)`` tensors with ``rows`` leading entries.
    mask
        ``(rows, length)`` attention mask of the cached positions (long).
    position
        ``(rows,)`` the position id of each row's pending token (= real tokens cached).
    pending
        ``(rows,)`` each row's last sampled token, not yet fed to the model.
    row_of
        ``(n,)`` the row of each particle, ``-1`` when it has none.
    """

    layers: tuple
    mask: object
    position: object
    pending: object
    row_of: np.ndarray

    def __len__(self) -> int:
        return int(self.row_of.shape[0])

    @property
    def complete(self) -> bool:
        """Whether every particle has a row, in order (row ``i`` is particle ``i``)."""
        return bool(np.array_equal(self.row_of, np.arange(len(self))))

    @property
    def num_rows(self) -> int:
        return int(self.mask.shape[0])

    def take(self, indices) -> KVRows:
        """The rows of the particles at ``indices`` (``-1``: a particle without a row)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        rows = np.where(idx >= 0, self.row_of[np.clip(idx, 0, None)], -1)
        if len(self) == 0:
            rows = np.full(idx.shape, -1, dtype=np.int64)
        keep = rows >= 0
        sel = rows[keep]
        row_of = np.full(idx.shape, -1, dtype=np.int64)
        row_of[keep] = np.arange(sel.size)
        if sel.size == self.num_rows and np.array_equal(sel, np.arange(self.num_rows)):
            return KVRows(self.layers, self.mask, self.position, self.pending, row_of)
        import torch

        at = torch.as_tensor(sel, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, at)
        layers = tuple((k.index_select(0, at), v.index_select(0, at)) for k, v in self.layers)
        used = mask.any(0)
        if sel.size and not bool(used.all()):  # positions masked in every kept row: compact
            cols = torch.nonzero(used)[:, 0]
            mask = mask.index_select(1, cols)
            layers = tuple((k.index_select(2, cols), v.index_select(2, cols)) for k, v in layers)
        return KVRows(
            layers,
            mask,
            self.position.index_select(0, at),
            self.pending.index_select(0, at),
            row_of,
        )
