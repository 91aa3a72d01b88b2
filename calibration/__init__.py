"""Calibrated uncertainty: split conformal prediction and batch predictive inference.

NumPy in, NumPy out.  The estimators are scikit-learn estimators (``BaseEstimator``
parameters validated in ``fit``/``calibrate``, ``clone``-able, usable as a Pipeline's final
step, ``classes_`` for any labels, ``NotFittedError``, ``random_state``) with
``fit`` / ``calibrate`` / ``predict`` / ``predict_interval`` / ``predict_set``.  JAX and
numpyro are never imported here: predictive distributions (numpyro's, ``BarDistribution``,
1-D ``GaussianMixture``, particle distributions) are duck-typed through ``cdf``/``icdf``.
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
from .predictive import ConformalPredictiveDistribution, pit_scores
from .quantile import conformal_quantile, conformal_rank, min_calibration_size
from .split import SplitConformalRegressor, absolute_residual_scores, normalized_residual_scores

__all__ = [
    "AdaptiveConformalResult",
    "ConformalPredictiveDistribution",
    "ConformalizedQuantileRegressor",
    "SplitConformalClassifier",
    "SplitConformalRegressor",
    "absolute_residual_scores",
    "adaptive_conformal_intervals",
    "batch_max_bound",
    "batch_mean_bound",
    "batch_order_statistic_bound",
    "batch_quantile_bound",
    "bonferroni_mean_bound",
    "brute_force_bound",
    "class_scores",
    "conformal_quantile",
    "conformal_rank",
    "cqr_scores",
    "label_scores",
    "max_mean_over_rank_sum",
    "min_calibration_size",
    "normalized_residual_scores",
    "order_statistic_quantile",
    "pit_scores",
    "prediction_sets",
    "rank_sum_counts",
    "rank_sum_quantile",
    "select_exceeding",
    "split_batches_mean_bound",
]
