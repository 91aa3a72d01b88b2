"""Conformalized quantile regression (CQR; Romano, Patterson, Candes 2019).

From lower/upper quantile predictions ``(lo(x), hi(x))`` the score
``s = max(lo(x) - y, y - hi(x))`` gives the interval ``[lo(x) - q, hi(x) + q]``
with ``q`` the split-conformal order statistic.  The quantile predictions may come
from two quantile regressors, from precomputed arrays, or from any predictive
distribution with an ``icdf`` method (the shared interface: numpyro
distributions), evaluated at ``alpha/2`` and ``1 - alpha/2``.
"""

from __future__ import annotations

import numpy as np

from ._estimator import resolve_array
from ._validation import as_float_array, check_alpha, check_same_length
from .quantile import conformal_quantile

__all__ = ["ConformalizedQuantileRegressor", "cqr_scores", "distribution_quantiles"]


def cqr_scores(y, lower, upper) -> np.ndarray:
    """CQR scores ``max(lower - y, y - upper)`` (negative inside the band)."""
    y = as_float_array(y, "y")
    lower = as_float_array(lower, "lower")
    upper = as_float_array(upper, "upper")
    check_same_length(y=y, lower=lower, upper=upper)
    return np.maximum(lower - y, y - upper)


def distribution_quantiles(distribution, levels) -> list[np.ndarray]:
    """Evaluate ``distribution.icdf(level)`` for each level and return NumPy arrays.

    ``distribution`` is duck-typed: anything with ``icdf`` (numpyro distributions
    over JAX arrays are converted with ``np.asarray``).
    """
    icdf = getattr(distribution, "icdf", None)
    if not callable(icdf):
        raise TypeError("distribution must have a callable .icdf(q) method")
    out = []
    for level in levels:
        v = np.asarray(icdf(float(level)), dtype=np.float64)
        out.append(np.atleast_1d(v))
    return out


class ConformalizedQuantileRegressor:
    """Split-conformal calibration of a lower/upper quantile band.

    Parameters
    ----------
    lower_estimator, upper_estimator : object, optional
        Prefit models whose ``predict(X)`` return the ``alpha/2`` and ``1 - alpha/2``
        conditional quantiles.  Not needed when passing ``lower=``/``upper=`` or
        ``distribution=``.
    alpha : float
        Miscoverage level in ``(0, 1)``.

    Attributes
    ----------
    scores_ : ndarray
        Calibration scores ``max(lo - y, y - hi)``.
    quantile_ : float
        Conformal correction ``q`` (``+inf`` if ``n`` is too small).
    """

    def __init__(self, lower_estimator=None, upper_estimator=None, *, alpha: float = 0.1):
        self.lower_estimator = lower_estimator
        self.upper_estimator = upper_estimator
        self.alpha = check_alpha(alpha)

    def _band(self, X, lower, upper, distribution) -> tuple[np.ndarray, np.ndarray]:
        if distribution is not None:
            if lower is not None or upper is not None:
                raise ValueError("pass either distribution or lower/upper, not both")
            lower, upper = distribution_quantiles(
                distribution, (self.alpha / 2, 1 - self.alpha / 2)
            )
        lo = resolve_array(lower, self.lower_estimator, "predict", X, "lower", "lower_estimator")
        hi = resolve_array(upper, self.upper_estimator, "predict", X, "upper", "upper_estimator")
        lo = as_float_array(lo, "lower")
        hi = as_float_array(hi, "upper")
        check_same_length(lower=lo, upper=hi)
        return lo, hi

    def calibrate(
        self, X=None, y=None, *, lower=None, upper=None, distribution=None
    ) -> ConformalizedQuantileRegressor:
        """Score a calibration set.

        Parameters
        ----------
        X : array_like, optional
            Calibration features for the quantile estimators.
        y : array_like of shape (n,)
            Calibration responses.
        lower, upper : array_like of shape (n,), optional
            Precomputed quantile predictions.
        distribution : object, optional
            Predictive distribution with batch shape ``(n,)`` and an ``icdf`` method.
        """
        if y is None:
            raise ValueError("y (calibration responses) is required")
        y = as_float_array(y, "y")
        lo, hi = self._band(X, lower, upper, distribution)
        check_same_length(y=y, lower=lo)
        self.scores_ = np.maximum(lo - y, y - hi)
        self.n_calibration_ = len(y)
        self.quantile_ = conformal_quantile(self.scores_, self.alpha)
        return self

    def predict_interval(self, X=None, *, lower=None, upper=None, distribution=None):
        """Intervals ``[lo - q, hi + q]``, shape ``(n_test, 2)``."""
        if not hasattr(self, "quantile_"):
            raise ValueError("call calibrate() before predict_interval()")
        lo, hi = self._band(X, lower, upper, distribution)
        return np.stack([lo - self.quantile_, hi + self.quantile_], axis=1)
