"""Zero-copy array exchange between JAX and torch through DLPack.

Never write to an array after sharing it: both frameworks see the same memory.
torch is imported inside the functions, so importing this module does not load it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["to_jax", "to_torch"]


def to_torch(x, device=None, dtype=None):
    """A torch tensor sharing memory with the JAX (or numpy) array ``x`` where possible.

    ``device``/``dtype`` trigger a copy only when they differ from ``x``'s.
    """
    import torch

    if isinstance(x, jax.Array):
        x = x if x.ndim else x.reshape(1)
        t = torch.from_dlpack(x)
    else:
        t = torch.as_tensor(x)
    if dtype is not None or device is not None:
        t = t.to(device=device if device is not None else t.device, dtype=dtype or t.dtype)
    return t


def to_jax(t) -> jax.Array:
    """A JAX array sharing memory with the torch tensor ``t`` (detached, made contiguous)."""
    t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    try:
        return jnp.from_dlpack(t)
    except Exception:  # e.g. a CUDA tensor while JAX runs on CPU
        return jnp.asarray(t.cpu().numpy())
