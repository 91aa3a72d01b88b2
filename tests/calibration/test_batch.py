"""Batch predictive inference: exact laws, the dynamic programme, coverage."""

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from calibration import (
    batch_max_bound,
    batch_mean_bound,
    batch_quantile_bound,
    bonferroni_mean_bound,
    brute_force_bound,
    conformal_quantile,
    max_mean_over_rank_sum,
    order_statistic_quantile,
    rank_sum_counts,
    rank_sum_quantile,
    select_exceeding,
    split_batches_mean_bound,
)
from calibration.batch import order_statistic_pmf_counts


def _multisets(n, m):
    return itertools.combinations_with_replacement(range(1, n + 2), m)


@pytest.mark.parametrize("n,m", [(0, 3), (1, 1), (3, 2), (5, 3), (2, 6), (8, 4), (12, 3)])
def test_rank_sum_law_equals_enumeration(n, m):
    brute = Counter(sum(r) for r in _multisets(n, m))
    counts = rank_sum_counts(n, m)
    assert counts == [brute[t] for t in range(m, m * (n + 1) + 1)]
    assert sum(counts) == math.comb(n + m, m)


def test_rank_law_matches_permutation_of_exchangeable_scores():
    """The uniform-multiset law is the law of ranks of exchangeable scores."""
    n, m = 3, 2
    perms = Counter()
    for order in itertools.permutations(range(n + m)):
        cal, test = np.array(order[:n]), np.array(order[n:])
        ranks = tuple(sorted(1 + (cal[None, :] < test[:, None]).sum(1)))
        perms[ranks] += 1
    assert len(set(perms.values())) == 1 and len(perms) == math.comb(n + m, m)


@pytest.mark.parametrize("n,m", [(4, 2), (6, 3), (10, 2), (5, 5)])
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.3, 0.5, 0.8])
def test_rank_sum_quantile_by_enumeration(n, m, alpha):
    sums = sorted(sum(r) for r in _multisets(n, m))
    total = len(sums)
    expected = min(t for t in sums if sum(s <= t for s in sums) >= (1 - alpha) * total)
    assert rank_sum_quantile(n, m, alpha) == expected


def test_rank_sum_quantile_truncated_tail_equals_full_law():
    n, m = 300, 20
    counts = rank_sum_counts(n, m)
    total = math.comb(n + m, m)
    cum = list(itertools.accumulate(counts))
    for alpha in (0.01, 0.1, 0.5, 0.9):
        target = (1 - alpha) * total  # float is fine: no count equals this exactly here
        t = next(i for i, c in enumerate(cum) if c >= target) + m
        assert rank_sum_quantile(n, m, alpha) == t


@pytest.mark.parametrize("n,m", [(4, 3), (7, 2), (3, 5)])
def test_order_statistic_law_equals_enumeration(n, m):
    for zeta in range(1, m + 1):
        brute = Counter(sorted(r)[zeta - 1] for r in _multisets(n, m))
        assert order_statistic_pmf_counts(n, m, zeta) == [brute[k] for k in range(1, n + 2)]
        for alpha in (0.1, 0.4):
            cdf = list(itertools.accumulate(brute[k] for k in range(1, n + 2)))
            q = 1 + next(i for i, c in enumerate(cdf) if c >= (1 - alpha) * math.comb(n + m, m))
            assert order_statistic_quantile(n, m, zeta, alpha) == q


def test_dynamic_programme_equals_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(60):
        n = int(rng.integers(1, 9))
        m = int(rng.integers(1, 5))
        kind = trial % 4
        s = [
            rng.uniform(size=n),
            rng.exponential(size=n),
            np.round(rng.uniform(size=n), 1),
            -rng.exponential(size=n),
        ][kind]
        bound = float(np.max(s) + rng.choice([0.0, 0.2, 3.0]))
        q = rank_sum_quantile(n, m, float(rng.uniform(0.05, 0.6)))
        ext = np.concatenate([np.sort(s), [bound]])
        got = max_mean_over_rank_sum(ext, m, q)
        want = brute_force_bound(np.mean, s, m, sum, q, upper_bound=bound)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_dynamic_programme_equals_plain_programme_medium():
    def plain(f, m, q):
        g = np.full(q + 1, -np.inf)
        g[0] = 0.0
        for _ in range(m):
            new = np.full(q + 1, -np.inf)
            for r in range(1, min(len(f), q) + 1):
                new[r:] = np.maximum(new[r:], g[: q + 1 - r] + f[r - 1])
            g = new
        return g.max() / m

    rng = np.random.default_rng(1)
    for s in (rng.uniform(size=60), rng.exponential(size=60), rng.uniform(size=60) ** 4):
        f = np.concatenate([np.sort(s), [s.max() * 1.3 + 0.1]])
        q = rank_sum_quantile(60, 6, 0.1)
        assert max_mean_over_rank_sum(f, 6, q) == pytest.approx(plain(f, 6, q), abs=1e-12)


def test_m_equal_one_is_split_conformal():
    rng = np.random.default_rng(2)
    s = rng.normal(size=57)
    for alpha in (0.05, 0.1, 0.33):
        split = conformal_quantile(s, alpha)
        assert batch_mean_bound(s, 1, alpha) == split
        assert batch_max_bound(s, 1, alpha) == split
        assert batch_quantile_bound(s, 1, 0.5, alpha) == split
        assert rank_sum_quantile(57, 1, alpha) == math.ceil(58 * (1 - alpha))


def test_unbounded_scores_small_n_give_infinite_bound():
    s = np.arange(5.0)
    assert batch_mean_bound(s, 3, 0.1) == np.inf
    assert batch_max_bound(s, 3, 0.1) == np.inf
    assert np.isfinite(batch_mean_bound(s, 3, 0.1, upper_bound=10.0))


@pytest.mark.parametrize("n,m", [(40, 10), (100, 5)])
def test_mean_coverage(n, m):
    reps, alpha = 2000, 0.1
    rng = np.random.default_rng(n)
    s = rng.beta(2, 5, size=(reps, n + m))  # bounded scores in [0, 1]
    q = rank_sum_quantile(n, m, alpha)
    covered = np.empty(reps, dtype=bool)
    in_a = np.empty(reps, dtype=bool)
    for r in range(reps):
        u = batch_mean_bound(s[r, :n], m, alpha, upper_bound=1.0)
        covered[r] = s[r, n:].mean() <= u
        ranks = 1 + (s[r, :n][None, :] < s[r, n:][:, None]).sum(1)
        in_a[r] = ranks.sum() <= q
    # exact P(T <= q) from the law; the rank event frequency must match it
    p_in = sum(rank_sum_counts(n, m)[: q - m + 1]) / math.comb(n + m, m)
    se = math.sqrt(p_in * (1 - p_in) / reps)
    assert p_in >= 1 - alpha
    assert abs(in_a.mean() - p_in) <= 4.5 * se
    assert covered.mean() >= 1 - alpha - 4.5 * math.sqrt(alpha * (1 - alpha) / reps)
    assert np.all(covered[in_a])  # the bound holds on the rank event, deterministically


def test_batch_bound_vs_baselines():
    rng = np.random.default_rng(3)
    s = rng.uniform(size=1000)
    ours = batch_mean_bound(s, 50, 0.1, upper_bound=1.0)
    assert ours < bonferroni_mean_bound(s, 50, 0.1, upper_bound=1.0)
    assert np.isfinite(split_batches_mean_bound(s, 50, 0.1))  # 20 batches >= 9
    assert split_batches_mean_bound(s[:400], 50, 0.1) == np.inf  # 8 batches < 9


def test_selection_controls_false_claims():
    reps, n, m, k, alpha, c = 2000, 100, 20, 2, 0.1, 0.5
    rng = np.random.default_rng(4)
    y_pred = rng.uniform(0, 3, size=(reps, n + m))
    y = y_pred + rng.normal(size=(reps, n + m))
    ok = np.empty(reps, dtype=bool)
    n_claims = 0
    for r in range(reps):
        claims = select_exceeding(y_pred[r, n:], c, y_pred[r, :n] - y[r, :n], alpha, max_false=k)
        ok[r] = (claims & (y[r, n:] <= c)).sum() <= k
        n_claims += claims.sum()
    assert n_claims > 0
    assert ok.mean() >= 1 - alpha - 4.5 * math.sqrt(alpha * (1 - alpha) / reps)


def test_bad_inputs():
    with pytest.raises(ValueError, match="alpha"):
        batch_mean_bound(np.ones(10), 2, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        batch_mean_bound([1.0, np.nan], 2, 0.1)
    with pytest.raises(ValueError, match="m must"):
        batch_mean_bound(np.ones(10), 0, 0.1)
    with pytest.raises(ValueError, match="zeta"):
        order_statistic_quantile(10, 3, 4, 0.1)
    with pytest.raises(ValueError, match="upper_bound"):
        batch_mean_bound(np.ones(10), 2, 0.1, upper_bound=0.5)
