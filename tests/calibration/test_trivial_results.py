"""Too few calibration points for the level: the documented trivial result (infinite
intervals, full sets) comes with exactly one ``UserWarning`` naming ``n_cal``, ``alpha`` and the
smallest ``n_cal`` that gives a finite threshold; at that size there is no warning.

The smallest size is found here by brute force in rational arithmetic (the least ``n`` with
``ceil((n + 1)(1 - alpha)) <= n``), independently of :func:`min_calibration_size`.
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest

from calibration import (
    ConformalizedQuantileRegressor,
    ConformalPredictiveDistribution,
    SplitConformalClassifier,
    SplitConformalRegressor,
    conformal_quantile,
)
from calibration.answer_sets import ConformalAnswerSets, RunSummary

ALPHA = 0.1


def _least_n(alpha: float) -> int:
    a = Fraction(alpha)
    n = 0
    while math.ceil((n + 1) * (1 - a)) > n:
        n += 1
    return n


N_MIN = _least_n(ALPHA)  # 9


class _Normal:
    """A scalar normal predictive distribution with ``cdf``/``icdf``."""

    def __init__(self, loc, scale=1.0):
        self.loc, self.scale = np.asarray(loc, dtype=float), scale

    def cdf(self, y):
        from scipy.special import ndtr

        return ndtr((np.asarray(y) - self.loc) / self.scale)

    def icdf(self, q):
        from scipy.special import ndtri

        return self.loc + self.scale * ndtri(np.asarray(q) + 0 * self.loc)


def _regressor(n):
    y = np.arange(float(n))
    return SplitConformalRegressor(alpha=ALPHA).calibrate(y=y, y_pred=np.zeros(n))


def _cqr(n):
    y = np.arange(float(n))
    est = ConformalizedQuantileRegressor(alpha=ALPHA)
    return est.calibrate(y=y, lower=np.zeros(n), upper=np.ones(n))


def _classifier(n, **kw):
    proba = np.tile([0.7, 0.2, 0.1], (n, 1))
    return SplitConformalClassifier(alpha=ALPHA, **kw).calibrate(y=np.arange(n) % 3, proba=proba)


def _answer_sets(n):
    run = RunSummary(("a", "b"), np.log([0.6, 0.4]), [None, None])
    return ConformalAnswerSets(ALPHA).calibrate([run] * n, ["a"] * n)


CALIBRATIONS = {
    "regressor": _regressor,
    "cqr": _cqr,
    "classifier": _classifier,
    "answer_sets": _answer_sets,
    "quantile": lambda n: conformal_quantile(np.arange(float(n)), ALPHA),
}


def _message(n, alpha, n_min):
    return rf"n_cal={n} .*alpha={alpha:g}: at least {n_min} are needed"


@pytest.mark.parametrize("name", CALIBRATIONS)
def test_one_warning_below_the_minimum_none_at_it(name):
    calibrate = CALIBRATIONS[name]
    with pytest.warns(UserWarning, match=_message(N_MIN - 1, ALPHA, N_MIN)) as record:
        calibrate(N_MIN - 1)
    assert len([w for w in record if issubclass(w.category, UserWarning)]) == 1
    assert record[0].filename == __file__  # it points at the caller, not at our internals
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calibrate(N_MIN)


def test_the_trivial_results_themselves():
    with pytest.warns(UserWarning):
        est = _regressor(N_MIN - 1)
    np.testing.assert_array_equal(est.predict_interval(y_pred=[0.0, 5.0]), [[-np.inf, np.inf]] * 2)
    with pytest.warns(UserWarning):
        clf = _classifier(N_MIN - 1)
    assert clf.predict_set(proba=[[0.98, 0.01, 0.01]]).all()
    with pytest.warns(UserWarning):
        sets = _answer_sets(N_MIN - 1)
    (s,) = sets.predict_set([RunSummary(("a",), np.log([1.0]), [None])])
    assert s.other and "anything" in s


def test_mondrian_warns_once_for_the_smallest_class():
    # classes 0, 1, 2 with 20, 20 and 4 calibration points: two are fine, one is too small
    y = np.array([0] * 20 + [1] * 20 + [2] * 4)
    proba = np.tile([0.5, 0.3, 0.2], (len(y), 1))
    est = SplitConformalClassifier(alpha=ALPHA, mondrian=True)
    with pytest.warns(UserWarning, match=_message(4, ALPHA, N_MIN)) as record:
        est.calibrate(y=y, proba=proba)
    assert len(record) == 1 and "class 2" in str(record[0].message)
    assert np.isinf(est.quantile_[2]) and np.isfinite(est.quantile_[:2]).all()


def test_predictive_distribution_warns_when_an_end_is_infinite():
    # equal-tailed: both ends finite iff floor((n + 1) alpha / 2) >= 1, i.e. n >= 2/alpha - 1
    n_min = next(n for n in range(1000) if math.floor((n + 1) * Fraction(ALPHA) / 2) >= 1)
    assert n_min == _least_n(ALPHA / 2) == 19
    for n, expect_warning in [(n_min - 1, True), (n_min, False)]:
        y = np.linspace(-1.0, 1.0, n)
        cpd = ConformalPredictiveDistribution().calibrate(y=y, distribution=_Normal(np.zeros(n)))
        if expect_warning:
            with pytest.warns(UserWarning, match=_message(n, ALPHA, n_min)) as record:
                band = cpd.predict_interval(distribution=_Normal([0.0]), alpha=ALPHA)
            assert len(record) == 1 and np.isinf(band).all()
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                assert np.isfinite(
                    cpd.predict_interval(distribution=_Normal([0.0]), alpha=ALPHA)
                ).all()
