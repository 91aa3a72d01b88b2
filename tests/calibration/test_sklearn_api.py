"""The calibration estimators are scikit-learn estimators: the applicable estimator checks,
clone, Pipeline final step, classes_ for any labels, NotFittedError, random_state; outputs
identical to MAPIE's."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import BayesianRidge, LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from calibration import (
    ConformalizedQuantileRegressor,
    ConformalPredictiveDistribution,
    SecondOrderCalibrator,
    SplitConformalClassifier,
    SplitConformalRegressor,
)


class _LogisticPairModel:
    """A prefit pair model for any numeric X: ``p(1 | x) = sigmoid(mean(x))`` and a pair head
    that leans on ``y1`` (``p_same = p + p (1 - p) / 2``)."""

    def predict_pair(self, X):
        X = np.asarray(X, dtype=np.float64)
        p1 = 1.0 / (1.0 + np.exp(-X.mean(axis=1)))
        p = np.stack([1.0 - p1, p1], axis=1)
        return p, p + 0.5 * p * (1.0 - p)

    def __repr__(self) -> str:  # stable test ids
        return "_LogisticPairModel()"


ESTIMATORS = [
    SplitConformalRegressor(LinearRegression()),
    SplitConformalRegressor(LinearRegression(), calibration_size=0.3, random_state=0),
    SplitConformalClassifier(LogisticRegression()),
    SplitConformalClassifier(LogisticRegression(), calibration_size=0.3, random_state=0),
    ConformalizedQuantileRegressor(LinearRegression(), LinearRegression()),
    ConformalPredictiveDistribution(BayesianRidge()),
    # BayesianRidge.predict(X, return_std=True) does not convert an object-dtype X itself
    # (check_dtype_object); a pipeline's scaler does
    ConformalPredictiveDistribution(
        make_pipeline(StandardScaler(), BayesianRidge()), calibration_size=0.3, random_state=0
    ),
    SecondOrderCalibrator(_LogisticPairModel()),
]

# SecondOrderCalibrator.fit needs two independent responses per input, y of shape (n, 2) (the
# paired responses of the rescaling); these checks fit on a 1-D y, which it refuses by name
_PAIRED_Y = "fit needs y of shape (n, 2), two responses per input; the check passes a 1-D y"
_PAIRED_Y_CHECKS = [
    "check_complex_data",
    "check_dict_unchanged",
    "check_dont_overwrite_parameters",
    "check_dtype_object",
    "check_estimator_sparse_array",
    "check_estimator_sparse_matrix",
    "check_estimator_sparse_tag",
    "check_estimators_dtypes",
    "check_estimators_empty_data_messages",
    "check_estimators_fit_returns_self",
    "check_estimators_nan_inf",
    "check_estimators_overwrite_params",
    "check_estimators_pickle",
    "check_f_contiguous_array_estimator",
    "check_fit2d_1feature",
    "check_fit2d_1sample",
    "check_fit2d_predict1d",
    "check_fit_check_is_fitted",
    "check_fit_idempotent",
    "check_fit_score_takes_y",
    "check_methods_sample_order_invariance",
    "check_methods_subset_invariance",
    "check_n_features_in",
    "check_n_features_in_after_fitting",
    "check_pipeline_consistency",
    "check_positive_only_tag_during_fit",
    "check_readonly_memmap_input",
]


def _expected_failures(est):
    if isinstance(est, SecondOrderCalibrator):
        return dict.fromkeys(_PAIRED_Y_CHECKS, _PAIRED_Y)
    return {}


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=_expected_failures)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _regression(n=400, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)) * [1.0, 10.0, 100.0]
    y = X @ [1.0, 0.1, 0.01] + rng.standard_t(5, size=n)
    return X, y


def test_parameters_validated_in_fit_not_init_and_clone():
    est = SplitConformalRegressor(LinearRegression(), alpha=2.0, conformity_score="bogus")
    assert est.get_params()["alpha"] == 2.0  # stored as given
    X, y = _regression()
    with pytest.raises(ValueError, match="conformity_score"):
        est.fit(X, y)
    est.set_params(conformity_score="absolute")
    with pytest.raises(ValueError, match="alpha"):
        est.fit(X, y)
    c = clone(est.set_params(alpha=0.2))
    assert c.get_params()["alpha"] == 0.2 and c.estimator is not est.estimator
    with pytest.raises(TypeError, match="calibration_size"):
        SplitConformalRegressor(LinearRegression(), calibration_size=1).fit(X, y)
    with pytest.raises(ValueError, match="random_state is required"):
        SplitConformalRegressor(LinearRegression(), calibration_size=0.3).fit(X, y)


def test_pipeline_final_step_equals_manual_split_fit_calibrate():
    X, y = _regression()
    pipe = make_pipeline(
        StandardScaler(),
        SplitConformalRegressor(
            LinearRegression(), alpha=0.1, calibration_size=0.25, random_state=7
        ),
    )
    pipe.fit(X, y)
    cp = pipe[-1]
    assert cp.n_calibration_ == 100 and cp.n_features_in_ == 3
    Xs = pipe[:-1].transform(X[:5])
    np.testing.assert_array_equal(pipe.predict(X[:5]), cp.estimator_.predict(Xs))
    # the same thing by hand: the split is sklearn's train_test_split with the random_state
    from sklearn.model_selection import train_test_split

    Xt = pipe[:-1].transform(X)
    X_fit, X_cal, y_fit, y_cal = train_test_split(Xt, y, test_size=0.25, random_state=7)
    manual = SplitConformalRegressor(LinearRegression().fit(X_fit, y_fit)).calibrate(X_cal, y_cal)
    np.testing.assert_array_equal(cp.predict_interval(Xs), manual.predict_interval(Xs))
    # clone gives an unfitted copy with equal parameters; refitting reproduces the result
    again = clone(pipe).fit(X, y)
    np.testing.assert_array_equal(again[-1].predict_interval(Xs), cp.predict_interval(Xs))
    # the parameter estimator itself is never fitted
    assert not hasattr(pipe[-1].estimator, "coef_")


def test_conformal_wrapper_around_a_pipeline_clone_and_grid_search():
    """The pattern the README shows: the conformal estimator wraps the pipeline, so that
    ``predict_interval`` is a method of what ``GridSearchCV`` returns."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV, KFold

    X, y = _regression()
    cp = SplitConformalRegressor(
        make_pipeline(StandardScaler(), Ridge()), alpha=0.1, calibration_size=0.25, random_state=3
    )
    assert "estimator__ridge__alpha" in cp.get_params()
    c = clone(cp)
    assert c.estimator is not cp.estimator and c.get_params()["estimator__ridge__alpha"] == 1.0
    cv = KFold(3, shuffle=True, random_state=0)
    search = GridSearchCV(cp, {"estimator__ridge__alpha": [0.1, 1e5]}, cv=cv).fit(X, y)
    assert search.best_params_ == {"estimator__ridge__alpha": 0.1}  # default scoring: R^2
    best = search.best_estimator_
    # the refit is the wrapper fitted on all of (X, y) with the best parameter, by hand:
    manual = clone(cp).set_params(estimator__ridge__alpha=0.1).fit(X, y)
    np.testing.assert_array_equal(best.predict_interval(X[:7]), manual.predict_interval(X[:7]))
    np.testing.assert_array_equal(search.predict(X[:7]), manual.predict(X[:7]))
    # and by hand again, from the split: the inner pipeline fitted on the training part
    from sklearn.model_selection import train_test_split

    X_fit, X_cal, y_fit, y_cal = train_test_split(X, y, test_size=0.25, random_state=3)
    inner = make_pipeline(StandardScaler(), Ridge(alpha=0.1)).fit(X_fit, y_fit)
    prefit = SplitConformalRegressor(inner, alpha=0.1).calibrate(X_cal, y_cal)
    np.testing.assert_array_equal(best.predict_interval(X[:7]), prefit.predict_interval(X[:7]))
    # the classifier: predict_set on what the search returns
    Xc, codes = _blobs()
    clf = SplitConformalClassifier(
        make_pipeline(StandardScaler(), LogisticRegression()), calibration_size=0.3, random_state=0
    )
    grid = {"estimator__logisticregression__C": [0.01, 1.0]}
    found = GridSearchCV(clf, grid, cv=3).fit(Xc, codes).best_estimator_
    assert found.predict_set(Xc[:4]).shape == (4, 3)


def test_pipeline_does_not_forward_predict_interval():
    """Why the README puts the pipeline inside: a Pipeline ending in the conformal estimator
    has no ``predict_interval`` (scikit-learn forwards only its own methods)."""
    X, y = _regression()
    pipe = make_pipeline(
        StandardScaler(),
        SplitConformalRegressor(LinearRegression(), calibration_size=0.25, random_state=7),
    ).fit(X, y)
    assert not hasattr(pipe, "predict_interval")
    band = pipe[-1].predict_interval(pipe[:-1].transform(X[:3]))  # the long way round
    assert band.shape == (3, 2)


def _blobs(n=600, k=3, seed=0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, k, size=n)
    X = rng.normal(size=(n, 2)) + 2.0 * np.eye(k, 2)[codes]
    return X, codes


@pytest.mark.parametrize(
    "labels", [np.array(["cat", "dog", "eel"]), np.array([1, 2, 3])], ids=["strings", "1..K"]
)
def test_any_labels_through_classes(labels):
    X, codes = _blobs()
    y = labels[codes]
    tr, cal, te = slice(0, 300), slice(300, 500), slice(500, 600)
    ref = SplitConformalClassifier(
        LogisticRegression().fit(X[tr], codes[tr]), conformity_score="aps"
    )
    ref.calibrate(X[cal], codes[cal])
    clf = SplitConformalClassifier(LogisticRegression(), conformity_score="aps").fit(X[tr], y[tr])
    clf.calibrate(X[cal], y[cal])
    np.testing.assert_array_equal(clf.classes_, labels)
    np.testing.assert_array_equal(clf.predict_set(X[te]), ref.predict_set(X[te]))
    np.testing.assert_array_equal(clf.predict(X[te]), labels[ref.predict(X[te])])
    assert clf.score(X[te], y[te]) > 0.7  # ClassifierMixin accuracy of the point prediction
    # precomputed probabilities: the labels of the columns are given as `classes`
    p = clf.predict_proba(X[cal])
    pre = SplitConformalClassifier(conformity_score="aps", classes=labels).calibrate(
        y=y[cal], proba=p
    )
    assert pre.quantile_ == clf.quantile_
    with pytest.raises(ValueError, match="not in classes_"):
        SplitConformalClassifier().calibrate(y=y[cal], proba=p)  # default codes 0..K-1
    with pytest.raises(ValueError, match="one label per probability column"):
        SplitConformalClassifier(classes=labels[:2]).calibrate(y=y[cal], proba=p)


def test_not_fitted_errors():
    for est, call in [
        (SplitConformalRegressor(), lambda e: e.predict_interval(y_pred=[0.0])),
        (SplitConformalClassifier(), lambda e: e.predict_set(proba=[[0.5, 0.5]])),
        (ConformalizedQuantileRegressor(), lambda e: e.predict_interval(lower=[0.0], upper=[1.0])),
        (ConformalPredictiveDistribution(), lambda e: e.predict_interval(distribution=[])),
    ]:
        with pytest.raises(NotFittedError, match="calibrate"):
            call(est)


def test_probabilities_must_sum_to_one():
    with pytest.raises(ValueError, match="sum to 1"):
        SplitConformalClassifier().calibrate(y=[0, 1], proba=[[0.5, 0.4], [0.2, 0.8]])


def test_random_state_gives_independent_calibration_and_test_uniforms():
    X, codes = _blobs(seed=3)
    p = LogisticRegression().fit(X[:300], codes[:300]).predict_proba(X[300:])
    kw = dict(conformity_score="aps", randomized=True)
    a = SplitConformalClassifier(random_state=5, **kw).calibrate(y=codes[300:], proba=p)
    b = SplitConformalClassifier(random_state=5, **kw).calibrate(y=codes[300:], proba=p)
    assert a.quantile_ == b.quantile_
    np.testing.assert_array_equal(a.predict_set(proba=p), b.predict_set(proba=p))
    # the calibration and prediction uniforms are different streams of the same random_state
    u_cal = np.random.default_rng([5, 0]).uniform(size=len(p))
    u_test = np.random.default_rng([5, 1]).uniform(size=len(p))
    c = SplitConformalClassifier(**kw).calibrate(y=codes[300:], proba=p, u=u_cal)
    assert c.quantile_ == a.quantile_
    np.testing.assert_array_equal(c.predict_set(proba=p, u=u_test), a.predict_set(proba=p))


# ----------------------------------------------------------------------------- MAPIE identity
def test_outputs_identical_to_mapie():
    mapie = pytest.importorskip("mapie")
    from mapie.classification import SplitConformalClassifier as MapieClassifier
    from mapie.regression import SplitConformalRegressor as MapieRegressor

    assert mapie.__version__ >= "1.6"
    X, y = _regression(n=3000, seed=1)
    model = LinearRegression().fit(X[:1000], y[:1000])
    ours = SplitConformalRegressor(model, alpha=0.1).calibrate(X[1000:2000], y[1000:2000])
    theirs = MapieRegressor(model, confidence_level=0.9, prefit=True)
    theirs.conformalize(X[1000:2000], y[1000:2000])
    np.testing.assert_array_equal(
        ours.predict_interval(X[2000:]), theirs.predict_interval(X[2000:])[1][:, :, 0]
    )
    Xc, codes = _blobs(n=3000, k=4, seed=2)
    labels = np.array(["a", "b", "c", "d"])[codes]  # MAPIE maps labels through classes_ too
    clf = LogisticRegression().fit(Xc[:1000], labels[:1000])
    cal, te = slice(1000, 2000), slice(2000, 3000)
    lac = SplitConformalClassifier(clf, alpha=0.1).calibrate(Xc[cal], labels[cal])
    m = MapieClassifier(clf, confidence_level=0.9, conformity_score="lac", prefit=True)
    m.conformalize(Xc[cal], labels[cal])
    np.testing.assert_array_equal(lac.predict_set(Xc[te]), m.predict_set(Xc[te])[1][:, :, 0])
    # MAPIE's APS: randomised calibration scores (u from its RandomState), last label included
    u = np.random.RandomState(0).uniform(size=1000)
    aps = SplitConformalClassifier(
        clf, alpha=0.1, conformity_score="aps", randomized=True, include_last_label=True
    ).calibrate(Xc[cal], labels[cal], u=u)
    m = MapieClassifier(
        clf, confidence_level=0.9, conformity_score="aps", prefit=True, random_state=0
    ).conformalize(Xc[cal], labels[cal])
    np.testing.assert_array_equal(aps.predict_set(Xc[te]), m.predict_set(Xc[te])[1][:, :, 0])


def test_predictive_distribution_fit_equals_the_split_by_hand():
    """ConformalPredictiveDistribution.fit: the Gaussian predictive of a regressor with
    ``predict(X, return_std=True)``, against SciPy's normal cdf/ppf on the same split."""
    from scipy import stats
    from sklearn.model_selection import train_test_split

    X, y = _regression()
    cpd = ConformalPredictiveDistribution(
        make_pipeline(StandardScaler(), BayesianRidge()), calibration_size=0.25, random_state=4
    ).fit(X, y)
    X_fit, X_cal, y_fit, y_cal = train_test_split(X, y, test_size=0.25, random_state=4)
    inner = make_pipeline(StandardScaler(), BayesianRidge()).fit(X_fit, y_fit)
    mean, std = inner.predict(X_cal, return_std=True)
    pit = np.sort(stats.norm.cdf(y_cal, mean, std))
    np.testing.assert_allclose(cpd.pit_, pit, rtol=1e-12, atol=1e-15)
    n = len(pit)  # 100: k_lo = floor(101 * 0.05) = 5, k_hi = ceil(101 * 0.95) = 96
    m, s = inner.predict(X[:4], return_std=True)
    expected = np.stack([stats.norm.ppf(pit[4], m, s), stats.norm.ppf(pit[95], m, s)], axis=1)
    assert n == 100
    np.testing.assert_allclose(cpd.predict_interval(X[:4], alpha=0.1), expected, rtol=1e-10)
    np.testing.assert_array_equal(cpd.predict(X[:4]), m)
    # the envelopes count the calibration PITs below / at the test PIT (a test row that is
    # also a calibration row ties with its own PIT)
    z = stats.norm.cdf(y[:4], m, s)
    below = np.array([np.sum(pit < zi) for zi in z])
    at_most = np.array([np.sum(pit <= zi) for zi in z])
    bounds = np.stack([below, at_most + 1], axis=1) / (n + 1)
    np.testing.assert_allclose(cpd.cdf_bounds(X[:4], y[:4]), bounds, rtol=1e-15)
    with pytest.raises(TypeError, match="return_std"):
        ConformalPredictiveDistribution(LinearRegression()).fit(X, y).calibrate(X, y)
    with pytest.raises(ValueError, match="not both"):
        cpd.predict_interval(X[:4], distribution=object())
