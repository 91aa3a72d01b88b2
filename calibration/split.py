"""Split conformal regression with absolute and normalised residual scores.

Scores on a held-out calibration set, ``s_i = |y_i - mu(x_i)|`` (absolute) or
``s_i = |y_i - mu(x_i)| / sigma(x_i)`` (normalised), give the interval
``mu(x) +- q sigma(x)`` with ``q`` the split-conformal order statistic
(:func:`calibration.quantile.conformal_quantile`); it covers a new exchangeable
response with probability in ``[1 - alpha, 1 - alpha + 1/(n + 1))`` (no ties).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin

from ._estimator import (
    WrapsEstimator,
    calibration_target,
    check_calibrated,
    check_calibration_size,
    fitted_or_prefit,
    resolve_array,
    store_params,
)
from ._validation import as_float_array, check_alpha, check_choice, check_same_length
from .quantile import conformal_quantile

__all__ = [
    "SplitConformalRegressor",
    "absolute_residual_scores",
    "normalized_residual_scores",
]

_SCORES = ("absolute", "normalized")


def absolute_residual_scores(y, y_pred) -> np.ndarray:
    """``|y - y_pred|`` with input checks (no NaN, finite ``y_pred``, equal lengths)."""
    y = as_float_array(y, "y")
    y_pred = _check_point_predictions(y_pred)
    check_same_length(y=y, y_pred=y_pred)
    return _residuals(y, y_pred)


def normalized_residual_scores(y, y_pred, scale) -> np.ndarray:
    """``|y - y_pred| / scale``; ``y_pred`` finite, ``scale`` strictly positive and finite."""
    y = as_float_array(y, "y")
    y_pred = _check_point_predictions(y_pred)
    scale = _check_scale(scale, "scale")
    check_same_length(y=y, y_pred=y_pred, scale=scale)
    return _residuals(y, y_pred, scale)


def _residuals(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray | None = None) -> np.ndarray:
    """``|y - mu|`` (``/ sigma``); beyond float64's range: ``inf``, an unbounded score."""
    with np.errstate(over="ignore"):
        r = np.abs(y - mu)
        return r if sigma is None else r / sigma


def _check_point_predictions(y_pred) -> np.ndarray:
    """Point predictions must be finite: an infinite ``mu`` has no interval around it."""
    return as_float_array(y_pred, "y_pred", allow_inf=False)


def _check_scale(scale, name: str) -> np.ndarray:
    scale = as_float_array(scale, name, allow_inf=False)
    if (scale <= 0).any():
        raise ValueError(f"{name} must be strictly positive (a predicted spread)")
    return scale


class SplitConformalRegressor(WrapsEstimator, RegressorMixin, BaseEstimator):
    """Split conformal prediction intervals around a point predictor (a scikit-learn estimator).

    Parameters
    ----------
    estimator : estimator, optional
        A regressor with ``predict(X)``. :meth:`fit` fits a clone of it (``estimator_``);
        without ``fit`` it is used as given (prefit). May be ``None`` when predictions are
        passed as ``y_pred=``.
    alpha : float
        Miscoverage level in ``(0, 1)``; intervals cover with probability at
        least ``1 - alpha``.
    conformity_score : {"absolute", "normalized"}
        ``|y - mu|`` or ``|y - mu| / sigma``.
    scale_estimator : object, optional
        For ``"normalized"``: a prefit object whose ``predict(X)`` returns ``sigma(x) > 0``
        (or pass ``scale=`` arrays instead).
    calibration_size : float, optional
        If set, :meth:`fit` holds out this fraction of its rows at random (``random_state``),
        fits on the rest and calibrates on the held-out rows: fitted and calibrated in one call,
        which is what a :class:`~sklearn.pipeline.Pipeline` final step needs.
    random_state : int or numpy.random.Generator, optional
        Source of the random split (required when ``calibration_size`` is set).

    Attributes
    ----------
    estimator_ : estimator
        The fitted clone (after :meth:`fit`).
    conformity_scores_ : ndarray of shape (n,)
        Calibration scores.
    quantile_ : float
        The conformal threshold ``q`` (``+inf`` when ``n`` is too small for
        ``alpha``: the documented infinite interval).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y_cal = rng.normal(size=200)
    >>> cp = SplitConformalRegressor(alpha=0.1).calibrate(y=y_cal, y_pred=np.zeros(200))
    >>> cp.predict_interval(y_pred=np.zeros(3)).shape
    (3, 2)
    """

    def __init__(
        self,
        estimator=None,
        *,
        alpha: float = 0.1,
        conformity_score: str = "absolute",
        scale_estimator=None,
        calibration_size: float | None = None,
        random_state=None,
    ) -> None:
        store_params(self, locals())

    def _check_params(self) -> float:
        check_choice(self.conformity_score, _SCORES, "conformity_score")
        check_calibration_size(self.calibration_size)
        return check_alpha(self.alpha)

    def _scale(self, scale, X) -> np.ndarray | None:
        if self.conformity_score != "normalized":
            if scale is not None:
                raise ValueError("scale is only used with conformity_score='normalized'")
            return None
        s = resolve_array(scale, self.scale_estimator, "predict", X, "scale", "scale_estimator")
        return _check_scale(s, "scale")

    def calibrate(self, X=None, y=None, *, y_pred=None, scale=None) -> SplitConformalRegressor:
        """Compute calibration scores on a held-out set.

        Parameters
        ----------
        X : array_like, optional
            Calibration features (used when ``y_pred``/``scale`` are not given).
        y : array_like of shape (n,)
            Calibration responses.
        y_pred, scale : array_like of shape (n,), optional
            Precomputed point predictions and spreads.
        """
        alpha = self._check_params()
        y = as_float_array(calibration_target(y, "responses"), "y")
        mu = self.predict(X, y_pred=y_pred)
        check_same_length(y=y, y_pred=mu)
        if self.conformity_score == "absolute":
            self._check_no_scale(scale)
            self.conformity_scores_ = _residuals(y, mu)
        else:
            sigma = self._scale(scale, X)
            check_same_length(y=y, scale=sigma)
            self.conformity_scores_ = _residuals(y, mu, sigma)
        self.n_calibration_ = len(y)
        self.quantile_ = conformal_quantile(self.conformity_scores_, alpha)
        return self

    def _check_no_scale(self, scale) -> None:
        if scale is not None:
            raise ValueError("scale is only used with conformity_score='normalized'")

    def predict(self, X=None, *, y_pred=None) -> np.ndarray:
        """Point predictions of the (fitted or prefit) estimator, or ``y_pred`` itself."""
        model = fitted_or_prefit(self, "estimator")
        return _check_point_predictions(
            resolve_array(y_pred, model, "predict", X, "y_pred", "estimator")
        )

    def predict_interval(self, X=None, *, y_pred=None, scale=None) -> np.ndarray:
        """Prediction intervals, shape ``(n_test, 2)``: ``[mu - q sigma, mu + q sigma]``.

        When the calibration set is too small for ``alpha`` the rows are
        ``[-inf, +inf]`` (a valid, documented answer rather than an error); a bound beyond
        float64's range (``|mu| + q sigma > 1.8e308``) is also infinite.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            Before :meth:`calibrate`.
        ValueError
            If ``y_pred`` (or the estimator's predictions) is not finite, or ``scale`` is not
            finite and positive.
        """
        check_calibrated(self, "predict_interval")
        mu = self.predict(X, y_pred=y_pred)
        q = self.quantile_
        if self.conformity_score == "normalized":
            sigma = self._scale(scale, X)
            check_same_length(y_pred=mu, scale=sigma)
            with np.errstate(over="ignore"):
                q = q * sigma
        else:
            self._check_no_scale(scale)
        out = np.empty((mu.shape[0], 2))
        with np.errstate(over="ignore"):  # a bound beyond float64's range: infinite
            np.subtract(mu, q, out=out[:, 0])
            np.add(mu, q, out=out[:, 1])
        return out
