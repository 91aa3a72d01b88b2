"""Argument validators shared across the package (numpy only, cheap to import)."""

from __future__ import annotations

import numpy as np

__all__ = ["check_num"]


def check_num(num, name: str = "num") -> int:
    """``num`` as an ``int`` when it is a positive integer (Python or numpy, not a bool);
    otherwise a ``ValueError`` naming the argument ``name``."""
    if isinstance(num, bool) or not isinstance(num, int | np.integer) or num < 1:
        raise ValueError(f"{name} must be a positive integer, got {num!r}")
    return int(num)
