r"""Posterior checks over simulated problems: SBC and TARP for any posterior.

Both checks take ``B`` problems ``(theta_i, x_i)`` simulated from the joint model, the true
parameters ``theta_i`` and, for each problem, a posterior ``q(theta | x_i)`` in any form of
:func:`calibration.posterior_draws.posterior_draws` (arrays, numpyro distributions such as a
PFN's ``BarDistribution`` or a ``GaussianMixture``, ``Particles``, SMC results, ArviZ data).
If ``q`` is the exact posterior, ``theta_i`` and the ``L`` draws of ``q(. | x_i)`` are
exchangeable, so any statistic ranks ``theta_i`` uniformly among them.

* **SBC** (Talts et al. 2018): the rank of each component of ``theta_i`` among the draws is
  uniform on ``{0, ..., L}``. The rank plus an independent uniform, divided by ``L + 1``
  (the *randomised PIT*), is then exactly ``U(0, 1)``; it is tested with the
  Kolmogorov-Smirnov test and shown as an ECDF-difference plot with a simultaneous band
  (Säilynoja, Bürkner and Vehtari 2022).
* **TARP** (Lemos et al. 2023): for a random reference point ``theta_r``, the fraction
  ``f_i`` of draws closer to ``theta_r`` than ``theta_i`` is (after the same
  randomisation) ``U(0, 1)``. The expected coverage ``ECP(alpha) = P(f < alpha)`` must be
  the diagonal; the *area to curve* ``ATC = int_{1/2}^{1} (ECP(alpha) - alpha) dalpha`` is
  0 (negative: over-confident, positive: under-confident) and the KS test of the ``f_i``
  against ``U(0, 1)`` gives a p-value.

The simultaneous band (Säilynoja et al. 2022) is computed by simulation: for ``n``
uniform PIT values, the ECDF at ``z_k = k / K`` has ``n F(z_k) ~ Binomial(n, z_k)``; the
statistic ``gamma = min_k 2 min(P(Bin <= n F), P(Bin >= n F))`` is simulated under the null
with the key, and its ``alpha``-quantile ``gamma*`` gives the band of binomial quantiles
``[Q(gamma*/2), Q(1 - gamma*/2)] / n`` that holds the whole ECDF with probability
``1 - alpha``. Its p-value is the null probability of a smaller ``gamma``. The band is a
diagnostic (plots, ``within_band``), simulated on first use; it is not part of ``passed``.

**The decision** (``passed``) is one test of level ``alpha``: the Bonferroni (min-p)
combination ``p = min(1, m * min_j p_j)`` of ``m`` exact p-values, rejected when
``p <= alpha``; under the null each ``p_j`` is uniform, so ``P(p <= alpha) <= alpha``
whatever their dependence. SBC combines the ``d`` per-component KS tests; TARP combines
its own KS test with those ``d`` rank tests (``m = d + 1``). TARP's reference points are
drawn independently of the data, and with such references TARP is a necessary but not a
sufficient condition for calibration (Lemos et al. 2023, sec. 3): a posterior shifted by
half its standard deviation moves the distances to a far reference point little, and
TARP's KS test alone passed it 9 times in 10 (``B = 200``). The marginal rank test sees the
shift directly. Size and power are measured in the tests: type-I error over 200 exact
posteriors, and the rejection rate for shifts of 0.25, 0.5 and 1 posterior SD.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np
from scipy import stats

from probinfer.engine.core import bucket_size

from ._validation import as_float_array, check_alpha, check_positive_int
from .posterior_draws import as_theta, posterior_draws

__all__ = [
    "ECDFBand",
    "SBCResult",
    "TARPResult",
    "ecdf_band",
    "randomized_ranks",
    "sbc",
    "tarp",
]

_NUM_BAND_SIMULATIONS = 2000


def _uniform(key, shape) -> np.ndarray:
    """``U(0, 1)`` draws of ``shape`` as float64 on the host, cut from a flat draw of a
    power-of-two length (:func:`probinfer.engine.bucket_size`), so that the numbers of problems
    compile one program per octave, not one each."""
    size = int(np.prod(shape, dtype=np.int64))
    flat = jax.random.uniform(key, (bucket_size(size, 64),), dtype=np.float32)
    return np.asarray(flat, dtype=np.float64)[:size].reshape(shape)


def randomized_ranks(key, draw_stats: np.ndarray, true_stats: np.ndarray):
    """Ranks of ``true_stats`` among ``draw_stats`` and their randomised PIT values.

    Parameters
    ----------
    key
        ``jax.random`` key for the uniform that breaks the discreteness (and ties).
    draw_stats : ndarray of shape (B, L, ...)
    true_stats : ndarray of shape (B, ...)

    Returns
    -------
    ranks : ndarray of int64, shape (B, ...)
        ``#{draws < true}`` plus a uniformly chosen number of tied draws, in ``{0..L}``.
    pit : ndarray of float64, shape (B, ...)
        ``(rank + U) / (L + 1)``, exactly ``U(0, 1)`` when the truth and the draws are
        exchangeable.
    """
    num_draws = draw_stats.shape[1]
    below = (draw_stats < true_stats[:, None]).sum(axis=1)
    ties = (draw_stats == true_stats[:, None]).sum(axis=1)
    k_ties, k_u = jax.random.split(key)
    ranks = below + np.floor(_uniform(k_ties, below.shape) * (ties + 1)).astype(np.int64)
    pit = (ranks + _uniform(k_u, below.shape)) / (num_draws + 1)
    return ranks.astype(np.int64), pit


# ---------------------------------------------------------------------------- simultaneous band
@dataclass(frozen=True)
class ECDFBand:
    """Simultaneous ``1 - alpha`` band for the ECDF of ``n`` uniform values at ``z``.

    Attributes
    ----------
    z : ndarray of shape (K - 1,)
        Evaluation points ``k / K``.
    lower, upper : ndarray of shape (K - 1,)
        Band for the ECDF ``F(z)`` (subtract ``z`` for the ECDF-difference plot).
    gamma : float
        The adjusted pointwise level ``gamma*``.
    null_gammas : ndarray
        Simulated null values of the ``gamma`` statistic (for p-values).
    """

    z: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    gamma: float
    null_gammas: np.ndarray
    alpha: float
    n: int

    def gamma_statistic(self, u: np.ndarray) -> np.ndarray:
        """``gamma`` of samples ``u`` of shape ``(n, ...)`` (one value per trailing column)."""
        return _gamma(np.sort(u, axis=0), self.z, self.n)

    def pvalue(self, u: np.ndarray) -> np.ndarray:
        """Null probability of a ``gamma`` at most that of ``u`` (per trailing column)."""
        g = np.atleast_1d(self.gamma_statistic(u))
        sims = self.null_gammas
        return (1.0 + (sims[None, :] <= g[:, None]).sum(axis=1)) / (len(sims) + 1.0)

    def contains(self, u: np.ndarray) -> np.ndarray:
        """Whether the ECDF of ``u`` (shape ``(n, ...)``) lies inside the band everywhere."""
        f = _ecdf(np.sort(u, axis=0), self.z)  # (K-1, ...)
        lo = self.lower.reshape((-1,) + (1,) * (f.ndim - 1))
        hi = self.upper.reshape((-1,) + (1,) * (f.ndim - 1))
        return np.all((f >= lo - 1e-12) & (f <= hi + 1e-12), axis=0)


def _ecdf(u: np.ndarray, z: np.ndarray) -> np.ndarray:
    """ECDF of the columns of ``u (n, ...)`` at the increasing points ``z``: shape
    ``(len(z), ...)``. One histogram over all columns (a value ``u <= z_k`` falls in a bin
    ``<= k``), then a cumulative sum: no loop over the columns."""
    n, k = u.shape[0], len(z)
    flat = u.reshape(n, -1)
    bins = np.searchsorted(z, flat, side="left")  # number of z strictly below each value
    offsets = (k + 1) * np.arange(flat.shape[1])
    hist = np.bincount((bins + offsets).ravel(), minlength=(k + 1) * flat.shape[1])
    counts = np.cumsum(hist.reshape(flat.shape[1], k + 1)[:, :k], axis=1)
    return (counts.T / n).reshape((k,) + u.shape[1:])


@functools.lru_cache(maxsize=64)
def _binomial_tails(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``P(Bin(n, z) <= c)`` and ``P(Bin(n, z) >= c)`` for ``z = j / k`` (``j = 1..k-1``) and
    every count ``c = 0..n``: tables of shape ``(k - 1, n + 1)``, so the ``gamma`` statistic
    of many samples is a look-up rather than ``2 (k - 1)`` binomial tails per sample."""
    z = (np.arange(1, k) / k)[:, None]
    c = np.arange(n + 1)[None, :]
    return stats.binom.cdf(c, n, z), stats.binom.sf(c - 1, n, z)


def _gamma(sorted_u: np.ndarray, z: np.ndarray, n: int) -> np.ndarray:
    counts = np.rint(_ecdf(sorted_u, z) * n).astype(np.int64)
    lower, upper = _binomial_tails(n, len(z) + 1)
    flat = counts.reshape(len(z), -1)
    rows = np.arange(len(z))[:, None]
    two_sided = 2.0 * np.minimum(lower[rows, flat], upper[rows, flat])
    return np.minimum(two_sided, 1.0).min(axis=0).reshape(counts.shape[1:])


def ecdf_band(
    key, n: int, alpha: float = 0.01, num_points: int | None = None, num_simulations: int = 2000
) -> ECDFBand:
    """Simultaneous ECDF band for ``n`` uniform values (Säilynoja et al. 2022, by simulation).

    Parameters
    ----------
    key
        ``jax.random`` key of the null simulations (same key, same band).
    n
        Number of values (problems).
    alpha
        The band holds the whole ECDF with probability ``1 - alpha``.
    num_points
        ``K``: the ECDF is evaluated at ``k / K``, ``k = 1..K-1`` (default ``min(n, 100)``).
    num_simulations
        Null samples of the ``gamma`` statistic.
    """
    n = check_positive_int(n, "n", 2)
    alpha = check_alpha(alpha)
    k = min(n, 100) if num_points is None else check_positive_int(num_points, "num_points", 2)
    num_simulations = check_positive_int(num_simulations, "num_simulations", 100)
    z = np.arange(1, k) / k
    sims = np.sort(_uniform(key, (n, num_simulations)), axis=0)
    null = _gamma(sims, z, n)
    gamma = float(np.quantile(null, alpha, method="lower"))
    lower = stats.binom.ppf(gamma / 2.0, n, z) / n
    upper = stats.binom.ppf(1.0 - gamma / 2.0, n, z) / n
    return ECDFBand(z, lower, upper, gamma, null, alpha, n)


def _uniform_ks_pvalues(u: np.ndarray) -> np.ndarray:
    """KS p-values of each column of ``u (B, d)`` against ``U(0, 1)``: shape ``(d,)``."""
    return np.atleast_1d(stats.kstest(u, "uniform", axis=0).pvalue)


def _bonferroni(pvalues) -> float:
    """Bonferroni (min-p) combination of ``m`` p-values: ``min(1, m * min p)``, a valid
    p-value whatever their dependence."""
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    return float(min(1.0, p.min() * p.size))


def _prepare(key, posterior, theta, num_draws):
    k_draws, k_rest = jax.random.split(key)
    draws = posterior_draws(k_draws, posterior, num_draws)
    theta = as_theta(theta, draws.shape[0], draws.shape[2])
    if draws.shape[0] < 2:
        raise ValueError("posterior must hold at least 2 problems for a calibration check")
    return draws, theta, k_rest


def _param_names(names, dim: int) -> list[str]:
    if names is None:
        return [f"theta[{j}]" for j in range(dim)] if dim > 1 else ["theta"]
    names = [str(n) for n in names]
    if len(names) != dim:
        raise ValueError(f"names must have {dim} entries (one per parameter), got {len(names)}")
    return names


def _new_axes(ax, count: int):
    import matplotlib.pyplot as plt

    if ax is not None:
        axes = np.atleast_1d(ax).ravel()
        if len(axes) != count:
            raise ValueError(f"ax must hold {count} axes, got {len(axes)}")
        return axes[0].figure, axes
    # constrained layout: the axis labels and titles stay inside the saved figure
    fig, axes = plt.subplots(
        1, count, figsize=(3.6 * count, 3.2), squeeze=False, layout="constrained"
    )
    return fig, axes[0]


# ---------------------------------------------------------------------------- SBC
@dataclass(frozen=True)
class SBCResult:
    """Simulation-based calibration of ``B`` problems with ``L`` draws each.

    Attributes
    ----------
    ranks : ndarray of int64, shape (B, d)
        Rank of each true parameter component among the draws, in ``{0..L}``.
    pit : ndarray of shape (B, d)
        Randomised PIT values ``(rank + U) / (L + 1)``.
    num_draws : int
        ``L``.
    ks_pvalues : ndarray of shape (d,)
        Kolmogorov-Smirnov p-values of ``pit`` against ``U(0, 1)``, per component.
    alpha : float
        Level of the checks.
    names : list of str
        Parameter names (for plots).
    band : ECDFBand
        The simultaneous ``1 - alpha`` band of the ECDF of the PIT values (simulated on
        first use; a diagnostic, not part of ``passed``).
    band_pvalues : ndarray of shape (d,)
        p-values of the simultaneous-band (``gamma``) test, per component.
    """

    ranks: np.ndarray
    pit: np.ndarray
    num_draws: int
    ks_pvalues: np.ndarray
    alpha: float
    names: list
    _band_key: Any = field(repr=False)

    @functools.cached_property
    def band(self) -> ECDFBand:
        return ecdf_band(
            self._band_key, self.pit.shape[0], self.alpha, num_simulations=_NUM_BAND_SIMULATIONS
        )

    @property
    def band_pvalues(self) -> np.ndarray:
        return self.band.pvalue(self.pit)

    @property
    def pvalue(self) -> float:
        """Bonferroni-combined KS p-value over the ``d`` components (the decision's p-value)."""
        return _bonferroni(self.ks_pvalues)

    @property
    def within_band(self) -> np.ndarray:
        """Per component: the whole PIT ECDF lies inside the simultaneous band."""
        return self.band.contains(self.pit)

    @property
    def passed(self) -> bool:
        """``pvalue > alpha``: one test of level ``alpha`` (see the module docstring)."""
        return bool(self.pvalue > self.alpha)

    def plot(self, ax=None, kind: str = "ecdf_diff"):
        """ECDF-difference plot with the simultaneous band (``kind="ecdf_diff"``) or
        rank histograms with the ``1 - alpha`` binomial range of each bin (``"hist"``).

        Returns the matplotlib figure (one panel per parameter).
        """
        if kind not in ("ecdf_diff", "hist"):
            raise ValueError(f"kind must be 'ecdf_diff' or 'hist', got {kind!r}")
        d = self.pit.shape[1]
        fig, axes = _new_axes(ax, d)
        band = self.band
        if kind == "ecdf_diff":
            grid = np.concatenate([[0.0], band.z, [1.0]])
            lo = np.concatenate([[0.0], band.lower - band.z, [0.0]])
            hi = np.concatenate([[0.0], band.upper - band.z, [0.0]])
            f = _ecdf(np.sort(self.pit, axis=0), grid)
            for j, a in enumerate(axes):
                a.fill_between(
                    grid,
                    lo,
                    hi,
                    step=None,
                    color="C0",
                    alpha=0.2,
                    label=f"{1 - self.alpha:.0%} simultaneous band",
                )
                a.plot(grid, f[:, j] - grid, color="C3", label="ECDF - uniform")
                a.axhline(0.0, color="k", lw=0.6)
                a.set(xlabel="fractional rank", title=self.names[j])
            axes[0].set_ylabel("ECDF difference")
        else:
            bins = min(self.num_draws + 1, 20)
            b = self.pit.shape[0]
            lo, hi = stats.binom.interval(1 - self.alpha, b, 1.0 / bins)
            for j, a in enumerate(axes):
                a.hist(self.pit[:, j], bins=bins, range=(0, 1), color="C3", alpha=0.7)
                a.axhspan(lo, hi, color="C0", alpha=0.2)
                a.set(xlabel="fractional rank", title=self.names[j])
            axes[0].set_ylabel("count")
        axes[0].legend(loc="best", fontsize=7) if kind == "ecdf_diff" else None
        return fig


def sbc(
    key,
    posterior: Any,
    theta,
    *,
    num_draws: int | None = None,
    alpha: float = 0.01,
    names=None,
) -> SBCResult:
    """Simulation-based calibration (Talts et al. 2018) of any posterior.

    Parameters
    ----------
    key
        ``jax.random`` key (sampling/resampling the posteriors, the randomisation of the
        ranks and the band simulation). Same key, same result.
    posterior
        The ``B`` posteriors (see :func:`calibration.posterior_draws.posterior_draws`).
    theta : array_like of shape (B,) or (B, d)
        The parameters the data of each problem were simulated from.
    num_draws
        ``L`` for distributions and weighted particles (stored draws are used as they are).
    alpha
        Level of the KS test and of the simultaneous band.
    names
        Parameter names for the plots.

    Returns
    -------
    SBCResult
    """
    alpha = check_alpha(alpha)
    draws, theta, k = _prepare(key, posterior, theta, num_draws)
    k_rank, k_band = jax.random.split(k)
    ranks, pit = randomized_ranks(k_rank, draws, theta)
    return SBCResult(
        ranks=ranks,
        pit=pit,
        num_draws=draws.shape[1],
        ks_pvalues=_uniform_ks_pvalues(pit),
        alpha=alpha,
        names=_param_names(names, pit.shape[1]),
        _band_key=k_band,
    )


# ---------------------------------------------------------------------------- TARP
@dataclass(frozen=True)
class TARPResult:
    """Tests of Accuracy with Random Points (Lemos et al. 2023) over ``B`` problems.

    Attributes
    ----------
    coverage_values : ndarray of shape (B,)
        Randomised fraction ``f_i`` of draws closer to the reference than the truth.
    alpha_grid, ecp : ndarray
        The expected-coverage curve ``ECP(alpha) = mean_i 1{f_i < alpha}``.
    atc : float
        Area to curve ``int_{1/2}^1 (ECP(alpha) - alpha) dalpha`` (0 when calibrated;
        negative: over-confident; positive: under-confident).
    atc_se : float
        Its standard error (sample standard deviation of the per-problem terms / sqrt(B)).
    ks_pvalue : float
        KS p-value of the ``f_i`` against ``U(0, 1)``.
    references : ndarray of shape (B, d)
        The reference points, in the (standardised) space of the distances.
    alpha : float
        Level of the decision.
    rank_pvalues : ndarray of shape (d,)
        KS p-values of the randomised ranks of each component of the truth among the
        same draws (SBC's marginal rank test), which TARP with data-independent
        references lacks against location bias.
    band : ECDFBand
        Simultaneous band for the ECP curve (it is the ECDF of the ``f_i``; simulated on
        first use, a diagnostic, not part of ``passed``).
    """

    coverage_values: np.ndarray
    alpha_grid: np.ndarray
    ecp: np.ndarray
    atc: float
    atc_se: float
    ks_pvalue: float
    references: np.ndarray
    alpha: float
    rank_pvalues: np.ndarray
    _band_key: Any = field(repr=False)

    @functools.cached_property
    def band(self) -> ECDFBand:
        return ecdf_band(
            self._band_key,
            self.coverage_values.shape[0],
            self.alpha,
            num_simulations=_NUM_BAND_SIMULATIONS,
        )

    @property
    def within_band(self) -> bool:
        """The whole ECP curve lies inside the simultaneous band."""
        return bool(self.band.contains(self.coverage_values))

    @property
    def pvalue(self) -> float:
        """Bonferroni combination of ``ks_pvalue`` and the ``d`` ``rank_pvalues``."""
        return _bonferroni(np.append(self.rank_pvalues, self.ks_pvalue))

    @property
    def passed(self) -> bool:
        """``pvalue > alpha``: one test of level ``alpha`` (see the module docstring)."""
        return bool(self.pvalue > self.alpha)

    def plot(self, ax=None):
        """Expected coverage against credibility level, with the diagonal and the band."""
        fig, axes = _new_axes(ax, 1)
        a = axes[0]
        band = self.band
        a.fill_between(
            band.z,
            band.lower,
            band.upper,
            color="C0",
            alpha=0.2,
            label=f"{1 - self.alpha:.0%} simultaneous band",
        )
        a.plot([0, 1], [0, 1], color="k", lw=0.6, ls="--")
        a.plot(
            self.alpha_grid,
            self.ecp,
            color="C3",
            label=f"TARP (ATC {self.atc:+.3f}, KS p {self.ks_pvalue:.2g})",
        )
        a.set(xlabel="credibility level", ylabel="expected coverage", xlim=(0, 1), ylim=(0, 1))
        a.legend(loc="upper left", fontsize=7)
        return fig


def _references(key, theta: np.ndarray, references) -> np.ndarray:
    if references is None:
        lo, hi = theta.min(axis=0), theta.max(axis=0)
        return lo + (hi - lo) * _uniform(key, theta.shape)
    ref = as_float_array(references, "references", ndim=None, allow_inf=False)
    ref = ref.reshape(ref.shape[0], -1) if ref.ndim else ref
    if ref.shape != theta.shape:
        raise ValueError(f"references must have shape {theta.shape} (like theta), got {ref.shape}")
    return ref


def tarp(
    key,
    posterior: Any,
    theta,
    *,
    num_draws: int | None = None,
    references=None,
    standardize: bool = True,
    alpha: float = 0.01,
    num_alpha: int = 101,
) -> TARPResult:
    """TARP coverage test (Lemos et al. 2023) of any posterior.

    Parameters
    ----------
    key
        ``jax.random`` key (posterior draws, reference points, randomisation, band).
    posterior
        The ``B`` posteriors (see :func:`calibration.posterior_draws.posterior_draws`).
    theta : array_like of shape (B,) or (B, d)
        The parameters the data of each problem were simulated from.
    num_draws
        ``L`` for distributions and weighted particles.
    references : array_like of shape (B, d), optional
        Reference points (in the standardised space when ``standardize``); by default
        uniform over the bounding box of ``theta``, one per problem.
    standardize
        Scale each component by the mean and standard deviation of ``theta`` before
        measuring Euclidean distances, so no component dominates by its units.
    alpha
        Level of the decision ``passed`` (and of the band).
    num_alpha
        Points of the ECP curve.

    Returns
    -------
    TARPResult
        ``passed`` is one test of level ``alpha``: TARP's KS test and the ``d`` marginal
        rank tests of the truth among the same draws, Bonferroni-combined (``pvalue``), since
        TARP with references independent of the data misses location bias.
    """
    alpha = check_alpha(alpha)
    num_alpha = check_positive_int(num_alpha, "num_alpha", 2)
    draws, theta, k = _prepare(key, posterior, theta, num_draws)
    k_ref, k_rank, k_band, k_marginal = jax.random.split(k, 4)
    _, marginal_pit = randomized_ranks(k_marginal, draws, theta)
    if standardize:
        mu, sd = theta.mean(axis=0), theta.std(axis=0)
        sd = np.where(sd > 0, sd, 1.0)
        draws, theta = (draws - mu) / sd, (theta - mu) / sd
    ref = _references(k_ref, theta, references)
    d_draws = np.linalg.norm(draws - ref[:, None, :], axis=-1)  # (B, L)
    d_true = np.linalg.norm(theta - ref, axis=-1)  # (B,)
    _, f = randomized_ranks(k_rank, d_draws, d_true)
    grid = np.linspace(0.0, 1.0, num_alpha)
    ecp = (f[None, :] < grid[:, None]).mean(axis=1)
    h = 1.0 - np.maximum(f, 0.5)  # int_{1/2}^1 1{f < a} da
    return TARPResult(
        coverage_values=f,
        alpha_grid=grid,
        ecp=ecp,
        atc=float(h.mean() - 0.375),
        atc_se=float(h.std(ddof=1) / np.sqrt(len(h))),
        ks_pvalue=float(stats.kstest(f, "uniform").pvalue),
        references=ref,
        alpha=alpha,
        rank_pvalues=_uniform_ks_pvalues(marginal_pit),
        _band_key=k_band,
    )
