"""PFN vs exact GP on fresh data from the GP prior, with both predictive bands.

Loads the shipped ``gp-1d`` PFN (offline), draws a new dataset from its RBF-GP prior, and
compares the PFN's posterior predictive (one forward pass, a ``BarDistribution``) with the exact
GP posterior predictive (Cholesky): held-out NLL and the central 90% predictive bands.

    python examples/pfn_gp_regression.py [--n-train 10] [--seed 0] [--out pfn_gp_regression.png]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="pfn_gp_regression.png")
    p.add_argument("--model-dir", default=None, help="a saved PFN directory instead of gp-1d")
    a = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    import jax.numpy as jnp

    from amortized import PFN, load_pretrained
    from amortized.evaluate import gaussian_nll
    from amortized.pretrained import prior_of
    from amortized.priors import indexed_key

    pfn = PFN.load(a.model_dir) if a.model_dir else load_pretrained("gp-1d")
    prior = prior_of("gp-1d")

    # one dataset: n_train context points + 200 held-out points, plus a grid for the bands
    x, y = prior.sample(indexed_key(a.seed, 7), 1, a.n_train + 200)
    xt, yt, xh, yh = x[0, : a.n_train], y[0, : a.n_train], x[0, a.n_train :], y[0, a.n_train :]
    grid = np.linspace(0.0, 1.0, 200, dtype=np.float32)[:, None]

    pfn.predict(xt, yt, grid)  # warm-up (first call initialises torch/JAX kernels)
    t0 = time.perf_counter()
    d_grid = pfn.predict(xt, yt, grid)
    t_pfn = time.perf_counter() - t0
    gp_mean, gp_var = prior.posterior_predictive(xt[None], yt[None], grid[None])
    nll_pfn = float(-np.mean(np.asarray(pfn.predict(xt, yt, xh).log_prob(yh))))
    m, v = prior.posterior_predictive(xt[None], yt[None], xh[None])
    nll_gp = float(gaussian_nll(yh, m[0], v[0]).mean())
    print(
        f"n_train = {a.n_train}: held-out NLL per point  PFN {nll_pfn:.4f}  exact GP {nll_gp:.4f}"
        f"  (gap {nll_pfn - nll_gp:+.4f} nats); PFN forward pass {1e3 * t_pfn:.1f} ms"
    )

    q = d_grid.icdf(jnp.array([0.05, 0.5, 0.95])[:, None])
    lo, med, hi = (np.asarray(r) for r in q)
    sd = np.sqrt(gp_var[0])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    g = grid[:, 0]
    ax.fill_between(
        g,
        gp_mean[0] - 1.645 * sd,
        gp_mean[0] + 1.645 * sd,
        color="C0",
        alpha=0.25,
        label="exact GP 90% band",
    )
    ax.plot(g, gp_mean[0], color="C0", label="exact GP mean")
    ax.plot(g, lo, "--", color="C3", label="PFN 5% / 95% quantiles")
    ax.plot(g, hi, "--", color="C3")
    ax.plot(g, np.asarray(d_grid.mean), color="C3", label="PFN mean")
    ax.scatter(xt[:, 0], yt, color="k", zorder=3, label="training data")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(f"PFN vs exact GP, n_train = {a.n_train}")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(a.out, dpi=120)
    print(f"wrote {a.out}")
    return {"nll_pfn": nll_pfn, "nll_gp": nll_gp, "median": med}


if __name__ == "__main__":
    main()
