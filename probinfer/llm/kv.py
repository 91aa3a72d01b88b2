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

:class:`PRMRows` is the same for a process reward model
(:class:`~probinfer.llm.hf.HFRewardModel`): every token of a row is encoded (the score is
read at the last one), and each particle also keeps the token ids its row holds, so the
next step encodes only the ids past the longest common prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["KVRows", "PRMRows"]


def _is_identity(idx: np.ndarray, n: int) -> bool:
    """Whether the indices ``idx`` are ``0, ..., n - 1`` in order (a take that changes
    nothing; compared as Python ints, cheaper than numpy calls for a few particles)."""
    return idx.size == n and idx.tolist() == list(range(n))


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
        return _is_identity(self.row_of, len(self))

    @property
    def num_rows(self) -> int:
        return int(self.mask.shape[0])

    def fill(self, other: KVRows, at) -> KVRows:
        """These rows with the particles at ``at`` (which have none) given ``other``'s rows
        (one per entry of ``at``, in order), reordered so that row ``i`` is particle ``i``.

        The shorter cache is left-padded with masked positions, so positions and attention
        stay exact. Used to prefill only the particles that lost their rows (children of a
        pinned reference in conditional SMC) instead of the whole batch.
        """
        import torch

        at = np.asarray(at, dtype=np.int64).reshape(-1)
        base, other = self.gathered(), other.gathered()
        if not base.layers or not other.layers or other.num_rows != at.size:
            raise ValueError("fill needs non-empty caches and one row of other per index")
        if np.any(base.row_of[at] >= 0):
            raise ValueError("fill: the particles at `at` already have rows")
        length = max(base.mask.shape[1], other.mask.shape[1])

        def left_pad(rows: KVRows):
            extra = length - rows.mask.shape[1]
            if extra == 0:
                return rows.layers, rows.mask
            mask = torch.nn.functional.pad(rows.mask, (extra, 0))
            layers = tuple(
                (
                    torch.nn.functional.pad(k, (0, 0, extra, 0)),
                    torch.nn.functional.pad(v, (0, 0, extra, 0)),
                )
                for k, v in rows.layers
            )
            return layers, mask

        la, ma = left_pad(base)
        lb, mb = left_pad(other)
        layers = tuple(
            (torch.cat([ka, kb], 0), torch.cat([va, vb], 0)) for (ka, va), (kb, vb) in zip(la, lb)
        )
        row_of = base.row_of.copy()
        row_of[at] = base.num_rows + np.arange(at.size)
        merged = KVRows(
            layers,
            torch.cat([ma, mb], 0),
            torch.cat([base.position, other.position], 0),
            torch.cat([base.pending, other.pending], 0),
            row_of,
        )
        return merged.gathered()

    def take(self, indices) -> KVRows:
        """The rows of the particles at ``indices`` (``-1``: a particle without a row).

        Lazy: only the particle-to-row map is composed (no tensor is touched), so the
        gathers of a step (live subset, resampling, dropping finished particles) cost one
        physical gather, :meth:`gathered`, when the rows are next used.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n, at = len(self), idx.tolist()
        if n == 0:
            row_of = np.full(idx.shape, -1, dtype=np.int64)
        elif at == list(range(n)):
            return self
        else:
            row_of = self.row_of[idx]
            if at and min(at) < 0:  # -1 read the last row: reset
                row_of[idx < 0] = -1
        return KVRows(self.layers, self.mask, self.position, self.pending, row_of)

    def gathered(self) -> KVRows:
        """The same particles with their rows physically in order: row ``k`` is the
        ``k``-th particle that has one (one ``index_select`` per tensor; positions masked
        in every kept row are dropped). Without rows missing, :attr:`complete` holds."""
        rows = self.row_of
        if _is_identity(rows, self.num_rows):
            return self
        keep = rows >= 0
        sel = rows[keep]
        row_of = np.full(rows.shape, -1, dtype=np.int64)
        row_of[keep] = np.arange(sel.size)
        if _is_identity(sel, self.num_rows):
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


@dataclass(frozen=True, eq=False)
class PRMRows:
    """Reward-model cache rows of ``len(ids)`` particles.

    Attributes
    ----------
    kv
        The key/value rows (:class:`KVRows`; its ``pending`` is unused).
    ids
        Per particle, the token ids encoded in its row (``None``: no row).
    """

    kv: KVRows
    ids: tuple

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, indices) -> PRMRows:
        """The rows of the particles at ``indices`` (``-1``: a particle without a row)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if _is_identity(idx, len(self)):
            return self  # (every particle grew, none repeated): nothing to do
        ids = tuple(None if i < 0 else self.ids[i] for i in idx.tolist())
        return PRMRows(self.kv.take(idx), ids)

    def dense(self):
        """``(layers, mask)`` with one row per particle, in order: particles without a row
        get zero keys/values under a zero mask (no position of theirs is attended)."""
        import torch

        kv = self.kv.gathered()
        if kv.complete or not kv.layers:
            return kv.layers, kv.mask
        n = len(self)
        have = np.flatnonzero(kv.row_of >= 0)
        at = torch.as_tensor(have, dtype=torch.long, device=kv.mask.device)

        def spread(x):
            out = x.new_zeros((n,) + tuple(x.shape[1:]))
            out[at] = x
            return out

        return tuple((spread(k), spread(v)) for k, v in kv.layers), spread(kv.mask)
