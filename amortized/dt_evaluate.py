"""Held-out evaluation of Distribution Transformers against the exact posteriors of their tasks.

The acceptance metrics of issue 12, each with its Monte-Carlo standard error:

* :func:`evaluate_linear`: task (a) on priors unseen in training (fresh meta-prior draws from a
  key never used by training): ``KL(exact || DT)`` from draws of the exact GMM posterior, and
  the absolute error of the component weights;
* :func:`evaluate_invgamma`: task (b), ``KL(exact || DT)`` in ``z = log sigma^2`` (a KL is
  invariant under the bijection ``sigma^2 = exp(z)``), where the data come from the true
  Inverse-Gamma prior and the DT sees its 5-component fit;
* :func:`evaluate_sequential`: task (c), after ``T`` DT updates of a linear-Gaussian
  state-space model, the NLL of the true state under the DT filter and under the Kalman filter
  (paired difference over independent sequences).
"""

from __future__ import annotations

import warnings

import jax
import numpy as np

from amortized.exact import (
    gmm_draws,
    gmm_log_density,
    inverse_gamma_log_gmm,
    inverse_gamma_posterior,
    linear_gaussian_posterior,
    log_inverse_gamma_log_prob,
)
from amortized.priors import numpy_rng

__all__ = ["evaluate_invgamma", "evaluate_linear", "evaluate_sequential", "sequential_ssm"]

#: fold-in constant of evaluation keys (training uses ``fold_in(key(seed), step)`` with small steps)
_HELD_OUT = 2**31 - 7


def _mean_se(v) -> tuple[float, float]:
    v = np.asarray(v, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(v.size))


def _kl_summary(kls) -> dict:
    """Mean, SE and the 50/90/99% quantiles of per-problem KLs."""
    kl, kl_se = _mean_se(kls)
    q50, q90, q99 = np.quantile(np.asarray(kls, dtype=np.float64), [0.5, 0.9, 0.99])
    return {
        "kl": kl,
        "kl_se": kl_se,
        "kl_median": float(q50),
        "kl_q90": float(q90),
        "kl_q99": float(q99),
    }


def evaluate_linear(
    dt, n_problems: int = 200, n_draws: int = 10_000, seed: int = 0, per_problem: bool = False
) -> dict:
    """Task (a): KL(exact || DT) and weight errors on fresh priors and data.

    All problems go through one batched DT call (priors with fewer components are padded with
    zero-weight components); the KL of each problem is a Monte-Carlo average over ``n_draws``
    draws of its exact posterior (:func:`~amortized.exact.linear_gaussian_posterior`).

    Returns
    -------
    dict
        ``kl`` and ``kl_se`` (mean over problems of the per-problem Monte-Carlo KL; the SE
        combines both levels since each problem's estimate is independent), the quantiles
        ``kl_median``, ``kl_q90`` and ``kl_q99`` over problems, ``kl_mc_se_max`` (largest
        per-problem Monte-Carlo SE), ``weight_abs_err`` (mean over the real components),
        ``weight_max_abs_err_q95`` and ``frac_weights_within_0.02`` (max over a problem's
        components), and the settings; with ``per_problem`` also ``kls``, the per-problem KLs
        (for paired comparisons of two models on the same problems).
    """
    from probinfer.distributions import GaussianMixture

    task = dt.task
    key = jax.random.fold_in(jax.random.key(seed), _HELD_OUT)
    batch = task.sample(key, n_problems)
    cm = batch.comp_mask
    w0 = np.where(cm, np.exp(batch.logits.astype(np.float64)), 0.0)
    w0 /= w0.sum(-1, keepdims=True)
    mu0 = batch.means.astype(np.float64)
    l0 = batch.scale_trils.astype(np.float64)
    cov0 = l0 @ np.swapaxes(l0, -1, -2)
    x = batch.tokens[..., :-1].astype(np.float64)
    y = batch.tokens[..., -1].astype(np.float64)
    w, mu, cov = linear_gaussian_posterior(w0, mu0, cov0, x, y, task.noise_std, batch.data_mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fresh draws from the training ranges
        post = dt.posterior(GaussianMixture(mu0, cov0, weights=w0), x, y, mask=batch.data_mask)
    lg, pmu, ptril = (
        np.asarray(a, dtype=np.float64) for a in (post.logits, post.means, post.scale_trils)
    )
    tril = np.linalg.cholesky(cov)
    draws = gmm_draws(numpy_rng(jax.random.fold_in(key, 1)), n_draws, w, mu, tril)  # (S, B, D)
    diff = np.empty(draws.shape[:2])
    for i in range(0, n_problems, 100):  # bounded memory
        sl = slice(i, i + 100)
        diff[:, sl] = gmm_log_density(draws[:, sl], w[sl], mu[sl], tril[sl]) - gmm_log_density(
            draws[:, sl], np.exp(lg[sl]), pmu[sl], ptril[sl]
        )
    kls = diff.mean(0)
    werr = np.abs(np.asarray(post.weights, dtype=np.float64) - w)
    werr_max = np.where(cm, werr, 0.0).max(-1)
    return {
        **_kl_summary(kls),
        **({"kls": kls.tolist()} if per_problem else {}),
        "kl_mc_se_max": float((diff.std(0, ddof=1) / np.sqrt(n_draws)).max()),
        "weight_abs_err": float(werr[cm].mean()),
        "weight_max_abs_err_q95": float(np.quantile(werr_max, 0.95)),
        "frac_weights_within_0.02": float(np.mean(werr_max <= 0.02)),
        "n_problems": n_problems,
        "n_draws": n_draws,
        "seed": seed,
    }


def evaluate_invgamma(
    dt,
    n_problems: int = 200,
    n_draws: int = 10_000,
    seed: int = 0,
    n_shapes: int = 128,
    per_problem: bool = False,
) -> dict:
    """Task (b): KL(exact IG posterior || DT) in ``log sigma^2``, priors and data fresh.

    ``n_shapes`` fresh shapes ``a`` are drawn uniformly on ``task.a_range`` (training saw a
    fixed grid of them) and each problem uses one of them at random, with its own scale ``b``
    (from a fresh prior median), ``n`` and data. Each shape's 5-component fit is computed once
    (:func:`~amortized.exact.inverse_gamma_log_gmm`, a location family in ``log b``); all
    problems go through one batched DT call (ragged data with a mask).

    Returns
    -------
    dict
        ``kl``, ``kl_se``, ``kl_median``, ``kl_q90``, ``kl_q99`` (over problems, each a
        Monte-Carlo average over ``n_draws`` exact draws) and the settings; with
        ``per_problem`` also ``kls``, the per-problem KLs.
    """
    from scipy.special import gammaincinv

    from probinfer.distributions import GaussianMixture

    task = dt.task
    rng = numpy_rng(jax.random.fold_in(jax.random.key(seed), _HELD_OUT))
    shapes = rng.uniform(*task.a_range, size=min(n_shapes, n_problems))
    idx = rng.integers(0, shapes.size, size=n_problems)
    a = shapes[idx]
    median = np.exp(rng.uniform(*np.log(task.median_range), size=n_problems))
    b = median * gammaincinv(a, 0.5)
    n = rng.integers(task.n_range[0], task.n_range[1] + 1, size=n_problems)
    sigma2 = b / rng.gamma(a)
    n_max = task.n_range[1]
    mask = np.arange(n_max)[None, :] < n[:, None]
    y = np.where(mask, np.sqrt(sigma2)[:, None] * rng.standard_normal((n_problems, n_max)), 0.0)
    a1, b1 = inverse_gamma_posterior(a, b, y, mask)
    fw, fmu, fsd = inverse_gamma_log_gmm(shapes, 1.0, task.n_components)
    w, mu, sd = fw[idx], fmu[idx] + np.log(b)[:, None], fsd[idx]
    post = dt.posterior(GaussianMixture.univariate(w, mu, sd), None, y, mask=mask)
    lg, pmu, ptril = (
        np.asarray(v, dtype=np.float64) for v in (post.logits, post.means, post.scale_trils)
    )
    z = np.log(b1 / rng.gamma(a1, size=(n_draws, n_problems)))  # (S, B) exact draws
    kls = np.empty(n_problems)
    for i in range(0, n_problems, 100):  # bounded memory
        sl = slice(i, i + 100)
        log_q = gmm_log_density(z[:, sl, None], np.exp(lg[sl]), pmu[sl], ptril[sl])
        kls[sl] = (log_inverse_gamma_log_prob(z[:, sl], a1[sl], b1[sl]) - log_q).mean(0)
    return {
        **_kl_summary(kls),
        **({"kls": kls.tolist()} if per_problem else {}),
        "n_problems": n_problems,
        "n_shapes": int(shapes.size),
        "n_draws": n_draws,
        "seed": seed,
    }


def sequential_ssm():
    """The state-space model of task (c): 2-D rotation-damped state, scalar observations."""
    from probinfer.lgssm import LinearGaussianSSM

    c, s = np.cos(0.3), np.sin(0.3)
    return LinearGaussianSSM(
        A=0.9 * np.array([[c, -s], [s, c]]),
        Q=0.15 * np.eye(2),
        C=[[1.0, 0.5]],
        R=0.25,
        m0=[0.0, 0.0],
        P0=np.eye(2),
    )


def evaluate_sequential(dt, n_sequences: int = 200, n_steps: int = 20, seed: int = 0) -> dict:
    """Task (c): NLL of the true final state, DT filter vs Kalman filter (paired)."""
    from amortized.dt_sequential import dt_filter
    from probinfer.distributions import GaussianMixture
    from probinfer.lgssm import kalman_filter

    ssm = sequential_ssm()
    key = jax.random.fold_in(jax.random.key(seed), _HELD_OUT)
    keys = jax.random.split(key, n_sequences)
    xs, ys = jax.vmap(lambda k: ssm.simulate(k, n_steps))(keys)
    xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    kf_nll = []
    for i in range(n_sequences):
        kf = kalman_filter(ssm, ys[i])
        m, p = kf.means[-1], kf.covariances[-1]
        r = xs[i, -1] - m
        kf_nll.append(0.5 * (r @ np.linalg.solve(p, r) + np.linalg.slogdet(2 * np.pi * p)[1]))
    prior = GaussianMixture(
        np.broadcast_to(ssm.m0, (n_sequences, 1, 2)),
        np.broadcast_to(ssm.P0, (n_sequences, 1, 2, 2)),
        weights=np.ones((n_sequences, 1)),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filt = dt_filter(dt, prior, ssm, ys)
    dt_nll = -np.asarray(filt[-1].log_prob(xs[:, -1].astype(np.float32)), dtype=np.float64)
    gap, gap_se = _mean_se(dt_nll - np.asarray(kf_nll))
    return {
        "dt_nll": float(dt_nll.mean()),
        "kf_nll": float(np.mean(kf_nll)),
        "gap": gap,
        "gap_se": gap_se,
        "n_range_warnings": len(caught),
        "n_sequences": n_sequences,
        "n_steps": n_steps,
        "seed": seed,
    }
