"""Acceptance of issue 14 on the bundled task: >= 200 random calibration/test splits of the
cached particle-filter runs (``tests/calibration/data/llm_answer_runs.json``, made once by
``scripts/make_llm_answer_runs.py``: the learned PRM at budgets 1..16 and a deliberately wrong,
inverted PRM at budget 16).

Exact yardsticks. A random split of a pool of ``M`` problems into ``n`` calibration and
``T = M - n`` test problems makes them exchangeable, so, without ties, the ``k``-th smallest
calibration score has pool rank ``j`` with the negative hypergeometric law
``P(j) = C(j - 1, k - 1) C(M - j, n - k) / C(M, n)`` and the split's coverage is exactly
``(j - k) / T`` (ties only add coverage). Its mean is ``k / (n + 1)`` and its standard deviation
gives the Monte-Carlo error of the mean over splits. For Learn-then-Test, the "population" is
the pool itself: the risk of the chosen rule on the pool is computed exactly, and its
exceedance of ``alpha`` must be rarer than ``delta`` (binomial bound).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.special import comb

from calibration.answer_sets import (
    ConfidenceCalibrator,
    ConformalAnswerSets,
    RunSummary,
    SelectiveAnswerer,
    answer_confidence,
    confidence_report,
    read_runs,
)
from calibration.llm_adaptive import AdaptiveBudget
from calibration.quantile import conformal_rank

DATA = Path(__file__).parent / "data" / "llm_answer_runs.json"
SPLITS = 200


@pytest.fixture(scope="module")
def bundled():
    return read_runs(DATA)


def _splits(m: int, reps: int, seed: int, n_cal: int | None = None):
    rng = np.random.default_rng(seed)
    n_cal = m // 2 if n_cal is None else n_cal
    for _ in range(reps):
        perm = rng.permutation(m)
        yield perm[:n_cal], perm[n_cal:]


def _exact_split_coverage(m: int, n: int, alpha: float) -> tuple[float, float]:
    """Mean and standard deviation of a split's coverage without ties (module docstring)."""
    k = conformal_rank(n, alpha)
    t = m - n
    j = np.arange(k, m - n + k + 1)
    p = comb(j - 1, k - 1, exact=False) * comb(m - j, n - k, exact=False) / comb(m, n)
    cov = (j - k) / t
    mean = float(np.sum(p * cov))
    return mean, float(np.sqrt(np.sum(p * (cov - mean) ** 2)))


def test_exact_split_law_mean_is_k_over_n_plus_one():
    for m, n, a in ((240, 120, 0.1), (300, 150, 0.2), (57, 20, 0.1)):
        mean, sd = _exact_split_coverage(m, n, a)
        assert mean == pytest.approx(conformal_rank(n, a) / (n + 1), rel=1e-9)
        assert 0 < sd < 0.1


@pytest.mark.parametrize("score", ["lac", "aps"])
@pytest.mark.parametrize("prm", ["learned", "wrong"])
def test_coverage_over_random_splits(bundled, prm, score):
    runs, truths = bundled["runs"][prm][16], bundled["answers"]
    m = len(runs)
    sizes = {}
    for alpha in (0.1, 0.2):
        cov, size = np.empty(SPLITS), np.empty(SPLITS)
        for r, (cal, test) in enumerate(_splits(m, SPLITS, seed=10)):
            cs = ConformalAnswerSets(alpha, score=score)
            cs.calibrate([runs[i] for i in cal], [truths[i] for i in cal])
            ev = cs.evaluate([runs[i] for i in test], [truths[i] for i in test])
            cov[r], size[r] = ev["coverage"], ev["mean_size"]
        target, sd = _exact_split_coverage(m, m // 2, alpha)
        se = max(sd, cov.std(ddof=1)) / math.sqrt(SPLITS)
        assert target >= 1 - alpha
        assert cov.mean() >= target - 4.5 * se, (prm, score, alpha, cov.mean(), target, se)
        sizes[alpha] = size.mean()
    assert sizes[0.1] >= sizes[0.2]


def test_wrong_prm_gives_larger_sets_not_lost_coverage(bundled):
    truths = bundled["answers"]
    m = len(truths)
    out = {}
    for prm in ("learned", "wrong"):
        runs = bundled["runs"][prm][16]
        cal, test = next(_splits(m, 1, seed=11))
        cs = ConformalAnswerSets(0.1).calibrate([runs[i] for i in cal], [truths[i] for i in cal])
        out[prm] = cs.evaluate([runs[i] for i in test], [truths[i] for i in test])
    # the inverted PRM often drives the true answer out of every particle: OTHER is needed
    assert out["wrong"]["other_rate"] > out["learned"]["other_rate"]
    assert out["wrong"]["singleton_rate"] < out["learned"]["singleton_rate"]


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_abstention_error_among_answered(bundled, alpha):
    delta = 0.1
    runs, truths = bundled["runs"]["learned"][16], bundled["answers"]
    m = len(runs)
    conf = answer_confidence(runs, "mass_reward")
    wrong = np.array([r.top[0] != t for r, t in zip(runs, truths)])
    err, viol, answered = [], 0, []
    # 80% calibration: LTT needs dozens of answered calibration problems at small alpha
    for cal, test in _splits(m, SPLITS, seed=12, n_cal=int(0.8 * m)):
        sa = SelectiveAnswerer(alpha, delta=delta, confidence="mass_reward")
        sa.calibrate([runs[i] for i in cal], [truths[i] for i in cal])
        ev = sa.evaluate([runs[i] for i in test], [truths[i] for i in test])
        answered.append(1 - ev["abstention_rate"])
        if ev["answered"]:
            err.append(ev["error_among_answered"])
        sel = conf >= sa.threshold_  # exact risk of the chosen rule on the pool
        viol += bool(sel.any() and wrong[sel].mean() > alpha)
    err = np.array(err)
    assert len(err) >= 0.5 * SPLITS, len(err)  # the rule answers in most splits
    assert err.mean() <= alpha + 4.5 * err.std(ddof=1) / math.sqrt(len(err))
    assert viol / SPLITS <= delta + 4.5 * math.sqrt(delta * (1 - delta) / SPLITS)
    assert np.mean(answered) > 0.1


@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_adaptive_budget_controlled_loss_held_out(bundled, alpha):
    delta, reps = 0.1, 200
    budgets = (1, 2, 4, 8, 16)
    learned, truths = bundled["runs"]["learned"], bundled["answers"]
    m = len(truths)
    runs = [[learned[b][i] for b in budgets] for i in range(m)]
    # the loss's reference: the rule's own last stage (all stages pooled)
    ref_ok = np.array([RunSummary.pool(row).top[0] == t for row, t in zip(runs, truths)])
    loss, viol, ratio = [], 0, []
    for cal, test in _splits(m, reps, seed=13, n_cal=int(0.8 * m)):
        ab = AdaptiveBudget(budgets, alpha=alpha, delta=delta)
        ab.calibrate([runs[i] for i in cal], [truths[i] for i in cal])
        ev = ab.evaluate([runs[i] for i in test], [truths[i] for i in test])
        loss.append(ev["adaptive"]["loss"])
        ratio.append(ev["adaptive"]["tokens_generated"] / ev["fixed"][-1]["tokens_generated"])
        ans, _ = ab.predict(runs)  # exact loss on the pool: wrong where the reference is right
        viol += np.mean([(a != t) and ok for a, t, ok in zip(ans, truths, ref_ok)]) > alpha
    loss = np.array(loss)
    assert loss.mean() <= alpha + 4.5 * loss.std(ddof=1) / math.sqrt(reps)
    assert viol / reps <= delta + 4.5 * math.sqrt(delta * (1 - delta) / reps)
    assert np.all(np.isfinite(ratio))


def test_calibrated_confidence_lowers_ece(bundled):
    runs, truths = bundled["runs"]["learned"][16], bundled["answers"]
    m = len(runs)
    for method, conf in (
        ("isotonic", "mass"),
        ("isotonic", "mass_reward"),
        ("platt", "mass_reward"),
    ):
        before, after = [], []
        for cal, test in _splits(m, 40, seed=14):
            cc = ConfidenceCalibrator(method, confidence=conf).fit(
                [runs[i] for i in cal], [truths[i] for i in cal]
            )
            rep = confidence_report(cc, [runs[i] for i in test], [truths[i] for i in test])
            before.append(rep["ece_before"])
            after.append(rep["ece_after"])
        assert np.mean(after) < np.mean(before), (method, np.mean(before), np.mean(after))
