"""Split conformal classification: LAC, APS and RAPS scores, Mondrian calibration.

Scores (larger = less conforming), for predicted probabilities ``p`` sorted in
decreasing order with ``o(y)`` the 1-based position of label ``y``:

* LAC (Sadinle, Lei, Wasserman 2019): ``s(x, y) = 1 - p_y``.
* APS (Romano, Sesia, Candes 2020): ``s(x, y) = sum_{o(j) <= o(y)} p_j - u p_y``,
  with ``u = 0`` (deterministic) or ``u ~ U(0, 1)`` (randomised: the score is then
  continuous and coverage is exact).
* RAPS (Angelopoulos et al. 2021): APS plus ``lam * max(0, o(y) - k_reg)``.

The set is ``{y : s(x, y) <= q}`` with ``q`` the split-conformal order statistic
of the calibration scores (or, with Mondrian calibration, of the scores of the
calibration points whose label is ``y``: class-conditional coverage).  If the
calibration set is too small for the level, ``q = +inf`` and the set is the full
label set: a documented result, not an error.

``include_last_label=True`` (APS/RAPS) also adds the label at which the cumulative
mass first reaches ``q`` (and every label at least as probable), the conservative
rule used by MAPIE; coverage is then at least that of the plain set.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from ._estimator import (
    WrapsEstimator,
    calibration_target,
    check_calibrated,
    check_calibration_size,
    fitted_or_prefit,
    resolve_array,
    store_params,
)
from ._validation import (
    as_float_array,
    check_alpha,
    check_choice,
    check_class_codes,
    check_same_length,
    random_generator,
)
from .quantile import conformal_quantile, min_calibration_size, warn_too_few

__all__ = [
    "SplitConformalClassifier",
    "class_scores",
    "label_scores",
    "prediction_sets",
]

_SCORES = ("lac", "aps", "raps")
_SUM_TOL = 1e-5  # float32 softmax outputs over thousands of classes stay well inside


def _check_proba(proba, name: str = "proba") -> np.ndarray:
    p = as_float_array(proba, name, ndim=None, allow_inf=False)
    if p.ndim < 2:
        raise ValueError(f"{name} must have shape (..., n_classes), got {p.shape}")
    if p.shape[-1] < 2:
        raise ValueError(f"{name} must have at least 2 classes in its last axis")
    if (p < 0).any():
        raise ValueError(f"{name} must be non-negative probabilities")
    deviation = np.abs(p.sum(axis=-1) - 1.0)
    if p.size and deviation.max() > _SUM_TOL:
        raise ValueError(
            f"{name} rows must sum to 1 (probabilities over the classes, tolerance {_SUM_TOL:g}); "
            f"the largest deviation is {deviation.max():.3g}"
        )
    return p


def _sorted_cumsum(p: np.ndarray):
    order = np.argsort(p, axis=-1)[..., ::-1]
    p_sorted = np.take_along_axis(p, order, axis=-1)
    return order, p_sorted, np.cumsum(p_sorted, axis=-1)


def _regularisation(n_classes: int, lam: float, k_reg: int) -> np.ndarray:
    position = np.arange(1, n_classes + 1)
    return lam * np.maximum(position - k_reg, 0)


def class_scores(proba, score: str = "lac", *, u=None, lam: float = 0.0, k_reg: int = 0):
    """Scores ``s(x, y)`` of every label, shape ``(..., n_classes)``.

    Parameters
    ----------
    proba : array_like of shape (..., n_classes)
        Predicted class probabilities.
    score : {"lac", "aps", "raps"}
        Score function (see the module docstring).
    u : array_like of shape (...), optional
        Uniform draws for randomised APS/RAPS (one per example); ``None`` gives the
        deterministic score.
    lam, k_reg : float, int
        RAPS regularisation weight and number of unpenalised labels.
    """
    check_choice(score, _SCORES, "score")
    p = _check_proba(proba)
    if score == "lac":
        if u is not None:
            raise ValueError("u (randomisation) is only used by the aps/raps scores")
        return 1.0 - p
    order, p_sorted, s_sorted = _sorted_cumsum(p)
    if score == "raps":
        s_sorted = s_sorted + _regularisation(p.shape[-1], lam, k_reg)
    if u is not None:
        u = as_float_array(u, "u", ndim=p.ndim - 1, allow_inf=False)
        if u.shape != p.shape[:-1]:
            raise ValueError(f"u must have shape {p.shape[:-1]}, got {u.shape}")
        s_sorted = s_sorted - u[..., None] * p_sorted
    out = np.empty_like(s_sorted)
    np.put_along_axis(out, order, s_sorted, axis=-1)
    return out


def label_scores(proba, y, score: str = "lac", *, u=None, lam: float = 0.0, k_reg: int = 0):
    """Scores ``s(x_i, y_i)`` of the given labels, shape ``proba.shape[:-1]``."""
    p = _check_proba(proba)
    y = check_class_codes(y, p.shape[-1], ndim=None)
    if y.shape != p.shape[:-1]:
        raise ValueError(f"y must have shape {p.shape[:-1]}, got {y.shape}")
    s = class_scores(p, score, u=u, lam=lam, k_reg=k_reg)
    return np.take_along_axis(s, y[..., None], axis=-1)[..., 0]


def prediction_sets(scores, threshold, tol: float = 0.0) -> np.ndarray:
    """Boolean sets ``scores - threshold <= tol`` (``threshold`` broadcasts)."""
    scores = as_float_array(scores, "scores", ndim=None)
    threshold = np.asarray(threshold, dtype=np.float64)
    if np.isnan(threshold).any():
        raise ValueError("threshold contains NaN")
    with np.errstate(invalid="ignore"):
        return np.less_equal(scores - threshold, tol) | np.isposinf(threshold)


def _include_last_label_sets(p, threshold, score, lam, k_reg, tol):
    """Sets that include the label at which the (regularised) mass first reaches q."""
    order, p_sorted, cs = _sorted_cumsum(p)
    if score == "raps":
        cs = cs + _regularisation(p.shape[-1], lam, k_reg)
    threshold = np.asarray(threshold, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        reached = np.greater_equal(cs - threshold[..., None], -tol)
    any_reached = reached.any(axis=-1)
    last = np.argmax(reached, axis=-1)
    p_last = np.take_along_axis(p_sorted, last[..., None], axis=-1)
    sets = np.greater_equal(p - p_last, -tol)
    sets[~any_reached] = True
    return sets


class SplitConformalClassifier(WrapsEstimator, ClassifierMixin, BaseEstimator):
    """Split conformal prediction sets for a probabilistic classifier (a scikit-learn estimator).

    Parameters
    ----------
    estimator : estimator, optional
        Classifier with ``predict_proba(X)`` returning ``(n, n_classes)`` probabilities
        whose columns are its ``classes_``. :meth:`fit` fits a clone of it (``estimator_``);
        without ``fit`` it is used as given (prefit). Not needed when passing ``proba=``.
    alpha : float
        Miscoverage level in ``(0, 1)``.
    conformity_score : {"lac", "aps", "raps"}
        Conformity score (the name MAPIE uses; ``score`` is scikit-learn's metric method).
    randomized : bool
        APS/RAPS only: add ``-u p_y`` with ``u ~ U(0, 1)`` (drawn from ``random_state``,
        or passed as ``u=``).
    include_last_label : bool
        APS/RAPS only: conservative sets that include the label crossing ``q``.
    mondrian : bool
        Class-conditional (Mondrian) calibration: one threshold per class from the
        calibration points of that class; coverage ``>= 1 - alpha`` for every class.
    lam, k_reg : float, int
        RAPS regularisation.
    tol : float
        Scores within ``tol`` above the threshold count as ties and are included
        (absorbs round-off in cumulative sums; conservative).
    classes : array_like, optional
        The labels of the probability columns when the classifier has no ``classes_``
        (precomputed ``proba=``); default ``0..n_classes-1``. Labels may be any values
        (strings, ``1..K``): they are encoded through ``classes_`` as in scikit-learn.
    calibration_size : float, optional
        If set, :meth:`fit` holds out this fraction of its rows at random, fits on the rest
        and calibrates on the held-out rows (a Pipeline final step is then ready to use).
    random_state : int or numpy.random.Generator, optional
        Source of the random split and of the uniforms of ``randomized=True`` (independent
        streams for calibration and prediction; the same value gives the same result).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Labels of the columns of :meth:`predict_proba` and :meth:`predict_set`.
    conformity_scores_ : ndarray of shape (n,)
        Calibration scores of the true labels.
    quantile_ : float or ndarray of shape (n_classes,)
        Threshold(s); ``+inf`` (full label set) where the calibration set is too small.
    """

    def __init__(
        self,
        estimator=None,
        *,
        alpha: float = 0.1,
        conformity_score: str = "lac",
        randomized: bool = False,
        include_last_label: bool = False,
        mondrian: bool = False,
        lam: float = 0.01,
        k_reg: int = 1,
        tol: float = 1e-8,
        classes=None,
        calibration_size: float | None = None,
        random_state=None,
    ) -> None:
        store_params(self, locals())

    def _check_params(self) -> float:
        check_choice(self.conformity_score, _SCORES, "conformity_score")
        if (self.randomized or self.include_last_label) and self.conformity_score == "lac":
            raise ValueError(
                "randomized/include_last_label apply to conformity_score='aps' or 'raps'"
            )
        if self.include_last_label and self.mondrian:
            raise ValueError("include_last_label is not defined with mondrian=True")
        if not (isinstance(self.lam, (int, float)) and self.lam >= 0 and np.isfinite(self.lam)):
            raise ValueError(f"lam must be a finite number >= 0, got {self.lam!r}")
        if isinstance(self.k_reg, bool) or not isinstance(self.k_reg, (int, np.integer)):
            raise TypeError(f"k_reg must be an integer, got {type(self.k_reg).__name__}")
        if not (isinstance(self.tol, (int, float)) and self.tol >= 0):
            raise ValueError(f"tol must be a number >= 0, got {self.tol!r}")
        check_calibration_size(self.calibration_size)
        return check_alpha(self.alpha)

    def _after_fit(self) -> None:
        self.classes_ = np.asarray(self.estimator_.classes_)

    def _proba(self, X, proba) -> np.ndarray:
        model = fitted_or_prefit(self, "estimator")
        p = resolve_array(proba, model, "predict_proba", X, "proba", "estimator")
        p = _check_proba(p)
        if p.ndim != 2:
            raise ValueError(f"proba must be 2-D (n, n_classes), got shape {p.shape}")
        return p

    def _column_labels(self, n_classes: int) -> np.ndarray:
        model = fitted_or_prefit(self, "estimator")
        labels = getattr(model, "classes_", None)
        if labels is None:
            labels = np.arange(n_classes) if self.classes is None else self.classes
        labels = np.asarray(labels)
        if labels.shape != (n_classes,):
            raise ValueError(
                f"classes must list one label per probability column ({n_classes}), "
                f"got shape {labels.shape}"
            )
        if len(np.unique(labels)) != n_classes:
            raise ValueError("classes must not repeat a label")
        return labels

    def _encode(self, y) -> np.ndarray:
        """Column index of each label of ``y`` in ``classes_`` (``ValueError`` if unknown)."""
        y = np.asarray(y)
        if y.ndim != 1:
            raise ValueError(f"y must be a 1-D array of labels, got shape {y.shape}")
        order = np.argsort(self.classes_, kind="stable")
        sorted_labels = self.classes_[order]
        try:
            pos = np.clip(np.searchsorted(sorted_labels, y), 0, len(order) - 1)
            known = sorted_labels[pos] == y
        except (TypeError, ValueError, np.exceptions.DTypePromotionError):
            known = np.zeros(y.shape, dtype=bool)
            pos = np.zeros(y.shape, dtype=int)
        if not np.all(known):
            bad = y[~np.asarray(known, dtype=bool)][:3]
            raise ValueError(
                f"y holds labels {bad.tolist()} that are not in classes_ {self.classes_.tolist()}"
                " (the class codes of the probability columns)"
            )
        return order[pos]

    def _uniforms(self, n: int, stream: int, u):
        if not self.randomized:
            if u is not None:
                raise ValueError("u is only used with randomized=True")
            return None
        if u is not None:
            u = as_float_array(u, "u", allow_inf=False)
            check_same_length(u=u, proba=np.empty(n))
            if ((u < 0) | (u > 1)).any():
                raise ValueError("u must lie in [0, 1]")
            return u
        return random_generator(self.random_state, stream).uniform(size=n)

    def _all_scores(self, p, u):
        return class_scores(p, self.conformity_score, u=u, lam=self.lam, k_reg=self.k_reg)

    def calibrate(self, X=None, y=None, *, proba=None, u=None) -> SplitConformalClassifier:
        """Score a calibration set.

        Parameters
        ----------
        X : array_like, optional
            Calibration features (for ``estimator.predict_proba``).
        y : array_like of shape (n,)
            Labels (any values listed in ``classes_``).
        proba : array_like of shape (n, n_classes), optional
            Precomputed probabilities (rows sum to one).
        u : array_like of shape (n,), optional
            Explicit uniforms for ``randomized=True`` (else drawn from ``random_state``).
        """
        alpha = self._check_params()
        y = calibration_target(y, "labels")
        p = self._proba(X, proba)
        self.classes_ = self._column_labels(p.shape[1])
        codes = self._encode(y)
        check_same_length(y=codes, proba=p)
        u = self._uniforms(len(codes), 0, u)
        s = np.take_along_axis(self._all_scores(p, u), codes[:, None], axis=1)[:, 0]
        self.conformity_scores_ = s
        self.n_classes_ = p.shape[1]
        self.n_calibration_ = len(codes)
        if self.mondrian:
            self.quantile_ = np.array(
                [conformal_quantile(s[codes == c], alpha, warn=False) for c in range(p.shape[1])]
            )
            counts = np.bincount(codes, minlength=p.shape[1])
            if np.isinf(self.quantile_).any():  # one warning, for the smallest class
                c = int(np.argmin(counts))
                warn_too_few(
                    int(counts[c]), alpha, min_calibration_size(alpha),
                    what=f"calibration points of class {self.classes_[c].tolist()!r}",
                )  # fmt: skip
        else:
            self.quantile_ = conformal_quantile(s, alpha)
        return self

    def predict_proba(self, X=None, *, proba=None) -> np.ndarray:
        """Probabilities of the wrapped classifier (or ``proba`` itself), columns ``classes_``."""
        return self._proba(X, proba)

    def predict(self, X=None, *, proba=None) -> np.ndarray:
        """The most probable label of each row (the wrapped classifier's point prediction)."""
        p = self._proba(X, proba)
        classes = getattr(self, "classes_", None)
        if classes is None:
            classes = self._column_labels(p.shape[1])
        return classes[np.argmax(p, axis=1)]

    def predict_set(self, X=None, *, proba=None, u=None) -> np.ndarray:
        """Boolean prediction sets of shape ``(n_test, n_classes)``, columns ``classes_``.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            Before :meth:`calibrate`.
        """
        check_calibrated(self, "predict_set")
        p = self._proba(X, proba)
        if p.shape[1] != self.n_classes_:
            raise ValueError(f"proba must have {self.n_classes_} columns, got {p.shape[1]}")
        if self.include_last_label:
            return _include_last_label_sets(
                p, self.quantile_, self.conformity_score, self.lam, self.k_reg, self.tol
            )
        u = self._uniforms(p.shape[0], 1, u)
        return prediction_sets(self._all_scores(p, u), self.quantile_, self.tol)
