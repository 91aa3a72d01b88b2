"""Argument validators shared across :mod:`amortized` (numpy only, cheap to import)."""

from __future__ import annotations

import numpy as np

__all__ = ["finite_array"]


def finite_array(a, name: str, dtype=np.float32) -> np.ndarray:
    """``a`` as a finite numpy array of ``dtype``.

    Raises
    ------
    TypeError
        If ``a`` is not numeric (the message names the argument ``name``).
    ValueError
        If ``a`` holds a NaN or an infinity.
    """
    try:
        arr = np.asarray(a, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a numeric array, got {type(a).__name__}") from e
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return arr
