"""Shared pieces of the calibration estimators: duck-typed access to prefit models and
predictive distributions, the fitted-or-prefit rule, the calibration check, the random split."""

from __future__ import annotations

import warnings

import numpy as np

from ._validation import caller_stacklevel

__all__ = [
    "WrapsEstimator",
    "as_random_state",
    "calibration_target",
    "call_method",
    "check_calibrated",
    "check_calibration_size",
    "distribution_cdf",
    "distribution_icdf",
    "fit_clone",
    "fitted_or_prefit",
    "ravel_column",
    "resolve_array",
    "split_for_calibration",
    "store_params",
]


def store_params(est, params: dict) -> None:
    """Store every ``__init__`` parameter of ``est`` unchanged, from ``params`` (``locals()``).

    scikit-learn's rule: ``__init__`` keeps its arguments as attributes of the same names and
    does nothing else; validation happens in ``fit``/``calibrate``.
    """
    for name in type(est)._get_param_names():
        setattr(est, name, params[name])


def call_method(obj, method: str, X, obj_name: str) -> np.ndarray:
    """Call ``obj.method(X)`` and return a float64 array, with a clear error if missing."""
    if obj is None:
        raise ValueError(f"{obj_name} is None: pass precomputed values or set {obj_name}")
    fn = getattr(obj, method, None)
    if not callable(fn):
        raise TypeError(f"{obj_name} must have a callable .{method}() method")
    return np.asarray(fn(X), dtype=np.float64)


def resolve_array(precomputed, obj, method: str, X, name: str, obj_name: str) -> np.ndarray:
    """Use the precomputed array if given, else ``obj.method(X)``."""
    if precomputed is not None:
        return precomputed
    if X is None:
        raise ValueError(f"pass either {name} (precomputed) or X (with {obj_name} set)")
    return call_method(obj, method, X, obj_name)


def fitted_or_prefit(est, name: str):
    """The model fitted by ``fit`` (``est.<name>_``), else the parameter as given (prefit)."""
    fitted = getattr(est, name + "_", None)
    return fitted if fitted is not None else getattr(est, name)


def check_calibrated(est, method: str) -> None:
    """Raise ``NotFittedError`` (a ``ValueError``) unless ``est`` has been calibrated."""
    from sklearn.exceptions import NotFittedError

    if not hasattr(est, "quantile_") and not hasattr(est, "pit_"):
        raise NotFittedError(
            f"this {type(est).__name__} is not calibrated yet: call calibrate(...) (or fit with "
            f"calibration_size set) before {method}()"
        )


def check_calibration_size(calibration_size) -> float | None:
    """``None`` (calibrate separately) or the calibration fraction in ``(0, 1)``."""
    if calibration_size is None:
        return None
    if isinstance(calibration_size, bool) or not isinstance(calibration_size, (float, np.floating)):
        raise TypeError(
            f"calibration_size must be None or a float in (0, 1), got "
            f"{type(calibration_size).__name__}"
        )
    if not 0.0 < calibration_size < 1.0:
        raise ValueError(
            f"calibration_size must lie strictly between 0 and 1, got {calibration_size}"
        )
    return float(calibration_size)


def split_for_calibration(est, X, y):
    """``(X_fit, X_cal, y_fit, y_cal)``: ``est.calibration_size`` of the rows held out at random.

    ``est.random_state`` must be explicit (an int or a NumPy generator): no global RNG state.
    """
    from sklearn.model_selection import train_test_split

    if est.random_state is None:
        raise ValueError(
            "random_state is required when calibration_size is set (an int or a "
            "numpy.random.Generator/RandomState), so that the same call gives the same split"
        )
    return train_test_split(
        X, y, test_size=est.calibration_size, random_state=as_random_state(est.random_state)
    )


def as_random_state(random_state) -> np.random.RandomState | int:
    """scikit-learn's view of ``random_state`` (a ``Generator`` seeds a ``RandomState``)."""
    if isinstance(random_state, np.random.Generator):
        return np.random.RandomState(random_state.integers(2**32 - 1))
    return random_state


def fit_clone(est, name: str, X, y):
    """Fit a clone of ``est.<name>`` (the parameter itself is never modified) and return it."""
    from sklearn.base import clone

    model = getattr(est, name)
    if model is None or not callable(getattr(model, "fit", None)):
        raise TypeError(f"{name} must be an estimator with a fit(X, y) method to be fitted here")
    return clone(model).fit(X, y)


def ravel_column(y):
    """``y`` with a column ``(n, 1)`` ravelled to ``(n,)``, warning as scikit-learn does.

    scikit-learn's estimators accept a column vector where a 1-D target is expected, with a
    ``DataConversionWarning``; ours do the same in ``fit`` and ``calibrate``. Other shapes are
    returned as given, for the caller's own check (which names ``y``).
    """
    from sklearn.exceptions import DataConversionWarning

    arr = np.asarray(y)
    if arr.ndim != 2 or arr.shape[1] != 1:
        return y
    warnings.warn(
        "A column-vector y was passed when a 1d array was expected. Please change the shape "
        "of y to (n_samples,), for example using ravel().",
        DataConversionWarning,
        stacklevel=caller_stacklevel(),
    )
    return arr.ravel()


def calibration_target(y, what: str):
    """The ``y`` of ``calibrate``: required, and a column ravelled (:func:`ravel_column`)."""
    if y is None:
        raise ValueError(f"y (calibration {what}) is required")
    return ravel_column(y)


def fit_then_calibrate(est, X, y, names: tuple[str, ...]):
    """The shared ``fit`` of the split-conformal estimators.

    Validates the parameters, ravels a column ``y`` (:func:`ravel_column`), holds out
    ``calibration_size`` of ``(X, y)`` when it is set, fits a clone of each ``est.<name>`` on
    the rest (stored as ``<name>_``), copies ``n_features_in_`` from the first, runs
    ``est._after_fit()`` when defined (the classifier reads ``classes_`` there), and
    calibrates on the held-out part. Returns ``est``.
    """
    est._check_params()
    if y is None:
        raise ValueError(f"{type(est).__name__} requires y to be passed, but the target y is None")
    y = ravel_column(y)
    if est.calibration_size is not None:
        X, X_cal, y, y_cal = split_for_calibration(est, X, y)
    fitted = [fit_clone(est, name, X, y) for name in names]
    for name, model in zip(names, fitted, strict=True):
        setattr(est, name + "_", model)
    if hasattr(fitted[0], "n_features_in_"):
        est.n_features_in_ = fitted[0].n_features_in_
    if hasattr(est, "_after_fit"):
        est._after_fit()
    if est.calibration_size is not None:
        est.calibrate(X_cal, y_cal)
    return est


class WrapsEstimator:
    """Mixin of the estimators that wrap scikit-learn estimators (the parameters named in
    ``_wrapped``): their ``fit``, and the input tags (sparse input, ...) of the first."""

    _wrapped: tuple[str, ...] = ("estimator",)

    def fit(self, X, y):
        """Fit clones of the wrapped estimators on a training set (not the calibration set).

        With ``calibration_size`` set, a random part of ``(X, y)`` is held out and used to
        ``calibrate`` instead: fitted and calibrated in one call, as a Pipeline needs.

        Returns
        -------
        self
        """
        return fit_then_calibrate(self, X, y, self._wrapped)

    def __sklearn_tags__(self):
        from sklearn.utils import get_tags

        tags = super().__sklearn_tags__()
        inner = getattr(self, self._wrapped[0], None)
        if inner is not None:
            tags.input_tags.sparse = get_tags(inner).input_tags.sparse
        return tags


# ----------------------------------------------------------------------------- distributions
def _scalar_event(distribution) -> bool:
    return tuple(getattr(distribution, "event_shape", ())) == (1,)


def _method(distribution, name: str):
    fn = getattr(distribution, name, None)
    if not callable(fn):
        raise TypeError(
            f"distribution must have a callable .{name}() method (a numpyro distribution, or a "
            f"sequence of them), got {type(distribution).__name__}"
        )
    return fn


def _elementwise(distribution, name: str, values: np.ndarray) -> np.ndarray:
    """``distribution.<name>(values)`` for scalar or ``(1,)``-event distributions, as float64."""
    fn = _method(distribution, name)
    scalar_event = _scalar_event(distribution)
    x = values[..., None] if scalar_event else values
    out = np.asarray(fn(x), dtype=np.float64)
    if scalar_event and out.ndim and out.shape[-1] == 1:
        out = out[..., 0]
    return out


def distribution_cdf(distribution, y: np.ndarray) -> np.ndarray:
    """``F_i(y_i)``, shape ``(n,)``, for every shared predictive distribution.

    ``distribution`` is one distribution with batch shape ``(n,)`` (or ``()`` for ``n = 1``),
    scalar events or events of shape ``(1,)`` (a 1-D ``GaussianMixture``), or a sequence of
    ``n`` per-point distributions (particle distributions have no batch axis). JAX arrays are
    converted to NumPy.
    """
    if isinstance(distribution, (list, tuple)):
        if len(distribution) != len(y):
            raise ValueError(
                f"distribution is a sequence of {len(distribution)} distributions but y has "
                f"{len(y)} entries; one distribution per point is expected"
            )
        return np.array([_elementwise(d, "cdf", y[i : i + 1]).reshape(-1)[0]
                         for i, d in enumerate(distribution)])  # fmt: skip
    return np.atleast_1d(_elementwise(distribution, "cdf", y))


def distribution_icdf(distribution, level: float) -> np.ndarray:
    """``F_i^{-1}(level)`` of every point, shape ``(n,)`` (inputs as :func:`distribution_cdf`)."""
    q = np.asarray(float(level))
    if isinstance(distribution, (list, tuple)):
        return np.array([_elementwise(d, "icdf", q).reshape(-1)[0] for d in distribution])
    return np.atleast_1d(_elementwise(distribution, "icdf", q))
