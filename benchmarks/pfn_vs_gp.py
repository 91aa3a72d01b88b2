"""Shipped GP PFN vs exact GP (Cholesky) vs NumPyro NUTS on the GP with hyperpriors.

    python benchmarks/pfn_vs_gp.py [--n-datasets 100] [--n-train 5 10 20 50] [--nuts-datasets 10]

Fresh datasets from the ``gp-1d`` prior (RBF, lengthscale 0.25, outputscale 1, noise 0.05,
``x ~ U[0, 1]``), ``n_test = 50`` held-out points each. Reported per dataset:

* **PFN**: one batched forward pass over ``--n-datasets`` datasets (torch, 1 thread), timed
  including the conversion to a ``BarDistribution``; NLL from ``BarDistribution.log_prob``.
* **exact GP**: batched numpy Cholesky with the true (fixed) hyperparameters: the Bayes-optimal
  predictive, the NLL lower bound.
* **NUTS**: NumPyro NUTS on the GP marginal likelihood with log-normal hyperpriors (centred at the
  true values, log-sd 0.5) on lengthscale, outputscale and noise; 500 warm-up + 1000 draws, one
  chain, run on the first ``--nuts-datasets`` datasets (compiled once, timed warm); predictive =
  per-point mixture over the 1000 draws of the GP predictive.

Prints a table, quotes speed ratios and NLL gaps, writes benchmarks/results/pfn_vs_gp.json.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from _common import interleaved_runs, paired_ratio, write_results


def _nuts_predictive_nll(x_train, y_train, x_test, y_test, key, num_warmup, num_samples):
    """Run NUTS for one dataset and return (NLL per test point, wall time of the run)."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from jax.scipy.special import logsumexp
    from numpyro.infer import MCMC, NUTS

    def kernel(xa, xb, ls, os_):
        d2 = (xa[:, None, 0] - xb[None, :, 0]) ** 2
        return os_ * jnp.exp(-0.5 * d2 / ls**2)

    def model(x, y):
        ls = numpyro.sample("ls", dist.LogNormal(math.log(0.25), 0.5))
        os_ = numpyro.sample("os", dist.LogNormal(0.0, 0.5))
        noise = numpyro.sample("noise", dist.LogNormal(math.log(0.05), 0.5))
        k = kernel(x, x, ls, os_) + (noise + 1e-6) * jnp.eye(x.shape[0])
        numpyro.sample("y", dist.MultivariateNormal(jnp.zeros(x.shape[0]), k), obs=y)

    cached = _nuts_predictive_nll.cache.get((num_warmup, num_samples))
    if cached is None:
        mcmc = MCMC(
            NUTS(model),
            num_warmup=num_warmup,
            num_samples=num_samples,
            progress_bar=False,
            jit_model_args=True,
        )

        @jax.jit
        def predictive(samples, xt, yt, xs, ys):
            def one(ls, os_, noise):
                k = kernel(xt, xt, ls, os_) + (noise + 1e-6) * jnp.eye(xt.shape[0])
                chol = jnp.linalg.cholesky(k)
                ks = kernel(xt, xs, ls, os_)
                a = jax.scipy.linalg.solve_triangular(chol, yt, lower=True)
                v = jax.scipy.linalg.solve_triangular(chol, ks, lower=True)
                mean = v.T @ a
                var = os_ + noise - jnp.sum(v**2, axis=0)
                return -0.5 * (jnp.log(2 * jnp.pi * var) + (ys - mean) ** 2 / var)

            lp = jax.vmap(one)(samples["ls"], samples["os"], samples["noise"])  # (S, m)
            return -(logsumexp(lp, axis=0) - jnp.log(lp.shape[0]))

        cached = (mcmc, predictive)
        _nuts_predictive_nll.cache[(num_warmup, num_samples)] = cached
    mcmc, predictive = cached

    t0 = time.perf_counter()
    mcmc.run(key, jnp.asarray(x_train), jnp.asarray(y_train))
    samples = mcmc.get_samples()
    nll = predictive(
        samples,
        jnp.asarray(x_train),
        jnp.asarray(y_train),
        jnp.asarray(x_test),
        jnp.asarray(y_test),
    )
    nll = np.asarray(nll)
    return float(nll.mean()), time.perf_counter() - t0


_nuts_predictive_nll.cache = {}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-datasets", type=int, default=100, help="fresh datasets per size")
    p.add_argument("--n-train", type=int, nargs="+", default=[5, 10, 20, 50], help="context sizes")
    p.add_argument("--n-test", type=int, default=50, help="held-out points per dataset")
    p.add_argument("--nuts-datasets", type=int, default=10, help="the first k datasets get NUTS")
    p.add_argument("--nuts-warmup", type=int, default=500, help="NUTS warm-up steps")
    p.add_argument("--nuts-samples", type=int, default=1000, help="NUTS draws per dataset")
    p.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="interleaved timing rounds (the minimum of each, and the per-round ratio)",
    )
    p.add_argument("--seed", type=int, default=2024, help="root of the dataset keys")
    p.add_argument("--model-dir", default=None, help="a saved PFN instead of the shipped gp-1d")
    a = p.parse_args()

    import jax
    import torch

    torch.set_num_threads(1)
    from amortized import PFN, load_pretrained
    from amortized.evaluate import gaussian_nll
    from amortized.pretrained import prior_of
    from amortized.priors import indexed_key

    pfn = PFN.load(a.model_dir) if a.model_dir else load_pretrained("gp-1d")
    prior = prior_of("gp-1d")
    rows = []
    for j, n in enumerate(a.n_train):
        key = indexed_key(a.seed, j)
        x, y = prior.sample(key, a.n_datasets, n + a.n_test)
        xt, yt, xs, ys = x[:, :n], y[:, :n], x[:, n:], y[:, n:]

        def run_pfn(xt=xt, yt=yt, xs=xs):
            d = pfn.predict(xt, yt, xs)
            d.logits.block_until_ready()
            return d

        def run_gp(xt=xt, yt=yt, xs=xs):
            return prior.posterior_predictive(xt, yt, xs)

        run_pfn()
        run_gp()
        runs = interleaved_runs({"pfn": run_pfn, "gp": run_gp}, repeats=a.repeats, warmup=0)
        t_pfn, t_gp = min(runs["pfn"]), min(runs["gp"])
        pfn_nll_ds = -np.asarray(run_pfn().log_prob(ys), dtype=float).mean(axis=1)
        m, v = run_gp()
        gp_nll_ds = gaussian_nll(ys, m, v).mean(axis=1)

        k = min(a.nuts_datasets, a.n_datasets)
        nuts_nll, nuts_t = [], []
        keys = jax.random.split(jax.random.key(a.seed + 17 * j), k)
        # compile once on dataset 0 (not timed), then time every dataset warm
        _nuts_predictive_nll(xt[0], yt[0], xs[0], ys[0], keys[0], a.nuts_warmup, a.nuts_samples)
        for i in range(k):
            nll_i, t_i = _nuts_predictive_nll(
                xt[i], yt[i], xs[i], ys[i], keys[i], a.nuts_warmup, a.nuts_samples
            )
            nuts_nll.append(nll_i)
            nuts_t.append(t_i)
        row = {
            "n_train": n,
            "n_datasets": a.n_datasets,
            "nuts_datasets": k,
            "pfn_s_per_dataset": t_pfn / a.n_datasets,
            "gp_s_per_dataset": t_gp / a.n_datasets,
            # the exact GP's speed-up over the PFN in each interleaved round
            "gp_speedup_per_round": paired_ratio(runs["pfn"], runs["gp"]),
            "nuts_s_per_dataset": float(np.mean(nuts_t)),
            "pfn_nll": float(pfn_nll_ds.mean()),
            "gp_nll": float(gp_nll_ds.mean()),
            "gap_pfn_minus_gp": float((pfn_nll_ds - gp_nll_ds).mean()),
            "gap_se": float((pfn_nll_ds - gp_nll_ds).std(ddof=1) / math.sqrt(a.n_datasets)),
            "nuts_nll_subset": float(np.mean(nuts_nll)),
            "pfn_nll_subset": float(pfn_nll_ds[:k].mean()),
            "gp_nll_subset": float(gp_nll_ds[:k].mean()),
        }
        row["speedup_vs_nuts"] = row["nuts_s_per_dataset"] / row["pfn_s_per_dataset"]
        rows.append(row)

    hdr = (
        f"{'n':>3} {'PFN ms/ds':>10} {'GP ms/ds':>9} {'NUTS s/ds':>10} {'PFN/NUTS':>9}"
        f" {'NLL PFN':>8} {'NLL GP':>8} {'gap':>14} | subset: {'PFN':>7} {'GP':>7} {'NUTS':>7}"
    )
    print(hdr)
    for r in rows:
        print(
            f"{r['n_train']:>3} {1e3 * r['pfn_s_per_dataset']:>10.3f} "
            f"{1e3 * r['gp_s_per_dataset']:>9.3f} {r['nuts_s_per_dataset']:>10.2f} "
            f"{r['speedup_vs_nuts']:>8.0f}x {r['pfn_nll']:>8.4f} {r['gp_nll']:>8.4f} "
            f"{r['gap_pfn_minus_gp']:>+7.4f}+-{r['gap_se']:.4f} | "
            f"{r['pfn_nll_subset']:>15.4f} {r['gp_nll_subset']:>7.4f} {r['nuts_nll_subset']:>7.4f}"
        )
    speed = [r["speedup_vs_nuts"] for r in rows]
    mean_gap = float(np.mean([r["gap_pfn_minus_gp"] for r in rows]))
    print(
        f"PFN is {min(speed):.0f}x-{max(speed):.0f}x faster per dataset than NUTS "
        f"(target >= 100x); mean NLL gap to the exact GP {mean_gap:+.4f} nats"
    )
    path = write_results(
        "pfn_vs_gp",
        {
            "model": "gp-1d" if not a.model_dir else a.model_dir,
            "pfn_training": pfn.meta.get("training", {}),
            "settings": vars(a),
            "rows": rows,
            "torch_threads": 1,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
