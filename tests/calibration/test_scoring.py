"""Coverage and width scores, and the scorers for GridSearchCV: values equal a direct NumPy
computation, the sign convention is scikit-learn's (higher is better), and a search runs
with them (its cross-validated scores equal the folds computed by hand)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import make_scorer
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from calibration import (
    SplitConformalClassifier,
    SplitConformalRegressor,
    conformal_scorer,
    coverage_score,
    mean_width_score,
)


def test_interval_scores_equal_numpy():
    rng = np.random.default_rng(0)
    lo = rng.normal(size=50)
    hi = lo + rng.exponential(size=50)
    y = rng.normal(size=50)
    y[:3] = lo[:3]  # closed intervals: the ends are covered
    y[3:5] = hi[3:5]
    intervals = np.stack([lo, hi], axis=1)
    inside = [lo[i] <= y[i] <= hi[i] for i in range(50)]
    assert coverage_score(y, intervals) == sum(inside) / 50
    assert mean_width_score(intervals) == pytest.approx(np.sum(hi - lo) / 50, rel=1e-15)
    assert mean_width_score([[-np.inf, np.inf], [0.0, 1.0]]) == np.inf


def test_set_scores_equal_numpy_for_codes_and_labels():
    sets = np.array([[True, False, True], [False, False, False], [True, True, True]])
    codes = np.array([2, 0, 1])
    assert coverage_score(codes, sets) == 2 / 3  # row 0 holds 2, row 1 is empty, row 2 full
    assert mean_width_score(sets) == (2 + 0 + 3) / 3
    labels = np.array(["cat", "dog", "eel"])
    assert coverage_score(labels[codes], sets, classes=labels) == 2 / 3
    assert coverage_score(["cat", "cat", "yak"], sets, classes=labels) == 1 / 3  # yak: unknown


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="y_pred"):
        coverage_score([0.0], [[0.0, 1.0, 2.0]])
    with pytest.raises(ValueError, match="lower <= upper"):
        mean_width_score([[1.0, 0.0]])
    with pytest.raises(ValueError, match="length"):
        coverage_score([0.0, 1.0], [[0.0, 1.0]])
    with pytest.raises(ValueError, match="y_true"):
        coverage_score([3], [[True, False]])
    with pytest.raises(ValueError, match="classes"):
        coverage_score([0.0], [[0.0, 1.0]], classes=[0, 1])
    with pytest.raises(ValueError, match="metric"):
        conformal_scorer("width")
    with pytest.raises(TypeError, match="predict_interval"):
        conformal_scorer()(Ridge().fit([[0.0], [1.0]], [0.0, 1.0]), [[0.0]], [0.0])


def _regression(n=600, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)) * [1.0, 10.0, 100.0, 1.0]
    y = X @ [1.0, 0.2, 0.01, 0.0] + rng.normal(size=n)
    return X, y


def test_grid_search_over_the_inner_pipeline_with_the_width_scorer():
    X, y = _regression()
    cp = SplitConformalRegressor(
        make_pipeline(StandardScaler(), Ridge()), alpha=0.1, calibration_size=0.3, random_state=0
    )
    grid = {"estimator__ridge__alpha": [0.01, 1e4]}
    cv = KFold(4, shuffle=True, random_state=0)
    scoring = {
        "width": conformal_scorer("neg_mean_width"),
        "coverage": conformal_scorer("coverage"),
    }
    search = GridSearchCV(cp, grid, scoring=scoring, refit="width", cv=cv).fit(X, y)
    # a heavily shrunk ridge predicts worse: wider intervals, a lower (more negative) score
    assert search.best_params_ == {"estimator__ridge__alpha": 0.01}
    # each cross-validated score is the fold computed by hand
    for j, params in enumerate(search.cv_results_["params"]):
        widths, covs = [], []
        for train, test in cv.split(X):
            est = clone(cp).set_params(**params).fit(X[train], y[train])
            band = est.predict_interval(X[test])
            widths.append(-np.mean(band[:, 1] - band[:, 0]))
            covs.append(np.mean((band[:, 0] <= y[test]) & (y[test] <= band[:, 1])))
        assert search.cv_results_["mean_test_width"][j] == pytest.approx(np.mean(widths), 1e-12)
        assert search.cv_results_["mean_test_coverage"][j] == pytest.approx(np.mean(covs), 1e-12)
    # make_scorer with response_method gives the same coverage as the scorer
    by_make_scorer = make_scorer(coverage_score, response_method=("predict_interval",))
    best = search.best_estimator_
    assert by_make_scorer(best, X, y) == conformal_scorer("coverage")(best, X, y)
    assert best.predict_interval(X[:5]).shape == (5, 2)


def test_set_size_scorer_with_a_classifier_and_string_labels():
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 3, size=600)
    X = rng.normal(size=(600, 2)) + 2.0 * np.eye(3, 2)[codes]
    y = np.array(["a", "b", "c"])[codes]
    clf = SplitConformalClassifier(
        make_pipeline(StandardScaler(), LogisticRegression()), calibration_size=0.3, random_state=0
    )
    search = GridSearchCV(
        clf, {"estimator__logisticregression__C": [1e-4, 1.0]}, scoring=conformal_scorer(), cv=3
    ).fit(X, y)
    assert search.best_params_ == {"estimator__logisticregression__C": 1.0}
    sets = search.best_estimator_.predict_set(X)
    assert search.score(X, y) == -sets.sum(axis=1).mean()
    covered = sets[np.arange(600), codes]
    assert conformal_scorer("coverage")(search.best_estimator_, X, y) == covered.mean()
