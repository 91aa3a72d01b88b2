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

from ._estimator import resolve_array
from ._validation import as_float_array, as_generator, check_alpha, check_same_length
from .quantile import conformal_quantile

__all__ = [
    "SplitConformalClassifier",
    "class_scores",
    "label_scores",
    "prediction_sets",
]

_SCORES = ("lac", "aps", "raps")


def _check_proba(proba, name: str = "proba") -> np.ndarray:
    p = as_float_array(proba, name, ndim=None, allow_inf=False)
    if p.ndim < 2:
        raise ValueError(f"{name} must have shape (..., n_classes), got {p.shape}")
    if p.shape[-1] < 2:
        raise ValueError(f"{name} must have at least 2 classes in its last axis")
    if (p < 0).any():
        raise ValueError(f"{name} must be non-negative probabilities")
    return p


def _check_labels(y, n_classes: int, name: str = "y") -> np.ndarray:
    y = np.asarray(y)
    if y.dtype.kind == "f":
        if np.isnan(y).any():
            raise ValueError(f"{name} contains NaN")
        if (y != np.round(y)).any():
            raise ValueError(f"{name} must hold integer class codes 0..{n_classes - 1}")
    elif y.dtype.kind not in "iub":
        raise TypeError(f"{name} must hold integer class codes 0..{n_classes - 1}")
    y = y.astype(np.int64)
    if ((y < 0) | (y >= n_classes)).any():
        raise ValueError(f"{name} must hold class codes in 0..{n_classes - 1}")
    return y


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
    if score not in _SCORES:
        raise ValueError(f"score must be one of {_SCORES}, got {score!r}")
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
    y = _check_labels(y, p.shape[-1])
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


class SplitConformalClassifier:
    """Split conformal prediction sets for a prefit probabilistic classifier.

    Parameters
    ----------
    estimator : object, optional
        Prefit classifier with ``predict_proba(X)`` returning ``(n, n_classes)``
        probabilities whose columns are the class codes ``0..n_classes-1``.
        Not needed when passing ``proba=``.
    alpha : float
        Miscoverage level in ``(0, 1)``.
    score : {"lac", "aps", "raps"}
        Conformity score.
    randomized : bool
        APS/RAPS only: add ``-u p_y`` with ``u ~ U(0, 1)`` (needs ``seed`` or ``u``).
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

    Attributes
    ----------
    scores_ : ndarray of shape (n,)
        Calibration scores of the true labels.
    quantile_ : float or ndarray of shape (n_classes,)
        Threshold(s); ``+inf`` (full label set) where the calibration set is too small.
    """

    def __init__(
        self,
        estimator=None,
        *,
        alpha: float = 0.1,
        score: str = "lac",
        randomized: bool = False,
        include_last_label: bool = False,
        mondrian: bool = False,
        lam: float = 0.01,
        k_reg: int = 1,
        tol: float = 1e-8,
    ) -> None:
        if score not in _SCORES:
            raise ValueError(f"score must be one of {_SCORES}, got {score!r}")
        if (randomized or include_last_label) and score == "lac":
            raise ValueError("randomized/include_last_label apply to score='aps' or 'raps'")
        if include_last_label and mondrian:
            raise ValueError("include_last_label is not defined with mondrian=True")
        if lam < 0 or not np.isfinite(lam):
            raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
        if tol < 0:
            raise ValueError(f"tol must be >= 0, got {tol!r}")
        self.estimator = estimator
        self.alpha = check_alpha(alpha)
        self.score = score
        self.randomized = bool(randomized)
        self.include_last_label = bool(include_last_label)
        self.mondrian = bool(mondrian)
        self.lam = float(lam)
        self.k_reg = int(k_reg)
        self.tol = float(tol)

    def _proba(self, X, proba) -> np.ndarray:
        p = resolve_array(proba, self.estimator, "predict_proba", X, "proba", "estimator")
        p = _check_proba(p)
        if p.ndim != 2:
            raise ValueError(f"proba must be 2-D (n, n_classes), got shape {p.shape}")
        return p

    def _uniforms(self, n: int, seed, u):
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
        return as_generator(seed).uniform(size=n)

    def _all_scores(self, p, u):
        return class_scores(p, self.score, u=u, lam=self.lam, k_reg=self.k_reg)

    def calibrate(self, X=None, y=None, *, proba=None, seed=None, u=None):
        """Score a calibration set.

        Parameters
        ----------
        X : array_like, optional
            Calibration features (for ``estimator.predict_proba``).
        y : array_like of shape (n,)
            Integer class codes.
        proba : array_like of shape (n, n_classes), optional
            Precomputed probabilities.
        seed : int or numpy.random.Generator, optional
            Source of the uniforms for ``randomized=True``.
        u : array_like of shape (n,), optional
            Explicit uniforms for ``randomized=True`` (overrides ``seed``).
        """
        if y is None:
            raise ValueError("y (calibration labels) is required")
        p = self._proba(X, proba)
        y = _check_labels(y, p.shape[1])
        check_same_length(y=y, proba=p)
        u = self._uniforms(len(y), seed, u)
        s = np.take_along_axis(self._all_scores(p, u), y[:, None], axis=1)[:, 0]
        self.scores_ = s
        self.n_classes_ = p.shape[1]
        self.n_calibration_ = len(y)
        if self.mondrian:
            self.quantile_ = np.array(
                [conformal_quantile(s[y == c], self.alpha) for c in range(p.shape[1])]
            )
        else:
            self.quantile_ = conformal_quantile(s, self.alpha)
        return self

    def predict_proba(self, X=None, *, proba=None) -> np.ndarray:
        """Probabilities of the wrapped classifier (or ``proba`` itself)."""
        return self._proba(X, proba)

    def predict_set(self, X=None, *, proba=None, seed=None, u=None) -> np.ndarray:
        """Boolean prediction sets of shape ``(n_test, n_classes)``."""
        if not hasattr(self, "quantile_"):
            raise ValueError("call calibrate() before predict_set()")
        p = self._proba(X, proba)
        if p.shape[1] != self.n_classes_:
            raise ValueError(f"proba must have {self.n_classes_} columns, got {p.shape[1]}")
        if self.include_last_label:
            return _include_last_label_sets(
                p, self.quantile_, self.score, self.lam, self.k_reg, self.tol
            )
        u = self._uniforms(p.shape[0], seed, u)
        return prediction_sets(self._all_scores(p, u), self.quantile_, self.tol)
