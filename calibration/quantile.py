"""The split-conformal order statistic.

With ``n`` exchangeable calibration scores and a test score, the test score is at
most the ``k``-th smallest calibration score with probability ``k / (n + 1)``
(exactly, without ties; at least, with ties).  The smallest ``k`` reaching
``1 - alpha`` is ``k = ceil((n + 1)(1 - alpha))``.  When ``k > n`` no calibration
score is large enough and the documented answer is the upper bound of the score
(``+inf`` by default): the infinite interval, or the full label set.  That answer is valid
but says nothing, so :func:`conformal_quantile` reports it with one ``UserWarning`` naming
``n``, ``alpha`` and the smallest ``n`` that would do (:func:`warn_too_few`): every
estimator that calibrates through it warns the same way.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from ._validation import (
    as_float_array,
    caller_stacklevel,
    check_alpha,
    check_positive_int,
    exact_fraction,
)

__all__ = ["conformal_rank", "conformal_quantile", "min_calibration_size", "warn_too_few"]


def conformal_rank(n: int, alpha: float) -> int:
    """Return ``k = ceil((n + 1)(1 - alpha))``, computed exactly.

    The product is evaluated in rational arithmetic on the exact binary value of
    ``alpha`` so that no rounding can move ``k`` by one.

    Parameters
    ----------
    n : int
        Number of calibration scores (``n >= 0``).
    alpha : float
        Miscoverage level in ``(0, 1)``.
    """
    n = check_positive_int(n, "n", minimum=0)
    alpha = check_alpha(alpha)
    return math.ceil((n + 1) * (1 - exact_fraction(alpha)))


def min_calibration_size(alpha: float) -> int:
    """Smallest ``n`` for which the level-``alpha`` conformal set is finite.

    This is ``ceil(1/alpha) - 1`` (exactly: the least ``n`` with ``k <= n``).
    """
    alpha = check_alpha(alpha)
    a = exact_fraction(alpha)
    # k <= n  <=>  (n + 1)(1 - a) <= n  <=>  n >= (1 - a) / a
    return math.ceil((1 - a) / a)


def warn_too_few(n: int, alpha: float, n_min: int, *, what: str = "calibration points") -> None:
    """Warn (``UserWarning``) that ``n`` calibration points are too few for ``alpha``.

    The result is then the documented trivial one (the infinite interval, the full set):
    valid, but uninformative, and easy to mistake for a good one (100% coverage).

    Parameters
    ----------
    n : int
        Number of calibration points.
    alpha : float
        The miscoverage level asked for.
    n_min : int
        The smallest ``n`` giving a finite threshold (:func:`min_calibration_size`).
    what : str
        What was counted (e.g. ``"calibration points of class 'cat'"``).
    """
    warnings.warn(
        f"n_cal={n} {what} are too few for alpha={alpha:g}: at least {n_min} are needed "
        f"for a finite threshold, so the intervals are infinite and the sets are full (valid "
        f"but uninformative)",
        UserWarning,
        stacklevel=caller_stacklevel(),
    )


def conformal_quantile(
    scores, alpha: float, *, axis: int = -1, upper_bound: float = np.inf, warn: bool = True
) -> np.ndarray | float:
    """The ``k``-th smallest score along ``axis`` with ``k = ceil((n + 1)(1 - alpha))``.

    Parameters
    ----------
    scores : array_like
        Calibration scores; any shape, reduced along ``axis`` (so a batch of
        independent calibration sets can be processed at once).  NaN is rejected.
    alpha : float
        Miscoverage level in ``(0, 1)``.
    axis : int
        Axis holding the ``n`` calibration scores.
    upper_bound : float
        Returned where ``k > n`` (too few scores for the level): ``+inf`` gives the
        infinite interval / full label set; a known bound ``B`` on the score gives
        the tighter set ``{score <= B}``.
    warn : bool
        Warn (:func:`warn_too_few`) when ``k > n``; ``False`` for a caller that reports
        several such calls at once (Mondrian calibration, one quantile per class).

    Returns
    -------
    float or ndarray
        The threshold (a float when ``scores`` is 1-D).
    """
    s = as_float_array(scores, "scores", ndim=None, allow_empty=True)
    if s.ndim == 0:
        raise ValueError("scores must have at least one dimension")
    n = s.shape[axis]
    k = conformal_rank(n, alpha)
    if k > n:
        if warn:
            warn_too_few(n, alpha, min_calibration_size(alpha))
        out = np.full(np.delete(s.shape, axis % s.ndim), float(upper_bound))
    else:
        out = np.partition(s, k - 1, axis=axis).take(k - 1, axis=axis)
    return float(out) if np.ndim(out) == 0 else out
