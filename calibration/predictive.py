"""Conformal predictive distributions from a predictive distribution's ``cdf``.

With a (possibly miscalibrated) predictive distribution ``F_x`` and calibration
PIT scores ``u_i = F_{x_i}(y_i)``, the split conformal predictive system is

    Q(y, tau) = (#{i : u_i < F_x(y)} + tau (#{i : u_i = F_x(y)} + 1)) / (n + 1),

and ``Q(Y, tau)`` is exactly uniform for an exchangeable test point and
``tau ~ U(0, 1)`` (Vovk et al.).  Without ``tau`` the lower/upper envelopes
``tau = 0, 1`` are returned.  Two-sided intervals use the ``icdf`` of ``F_x`` at
the PIT order statistics: ``[F_x^{-1}(u_(k_lo)), F_x^{-1}(u_(k_hi))]`` with
``k_lo = floor((n + 1) alpha / 2)`` and ``k_hi = ceil((n + 1)(1 - alpha / 2))``
(``-inf``/``+inf`` outside ``1..n``, with a warning); coverage is
``(k_hi - k_lo)/(n + 1) >= 1 - alpha``.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.base import BaseEstimator

from ._estimator import check_calibrated, distribution_cdf, distribution_icdf
from ._validation import as_float_array, check_alpha, exact_fraction, random_generator
from .quantile import min_calibration_size, warn_too_few

__all__ = ["ConformalPredictiveDistribution", "pit_scores"]


def pit_scores(distribution, y) -> np.ndarray:
    """``F_i(y_i)``, shape ``(n,)``, for any shared predictive distribution.

    ``distribution`` has batch shape ``(n,)`` (scalar events, or ``(1,)`` events as a 1-D
    ``GaussianMixture``), or is a sequence of ``n`` per-point distributions (particle
    distributions). JAX arrays are converted to NumPy.

    Raises
    ------
    ValueError
        If ``y`` holds NaN, the shapes do not match, or the cdf returns NaN or values outside
        ``[0, 1]``.
    """
    y = np.atleast_1d(as_float_array(y, "y", ndim=None))
    if y.ndim != 1:
        raise ValueError(f"y must be a 1-D array, got shape {y.shape}")
    u = distribution_cdf(distribution, y)
    if u.shape != y.shape:
        raise ValueError(
            f"distribution batch shape must match y: cdf(y) has shape {u.shape}, y {y.shape}"
        )
    if np.isnan(u).any():
        raise ValueError("distribution.cdf(y) returned NaN")
    if ((u < 0) | (u > 1)).any():
        raise ValueError("distribution.cdf(y) returned values outside [0, 1]")
    return u


class ConformalPredictiveDistribution(BaseEstimator):
    """Split conformal predictive system built on PIT scores (a scikit-learn estimator).

    Parameters
    ----------
    random_state : int or numpy.random.Generator, optional
        Source of ``tau ~ U(0, 1)`` in :meth:`cdf` when ``tau`` is not given.

    Attributes
    ----------
    pit_ : ndarray of shape (n,)
        Sorted calibration PIT values ``F_{x_i}(y_i)``.
    """

    def __init__(self, random_state=None):
        self.random_state = random_state

    def calibrate(self, y, distribution) -> ConformalPredictiveDistribution:
        """Store the sorted PIT values of the calibration responses.

        ``distribution`` has batch shape ``(n,)`` matching ``y`` (or is a sequence of ``n``
        distributions); see :func:`pit_scores`.
        """
        self.pit_ = np.sort(pit_scores(distribution, y))
        return self

    def _counts(self, distribution, y):
        check_calibrated(self, "cdf")
        z = pit_scores(distribution, y)
        below = np.searchsorted(self.pit_, z, side="left")
        equal = np.searchsorted(self.pit_, z, side="right") - below
        return below, equal, len(self.pit_)

    def cdf_bounds(self, distribution, y) -> np.ndarray:
        """Lower and upper envelopes ``Q(y, 0)``, ``Q(y, 1)``, shape ``(n_test, 2)``."""
        below, equal, n = self._counts(distribution, y)
        return np.stack([below / (n + 1), (below + equal + 1) / (n + 1)], axis=1)

    def cdf(self, distribution, y, *, tau=None) -> np.ndarray:
        """Conformal predictive cdf ``Q(y, tau)``, shape ``(n_test,)``.

        ``tau`` in ``[0, 1]`` (scalar or one per point); when ``None`` it is drawn
        ``U(0, 1)`` from ``random_state``, which makes ``Q(Y, tau)`` exactly uniform.
        For the deterministic envelopes use :meth:`cdf_bounds`.
        """
        below, equal, n = self._counts(distribution, y)
        if tau is None:
            tau = random_generator(self.random_state, 0).uniform(size=below.shape)
        tau = np.broadcast_to(as_float_array(tau, "tau", ndim=None, allow_inf=False), below.shape)
        if ((tau < 0) | (tau > 1)).any():
            raise ValueError("tau must lie in [0, 1]")
        return (below + tau * (equal + 1)) / (n + 1)

    def predict_interval(self, distribution, alpha: float = 0.1) -> np.ndarray:
        """Equal-tailed level ``1 - alpha`` intervals, shape ``(n_test, 2)``."""
        check_calibrated(self, "predict_interval")
        alpha = check_alpha(alpha)
        a = exact_fraction(alpha)
        n = len(self.pit_)
        k_lo = math.floor((n + 1) * a / 2)
        k_hi = math.ceil((n + 1) * (1 - a / 2))
        if k_lo < 1 or k_hi > n:  # n < 2/alpha - 1: an infinite end
            warn_too_few(n, alpha, min_calibration_size(alpha / 2))
        lo = distribution_icdf(distribution, self.pit_[k_lo - 1]) if k_lo >= 1 else None
        hi = distribution_icdf(distribution, self.pit_[k_hi - 1]) if k_hi <= n else None
        if lo is None and hi is None:  # n too small for alpha: the whole line, of the test shape
            lo = np.full(distribution_icdf(distribution, 0.5).shape, -np.inf)
        lo = np.full(hi.shape, -np.inf) if lo is None else lo
        hi = np.full(lo.shape, np.inf) if hi is None else hi
        return np.stack([lo, hi], axis=1)
