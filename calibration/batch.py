"""Batch predictive inference (Lee, Tchetgen Tchetgen, Dobriban).

Calibration scores ``S_1..S_n`` and ``m`` unobserved test scores are exchangeable.
The test ranks ``R_j = 1 + #{i : S_i < S_{n+j}}`` sorted are uniform over the
``C(n + m, m)`` multisets of size ``m`` from ``{1..n+1}`` (without ties; with ties
the ranks are stochastically smaller, which only makes the bounds below more
conservative), and ``S_{n+j} <= S_(R_j)`` with ``S_(n+1) = B`` an upper bound on the
score (``+inf`` by default).  For a rank ordering function ``phi`` with exact
``(1 - alpha)``-quantile ``q`` and ``A = {r : phi(r) <= q}``, any batch score ``g``
nondecreasing in each test score satisfies
``g(S_test) <= max_{r in A} g(S_(r_1), ..., S_(r_m))`` with probability ``>= 1 - alpha``.

* Mean: ``phi`` = rank sum (a Wilcoxon/Mann-Whitney law, computed exactly by
  :func:`calibration._exact.gaussian_binomial_mod`); the maximum over ``A`` is a
  dynamic programme over rank sums.
* ``zeta``-th smallest test score (a quantile, the median, the maximum for
  simultaneous bounds): ``phi = R_(zeta)`` with
  ``P(R_(zeta) = k) = C(k+zeta-2, zeta-1) C(n+m-k-zeta+1, m-zeta) / C(n+m, m)``
  and bound ``S_(q)``.

Every law here is exact (integer arithmetic), never Monte Carlo.  ``n`` too small
for the level gives the documented answer ``B`` (``+inf``), not an error.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from functools import lru_cache
from statistics import NormalDist

import numpy as np

from ._exact import gaussian_binomial_mod
from ._validation import as_float_array, check_alpha, check_positive_int, exact_fraction

__all__ = [
    "batch_max_bound",
    "batch_mean_bound",
    "batch_order_statistic_bound",
    "batch_quantile_bound",
    "brute_force_bound",
    "max_mean_over_rank_sum",
    "order_statistic_cdf_counts",
    "order_statistic_quantile",
    "rank_sum_counts",
    "rank_sum_quantile",
    "select_exceeding",
]


# ----------------------------------------------------------------------------- laws
def rank_sum_counts(n: int, m: int) -> list[int]:
    """Exact counts ``N(T = t)`` for ``t = m..m(n+1)`` (sum: ``C(n + m, m)``).

    ``T`` is the sum of the ``m`` test ranks; the law is ``N / C(n + m, m)``.
    """
    n = check_positive_int(n, "n", minimum=0)
    m = check_positive_int(m, "m")
    return gaussian_binomial_mod(n, m).values()


def _one_minus_alpha(alpha: float) -> Fraction:
    return 1 - exact_fraction(check_alpha(alpha))


def rank_sum_quantile(n: int, m: int, alpha: float) -> int:
    """Exact ``(1 - alpha)``-quantile of the test rank sum ``T``.

    Returns ``min{t : P(T <= t) >= 1 - alpha}``, decided with exact integers.  By
    the symmetry ``T -> m(n+2) - T`` only the lower ``alpha`` tail of the law is
    computed (a truncated product formula), with a full computation as fallback.
    """
    n = check_positive_int(n, "n", minimum=0)
    m = check_positive_int(m, "m")
    return _rank_sum_quantile(n, m, check_alpha(alpha))


@lru_cache(maxsize=64)
def _rank_sum_quantile(n: int, m: int, alpha: float) -> int:
    a = exact_fraction(alpha)
    total = math.comb(n + m, m)
    nm = n * m
    if n == 0:
        return m
    # U = T - m has palindromic counts c(u) = c(nm - u).  q_U = nm - v* - 1 with
    # v* = max{v : F(v) <= alpha C}, F the cumulative count (F(-1) = 0).
    mean = nm / 2
    sd = math.sqrt(nm * (n + m + 1) / 12)
    z = NormalDist().inv_cdf(min(max(float(a), 1e-300), 1 - 1e-16))
    guess = int(mean + (z + 0.3) * sd + 16)
    degree = nm if guess >= nm else max(guess, 0)
    bound_num, bound_den = a.numerator * total, a.denominator  # alpha * C
    while True:
        cum = gaussian_binomial_mod(n, m, degree).cumulative()
        last = len(cum) - 1
        if last == nm or cum.value(last) * bound_den > bound_num:
            break
        degree = min(nm, 2 * degree + 1)

    def le(v: int) -> bool:  # F(v) <= alpha C
        return v < 0 or cum.value(v) * bound_den <= bound_num

    lo, hi = -1, last  # le(lo) true; find largest v with le(v)
    if le(hi):
        lo = hi
    else:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if le(mid):
                lo = mid
            else:
                hi = mid
    return nm - lo - 1 + m


def _multichoose(a: int, b: int) -> int:
    """Number of multisets of size b from a items."""
    if b == 0:
        return 1
    if a <= 0:
        return 0
    return math.comb(a + b - 1, b)


def order_statistic_cdf_counts(n: int, m: int, zeta: int, k: int) -> int:
    """Exact ``N(R_(zeta) <= k)``: multisets with at least ``zeta`` ranks ``<= k``."""
    return sum(_multichoose(k, j) * _multichoose(n + 1 - k, m - j) for j in range(zeta, m + 1))


def order_statistic_pmf_counts(n: int, m: int, zeta: int) -> list[int]:
    """Exact ``N(R_(zeta) = k)`` for ``k = 1..n+1`` from the closed form."""
    return [
        math.comb(k + zeta - 2, zeta - 1) * math.comb(n + m - k - zeta + 1, m - zeta)
        for k in range(1, n + 2)
    ]


def order_statistic_quantile(n: int, m: int, zeta: int, alpha: float) -> int:
    """Exact ``(1 - alpha)``-quantile of the ``zeta``-th smallest test rank, in ``1..n+1``."""
    n = check_positive_int(n, "n", minimum=0)
    m = check_positive_int(m, "m")
    zeta = check_positive_int(zeta, "zeta")
    if zeta > m:
        raise ValueError(f"zeta must be between 1 and m = {m}, got {zeta}")
    level = _one_minus_alpha(alpha)
    total = math.comb(n + m, m)
    target_num, target_den = level.numerator * total, level.denominator
    lo, hi = 0, n + 1  # cdf(hi) = total >= target; find least k with cdf(k) >= target
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if order_statistic_cdf_counts(n, m, zeta, mid) * target_den >= target_num:
            hi = mid
        else:
            lo = mid
    return hi


# ----------------------------------------------------------------------------- bounds
def _extended_sorted(scores, upper_bound: float) -> np.ndarray:
    """``S_(1..n)`` sorted, followed by ``S_(n+1) = upper_bound`` (1-based access)."""
    s = np.sort(as_float_array(scores, "scores", allow_empty=True))
    if len(s) and s[0] == -np.inf:
        raise ValueError("scores must not contain -inf (conformity scores are real or +inf)")
    if isinstance(upper_bound, bool) or not isinstance(
        upper_bound, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"upper_bound must be a real number, got {type(upper_bound).__name__}")
    if math.isnan(upper_bound) or upper_bound == -np.inf:
        raise ValueError(f"upper_bound must be a real number or +inf, got {upper_bound!r}")
    if len(s) and upper_bound < s[-1]:
        raise ValueError("upper_bound must be >= every calibration score")
    return np.concatenate([s, [float(upper_bound)]])


def max_mean_over_rank_sum(values, m: int, q: int) -> float:
    """``max (1/m) sum_j f(r_j)`` over multisets ``r`` of size ``m`` with ``sum r <= q``.

    ``values[r - 1] = f(r)`` for ranks ``r = 1..N`` must be nondecreasing (sorted
    scores with the bound appended).  This is the dynamic programme
    ``g_0(0) = 0, g_i(t) = max_r [g_{i-1}(t - r) + f(r)]``, answer
    ``max_{t <= q} g_m(t) / m``, run over a reduced set of candidate ranks that
    provably contains an optimal solution:

    1. among ranks with equal ``f`` only the smallest is needed (same value, less
       rank budget);
    2. with the Lagrangian ``h(r) = f(r) - lam r`` (``lam`` the slope of the concave
       envelope of ``f`` at ``q/m``), ``H = max h`` and any feasible value ``LB``,
       every optimal multiset has ``sum_j (H - h(r_j)) <= m H + lam q - LB``, so
       ranks with a larger deficit are dropped.

    The result equals the unrestricted programme (tested against brute force).
    """
    f = np.asarray(values, dtype=np.float64)
    big_n = len(f)
    if m * 1 > q:
        raise ValueError("q must be at least m (the smallest possible rank sum)")
    r_max = min(big_n, q - (m - 1))
    if not np.isfinite(f[r_max - 1]):
        return float(f[r_max - 1])
    if m * r_max <= q:
        return float(f[r_max - 1])
    ranks = np.arange(1, r_max + 1)
    fr = f[:r_max]
    keep = np.ones(r_max, dtype=bool)
    keep[1:] = fr[1:] > fr[:-1]
    cand = ranks[keep]
    fc = fr[keep]
    x = q / m
    # upper concave envelope of (cand, fc): find segment [a, b] around x
    hull: list[int] = []
    for i in range(len(cand)):
        while len(hull) >= 2:
            i0, i1 = hull[-2], hull[-1]
            cross = (cand[i1] - cand[i0]) * (fc[i] - fc[i0]) - (fc[i1] - fc[i0]) * (
                cand[i] - cand[i0]
            )
            if cross >= 0:
                hull.pop()
            else:
                break
        hull.append(i)
    hr = cand[hull]
    pos = int(np.searchsorted(hr, x, side="right")) - 1
    pos = min(max(pos, 0), len(hull) - 1)
    if pos == len(hull) - 1:
        lam = 0.0
        a_rank, b_rank = hr[pos], hr[pos]
    else:
        a_rank, b_rank = hr[pos], hr[pos + 1]
        lam = (f[b_rank - 1] - f[a_rank - 1]) / (b_rank - a_rank)
    fa, fb = f[a_rank - 1], f[b_rank - 1]
    # feasible solution: c_b items at b, the rest at a, leftover budget on one item
    c_b = 0 if b_rank == a_rank else min(m, (q - m * a_rank) // (b_rank - a_rank))
    lb = c_b * fb + (m - c_b) * fa
    slack = q - (c_b * b_rank + (m - c_b) * a_rank)
    if c_b < m and slack > 0:
        lb = max(lb, lb - fa + f[min(r_max, a_rank + slack) - 1])
    h = fc - lam * cand
    big_h = float(h.max())
    ub = m * big_h + lam * q
    gap = max(ub - lb, 0.0)
    scale = np.abs(fc).max() * m + abs(lam) * q + 1.0
    delta = big_h - h
    tol = 1e-9 * scale
    keep = delta <= gap + tol
    cand, fc, delta = cand[keep], fc[keep], delta[keep]
    # Items of an optimal multiset listed by decreasing deficit: the i-th has
    # deficit <= gap / i (the i largest deficits sum to <= gap).  So step i of the
    # programme only needs the ranks with delta <= gap / i.
    order = np.argsort(delta, kind="stable")
    cand, fc, delta = cand[order], fc[order], delta[order]
    g = np.full(q + 1, -np.inf)
    g[0] = 0.0
    for i in range(1, m + 1):
        count = int(np.searchsorted(delta, gap / i + tol, side="right"))
        new = np.full(q + 1, -np.inf)
        hi = q - (m - i)  # the remaining m - i items need rank >= 1 each
        for r, fv in zip(cand[:count].tolist(), fc[:count].tolist()):
            if r <= hi:
                np.maximum(new[r : hi + 1], g[: hi + 1 - r] + fv, out=new[r : hi + 1])
        g = new
    return float(g.max() / m)


def batch_mean_bound(scores, m: int, alpha: float, *, upper_bound: float = np.inf) -> float:
    """Upper bound ``U`` with ``P(mean(S_test) <= U) >= 1 - alpha`` for ``m`` test scores.

    Parameters
    ----------
    scores : array_like of shape (n,)
        Calibration scores (exchangeable with the test scores).
    m : int
        Batch size.
    alpha : float
        Miscoverage level in ``(0, 1)``.
    upper_bound : float
        Known upper bound ``B`` of the score (``S_(n+1)``); ``+inf`` by default, in
        which case the bound is ``+inf`` whenever ``A`` contains a rank vector
        with rank ``n + 1`` (``n`` too small for the level).
    """
    m = check_positive_int(m, "m")
    s = _extended_sorted(scores, upper_bound)
    n = len(s) - 1
    q = rank_sum_quantile(n, m, alpha)
    return max_mean_over_rank_sum(s, m, q)


def batch_order_statistic_bound(
    scores, m: int, zeta: int, alpha: float, *, upper_bound: float = np.inf
) -> float:
    """Bound ``S_(q)`` on the ``zeta``-th smallest of ``m`` test scores (level ``1 - alpha``)."""
    m = check_positive_int(m, "m")
    s = _extended_sorted(scores, upper_bound)
    q = order_statistic_quantile(len(s) - 1, m, zeta, alpha)
    return float(s[q - 1])


def batch_quantile_bound(
    scores, m: int, level: float, alpha: float, *, upper_bound: float = np.inf
) -> float:
    """Bound on the empirical ``level``-quantile of the test scores.

    The ``level``-quantile of ``m`` values is their ``ceil(level m)``-th smallest
    (``level = 0.5``: the median).
    """
    m = check_positive_int(m, "m")
    level = check_alpha(level, "level")
    zeta = max(1, math.ceil(exact_fraction(level) * m))
    return batch_order_statistic_bound(scores, m, zeta, alpha, upper_bound=upper_bound)


def batch_max_bound(scores, m: int, alpha: float, *, upper_bound: float = np.inf) -> float:
    """Simultaneous bound: all ``m`` test scores are ``<= U`` with probability ``>= 1 - alpha``."""
    return batch_order_statistic_bound(scores, m, m, alpha, upper_bound=upper_bound)


def brute_force_bound(g, scores, m: int, phi, q, *, upper_bound: float = np.inf) -> float:
    """``max_{r in A} g(S_(r_1), ..., S_(r_m))`` by enumerating all multisets.

    For tiny ``(n, m)`` only (any monotone ``g`` and any rank ordering ``phi``);
    raises ``ValueError`` beyond ``10^6`` multisets.
    """
    s = _extended_sorted(scores, upper_bound)
    n = len(s) - 1
    if math.comb(n + m, m) > 10**6:
        raise ValueError("brute_force_bound enumerates C(n + m, m) multisets: keep it <= 1e6")
    best = -np.inf
    for r in itertools.combinations_with_replacement(range(1, n + 2), m):
        if phi(r) <= q:
            best = max(best, g(s[np.asarray(r) - 1]))
    return float(best)


# ----------------------------------------------------------------------------- selection
def select_exceeding(
    y_pred, threshold: float, cal_scores, alpha: float, *, max_false: int = 0
) -> np.ndarray:
    """Claim ``Y_j > threshold`` with control of the number of false claims.

    Uses lower-bound scores ``S = y_pred - y`` on the calibration set.  With
    ``q`` the exact ``(1 - alpha)``-quantile of the ``(m - k)``-th smallest test rank
    (``k = max_false``), at most ``k`` test scores exceed ``S_(q)`` with probability
    ``>= 1 - alpha``; claiming ``j`` where ``y_pred_j - S_(q) > threshold`` therefore
    gives ``P(#false claims <= k) >= 1 - alpha``.

    Parameters
    ----------
    y_pred : array_like of shape (m,)
        Predictions for the test batch.
    threshold : float
        The value ``c`` in the claims ``Y_j > c``.
    cal_scores : array_like of shape (n,)
        Calibration scores ``y_pred_i - y_i``.
    alpha : float
        Level.
    max_false : int
        Tolerated number of false claims ``k`` (``0``: family-wise control).

    Returns
    -------
    ndarray of bool, shape (m,)
        The claims.
    """
    y_pred = as_float_array(y_pred, "y_pred")
    m = len(y_pred)
    k = check_positive_int(max_false, "max_false", minimum=0)
    if k >= m:
        raise ValueError(f"max_false must be < m = {m}, got {k}")
    bound = batch_order_statistic_bound(cal_scores, m, m - k, alpha)
    return (y_pred - bound) > float(threshold)
