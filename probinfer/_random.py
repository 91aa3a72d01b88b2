"""Randomness shared by the package's modules: seeds for torch/numpy generators drawn
from ``jax.random`` keys (the package's only source of randomness)."""

from __future__ import annotations

import jax
import numpy as np

__all__ = ["key_to_seed"]


def key_to_seed(key) -> int:
    """A 31-bit integer seed from a ``jax.random`` key (for torch/numpy generators): an
    FNV-1a hash of the key's data words (:func:`jax.random.key_data`), read to the host.
    Same key, same seed."""
    h = 1469598103934665603
    for w in np.asarray(jax.random.key_data(key)).reshape(-1).tolist():
        h = ((h ^ int(w)) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h % (2**31 - 1)
