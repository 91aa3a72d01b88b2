"""Conformalized quantile regression (CQR; Romano, Patterson, Candes 2019).

From lower/upper quantile predictions ``(lo(x), hi(x))`` the score
``s = max(lo(x) - y, y - hi(x))`` gives the interval ``[lo(x) - q, hi(x) + q]``
with ``q`` the split-conformal order statistic.  The quantile predictions may come
from two quantile regressors, from precomputed arrays, or from any predictive
distribution with an ``icdf`` method (the shared interface: numpyro
distributions), evaluated at ``alpha/2`` and ``1 - alpha/2``.

Quantile predictions must be finite. Crossing predictions (``lower > upper`` at a point,
common with two separately fitted quantile regressors) are rearranged: the band is
``[min(lower, upper), max(lower, upper)]`` at calibration and at prediction alike (the
monotone rearrangement of Chernozhukov, Fernandez-Val and Galichon 2010, which can only
bring the two estimates closer to the true quantiles). A negative correction ``q`` (a band
wider than needed) can make ``lo - q > hi + q`` at points where the band is narrow; such
an empty interval is returned as the single point ``(lo + hi) / 2``.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator

from ._estimator import (
    WrapsEstimator,
    calibration_target,
    check_calibrated,
    check_calibration_size,
    distribution_icdf,
    fitted_or_prefit,
    resolve_array,
    store_params,
)
from ._validation import as_float_array, check_alpha, check_same_length
from .quantile import conformal_quantile

__all__ = ["ConformalizedQuantileRegressor", "cqr_scores", "distribution_quantiles"]


def cqr_scores(y, lower, upper) -> np.ndarray:
    """CQR scores ``max(lo - y, y - hi)`` (negative inside the band), with the crossing
    quantiles rearranged: ``lo, hi = min(lower, upper), max(lower, upper)``."""
    y = as_float_array(y, "y")
    lo, hi = _rearranged(lower, upper)
    check_same_length(y=y, lower=lo, upper=hi)
    return _scores(y, lo, hi)


def _scores(y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``max(lo - y, y - hi)``; beyond float64's range: ``inf``, an unbounded score."""
    with np.errstate(over="ignore"):
        return np.maximum(lo - y, y - hi)


def _rearranged(lower, upper) -> tuple[np.ndarray, np.ndarray]:
    """Finite quantile predictions, sorted pointwise (the module docstring's rearrangement)."""
    lower = as_float_array(lower, "lower", allow_inf=False)
    upper = as_float_array(upper, "upper", allow_inf=False)
    check_same_length(lower=lower, upper=upper)
    return np.minimum(lower, upper), np.maximum(lower, upper)


def distribution_quantiles(distribution, levels) -> list[np.ndarray]:
    """``distribution.icdf(level)`` for each level, as 1-D NumPy arrays of length ``n``.

    ``distribution``: any shared predictive distribution with batch shape ``(n,)`` (scalar or
    ``(1,)`` events, e.g. a 1-D ``GaussianMixture``) or a sequence of ``n`` distributions (see
    :func:`calibration._estimator.distribution_cdf`).
    """
    return [distribution_icdf(distribution, level) for level in levels]


class ConformalizedQuantileRegressor(WrapsEstimator, BaseEstimator):
    """Split-conformal calibration of a lower/upper quantile band (a scikit-learn estimator).

    Parameters
    ----------
    lower_estimator, upper_estimator : estimator, optional
        Models whose ``predict(X)`` return the ``alpha/2`` and ``1 - alpha/2`` conditional
        quantiles. :meth:`fit` fits clones of them; without ``fit`` they are used as given
        (prefit). Not needed when passing ``lower=``/``upper=`` or ``distribution=``.
    alpha : float
        Miscoverage level in ``(0, 1)``.
    calibration_size : float, optional
        If set, :meth:`fit` holds out this fraction of its rows at random, fits on the rest
        and calibrates on the held-out rows.
    random_state : int or numpy.random.Generator, optional
        Source of the random split (required when ``calibration_size`` is set).

    Attributes
    ----------
    lower_estimator_, upper_estimator_ : estimator
        The fitted clones (after :meth:`fit`).
    conformity_scores_ : ndarray
        Calibration scores ``max(lo - y, y - hi)``.
    quantile_ : float
        Conformal correction ``q`` (``+inf`` if ``n`` is too small).
    """

    _wrapped = ("lower_estimator", "upper_estimator")

    def __init__(
        self,
        lower_estimator=None,
        upper_estimator=None,
        *,
        alpha: float = 0.1,
        calibration_size: float | None = None,
        random_state=None,
    ):
        store_params(self, locals())

    def _check_params(self) -> float:
        check_calibration_size(self.calibration_size)
        return check_alpha(self.alpha)

    def _band(self, X, lower, upper, distribution) -> tuple[np.ndarray, np.ndarray]:
        alpha = self._check_params()
        if distribution is not None:
            if lower is not None or upper is not None:
                raise ValueError("pass either distribution or lower/upper, not both")
            lower, upper = distribution_quantiles(distribution, (alpha / 2, 1 - alpha / 2))
        lo_model = fitted_or_prefit(self, "lower_estimator")
        hi_model = fitted_or_prefit(self, "upper_estimator")
        lo = resolve_array(lower, lo_model, "predict", X, "lower", "lower_estimator")
        hi = resolve_array(upper, hi_model, "predict", X, "upper", "upper_estimator")
        return _rearranged(lo, hi)

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
        alpha = self._check_params()
        y = as_float_array(calibration_target(y, "responses"), "y")
        lo, hi = self._band(X, lower, upper, distribution)
        check_same_length(y=y, lower=lo)
        self.conformity_scores_ = _scores(y, lo, hi)
        self.n_calibration_ = len(y)
        self.quantile_ = conformal_quantile(self.conformity_scores_, alpha)
        return self

    def predict_interval(self, X=None, *, lower=None, upper=None, distribution=None):
        """Intervals ``[lo - q, hi + q]``, shape ``(n_test, 2)``, with ``lo <= hi``.

        ``lo, hi`` are the rearranged quantile predictions (``min``/``max`` of ``lower`` and
        ``upper``); where a negative ``q`` would make the interval empty it is the point
        ``(lo + hi) / 2`` (see the module docstring). ``q = +inf`` (calibration set too small
        for ``alpha``) gives ``[-inf, +inf]``.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            Before :meth:`calibrate`.
        ValueError
            If the quantile predictions are not finite or differ in length.
        """
        check_calibrated(self, "predict_interval")
        lo, hi = self._band(X, lower, upper, distribution)
        with np.errstate(over="ignore"):  # a bound beyond float64's range: infinite
            out = np.stack([lo - self.quantile_, hi + self.quantile_], axis=1)
        empty = out[:, 0] > out[:, 1]
        out[empty] = (lo[empty] / 2 + hi[empty] / 2)[:, None]
        return out
