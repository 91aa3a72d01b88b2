"""Calibrated answers from particle runs: units checked against exact answers.

* Learn-then-Test on a synthetic model with a known conditional error: confidence
  ``c ~ U(0, 1)`` and ``P(correct | c) = c`` give the exact selective risk
  ``R(lambda) = P(wrong | c >= lambda) = (1 - lambda) / 2``; over ``R`` calibration draws the
  frequency of ``R(lambda_hat) > alpha`` must stay below ``delta`` (binomial bound).
* Platt scaling recovers the parameters of a logistic model in ``logit(c)`` within 5 standard
  errors (observed Fisher information).
* Conformal answer sets on a model whose true answer is drawn from the answer distribution
  itself: marginal coverage over ``R`` draws against the exact ``k / (n + 1)``.
* The LLMResult path (toy tabular LM, real particle filter) and bad input.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from calibration.answer_sets import (
    OTHER,
    AnswerSet,
    ConfidenceCalibrator,
    ConformalAnswerSets,
    RunSummary,
    SelectiveAnswerer,
    _platt,
    answer_confidence,
    learn_then_test,
    ltt_p_values,
)
from calibration.llm_adaptive import AdaptiveBudget
from calibration.quantile import conformal_rank
from probinfer.distributions.answer import AnswerDistribution


def _run(answers, weights, scores=None, **kw):
    lw = np.log(np.asarray(weights, dtype=float))
    sc = [None] * len(answers) if scores is None else scores
    return RunSummary(tuple(answers), lw, sc, **kw)


# ------------------------------------------------------------------------ LTT, exact risk
def test_ltt_selective_risk_exact():
    """P(R(lambda_hat) > alpha) <= delta with R(lambda) = (1 - lambda)/2 known exactly."""
    alpha, delta, n, reps = 0.2, 0.2, 300, 300
    rng = np.random.default_rng(0)
    grid = np.linspace(1.0, 0.0, 21)
    w = np.full(21, 1 / 21)
    risk_hat, viol = [], 0
    for _ in range(reps):
        c = rng.uniform(size=n)
        wrong = (rng.uniform(size=n) >= c).astype(float)
        sel = c[None, :] >= grid[:, None]
        j = learn_then_test(np.broadcast_to(wrong, sel.shape), alpha, delta, sel, weights=w)
        lam = grid[j] if j >= 0 else 1.0
        r = (1 - lam) / 2
        risk_hat.append(r)
        viol += r > alpha
    # binomial bound on the violation frequency
    assert viol / reps <= delta + 4.5 * math.sqrt(delta * (1 - delta) / reps)
    # and not trivially conservative (the grid step 0.05 moves the risk by 0.025)
    assert 0.25 * alpha < np.mean(risk_hat) <= alpha


def test_selective_answerer_matches_core_and_exact_risk():
    alpha, delta, n = 0.2, 0.1, 1000
    rng = np.random.default_rng(1)
    c = rng.uniform(size=n)
    truth = np.where(rng.uniform(size=n) < c, "x", "y").tolist()
    runs = [_run(["x"], [1.0], [ci]) for ci in c]
    sa = SelectiveAnswerer(alpha, delta=delta, confidence="reward").calibrate(runs, truth)
    grid = np.linspace(1.0, 0.0, 21)
    sel = c[None, :] >= grid[:, None]
    wrong = np.array([t != "x" for t in truth], dtype=float)
    j = learn_then_test(
        np.broadcast_to(wrong, sel.shape), alpha, delta, sel, weights=np.full(21, 1 / 21)
    )
    assert j >= 0 and sa.threshold_ == grid[j]
    pred = sa.predict(runs)
    assert all((p == "x") == (ci >= sa.threshold_) for p, ci in zip(pred, c))
    ev = sa.evaluate(runs, truth)
    assert ev["answered"] == int((c >= sa.threshold_).sum())


def test_ltt_p_values_exact_binomial():
    from scipy.stats import binom

    losses = np.array([[0, 1, 0, 0, 1, 0], [1, 1, 1, 0, 0, 0]], dtype=float)
    sel = np.array([[1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=bool)
    p = ltt_p_values(losses, 0.3, sel)
    assert p[0] == pytest.approx(binom.cdf(1, 4, 0.3))
    assert p[1] == 1.0
    assert learn_then_test(np.zeros((3, 50)), 0.1, 0.1) == 2  # 0.9^50 < 0.1 everywhere
    assert learn_then_test(np.ones((3, 50)), 0.1, 0.1) == -1
    # fallback: a leading rule that cannot be certified does not stop the scan
    lead = np.vstack([np.ones(50), np.zeros((2, 50))])
    assert learn_then_test(lead, 0.1, 0.1) == -1
    assert learn_then_test(lead, 0.1, 0.1, weights=[0.2, 0.4, 0.4]) == 2
    with pytest.raises(ValueError, match="losses"):
        ltt_p_values(np.full((1, 3), 0.5), 0.1)
    with pytest.raises(ValueError, match="delta"):
        learn_then_test(np.zeros((1, 3)), 0.1, 1.5)


# ------------------------------------------------------------------------ Platt, exact
def test_platt_recovers_logistic_parameters():
    rng = np.random.default_rng(2)
    n, a, b = 20_000, 1.7, -0.4
    x = rng.normal(size=n)
    z = (rng.uniform(size=n) < 1 / (1 + np.exp(-(a * x + b)))).astype(float)
    ah, bh = _platt(x, z)
    s = 1 / (1 + np.exp(-(ah * x + bh)))
    w = s * (1 - s)
    info = np.array([[np.sum(w * x * x), np.sum(w * x)], [np.sum(w * x), np.sum(w)]])
    se = np.sqrt(np.diag(np.linalg.inv(info)))
    assert abs(ah - a) < 5 * se[0] and abs(bh - b) < 5 * se[1]


def test_confidence_calibrator_isotonic_and_platt():
    """Raw mass c of the top answer, true P(correct | c) = c^2 (overconfident)."""
    rng = np.random.default_rng(3)
    n = 3000
    c = rng.uniform(0.5, 1.0, size=n)
    runs = [_run(["x", "z"], [ci, 1 - ci + 1e-12]) for ci in c]
    raw = answer_confidence(runs, "mass")
    assert np.allclose(raw, c / (1 + 1e-12), atol=1e-9)
    truth = np.where(rng.uniform(size=n) < c**2, "x", "y").tolist()
    for method in ("isotonic", "platt"):
        cal = ConfidenceCalibrator(method).fit(runs[:2000], truth[:2000])
        pred = cal.predict(runs[2000:])
        # against the exact P(correct | c) = c^2 on held-out runs (raw error ~0.2)
        assert np.mean(np.abs(pred - c[2000:] ** 2)) < 0.04
        assert np.mean(np.abs(raw[2000:] - c[2000:] ** 2)) > 0.15
    assert cal.accuracy_ == pytest.approx(np.mean([t == "x" for t in truth[:2000]]))


# ------------------------------------------------------------------------ conformal sets
def _synthetic(rng, n, k=6):
    """Answer distributions with the true answer drawn from a perturbed copy of them
    (and sometimes an answer no particle produced)."""
    runs, truths = [], []
    for _ in range(n):
        w = rng.dirichlet(np.full(k, 0.5))
        names = [str(v) for v in rng.choice(100, size=k, replace=False)]
        runs.append(_run(names, w + 1e-12))
        q = np.append(rng.dirichlet(np.full(k, 0.5)) * 0.8 + 0.2 * w, 0.15)
        j = rng.choice(k + 1, p=q / q.sum())
        truths.append(names[j] if j < k else "absent")
    return runs, truths


@pytest.fixture(scope="module")
def synthetic_pool():
    return _synthetic(np.random.default_rng(4), 1500)


@pytest.mark.parametrize("score,randomized", [("lac", False), ("aps", False), ("aps", True)])
def test_conformal_answer_sets_exact_coverage(synthetic_pool, score, randomized):
    """Random (calibration, test) subsets of a pool: exchangeable, so the expected coverage
    is exactly >= k / (n + 1) (and < (k + 1)/(n + 1) for continuous scores)."""
    runs, truths = synthetic_pool
    rng = np.random.default_rng(5)
    n, t, reps, alpha = 50, 40, 300, 0.2
    cov = np.empty(reps)
    for r in range(reps):
        idx = rng.permutation(len(runs))[: n + t]
        cal, test = idx[:n], idx[n:]
        cs = ConformalAnswerSets(alpha, score=score, randomized=randomized)
        cs.calibrate([runs[i] for i in cal], [truths[i] for i in cal], seed=r)
        sets = cs.predict_set([runs[i] for i in test], seed=10_000 + r)
        cov[r] = np.mean([truths[i] in s for s, i in zip(sets, test)])
    k = conformal_rank(n, alpha)
    se = cov.std(ddof=1) / math.sqrt(reps)
    assert cov.mean() >= k / (n + 1) - 4.5 * se
    if randomized:  # continuous scores (ties only at 1): coverage < (k + 1)/(n + 1)
        assert cov.mean() <= (k + 1) / (n + 1) + 4.5 * se


def test_answer_set_order_other_and_infinite_set():
    runs = [_run(["a", "b", None, "c"], [0.5, 0.3, 0.15, 0.05])]
    cs = ConformalAnswerSets(0.1)
    cs.calibrate(runs * 3, ["a", "b", "a"])  # n = 3 < 1/alpha - 1: infinite set
    assert math.isinf(cs.quantile_)
    (s,) = cs.predict_set(runs)
    assert s.answers == ("a", "b", "c") and s.other and "anything" in s and OTHER in s
    assert list(s) == ["a", "b", "c", OTHER] and len(s) == 4 and not s.is_singleton
    # q from 19 problems whose true answer has mass 0.5, one whose true answer is absent
    cs = ConformalAnswerSets(0.1).calibrate(runs * 20, ["a"] * 19 + ["zzz"])
    assert cs.quantile_ == pytest.approx(0.5)
    (s,) = cs.predict_set(runs)
    assert s == AnswerSet(("a",), False) and s.is_singleton and "b" not in s
    cs = ConformalAnswerSets(0.1).calibrate(runs * 20, ["a"] * 17 + ["zzz"] * 3)
    assert cs.quantile_ == 1.0 and cs.predict_set(runs)[0].other
    # APS: cumulative mass
    cs = ConformalAnswerSets(0.1, score="aps").calibrate(runs * 20, ["b"] * 20)
    assert cs.quantile_ == pytest.approx(0.8)
    assert cs.predict_set(runs)[0] == AnswerSet(("a", "b"), False)


# ------------------------------------------------------------------------ LLMResult path
def _toy_model():
    from probinfer.llm import LLMStateSpaceModel, StepFormat
    from probinfer.llm.toy import FunctionReward, TabularLM

    table = {
        None: {"a;": 0.4, "b;": 0.3, "a|": 0.2, "b|": 0.1},
        "a;": {"a;": 0.3, "b;": 0.3, "a|": 0.2, "b|": 0.2},
        "b;": {"a;": 0.2, "b;": 0.2, "a|": 0.3, "b|": 0.3},
    }
    return LLMStateSpaceModel(
        TabularLM(table),
        FunctionReward(lambda p, s: min(0.95, 0.15 + 0.25 * "".join(s).count("a"))),
        StepFormat(";", "|"),
        max_steps=4,
        answer_extractor=lambda text: str(text.count("a")),
    )


def test_llm_results_and_adaptive_run_on_toy_model():
    from probinfer.llm import particle_filter

    model = _toy_model()
    key = jax.random.key(0)
    res = [particle_filter(jax.random.fold_in(key, i), model, "q", 4) for i in range(6)]
    truths = ["2"] * 6
    s = RunSummary.from_result(res[0])
    assert s.distribution.as_dict() == pytest.approx(res[0].answer_distribution.as_dict())
    assert s.masses[0] == s.distribution.answers
    assert np.allclose(s.masses[1], s.distribution.probs)
    assert s.tokens_generated == res[0].usage.tokens_generated and s.budget == 4
    assert set(s.reward) <= set(s.distribution.answers)
    cs = ConformalAnswerSets(0.2).calibrate(res, truths)
    assert len(cs.predict_set(res[:3])) == 3
    cs2 = ConformalAnswerSets(0.2).calibrate([r.answer_distribution for r in res], truths)
    assert cs2.quantile_ == cs.quantile_
    assert RunSummary.from_dict(s.to_dict()).distribution.as_dict() == pytest.approx(
        s.distribution.as_dict()
    )
    # adaptive: offline predict on cached stage runs == live run with the same keys
    budgets = (1, 2)
    stages = [
        [
            particle_filter(jax.random.fold_in(jax.random.fold_in(key, i), b), model, "q", b)
            for b in budgets
        ]
        for i in range(5)
    ]
    ab = AdaptiveBudget(budgets, alpha=0.5, delta=0.5, loss="disagreement", thresholds=[0.9, 0.3])
    ab.calibrate(stages)
    ab.threshold_ = 0.3  # exercise early stopping whatever LTT chose
    ans, stop = ab.predict(stages)
    for i in range(2):
        live = ab.run(jax.random.fold_in(key, i), model, "q")
        assert live.answer == ans[i] and live.stage == stop[i]
        pooled = RunSummary.pool([RunSummary.from_result(r) for r in stages[i][: stop[i] + 1]])
        assert live.compute["tokens_generated"] == pooled.tokens_generated


def test_pool_weights_islands_by_size_and_evidence():
    r1 = _run(["a"], [1.0], log_evidence=math.log(0.2), budget=1, tokens_generated=3)
    r2 = _run(["a", "b"], [0.5, 0.5], log_evidence=math.log(0.4), budget=2, tokens_generated=5)
    p = RunSummary.pool([r1, r2])
    # weights N_r Z_r: a: 1*0.2 + 2*0.4*0.5 = 0.6, b: 0.4
    assert p.distribution.as_dict() == pytest.approx({"a": 0.6, "b": 0.4})
    assert p.budget == 3 and p.tokens_generated == 8
    assert p.log_evidence == pytest.approx(math.log((0.2 + 0.8) / 3))


# ------------------------------------------------------------------------ bad input
def test_bad_input_names_the_argument():
    runs = [_run(["a", "b"], [0.7, 0.3])] * 5
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            ConformalAnswerSets(bad)
        with pytest.raises(ValueError, match="alpha"):
            SelectiveAnswerer(bad)
        with pytest.raises(ValueError, match="alpha"):
            AdaptiveBudget(alpha=bad)
    with pytest.raises(TypeError, match="alpha"):
        ConformalAnswerSets("0.1")
    with pytest.raises(ValueError, match="results"):
        ConformalAnswerSets(0.1).calibrate([], [])
    with pytest.raises(ValueError, match="results"):
        ConfidenceCalibrator().fit([], [])
    with pytest.raises(ValueError, match="results"):
        SelectiveAnswerer(0.1).calibrate([], [])
    with pytest.raises(ValueError, match="runs"):
        AdaptiveBudget((1, 2)).calibrate([], [])
    with pytest.raises(ValueError, match="answers"):
        ConformalAnswerSets(0.1).calibrate(runs, ["a"] * 4)
    with pytest.raises(ValueError, match=r"answers\[2\]"):
        ConformalAnswerSets(0.1).calibrate(runs, ["a", "b", None, "a", "a"])
    with pytest.raises(ValueError, match="answers"):
        SelectiveAnswerer(0.1).calibrate(runs, ["a"] * 6)
    with pytest.raises(ValueError, match="answers"):
        AdaptiveBudget((1, 2)).calibrate([[runs[0], runs[0]]] * 3)
    with pytest.raises(TypeError, match=r"results\[0\]"):
        ConformalAnswerSets(0.1).calibrate([{"a": 1.0}], ["a"])
    with pytest.raises(ValueError, match="score"):
        ConformalAnswerSets(0.1, score="raps")
    with pytest.raises(ValueError, match="budgets"):
        AdaptiveBudget((2, 1))
    with pytest.raises(ValueError, match="runs"):
        AdaptiveBudget((1, 2)).calibrate([[runs[0]]], ["a"])
    with pytest.raises(ValueError, match="calibrate"):
        ConformalAnswerSets(0.1).predict_set(runs)
    with pytest.raises(ValueError, match="reward"):
        answer_confidence([RunSummary.from_distribution(AnswerDistribution(["a"]))], "reward")
