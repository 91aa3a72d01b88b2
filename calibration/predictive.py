"""Conformal predictive distributions from a predictive distribution's ``cdf``.

With a (possibly miscalibrated) predictive distribution ``F_x`` and calibration
PIT scores ``u_i = F_{x_i}(y_i)``, the split conformal predictive system is

    Q(y, tau) = (#{i : u_i < F_x(y)} + tau (#{i : u_i = F_x(y)} + 1)) / (n + 1),

and ``Q(Y, tau)`` is exactly uniform for an exchangeable test point and
``tau ~ U(0, 1)`` (Vovk et al.).  Without ``tau`` the lower/upper envelopes
``tau = 0, 1`` are returned.  Two-sided intervals use the ``icdf`` of ``F_x`` at
the PIT order statistics: ``[F_x^{-1}(u_(k_lo)), F_x^{-1}(u_(k_hi))]`` with
``k_lo = floor((n + 1) alpha / 2)`` and ``k_hi = ceil((n + 1)(1 - alpha / 2))``
(``-inf``/``+inf`` outside ``1..n``); coverage is ``(k_hi - k_lo)/(n + 1) >= 1 - alpha``.
"""

from __future__ import annotations

import math

import numpy as np

from ._validation import as_float_array, as_generator, check_alpha, exact_fraction

__all__ = ["ConformalPredictiveDistribution", "pit_scores"]


def pit_scores(distribution, y) -> np.ndarray:
    """``F(y)`` for a distribution with a ``cdf`` method (numpyro, JAX arrays converted)."""
    cdf = getattr(distribution, "cdf", None)
    if not callable(cdf):
        raise TypeError("distribution must have a callable .cdf(y) method")
    y = as_float_array(y, "y")
    u = np.atleast_1d(np.asarray(cdf(y), dtype=np.float64))
    if np.isnan(u).any():
        raise ValueError("distribution.cdf(y) returned NaN")
    return u


class ConformalPredictiveDistribution:
    """Split conformal predictive system built on PIT scores.

    Attributes
    ----------
    pit_ : ndarray of shape (n,)
        Sorted calibration PIT values ``F_{x_i}(y_i)``.
    """

    def calibrate(self, y, distribution) -> ConformalPredictiveDistribution:
        """Store the sorted PIT values of the calibration responses.

        ``distribution`` has batch shape ``(n,)`` matching ``y``.
        """
        u = pit_scores(distribution, y)
        if u.shape != (len(np.atleast_1d(y)),):
            raise ValueError(f"distribution batch shape must match y: got {u.shape}")
        self.pit_ = np.sort(u)
        return self

    def _check(self):
        if not hasattr(self, "pit_"):
            raise ValueError("call calibrate() first")

    def cdf(self, distribution, y, *, tau=None, seed=None):
        """Conformal predictive cdf ``Q(y, tau)`` at test points.

        Returns ``(lower, upper)`` (``tau = 0`` and ``1``) when neither ``tau`` nor
        ``seed`` is given, else the randomised value with ``tau`` given or drawn
        from ``seed``.
        """
        self._check()
        z = pit_scores(distribution, y)
        n = len(self.pit_)
        below = np.searchsorted(self.pit_, z, side="left")
        equal = np.searchsorted(self.pit_, z, side="right") - below
        lower = below / (n + 1)
        upper = (below + equal + 1) / (n + 1)
        if tau is None and seed is None:
            return lower, upper
        if tau is None:
            tau = as_generator(seed).uniform(size=z.shape)
        tau = np.broadcast_to(as_float_array(tau, "tau", ndim=None), z.shape)
        return lower + tau * (upper - lower)

    def predict_interval(self, distribution, alpha: float = 0.1) -> np.ndarray:
        """Equal-tailed level ``1 - alpha`` intervals, shape ``(n_test, 2)``."""
        self._check()
        alpha = check_alpha(alpha)
        a = exact_fraction(alpha)
        n = len(self.pit_)
        k_lo = math.floor((n + 1) * a / 2)
        k_hi = math.ceil((n + 1) * (1 - a / 2))
        icdf = getattr(distribution, "icdf", None)
        if not callable(icdf):
            raise TypeError("distribution must have a callable .icdf(q) method")
        lo = hi = None
        if k_lo >= 1:
            lo = np.atleast_1d(np.asarray(icdf(float(self.pit_[k_lo - 1])), dtype=np.float64))
        if k_hi <= n:
            hi = np.atleast_1d(np.asarray(icdf(float(self.pit_[k_hi - 1])), dtype=np.float64))
        shape = (lo if lo is not None else hi if hi is not None else np.zeros(1)).shape
        if lo is None and hi is None:
            shape = np.atleast_1d(np.asarray(icdf(0.5))).shape
        lo = np.full(shape, -np.inf) if lo is None else lo
        hi = np.full(shape, np.inf) if hi is None else hi
        return np.stack([lo, hi], axis=1)
