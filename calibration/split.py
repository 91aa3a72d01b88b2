"""Split conformal regression with absolute and normalised residual scores.

Scores on a held-out calibration set, ``s_i = |y_i - mu(x_i)|`` (absolute) or
``s_i = |y_i - mu(x_i)| / sigma(x_i)`` (normalised), give the interval
``mu(x) +- q sigma(x)`` with ``q`` the split-conformal order statistic
(:func:`calibration.quantile.conformal_quantile`); it covers a new exchangeable
response with probability in ``[1 - alpha, 1 - alpha + 1/(n + 1))`` (no ties).
"""

from __future__ import annotations

import numpy as np

from ._estimator import resolve_array
from ._validation import as_float_array, check_alpha, check_same_length
from .quantile import conformal_quantile

__all__ = [
    "SplitConformalRegressor",
    "absolute_residual_scores",
    "normalized_residual_scores",
]

_SCORES = ("absolute", "normalized")


def absolute_residual_scores(y, y_pred) -> np.ndarray:
    """``|y - y_pred|`` with input checks (no NaN, equal lengths)."""
    y = as_float_array(y, "y")
    y_pred = as_float_array(y_pred, "y_pred")
    check_same_length(y=y, y_pred=y_pred)
    return np.abs(y - y_pred)


def normalized_residual_scores(y, y_pred, scale) -> np.ndarray:
    """``|y - y_pred| / scale``; ``scale`` must be strictly positive and finite."""
    y = as_float_array(y, "y")
    y_pred = as_float_array(y_pred, "y_pred")
    scale = _check_scale(scale, "scale")
    check_same_length(y=y, y_pred=y_pred, scale=scale)
    return np.abs(y - y_pred) / scale


def _check_scale(scale, name: str) -> np.ndarray:
    scale = as_float_array(scale, name, allow_inf=False)
    if (scale <= 0).any():
        raise ValueError(f"{name} must be strictly positive (a predicted spread)")
    return scale


class SplitConformalRegressor:
    """Split conformal prediction intervals around a prefit point predictor.

    Parameters
    ----------
    estimator : object, optional
        A prefit regressor with ``predict(X)``; may be ``None`` when predictions
        are passed as ``y_pred=``.  ``fit`` fits it if it has a ``fit`` method.
    alpha : float
        Miscoverage level in ``(0, 1)``; intervals cover with probability at
        least ``1 - alpha``.
    score : {"absolute", "normalized"}
        ``|y - mu|`` or ``|y - mu| / sigma``.
    scale_estimator : object, optional
        For ``"normalized"``: an object whose ``predict(X)`` returns ``sigma(x) > 0``
        (or pass ``scale=`` arrays instead).

    Attributes
    ----------
    scores_ : ndarray of shape (n,)
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
        score: str = "absolute",
        scale_estimator=None,
    ) -> None:
        self.estimator = estimator
        self.alpha = check_alpha(alpha)
        if score not in _SCORES:
            raise ValueError(f"score must be one of {_SCORES}, got {score!r}")
        self.score = score
        self.scale_estimator = scale_estimator

    def fit(self, X, y) -> SplitConformalRegressor:
        """Fit the wrapped estimator on a training set (not the calibration set)."""
        fit = getattr(self.estimator, "fit", None)
        if not callable(fit):
            raise TypeError("estimator must have a fit(X, y) method to be fitted here")
        fit(X, y)
        return self

    def _scale(self, scale, X) -> np.ndarray | None:
        if self.score != "normalized":
            if scale is not None:
                raise ValueError("scale is only used with score='normalized'")
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
        if y is None:
            raise ValueError("y (calibration responses) is required")
        y = as_float_array(y, "y")
        mu = as_float_array(
            resolve_array(y_pred, self.estimator, "predict", X, "y_pred", "estimator"), "y_pred"
        )
        check_same_length(y=y, y_pred=mu)
        if self.score == "absolute":
            self._check_no_scale(scale)
            self.scores_ = np.abs(y - mu)
        else:
            sigma = self._scale(scale, X)
            check_same_length(y=y, scale=sigma)
            self.scores_ = np.abs(y - mu) / sigma
        self.n_calibration_ = len(y)
        self.quantile_ = conformal_quantile(self.scores_, self.alpha)
        return self

    def _check_no_scale(self, scale) -> None:
        if scale is not None:
            raise ValueError("scale is only used with score='normalized'")

    def predict(self, X=None, *, y_pred=None) -> np.ndarray:
        """Point predictions of the wrapped estimator (or ``y_pred`` itself)."""
        return as_float_array(
            resolve_array(y_pred, self.estimator, "predict", X, "y_pred", "estimator"), "y_pred"
        )

    def predict_interval(self, X=None, *, y_pred=None, scale=None) -> np.ndarray:
        """Prediction intervals, shape ``(n_test, 2)``: ``[mu - q sigma, mu + q sigma]``.

        When the calibration set is too small for ``alpha`` the rows are
        ``[-inf, +inf]`` (a valid, documented answer rather than an error).
        """
        if not hasattr(self, "quantile_"):
            raise ValueError("call calibrate() before predict_interval()")
        mu = self.predict(X, y_pred=y_pred)
        q = self.quantile_
        if self.score == "normalized":
            sigma = self._scale(scale, X)
            check_same_length(y_pred=mu, scale=sigma)
            q = q * sigma
        else:
            self._check_no_scale(scale)
        out = np.empty((mu.shape[0], 2))
        np.subtract(mu, q, out=out[:, 0])
        np.add(mu, q, out=out[:, 1])
        return out
