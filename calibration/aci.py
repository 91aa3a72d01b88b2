"""Adaptive conformal inference for time series (Gibbs and Candes 2021).

At time ``t`` the interval uses the split-conformal threshold of the scores seen
so far at the running level ``alpha_t``; after observing ``y_t`` the level is
updated by ``alpha_{t+1} = alpha_t + gamma (alpha - err_t)`` with ``err_t`` the
miss indicator.  Whatever the data, the long-run miss rate satisfies
``|mean(err) - alpha| <= (max(alpha_1, 1 - alpha_1) + gamma) / (gamma T)``.
``alpha_t <= 0`` gives the infinite interval (``err = 0``) and ``alpha_t >= 1`` the
empty set (returned as ``lower = +inf > upper = -inf``, ``err = 1``).
"""

from __future__ import annotations

import math

import numpy as np

from ._validation import as_float_array, check_alpha, check_same_length, exact_fraction

__all__ = ["AdaptiveConformalResult", "adaptive_conformal_intervals"]


class AdaptiveConformalResult:
    """Output of :func:`adaptive_conformal_intervals` (arrays of length ``T``).

    Attributes
    ----------
    intervals : ndarray of shape (T, 2)
    alphas : ndarray of shape (T,)
        The level ``alpha_t`` used at each step.
    errors : ndarray of shape (T,)
        Miss indicators ``err_t``.
    """

    def __init__(self, intervals, alphas, errors):
        self.intervals = intervals
        self.alphas = alphas
        self.errors = errors

    @property
    def miss_rate(self) -> float:
        return float(self.errors.mean())


def _threshold(past: np.ndarray, alpha_t: float) -> float:
    if alpha_t <= 0:
        return math.inf
    if alpha_t >= 1:
        return -math.inf
    n = len(past)
    k = math.ceil((n + 1) * (1 - exact_fraction(alpha_t)))
    if k > n:
        return math.inf
    return float(np.partition(past, k - 1)[k - 1])


def adaptive_conformal_intervals(
    y,
    y_pred,
    alpha: float = 0.1,
    *,
    gamma: float = 0.005,
    calibration_scores=None,
    window: int | None = None,
    alpha_init: float | None = None,
) -> AdaptiveConformalResult:
    """Online intervals ``y_pred_t +- q_t`` with the ACI level update.

    Parameters
    ----------
    y, y_pred : array_like of shape (T,)
        Observed series and its one-step-ahead predictions.
    alpha : float
        Target miss rate in ``(0, 1)``.
    gamma : float
        Step size ``> 0``.
    calibration_scores : array_like, optional
        Absolute residuals available before time 0 (a warm start).
    window : int, optional
        Use only the most recent ``window`` scores (adapts faster to shift).
    alpha_init : float, optional
        ``alpha_1`` (default ``alpha``).
    """
    y = as_float_array(y, "y", allow_inf=False)
    y_pred = as_float_array(y_pred, "y_pred", allow_inf=False)
    check_same_length(y=y, y_pred=y_pred)
    alpha = check_alpha(alpha)
    if not (gamma > 0 and math.isfinite(gamma)):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    alpha_t = alpha if alpha_init is None else float(alpha_init)
    warm = (
        np.empty(0)
        if calibration_scores is None
        else as_float_array(calibration_scores, "calibration_scores", allow_empty=True)
    )
    scores = np.concatenate([warm, np.abs(y - y_pred)])
    n0 = len(warm)
    T = len(y)
    intervals = np.empty((T, 2))
    alphas = np.empty(T)
    errors = np.empty(T)
    for t in range(T):
        end = n0 + t
        start = 0 if window is None else max(0, end - window)
        q = _threshold(scores[start:end], alpha_t)
        alphas[t] = alpha_t
        intervals[t] = (y_pred[t] - q, y_pred[t] + q)
        err = float(not (scores[end] <= q))
        errors[t] = err
        alpha_t = alpha_t + gamma * (alpha - err)
    return AdaptiveConformalResult(intervals, alphas, errors)
