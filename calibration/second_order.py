r"""Second-order calibration from pair predictions (Johnson et al., ICML 2024, "Experts Don't
Cheat: Learning What You Don't Know By Predicting Pairs").

A model trained on triples ``(x, y1, y2)``, ``y1, y2`` independent draws from ``p(y | x)``, to
minimise ``-log p(y1 | x) - log p(y2 | y1, x)`` learns a first-order prediction
``p_hat(y | x)`` and a pair prediction ``p_hat(Y2 = y | Y1 = y, x)`` (``p_same`` below). Where
the model cannot tell ``p(y | x)`` exactly, its best pair prediction "cheats" by leaning on
``y1``: if its joint is an exchangeable mixture ``E_Z[p(y1 | x, Z) p(y2 | x, Z)]``, then
``p_hat(y) p_same(y) = E[p(y | x, Z)^2]``, so

* ``V_cheat(y | x) = p_hat(y | x) [p_same(y | x) - p_hat(y | x)]`` is the variance of
  ``p(y | x, Z)`` around ``p_hat``: an estimate of ``E[(p_hat(y | x) - p(y | x))^2]``, the
  epistemic part of the error;
* by Chebyshev, ``P(|p_hat - p| >= sqrt(V_cheat / beta)) <= beta``
  (:func:`chebyshev_interval`);
* by Cauchy-Schwarz, ``p_hat^2 = E[p 1{p > 0}]^2 <= E[p^2] P(p > 0)``, so the cheat-corrected
  confidence ``C_cheat = p_hat / p_same`` bounds the chance that an answer is impossible:
  ``P(p(y | x) = 0) <= 1 - E[C_cheat]`` for ``y ~ p_hat(. | x)`` (:func:`hallucination_filter`
  rejects answers with ``1 - C_cheat >= beta``).

A model that never cheats (its pair head ignores ``y1``) reports ``V_cheat = 0`` whatever its
error. :class:`VarianceRescaling` repairs this from held-out *paired* responses: for
independent ``y1, y2 ~ p(. | x)``, ``U = (p_hat - 1{y1 = y}) (p_hat - 1{y2 = y})`` is an
unbiased estimate of ``(p_hat(y | x) - p(y | x))^2`` (the two factors are independent with
means ``p_hat - p``). Regressing ``U`` on ``V_cheat`` (non-negative intercept and slope) gives
``V_robust = a + b V_cheat``; when ``E[U | V_cheat]`` is of that form,
``E[(p_hat - p)^2 / V_robust] = 1`` and the Chebyshev intervals of ``V_robust`` are valid
marginally (over ``x`` and ``y``) whatever the pair head learned.

:class:`SecondOrderCalibrator` puts these together as a scikit-learn estimator around any
prefit pair model (``predict_pair(X) -> (p, p_same)``).

The torch side (:class:`PairClassifier`, :func:`fit_pair_classifier`) lives in
:mod:`calibration.pair_classifier`, imported on first use so that this module needs no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import nnls
from sklearn.base import BaseEstimator

from ._validation import as_float_array, check_alpha, check_class_codes, check_same_length

if TYPE_CHECKING:  # torch is imported on first use only
    from .pair_classifier import PairClassifier, fit_pair_classifier

__all__ = [
    "PairClassifier",
    "SecondOrderCalibrator",
    "VarianceRescaling",
    "cheat_corrected_confidence",
    "cheat_variance",
    "chebyshev_interval",
    "fit_pair_classifier",
    "hallucination_filter",
    "paired_squared_error",
    "squared_error_estimate",
]

_LAZY = {"PairClassifier", "fit_pair_classifier"}


def __getattr__(name: str):
    if name in _LAZY:
        from . import pair_classifier

        return getattr(pair_classifier, name)
    raise AttributeError(f"module 'calibration.second_order' has no attribute {name!r}")


def _probabilities(x, name: str) -> np.ndarray:
    arr = as_float_array(x, name, ndim=None, allow_inf=False)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if ((arr < 0) | (arr > 1)).any():
        raise ValueError(f"{name} must hold probabilities in [0, 1]")
    return arr


def _pair(p, p_same) -> tuple[np.ndarray, np.ndarray]:
    p = _probabilities(p, "p")
    p_same = _probabilities(p_same, "p_same")
    if p.shape != p_same.shape:
        raise ValueError(f"p and p_same must have the same shape, got {p.shape} and {p_same.shape}")
    return p, p_same


def cheat_variance(p, p_same) -> np.ndarray:
    """``V_cheat = p (p_same - p)``, clipped at 0, elementwise.

    Parameters
    ----------
    p : array_like
        First-order probabilities ``p_hat(y | x)`` (any shape, e.g. ``(n, K)``).
    p_same : array_like
        Pair probabilities ``p_hat(Y2 = y | Y1 = y, x)``, same shape.

    Notes
    -----
    For an exchangeable-mixture joint ``p_same >= p`` (Cauchy-Schwarz); a learned pair head
    may break this slightly, and a negative variance is reported as 0.
    """
    p, p_same = _pair(p, p_same)
    return np.maximum(p * (p_same - p), 0.0)


def cheat_corrected_confidence(p, p_same) -> np.ndarray:
    """``C_cheat = p / p_same`` in ``[0, 1]``, elementwise.

    ``1 - C_cheat`` bounds the probability that the answer ``y`` is impossible
    (``p(y | x) = 0``). ``C_cheat`` is clipped to 1 where a learned pair head gives
    ``p_same < p``; where ``p_same = 0`` (then the answer is never produced twice) it is 0.
    """
    p, p_same = _pair(p, p_same)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(p_same > 0, p / np.where(p_same > 0, p_same, 1.0), 0.0)
    return np.clip(c, 0.0, 1.0)


def chebyshev_interval(p, variance, beta: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Interval ``p -+ sqrt(variance / beta)`` (clipped to [0, 1]) that holds ``p(y | x)``
    with probability at least ``1 - beta`` when ``variance >= E[(p_hat - p)^2]``.

    Parameters
    ----------
    p : array_like
        First-order probabilities ``p_hat(y | x)``.
    variance : array_like
        ``V_cheat`` (:func:`cheat_variance`) or ``V_robust``
        (:meth:`VarianceRescaling.transform`), same shape.
    beta : float
        Miss probability, in (0, 1).
    """
    beta = check_alpha(beta, "beta")
    p = _probabilities(p, "p")
    v = as_float_array(variance, "variance", ndim=None, allow_inf=False)
    if v.shape != p.shape:
        raise ValueError(f"variance must have the shape of p {p.shape}, got {v.shape}")
    if (v < 0).any():
        raise ValueError("variance must be non-negative")
    half = np.sqrt(v / beta)
    return np.clip(p - half, 0.0, 1.0), np.clip(p + half, 0.0, 1.0)


def hallucination_filter(p, p_same, beta: float = 0.1) -> np.ndarray:
    """Boolean mask of the answers kept: ``1 - C_cheat < beta``.

    A rejected answer is one whose bound on ``P(p(y | x) = 0)`` is at least ``beta``.
    """
    beta = check_alpha(beta, "beta")
    return (1.0 - cheat_corrected_confidence(p, p_same)) < beta


def paired_squared_error(p, y1, y2) -> np.ndarray:
    """Unbiased estimates ``(p_hat - 1{y1 = y}) (p_hat - 1{y2 = y})`` of
    ``(p_hat(y | x) - p(y | x))^2`` from two independent responses, shape ``(n, K)``.

    Parameters
    ----------
    p : array_like of shape (n, K)
        First-order probabilities on held-out inputs.
    y1, y2 : array_like of shape (n,)
        Two independent responses per input.
    """
    p = _probabilities(p, "p")
    if p.ndim != 2:
        raise ValueError(f"p must have shape (n, K), got {p.shape}")
    y1 = check_class_codes(y1, p.shape[1], "y1")
    y2 = check_class_codes(y2, p.shape[1], "y2")
    check_same_length(p=p, y1=y1, y2=y2)
    k = np.arange(p.shape[1])
    return (p - (y1[:, None] == k)) * (p - (y2[:, None] == k))


def squared_error_estimate(p, responses) -> np.ndarray:
    """Unbiased estimates of ``(p_hat(y | x) - p(y | x))^2`` from ``M >= 2`` independent
    responses per input, shape ``(n, K)``: the mean of :func:`paired_squared_error` over all
    ``M (M - 1)`` ordered pairs of distinct responses (a U-statistic, less noisy than a single
    pair).

    Parameters
    ----------
    p : array_like of shape (n, K)
        First-order probabilities.
    responses : array_like of shape (n, M)
        ``M`` independent responses (class labels) per input.
    """
    p = _probabilities(p, "p")
    if p.ndim != 2:
        raise ValueError(f"p must have shape (n, K), got {p.shape}")
    r = np.asarray(responses)
    if r.ndim != 2 or r.shape[1] < 2:
        raise ValueError(f"responses must have shape (n, M) with M >= 2, got {r.shape}")
    m = r.shape[1]
    r = check_class_codes(r.reshape(-1), p.shape[1], "responses").reshape(r.shape)
    check_same_length(p=p, responses=r)
    counts = (r[:, :, None] == np.arange(p.shape[1])).sum(axis=1)
    total = m * p - counts  # sum_i (p - 1{y_i = y})
    squares = (m - counts) * p**2 + counts * (1.0 - p) ** 2  # sum_i (p - 1{y_i = y})^2
    return (total**2 - squares) / (m * (m - 1))


@dataclass(frozen=True)
class VarianceRescaling:
    """Misspecification-robust variance ``V_robust = intercept + slope * V_cheat``.

    Fit with :meth:`fit` on held-out paired responses; see the module docstring.
    """

    intercept: float
    slope: float

    @classmethod
    def fit(cls, p, v_cheat, y1, y2) -> VarianceRescaling:
        """Non-negative least squares of the unbiased paired errors on ``[1, V_cheat]``.

        Parameters
        ----------
        p : array_like of shape (n, K)
            First-order probabilities on held-out inputs.
        v_cheat : array_like of shape (n, K)
            Their ``V_cheat``.
        y1, y2 : array_like of shape (n,)
            Two independent responses per held-out input.
        """
        u = paired_squared_error(p, y1, y2)
        v = as_float_array(v_cheat, "v_cheat", ndim=2, allow_inf=False)
        if v.shape != u.shape:
            raise ValueError(f"v_cheat must have the shape of p {u.shape}, got {v.shape}")
        if len(u) < 2:
            raise ValueError("at least 2 held-out paired responses are needed")
        design = np.stack([np.ones(u.size), v.ravel()], axis=1)
        coef, _ = nnls(design, u.ravel())
        intercept, slope = float(coef[0]), float(coef[1])
        if intercept == 0.0 and slope == 0.0:
            # the paired errors average <= 0: no detectable error; keep a valid, tiny variance
            intercept = float(np.finfo(np.float64).tiny)
        return cls(intercept, slope)

    def transform(self, v_cheat) -> np.ndarray:
        """``V_robust`` for the given ``V_cheat``."""
        v = as_float_array(v_cheat, "v_cheat", ndim=None, allow_inf=False)
        if (v < 0).any():
            raise ValueError("v_cheat must be non-negative")
        return self.intercept + self.slope * v


def _paired_labels(y) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    if y.ndim != 2 or y.shape[1] != 2:
        raise ValueError(
            f"y must have shape (n, 2): two independent responses per input, got {y.shape}"
        )
    return y[:, 0], y[:, 1]


class SecondOrderCalibrator(BaseEstimator):
    """Second-order calibration of a pair model, with the scikit-learn estimator contract.

    :meth:`fit` estimates the misspecification-robust rescaling (:class:`VarianceRescaling`)
    on held-out inputs with two independent responses each; the predict methods then give the
    first-order probabilities, their (rescaled) variances, Chebyshev intervals for
    ``p(y | x)``, the cheat-corrected confidences and the hallucination filter.

    Parameters
    ----------
    pair_model : object, optional
        A prefit pair model: ``pair_model.predict_pair(X)`` returns ``(p, p_same)``, two
        ``(n, K)`` arrays (e.g. a trained :class:`PairClassifier`). May be ``None`` when
        ``p=`` and ``p_same=`` are passed to every method.
    beta : float
        Miss probability of :meth:`predict_interval` and rejection threshold of
        :meth:`predict_keep`, in ``(0, 1)``.
    rescale : bool
        ``True``: fit ``V_robust = a + b V_cheat`` on the held-out pairs. ``False``: report
        ``V_cheat`` as is (``a = 0, b = 1``; :meth:`fit` only records the classes).

    Attributes
    ----------
    rescaling_ : VarianceRescaling
        The fitted rescaling.
    classes_ : ndarray of shape (K,)
        The class labels ``0..K-1`` of the pair model's outputs.
    n_calibration_ : int
        Number of held-out inputs used by :meth:`fit`.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.full((4, 2), 0.5)
    >>> p_same = np.array([[0.7, 0.7]] * 4)
    >>> y = np.array([[0, 0], [1, 1], [0, 1], [1, 0]])
    >>> so = SecondOrderCalibrator(beta=0.2).fit(y=y, p=p, p_same=p_same)
    >>> so.predict_interval(p=p, p_same=p_same).shape
    (4, 2, 2)
    """

    def __init__(self, pair_model=None, *, beta: float = 0.1, rescale: bool = True) -> None:
        self.pair_model = pair_model
        self.beta = beta
        self.rescale = rescale

    def _check_params(self) -> float:
        if not isinstance(self.rescale, (bool, np.bool_)):
            raise TypeError(f"rescale must be a bool, got {type(self.rescale).__name__}")
        return check_alpha(self.beta, "beta")

    def _pair_predictions(self, X, p, p_same) -> tuple[np.ndarray, np.ndarray]:
        if (p is None) != (p_same is None):
            raise ValueError("pass both p and p_same (precomputed), or neither")
        if p is None:
            if X is None:
                raise ValueError("pass either p and p_same (precomputed) or X (with pair_model)")
            if self.pair_model is None:
                raise ValueError("pair_model is None: pass precomputed p and p_same or set it")
            fn = getattr(self.pair_model, "predict_pair", None)
            if not callable(fn):
                raise TypeError("pair_model must have a callable .predict_pair(X) method")
            p, p_same = fn(X)
        p, p_same = _pair(p, p_same)
        if p.ndim != 2 or p.shape[1] < 2:
            raise ValueError(f"p must have shape (n, K) with K >= 2, got {p.shape}")
        if hasattr(self, "classes_") and p.shape[1] != len(self.classes_):
            raise ValueError(
                f"p has {p.shape[1]} classes but the calibrator was fitted with "
                f"{len(self.classes_)}"
            )
        return p, p_same

    def fit(self, X=None, y=None, *, p=None, p_same=None) -> SecondOrderCalibrator:
        """Fit the robust rescaling on held-out paired responses.

        Parameters
        ----------
        X : array_like, optional
            Held-out inputs of ``pair_model`` (used when ``p``/``p_same`` are not given).
        y : array_like of shape (n, 2)
            Two independent responses (class labels ``0..K-1``) per held-out input.
        p, p_same : array_like of shape (n, K), optional
            Precomputed pair-model outputs on the held-out inputs.
        """
        self._check_params()
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None"
            )
        y1, y2 = _paired_labels(y)
        p, p_same = self._pair_predictions(X, p, p_same)
        v = cheat_variance(p, p_same)
        if self.rescale:
            self.rescaling_ = VarianceRescaling.fit(p, v, y1, y2)
        else:
            paired_squared_error(p, y1, y2)  # validates the labels
            self.rescaling_ = VarianceRescaling(0.0, 1.0)
        self.classes_ = np.arange(p.shape[1])
        self.n_calibration_ = len(p)
        return self

    calibrate = fit

    def _fitted(self) -> VarianceRescaling:
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "rescaling_")
        return self.rescaling_

    def predict_proba(self, X=None, *, p=None, p_same=None) -> np.ndarray:
        """First-order probabilities ``p_hat(y | x)``, shape ``(n, K)``."""
        self._fitted()
        return self._pair_predictions(X, p, p_same)[0]

    def predict(self, X=None, *, p=None, p_same=None) -> np.ndarray:
        """The most probable class of each input, shape ``(n,)``."""
        return self.predict_proba(X, p=p, p_same=p_same).argmax(axis=1)

    def predict_variance(self, X=None, *, p=None, p_same=None) -> np.ndarray:
        """``V_robust = a + b V_cheat`` (or ``V_cheat`` when ``rescale=False``), ``(n, K)``."""
        resc = self._fitted()
        return resc.transform(cheat_variance(*self._pair_predictions(X, p, p_same)))

    def predict_interval(self, X=None, *, p=None, p_same=None) -> np.ndarray:
        """Chebyshev intervals for ``p(y | x)``, shape ``(n, K, 2)`` (lower, upper)."""
        beta = self._check_params()
        resc = self._fitted()
        p, p_same = self._pair_predictions(X, p, p_same)
        lo, hi = chebyshev_interval(p, resc.transform(cheat_variance(p, p_same)), beta=beta)
        return np.stack([lo, hi], axis=-1)

    def predict_confidence(self, X=None, *, p=None, p_same=None) -> np.ndarray:
        """Cheat-corrected confidences ``C_cheat``, shape ``(n, K)``."""
        self._fitted()
        return cheat_corrected_confidence(*self._pair_predictions(X, p, p_same))

    def predict_keep(self, X=None, *, p=None, p_same=None) -> np.ndarray:
        """Boolean ``(n, K)`` mask of the answers kept by :func:`hallucination_filter`."""
        beta = self._check_params()
        self._fitted()
        return hallucination_filter(*self._pair_predictions(X, p, p_same), beta=beta)
