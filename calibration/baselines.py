"""Naive baselines for batch predictive inference (for comparison only).

* Batch splitting: cut the calibration scores into ``floor(n / m)`` disjoint
  batches of size ``m``; the test batch's mean is exchangeable with the batch
  means, so their split-conformal order statistic bounds it (wasteful: it uses
  ``n / m`` effective points).
* Bonferroni: bound every test score by the level-``alpha/m`` split-conformal
  quantile, so all hold simultaneously and so does their mean.
"""

from __future__ import annotations

import numpy as np

from ._validation import as_float_array, check_alpha, check_positive_int
from .quantile import conformal_quantile

__all__ = ["bonferroni_mean_bound", "split_batches_mean_bound"]


def split_batches_mean_bound(scores, m: int, alpha: float) -> float:
    """Split-conformal bound on a batch mean from disjoint calibration batches."""
    s = as_float_array(scores, "scores")
    m = check_positive_int(m, "m")
    n_batches = len(s) // m
    means = s[: n_batches * m].reshape(n_batches, m).mean(axis=1)
    return conformal_quantile(means, alpha)


def bonferroni_mean_bound(scores, m: int, alpha: float, *, upper_bound: float = np.inf):
    """Bound on a batch mean via simultaneous level-``alpha/m`` bounds on each score."""
    s = as_float_array(scores, "scores")
    m = check_positive_int(m, "m")
    return conformal_quantile(s, check_alpha(alpha) / m, upper_bound=upper_bound)
