"""Duck-typed access to prefit estimators and predictive distributions."""

from __future__ import annotations

import numpy as np

__all__ = ["call_method", "resolve_array"]


def call_method(obj, method: str, X, obj_name: str) -> np.ndarray:
    """Call ``obj.method(X)`` and return a float64 array, with a clear error if missing."""
    if obj is None:
        raise ValueError(f"{obj_name} is None: pass precomputed values or set {obj_name}")
    fn = getattr(obj, method, None)
    if not callable(fn):
        raise TypeError(f"{obj_name} must have a callable .{method}() method")
    return np.asarray(fn(X), dtype=np.float64)


def resolve_array(precomputed, obj, method: str, X, name: str, obj_name: str) -> np.ndarray:
    """Use the precomputed array if given, else ``obj.method(X)``."""
    if precomputed is not None:
        return precomputed
    if X is None:
        raise ValueError(f"pass either {name} (precomputed) or X (with {obj_name} set)")
    return call_method(obj, method, X, obj_name)
