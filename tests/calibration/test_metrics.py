"""ECE (binned, debiased), reliability diagrams, Brier and NLL against exact answers."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

from calibration.metrics import (
    brier_score,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_diagram,
    squared_calibration_error,
    top_label,
)
from probinfer.distributions import AnswerDistribution

matplotlib.use("Agg")


def _calibrated(rng, n, k=3):
    """A perfectly calibrated classifier: y ~ Categorical(p) with p the prediction."""
    p = rng.dirichlet(np.full(k, 0.7), size=n)
    u = rng.uniform(size=(n, 1))
    y = (u > np.cumsum(p, axis=1)).sum(axis=1)
    return p, np.minimum(y, k - 1)


def _overconfident(rng, n, gap=0.1):
    """Binary classifier with confidence c ~ U(0.6, 1) on class 0 and accuracy c - gap:
    the exact ECE is gap and the exact squared calibration error is gap^2."""
    c = rng.uniform(0.6, 1.0, n)
    y = (rng.uniform(size=n) >= c - gap).astype(int)  # class 0 with probability c - gap
    return np.stack([c, 1.0 - c], axis=1), y


def test_calibrated_classifier_debiased_error_is_zero():
    """The debiased squared error has mean 0 for a calibrated classifier (4 SE over
    replicates); the plug-in version is biased upwards by about K_bins / n."""
    rng = np.random.default_rng(0)
    reps, n = 200, 1000
    deb, plug = [], []
    for _ in range(reps):
        p, y = _calibrated(rng, n)
        deb.append(squared_calibration_error(p, y, debiased=True))
        plug.append(squared_calibration_error(p, y, debiased=False))
    deb, plug = np.array(deb), np.array(plug)
    assert abs(deb.mean()) <= 4 * deb.std(ddof=1) / np.sqrt(reps), deb.mean()
    assert plug.mean() > deb.mean() + 4 * (plug - deb).std(ddof=1) / np.sqrt(reps)
    # one replicate: the debiased ECE is far below the plug-in binned ECE
    p, y = _calibrated(np.random.default_rng(1), 5000)
    assert expected_calibration_error(p, y, debiased=True) < expected_calibration_error(p, y)


def test_known_miscalibration_is_recovered():
    gap, n = 0.1, 20000
    p, y = _overconfident(np.random.default_rng(2), n, gap)
    conf, correct = top_label(p, y)
    assert np.all(conf == p[:, 0])
    # every bin has accuracy below confidence, so the binned ECE is |mean(correct - conf)|,
    # with standard error sd(correct - conf) / sqrt(n)
    se = (correct - conf).std(ddof=1) / np.sqrt(n)
    for binning in ("uniform", "quantile"):
        assert abs(expected_calibration_error(p, y, binning=binning) - gap) <= 4 * se
    reps = 40
    sq = [
        squared_calibration_error(*_overconfident(np.random.default_rng(10 + r), 4000, gap))
        for r in range(reps)
    ]
    assert abs(np.mean(sq) - gap**2) <= 4 * np.std(sq, ddof=1) / np.sqrt(reps)


def test_brier_and_nll_exact_values():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.5, 0.5, 0.0]])
    y = np.array([0, 1, 2])
    brier = ((0.3**2 + 0.2**2 + 0.1**2) + (0.1**2 + 0.9**2 + 0.8**2) + (0.25 + 0.25 + 1)) / 3
    assert brier_score(p, y) == pytest.approx(brier, rel=1e-12)
    assert negative_log_likelihood(p[:2], y[:2]) == pytest.approx(-(np.log(0.7) + np.log(0.1)) / 2)
    assert negative_log_likelihood(p, y) == np.inf  # a true label with probability 0


def test_brier_of_calibrated_classifier_matches_its_expectation():
    """E[Brier] = E[1 - sum_k p_k^2] when y ~ p; 4 SE from the per-example spread."""
    p, y = _calibrated(np.random.default_rng(3), 20000)
    per = (p**2).sum(1) - 2 * p[np.arange(len(y)), y] + 1
    expected = np.mean(1 - (p**2).sum(1))
    assert abs(brier_score(p, y) - expected) <= 4 * per.std(ddof=1) / np.sqrt(len(y))


def test_answer_distributions_match_probability_rows():
    """AnswerDistributions from particle runs give the same metrics as the equivalent
    probability matrix over the answer set."""
    rng = np.random.default_rng(4)
    labels = ["3", "5", "8"]
    dists, truths, rows, ys = [], [], [], []
    for _ in range(60):
        answers = list(rng.choice(labels, size=12))
        w = rng.uniform(0.1, 1.0, size=12)
        d = AnswerDistribution(answers, weights=w)
        row = np.array([sum(wi for a, wi in zip(answers, w) if a == lab) for lab in labels])
        rows.append(row / row.sum())
        t = int(rng.integers(3))
        truths.append(labels[t])
        ys.append(t)
        dists.append(d)
    p, y = np.array(rows), np.array(ys)
    for f in (brier_score, negative_log_likelihood, expected_calibration_error):
        assert f(dists, truths) == pytest.approx(f(p, y), rel=1e-6)  # float32 probs
    # an answer outside the support has probability 0
    assert negative_log_likelihood(dists[:1], ["42"]) == np.inf


def test_reliability_diagram_data_and_plot():
    p, y = _overconfident(np.random.default_rng(5), 3000)
    rd = reliability_diagram(p, y, n_bins=10)
    assert rd.counts.sum() == 3000 and len(rd.edges) == 11
    assert rd.ece == pytest.approx(expected_calibration_error(p, y, n_bins=10))
    ok = rd.counts > 0
    assert np.all(rd.confidence[ok] >= rd.edges[:-1][ok]) and np.all(rd.accuracy[ok] <= 1)
    q = reliability_diagram(p, y, n_bins=5, binning="quantile")
    assert np.ptp(q.counts) <= 1  # equal-count bins (continuous confidences)
    import matplotlib.pyplot as plt

    fig = rd.plot()
    assert fig.axes[0].has_data()
    plt.close(fig)


def test_bad_input_names_the_argument():
    p = np.array([[0.6, 0.4], [0.3, 0.7]])
    with pytest.raises(ValueError, match="length"):
        brier_score(p, np.array([0]))
    with pytest.raises(ValueError, match="proba"):
        expected_calibration_error(np.array([[0.5, 0.6], [0.3, 0.7]]), np.array([0, 1]))
    with pytest.raises(ValueError, match="proba"):
        brier_score(np.array([[np.nan, 1.0], [0.3, 0.7]]), np.array([0, 1]))
    with pytest.raises(ValueError, match="y"):
        negative_log_likelihood(p, np.array([0, 2]))
    with pytest.raises(ValueError, match="y"):
        negative_log_likelihood(p, np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="binning"):
        expected_calibration_error(p, np.array([0, 1]), binning="log")
    with pytest.raises(ValueError, match="n_bins"):
        reliability_diagram(p, np.array([0, 1]), n_bins=0)
    with pytest.raises(TypeError, match="y"):
        brier_score([AnswerDistribution(["1"])], "1")
