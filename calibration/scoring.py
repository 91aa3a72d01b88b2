"""Coverage and width of prediction intervals and sets, and scorers for model selection.

A conformal estimator covers at level ``1 - alpha`` whatever its inner model, so what a
search over the inner model's parameters should improve is *efficiency*: the mean width of
the intervals (the mean size of the sets) at that coverage. :func:`conformal_scorer` gives
scorers for ``GridSearchCV(..., scoring=...)`` with scikit-learn's sign convention, higher is
better: ``"neg_mean_width"`` is minus the mean width (as ``"neg_mean_squared_error"``), and
``"coverage"`` is the empirical coverage (for reporting; a higher one is not a better model
once ``1 - alpha`` is reached).

Predictions are either intervals, a float array of shape ``(n, 2)`` (lower, upper), or sets,
a boolean array of shape ``(n, n_classes)`` whose columns are the estimator's ``classes_``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._validation import as_float_array, check_choice, check_class_codes, check_same_length

__all__ = ["conformal_scorer", "coverage_score", "mean_width_score"]

_SCORERS = ("coverage", "neg_mean_width")


def _intervals_or_sets(y_pred) -> tuple[np.ndarray, bool]:
    """``(array, is_sets)``: boolean ``(n, K)`` sets, or float ``(n, 2)`` intervals."""
    arr = np.asarray(y_pred)
    if arr.dtype == bool:
        if arr.ndim != 2 or arr.size == 0:
            raise ValueError(
                f"y_pred sets must have a non-empty shape (n, n_classes), got {arr.shape}"
            )
        return arr, True
    arr = as_float_array(y_pred, "y_pred", ndim=2)
    if arr.shape[1] != 2:
        raise ValueError(
            f"y_pred must be intervals of shape (n, 2) or boolean sets of shape (n, n_classes), "
            f"got shape {arr.shape} of dtype {arr.dtype}"
        )
    if (arr[:, 0] > arr[:, 1]).any():
        raise ValueError("y_pred intervals must have lower <= upper")
    if (np.isinf(arr[:, 0]) & (arr[:, 0] == arr[:, 1])).any():
        raise ValueError("y_pred intervals must not have both ends at the same infinity")
    return arr, False


def coverage_score(y_true, y_pred, *, classes=None) -> float:
    """Fraction of ``y_true`` inside its interval or set.

    Parameters
    ----------
    y_true : array_like of shape (n,)
        Responses (intervals) or labels (sets).
    y_pred : array_like of shape (n, 2) or (n, n_classes)
        Intervals ``[lower, upper]`` (closed), or boolean sets (``predict_set``).
    classes : array_like of shape (n_classes,), optional
        Sets only: the label of each column (``estimator.classes_``); default: ``y_true``
        holds the column indices ``0..n_classes-1``. A label not in ``classes`` is not
        covered.

    Returns
    -------
    float
        The empirical coverage, in ``[0, 1]``.

    Notes
    -----
    With scikit-learn's own helper, for intervals:
    ``make_scorer(coverage_score, response_method=("predict_interval",))``; for sets (whose
    columns need ``classes_``) use :func:`conformal_scorer`.
    """
    pred, is_sets = _intervals_or_sets(y_pred)
    if is_sets:
        if classes is None:
            codes = check_class_codes(y_true, pred.shape[1], "y_true")
            check_same_length(y_true=codes, y_pred=pred)
            return float(pred[np.arange(len(codes)), codes].mean())
        labels = np.asarray(classes)
        if labels.shape != (pred.shape[1],):
            raise ValueError(
                f"classes must list one label per set column ({pred.shape[1]}), "
                f"got shape {labels.shape}"
            )
        y = np.asarray(y_true)
        if y.ndim != 1:
            raise ValueError(f"y_true must be a 1-D array of labels, got shape {y.shape}")
        check_same_length(y_true=y, y_pred=pred)
        return float((pred & (y[:, None] == labels[None, :])).any(axis=1).mean())
    if classes is not None:
        raise ValueError("classes is only used with prediction sets (boolean y_pred)")
    y = as_float_array(y_true, "y_true")
    check_same_length(y_true=y, y_pred=pred)
    return float(((pred[:, 0] <= y) & (y <= pred[:, 1])).mean())


def mean_width_score(y_pred) -> float:
    """Mean width ``upper - lower`` of intervals, or mean size of boolean sets.

    An infinite interval (too few calibration points for the level) gives ``inf``.
    """
    pred, is_sets = _intervals_or_sets(y_pred)
    if is_sets:
        return float(pred.sum(axis=1).mean())
    with np.errstate(over="ignore"):  # a width beyond float64's range: infinite
        return float(np.mean(pred[:, 1] - pred[:, 0]))


def _predict_intervals_or_sets(estimator, X) -> tuple[np.ndarray, object]:
    """``predict_interval(X)`` or ``predict_set(X)`` of ``estimator`` (or of the final step of
    a :class:`~sklearn.pipeline.Pipeline`, after its transforms), and that estimator."""
    from sklearn.pipeline import Pipeline

    if isinstance(estimator, Pipeline):
        X, estimator = estimator[:-1].transform(X), estimator[-1]
    for method in ("predict_interval", "predict_set"):
        fn = getattr(estimator, method, None)
        if callable(fn):
            return fn(X), estimator
    raise TypeError(
        f"estimator must have predict_interval(X) or predict_set(X) (a conformal estimator, or a "
        f"Pipeline ending in one), got {type(estimator).__name__}"
    )


def conformal_scorer(metric: str = "neg_mean_width") -> Callable[..., float]:
    """A scorer ``(estimator, X, y) -> float`` for ``GridSearchCV(scoring=...)``.

    Higher is better (scikit-learn's convention). The scorer calls ``predict_interval`` (or
    ``predict_set``) of the fitted estimator, or of a Pipeline's final step.

    Parameters
    ----------
    metric : {"neg_mean_width", "coverage"}
        ``"neg_mean_width"``: minus :func:`mean_width_score` (narrower is better; ``-inf`` for
        infinite intervals). ``"coverage"``: :func:`coverage_score`.

    Examples
    --------
    >>> from sklearn.linear_model import Ridge
    >>> from sklearn.model_selection import GridSearchCV
    >>> from calibration import SplitConformalRegressor
    >>> search = GridSearchCV(
    ...     SplitConformalRegressor(Ridge(), calibration_size=0.3, random_state=0),
    ...     {"estimator__alpha": [0.1, 10.0]},
    ...     scoring=conformal_scorer("neg_mean_width"),
    ... )  # doctest: +SKIP
    """
    check_choice(metric, _SCORERS, "metric")

    def score(estimator, X, y) -> float:
        pred, est = _predict_intervals_or_sets(estimator, X)
        if metric == "coverage":
            return coverage_score(y, pred, classes=getattr(est, "classes_", None))
        return -mean_width_score(pred)

    score.__name__ = score.__qualname__ = f"conformal_scorer_{metric}"
    return score
