"""Split conformal classification: LAC/APS/RAPS, randomised or not, Mondrian.

Data: K = 5 classes, a calibrated model (labels drawn from the predicted
probabilities).  Mean coverage over R draws (n = 100, T test points each) has
standard error sqrt(Var_Beta / R + 0.09 / (R T)); checks use 4.5 of them.
"""

import numpy as np
import pytest
from scipy import stats

from calibration import SplitConformalClassifier, class_scores, label_scores

N, T, R, KC, ALPHA = 100, 200, 1000, 5, 0.1
BETA = stats.beta(91, 10)
SE = np.sqrt(BETA.var() / R + 0.09 / (R * T))


def _data(seed, reps=R, n=N + T):
    rng = np.random.default_rng(seed)
    logits = 1.5 * rng.normal(size=(reps, n, KC))
    p = np.exp(logits)
    p /= p.sum(-1, keepdims=True)
    u = rng.uniform(size=(reps, n, 1))
    y = (u > np.cumsum(p, -1)).sum(-1)
    return p, np.minimum(y, KC - 1)


CONFIGS = [
    dict(conformity_score="lac"),
    dict(conformity_score="aps"),
    dict(conformity_score="aps", randomized=True),
    dict(conformity_score="raps", lam=0.05, k_reg=1),
    dict(conformity_score="raps", lam=0.05, k_reg=1, randomized=True),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c.values())))
def test_marginal_coverage(config):
    p, y = _data(10)
    cov = np.empty(R)
    for r in range(R):
        clf = SplitConformalClassifier(alpha=ALPHA, random_state=r, **config)
        clf.calibrate(y=y[r, :N], proba=p[r, :N])
        sets = clf.predict_set(proba=p[r, N:])
        cov[r] = sets[np.arange(T), y[r, N:]].mean()
    assert 0.900 - 4.5 * SE <= cov.mean() <= 0.9099 + 4.5 * SE


def test_mondrian_class_conditional_coverage():
    p, y = _data(11)
    hits = np.zeros(KC)
    counts = np.zeros(KC)
    for r in range(R):
        clf = SplitConformalClassifier(alpha=ALPHA, conformity_score="lac", mondrian=True)
        clf.calibrate(y=y[r, :N], proba=p[r, :N])
        sets = clf.predict_set(proba=p[r, N:])
        covered = sets[np.arange(T), y[r, N:]]
        np.add.at(hits, y[r, N:], covered)
        np.add.at(counts, y[r, N:], 1)
    # each class: coverage >= 1 - alpha (class sizes ~ n/K: looser SE per class)
    se = np.sqrt(0.1 * 0.9 * 5 / R + 0.09 / counts)
    assert np.all(hits / counts >= 0.9 - 4.5 * se)


def test_lac_per_draw_coverage_is_beta():
    """Exact conditional coverage as a function of q from a large fixed test pool."""
    p_pool, y_pool = _data(12, reps=1, n=200_000)
    s_pool = label_scores(p_pool[0], y_pool[0], "lac")
    s_sorted = np.sort(s_pool)
    p, y = _data(13, reps=2000, n=N)
    q = np.array(
        [
            SplitConformalClassifier(alpha=ALPHA).calibrate(y=y[r], proba=p[r]).quantile_
            for r in range(2000)
        ]
    )
    cov = np.searchsorted(s_sorted, q, side="right") / len(s_sorted)
    assert stats.kstest(cov, BETA.cdf).statistic < 1.95 / np.sqrt(2000) + 1 / np.sqrt(200_000) * 3


def test_small_n_full_label_set_and_boundary():
    p, y = _data(14, reps=1, n=20)
    clf = SplitConformalClassifier(alpha=0.1, conformity_score="aps").calibrate(
        y=y[0, :8], proba=p[0, :8]
    )
    assert clf.quantile_ == np.inf
    assert clf.predict_set(proba=p[0, 8:]).all()
    clf = SplitConformalClassifier(alpha=0.1, conformity_score="lac").calibrate(
        y=y[0, :9], proba=p[0, :9]
    )
    assert clf.quantile_ == clf.conformity_scores_.max()


def test_scores_by_hand_and_include_last_label():
    p = np.array([[0.5, 0.3, 0.2]])
    np.testing.assert_allclose(class_scores(p, "lac"), [[0.5, 0.7, 0.8]])
    np.testing.assert_allclose(class_scores(p, "aps"), [[0.5, 0.8, 1.0]])
    np.testing.assert_allclose(class_scores(p, "aps", u=np.array([0.5])), [[0.25, 0.65, 0.9]])
    np.testing.assert_allclose(class_scores(p, "raps", lam=0.1, k_reg=1), [[0.5, 0.9, 1.2]])
    clf = SplitConformalClassifier(alpha=0.5, conformity_score="aps", include_last_label=True)
    clf.calibrate(y=[0, 0, 0], proba=np.tile([[0.7, 0.2, 0.1]], (3, 1)))  # scores 0.7
    # cumulative mass 0.5, 0.8 -> label 1 crosses 0.7 and is included
    np.testing.assert_array_equal(clf.predict_set(proba=p), [[True, True, False]])
    plain = SplitConformalClassifier(alpha=0.5, conformity_score="aps").calibrate(
        y=[0, 0, 0], proba=np.tile([[0.7, 0.2, 0.1]], (3, 1))
    )
    np.testing.assert_array_equal(plain.predict_set(proba=p), [[True, False, False]])


def test_randomized_same_seed_same_result_and_bad_inputs():
    p, y = _data(15, reps=1, n=50)
    aps = SplitConformalClassifier(conformity_score="aps", randomized=True, random_state=3)
    a = aps.calibrate(y=y[0], proba=p[0]).quantile_
    assert a == aps.calibrate(y=y[0], proba=p[0]).quantile_
    with pytest.raises(ValueError, match="random_state"):
        SplitConformalClassifier(conformity_score="aps", randomized=True).calibrate(
            y=y[0], proba=p[0]
        )
    with pytest.raises(ValueError, match="length mismatch"):
        SplitConformalClassifier().calibrate(y=y[0, :10], proba=p[0])
    with pytest.raises(ValueError, match="NaN"):
        SplitConformalClassifier().calibrate(y=y[0], proba=np.full_like(p[0], np.nan))
    with pytest.raises(ValueError, match="not in classes_"):
        SplitConformalClassifier().calibrate(y=y[0] + KC, proba=p[0])
    with pytest.raises(ValueError, match="alpha"):
        SplitConformalClassifier(alpha=1.0).calibrate(y=y[0], proba=p[0])
