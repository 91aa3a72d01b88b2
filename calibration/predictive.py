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

import inspect
import math

import numpy as np
from scipy.special import ndtr, ndtri
from sklearn.base import BaseEstimator, RegressorMixin

from ._estimator import (
    WrapsEstimator,
    calibration_target,
    call_method,
    check_calibrated,
    check_calibration_size,
    distribution_cdf,
    distribution_icdf,
    fitted_or_prefit,
    store_params,
)
from ._validation import as_float_array, check_alpha, exact_fraction, random_generator
from .quantile import min_calibration_size, warn_too_few

__all__ = [
    "ConformalPredictiveDistribution",
    "GaussianPredictive",
    "pit_scores",
    "predictive_distribution",
]


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


class GaussianPredictive:
    """The normal predictive distribution ``N(mean_i, std_i^2)`` of each point, with the
    ``cdf``/``icdf`` that the conformal predictive system reads.

    What a scikit-learn regressor with ``predict(X, return_std=True)`` (``BayesianRidge``,
    ``ARDRegression``, ``GaussianProcessRegressor``) predicts. A zero ``std`` (a noise-free
    Gaussian process at a training point) is a point mass, kept as the smallest positive
    float.
    """

    def __init__(self, mean, std):
        self.mean = as_float_array(mean, "mean", allow_inf=False)
        std = as_float_array(std, "std", allow_inf=False)
        if std.shape != self.mean.shape:
            raise ValueError(f"std must have the shape of mean {self.mean.shape}, got {std.shape}")
        if (std < 0).any():
            raise ValueError("std must be non-negative (a predicted standard deviation)")
        self.std = np.maximum(std, np.finfo(np.float64).tiny)

    def cdf(self, y) -> np.ndarray:
        """``Phi((y - mean) / std)``."""
        with np.errstate(over="ignore"):
            return ndtr((np.asarray(y, dtype=np.float64) - self.mean) / self.std)

    def icdf(self, q) -> np.ndarray:
        """``mean + std Phi^{-1}(q)``."""
        return self.mean + self.std * ndtri(np.asarray(q, dtype=np.float64))


def _accepts(fn, name: str) -> bool:
    """Whether ``fn`` takes the keyword ``name`` (a Pipeline's ``predict(X, **params)`` passes
    it on to its final step)."""
    params = inspect.signature(fn).parameters.values()
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def predictive_distribution(model, X) -> GaussianPredictive:
    """The predictive distribution of a regressor with ``predict(X, return_std=True)`` (or a
    Pipeline ending in one)."""
    if model is None:
        raise ValueError("estimator is None: pass distribution= or set estimator")
    predict = getattr(model, "predict", None)
    if not callable(predict) or not _accepts(predict, "return_std"):
        raise TypeError(
            f"estimator must predict a distribution: predict(X, return_std=True) -> (mean, std) "
            f"(BayesianRidge, GaussianProcessRegressor, ...), got {type(model).__name__}"
        )
    mean, std = predict(X, return_std=True)
    return GaussianPredictive(mean, std)


class ConformalPredictiveDistribution(WrapsEstimator, RegressorMixin, BaseEstimator):
    """Split conformal predictive system built on PIT scores (a scikit-learn estimator).

    The predictive distributions are passed as ``distribution=`` (any shared predictive
    distribution: numpyro's, particle distributions, ...; see :func:`pit_scores`), or come from
    ``estimator`` at ``X`` (a Gaussian, :func:`predictive_distribution`).

    Parameters
    ----------
    estimator : estimator, optional
        A regressor with ``predict(X, return_std=True)``. :meth:`fit` fits a clone of it
        (``estimator_``); without ``fit`` it is used as given (prefit). May be ``None`` when
        every call passes ``distribution=``.
    calibration_size : float, optional
        If set, :meth:`fit` holds out this fraction of its rows at random, fits on the rest
        and calibrates on the held-out rows (fitted and calibrated in one call).
    random_state : int or numpy.random.Generator, optional
        Source of the random split and of ``tau ~ U(0, 1)`` in :meth:`cdf` when ``tau`` is not
        given.

    Attributes
    ----------
    estimator_ : estimator
        The fitted clone (after :meth:`fit`).
    pit_ : ndarray of shape (n,)
        Sorted calibration PIT values ``F_{x_i}(y_i)``.
    n_calibration_ : int
        Number of calibration points.
    """

    def __init__(self, estimator=None, *, calibration_size=None, random_state=None):
        store_params(self, locals())

    def _check_params(self) -> None:
        check_calibration_size(self.calibration_size)

    def _distribution(self, X, distribution):
        if distribution is not None:
            if X is not None:
                raise ValueError("pass either X or distribution, not both")
            return distribution
        if X is None:
            raise ValueError("pass either distribution or X (with estimator set)")
        return predictive_distribution(fitted_or_prefit(self, "estimator"), X)

    def calibrate(self, X=None, y=None, *, distribution=None) -> ConformalPredictiveDistribution:
        """Store the sorted PIT values of the calibration responses.

        Parameters
        ----------
        X : array_like, optional
            Calibration features (the distributions are ``estimator``'s at ``X``).
        y : array_like of shape (n,)
            Calibration responses.
        distribution : object, optional
            The predictive distributions instead: batch shape ``(n,)`` matching ``y``, or a
            sequence of ``n`` distributions (see :func:`pit_scores`).
        """
        self._check_params()
        y = calibration_target(y, "responses")
        self.pit_ = np.sort(pit_scores(self._distribution(X, distribution), y))
        self.n_calibration_ = len(self.pit_)
        return self

    def predict(self, X) -> np.ndarray:
        """The point predictions (means) of the (fitted or prefit) estimator."""
        return call_method(fitted_or_prefit(self, "estimator"), "predict", X, "estimator")

    def _counts(self, X, y, distribution):
        check_calibrated(self, "cdf")
        z = pit_scores(self._distribution(X, distribution), y)
        below = np.searchsorted(self.pit_, z, side="left")
        equal = np.searchsorted(self.pit_, z, side="right") - below
        return below, equal, len(self.pit_)

    def cdf_bounds(self, X=None, y=None, *, distribution=None) -> np.ndarray:
        """Lower and upper envelopes ``Q(y, 0)``, ``Q(y, 1)``, shape ``(n_test, 2)``."""
        below, equal, n = self._counts(X, y, distribution)
        return np.stack([below / (n + 1), (below + equal + 1) / (n + 1)], axis=1)

    def cdf(self, X=None, y=None, *, distribution=None, tau=None) -> np.ndarray:
        """Conformal predictive cdf ``Q(y, tau)``, shape ``(n_test,)``.

        ``tau`` in ``[0, 1]`` (scalar or one per point); when ``None`` it is drawn
        ``U(0, 1)`` from ``random_state``, which makes ``Q(Y, tau)`` exactly uniform.
        For the deterministic envelopes use :meth:`cdf_bounds`.
        """
        below, equal, n = self._counts(X, y, distribution)
        if tau is None:
            tau = random_generator(self.random_state, 0).uniform(size=below.shape)
        tau = np.broadcast_to(as_float_array(tau, "tau", ndim=None, allow_inf=False), below.shape)
        if ((tau < 0) | (tau > 1)).any():
            raise ValueError("tau must lie in [0, 1]")
        return (below + tau * (equal + 1)) / (n + 1)

    def predict_interval(self, X=None, *, distribution=None, alpha: float = 0.1) -> np.ndarray:
        """Equal-tailed level ``1 - alpha`` intervals, shape ``(n_test, 2)``.

        With fewer than ``2/alpha - 1`` calibration points an end is infinite (with a
        warning).
        """
        check_calibrated(self, "predict_interval")
        alpha = check_alpha(alpha)
        distribution = self._distribution(X, distribution)
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
