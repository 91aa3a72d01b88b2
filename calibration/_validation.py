"""Argument checks shared by every calibration estimator.

Each check returns the validated value in canonical form (``float`` for a level,
a float64 NumPy array for scores) and raises ``ValueError``/``TypeError`` naming
the argument and what was expected.
"""

from __future__ import annotations

import math
import os
import sys
from fractions import Fraction

import numpy as np

__all__ = [
    "as_float_array",
    "as_generator",
    "random_generator",
    "check_alpha",
    "check_choice",
    "check_class_codes",
    "check_positive_int",
    "check_same_length",
    "exact_fraction",
    "caller_stacklevel",
]


def check_alpha(alpha, name: str = "alpha") -> float:
    """Return ``alpha`` as a float after checking ``0 < alpha < 1``."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number in (0, 1), got {type(alpha).__name__}")
    alpha = float(alpha)
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {alpha!r}")
    return alpha


def check_choice(value, choices: tuple, name: str, *, allow_callable: bool = False):
    """Return ``value`` after checking that it is one of ``choices`` (or, if allowed, callable)."""
    if (allow_callable and callable(value)) or (isinstance(value, str) and value in choices):
        return value
    also = " or a callable" if allow_callable else ""
    raise ValueError(f"{name} must be one of {choices}{also}, got {value!r}")


def check_class_codes(y, n_classes: int, name: str = "y", *, ndim: int | None = 1) -> np.ndarray:
    """``y`` as int64 class codes in ``0..n_classes-1``.

    Integers, booleans, or floats with integer values are accepted (scikit-learn's float
    labels); NaN, fractions, other dtypes and codes out of range are refused, naming ``name``.
    ``ndim``: the required number of dimensions (``None``: any shape).
    """
    y = np.asarray(y)
    if ndim is not None and y.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array of class labels, got shape {y.shape}")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise ValueError(f"{name} contains NaN or infinite values; class labels expected")
        if (y != np.round(y)).any():
            raise ValueError(f"{name} must hold integer class labels 0..{n_classes - 1}")
    elif y.dtype.kind not in "iub":
        raise TypeError(
            f"{name} must hold integer class labels 0..{n_classes - 1}, got dtype {y.dtype}"
        )
    y = y.astype(np.int64)
    if ((y < 0) | (y >= n_classes)).any():
        raise ValueError(f"{name} must hold class labels in 0..{n_classes - 1}")
    return y


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    """Return ``value`` as an ``int`` after checking ``value >= minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def as_float_array(
    x, name: str, *, ndim: int | None = 1, allow_inf: bool = True, allow_empty: bool = False
) -> np.ndarray:
    """Convert ``x`` to a float64 array, rejecting NaN (and optionally infinities).

    Parameters
    ----------
    x : array_like
        Input values (NumPy, JAX or anything ``np.asarray`` accepts).
    name : str
        Argument name used in error messages.
    ndim : int or None
        Required number of dimensions (``None``: any).
    allow_inf : bool
        Whether ``+-inf`` entries are accepted (unbounded scores are legitimate).
    allow_empty : bool
        Whether a zero-length array is accepted.
    """
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be an array of real numbers") from exc
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {arr.shape}")
    if not allow_empty and arr.size == 0:
        raise ValueError(f"{name} must be non-empty")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN; scores and predictions must be numbers")
    if not allow_inf and np.isinf(arr).any():
        raise ValueError(f"{name} contains infinite values; finite numbers expected")
    return arr


def check_same_length(**arrays) -> int:
    """Check that all given arrays share their first dimension; return it."""
    lengths = {k: len(v) for k, v in arrays.items() if v is not None}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{k} has length {v}" for k, v in lengths.items())
        raise ValueError(f"length mismatch: {desc}; all must have the same length")
    return next(iter(lengths.values())) if lengths else 0


def as_generator(seed, name: str = "seed") -> np.random.Generator:
    """Return a NumPy ``Generator`` from an explicit integer seed or a ``Generator``.

    ``None`` is rejected: randomised methods need an explicit seed so that the same
    seed always gives the same result.
    """
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        raise ValueError(f"{name} is required for randomised methods (an int or a Generator)")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{name} must be an int or numpy.random.Generator")
    return np.random.default_rng(int(seed))


def random_generator(random_state, stream: int, name: str = "random_state") -> np.random.Generator:
    """The NumPy ``Generator`` of one use (``stream``) of an estimator's ``random_state``.

    An int gives an independent, reproducible stream per use (calibration uniforms and test
    uniforms must not be the same draws); a ``Generator`` is used as is (and advances).
    ``None`` is rejected: no global RNG state.
    """
    if isinstance(random_state, np.random.Generator):
        return random_state
    if random_state is None:
        raise ValueError(
            f"{name} is required for randomised methods (an int or a numpy.random.Generator)"
        )
    if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)):
        raise TypeError(f"{name} must be an int or numpy.random.Generator")
    if random_state < 0:
        raise ValueError(f"{name} must be a non-negative int, got {random_state}")
    return np.random.default_rng([int(random_state), stream])


def exact_fraction(x: float) -> Fraction:
    """The exact rational value of a binary float (used for exact rank arithmetic)."""
    if not math.isfinite(x):
        raise ValueError(f"expected a finite number, got {x!r}")
    return Fraction(x)


def caller_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning point at the first caller outside this package.

    For :func:`warnings.warn` called in the function that calls this one: a warning raised
    deep inside ``fit`` -> ``calibrate`` -> ``conformal_quantile`` then names the user's line.
    """
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while (
        frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == package
    ):
        frame, level = frame.f_back, level + 1
    return level
