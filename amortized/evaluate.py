"""Held-out evaluation of a PFN against the exact GP posterior predictive.

The metric of the shipped model: predictive NLL per test point on fresh datasets from the prior,
for several context sizes, next to the exact (Bayes-optimal) GP answer and the prior predictive.
Standard errors are over datasets (paired for the gap), so a reported gap comes with its
Monte-Carlo error.
"""

from __future__ import annotations

import math

import numpy as np

from amortized.priors import GPPrior, indexed_key

__all__ = ["gaussian_nll", "nll_vs_gp"]

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_nll(y: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Pointwise negative log density of ``N(mean, var)`` at ``y`` (float64)."""
    y, mean, var = (np.asarray(a, dtype=float) for a in (y, mean, var))
    return 0.5 * (_LOG_2PI + np.log(var) + (y - mean) ** 2 / var)


def nll_vs_gp(
    pfn,
    prior: GPPrior,
    n_datasets: int = 200,
    n_train_values=(5, 10, 20, 50),
    n_test: int = 50,
    seed: int = 12345,
) -> dict:
    """PFN vs exact GP predictive NLL per test point on held-out datasets.

    Parameters
    ----------
    pfn : PFN
        Trained network (anything with ``predict(x_train, y_train, x_test)`` returning a
        distribution with ``log_prob``).
    prior : GPPrior
        Fixed-hyperparameter GP prior the datasets are drawn from (and the exact GP uses).
    n_datasets : int
        Held-out datasets per context size.
    n_train_values : sequence of int
        Context sizes.
    n_test : int
        Test points per dataset.
    seed : int
        Seed of the held-out draws (distinct from training seeds by construction of the keys).

    Returns
    -------
    dict
        ``{"by_n_train": {n: {...}}, "overall": {...}}`` with ``pfn_nll``, ``gp_nll``,
        ``prior_nll``, ``gap`` (PFN - GP) and ``gap_se`` (standard error over datasets).
    """
    if prior.hyperprior_sd != 0:
        raise ValueError("prior must have fixed hyperparameters (hyperprior_sd = 0)")
    out: dict = {"by_n_train": {}}
    gaps_all, pfn_all, gp_all, prior_all = [], [], [], []
    for j, n in enumerate(n_train_values):
        key = indexed_key(seed, 1_000_003 + j)
        x, y = prior.sample(key, n_datasets, n + n_test)
        xt, yt, xs, ys = x[:, :n], y[:, :n], x[:, n:], y[:, n:]
        dist = pfn.predict(xt, yt, xs)
        pfn_nll = -np.asarray(dist.log_prob(ys), dtype=float).mean(axis=1)  # (B,)
        mean, var = prior.posterior_predictive(xt, yt, xs)
        gp_nll = gaussian_nll(ys, mean, var).mean(axis=1)
        prior_nll = gaussian_nll(ys, 0.0, prior.outputscale + prior.noise).mean(axis=1)
        gap = pfn_nll - gp_nll
        out["by_n_train"][int(n)] = {
            "pfn_nll": float(pfn_nll.mean()),
            "gp_nll": float(gp_nll.mean()),
            "prior_nll": float(prior_nll.mean()),
            "gap": float(gap.mean()),
            "gap_se": float(gap.std(ddof=1) / math.sqrt(n_datasets)),
        }
        gaps_all.append(gap)
        pfn_all.append(pfn_nll)
        gp_all.append(gp_nll)
        prior_all.append(prior_nll)
    g = np.concatenate(gaps_all)
    out["overall"] = {
        "pfn_nll": float(np.concatenate(pfn_all).mean()),
        "gp_nll": float(np.concatenate(gp_all).mean()),
        "prior_nll": float(np.concatenate(prior_all).mean()),
        "gap": float(g.mean()),
        "gap_se": float(g.std(ddof=1) / math.sqrt(g.size)),
        "n_datasets_per_size": int(n_datasets),
        "n_test": int(n_test),
    }
    return out
