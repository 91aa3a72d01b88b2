"""Calibrated uncertainty: split conformal prediction and batch predictive inference.

NumPy in, NumPy out.  The estimators are scikit-learn estimators (``BaseEstimator``
parameters validated in ``fit``/``calibrate``, ``clone``-able, usable as a Pipeline's final
step, ``classes_`` for any labels, ``NotFittedError``, ``random_state``) with
``fit`` / ``calibrate`` / ``predict`` / ``predict_interval`` / ``predict_set``.  JAX and
numpyro are never imported here: predictive distributions (numpyro's, ``BarDistribution``,
1-D ``GaussianMixture``, particle distributions) are duck-typed through ``cdf``/``icdf``.

Also here: coverage and width of intervals and sets, and scorers for ``GridSearchCV``
(:mod:`calibration.scoring`), first-order calibration metrics (:mod:`calibration.metrics`),
second-order calibration from pair predictions (:mod:`calibration.second_order`), and the
posterior checks ``tarp``/``sbc`` (:mod:`calibration.posterior_checks`, which import JAX on
first access, as ``PairClassifier``/``fit_pair_classifier`` import torch).
"""

from .aci import AdaptiveConformalResult, adaptive_conformal_intervals
from .baselines import bonferroni_mean_bound, split_batches_mean_bound
from .batch import (
    batch_max_bound,
    batch_mean_bound,
    batch_order_statistic_bound,
    batch_quantile_bound,
    brute_force_bound,
    max_mean_over_rank_sum,
    order_statistic_quantile,
    rank_sum_counts,
    rank_sum_quantile,
    select_exceeding,
)
from .classification import SplitConformalClassifier, class_scores, label_scores, prediction_sets
from .cqr import ConformalizedQuantileRegressor, cqr_scores
from .metrics import (
    ReliabilityDiagram,
    brier_score,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_diagram,
    squared_calibration_error,
)
from .predictive import ConformalPredictiveDistribution, pit_scores
from .quantile import conformal_quantile, conformal_rank, min_calibration_size
from .scoring import conformal_scorer, coverage_score, mean_width_score
from .second_order import (
    SecondOrderCalibrator,
    VarianceRescaling,
    cheat_corrected_confidence,
    cheat_variance,
    chebyshev_interval,
    hallucination_filter,
    paired_squared_error,
    squared_error_estimate,
)
from .split import SplitConformalRegressor, absolute_residual_scores, normalized_residual_scores

# imported on first access: JAX (posterior checks) and torch (pair classifier)
_LAZY = {
    "SBCResult": "posterior_checks",
    "TARPResult": "posterior_checks",
    "sbc": "posterior_checks",
    "tarp": "posterior_checks",
    "PairClassifier": "pair_classifier",
    "fit_pair_classifier": "pair_classifier",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'calibration' has no attribute {name!r}")


__all__ = [
    "AdaptiveConformalResult",
    "ConformalPredictiveDistribution",
    "ConformalizedQuantileRegressor",
    "PairClassifier",
    "ReliabilityDiagram",
    "SBCResult",
    "SecondOrderCalibrator",
    "SplitConformalClassifier",
    "SplitConformalRegressor",
    "TARPResult",
    "VarianceRescaling",
    "absolute_residual_scores",
    "adaptive_conformal_intervals",
    "batch_max_bound",
    "batch_mean_bound",
    "batch_order_statistic_bound",
    "batch_quantile_bound",
    "bonferroni_mean_bound",
    "brier_score",
    "brute_force_bound",
    "cheat_corrected_confidence",
    "cheat_variance",
    "chebyshev_interval",
    "class_scores",
    "conformal_quantile",
    "conformal_rank",
    "conformal_scorer",
    "coverage_score",
    "cqr_scores",
    "expected_calibration_error",
    "fit_pair_classifier",
    "hallucination_filter",
    "label_scores",
    "max_mean_over_rank_sum",
    "mean_width_score",
    "min_calibration_size",
    "negative_log_likelihood",
    "normalized_residual_scores",
    "order_statistic_quantile",
    "paired_squared_error",
    "pit_scores",
    "prediction_sets",
    "rank_sum_counts",
    "rank_sum_quantile",
    "reliability_diagram",
    "sbc",
    "select_exceeding",
    "split_batches_mean_bound",
    "squared_error_estimate",
    "squared_calibration_error",
    "tarp",
]
