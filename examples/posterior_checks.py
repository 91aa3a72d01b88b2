"""TARP and SBC of amortized and sampled posteriors against exact posteriors, with plots.

Three settings, each checked with :func:`calibration.posterior_checks.sbc` (rank statistics,
KS test, ECDF difference with a simultaneous band) and
:func:`calibration.posterior_checks.tarp` (expected coverage, area-to-curve statistic, KS):

* the exact conjugate posterior of a normal mean (``theta ~ N(0, 1)``, five ``N(theta, 1)``
  observations), and the same posterior made 2x too narrow and 2x too wide;
* tempered SMC (:func:`probinfer.smc.tempered_smc_loop`, vmapped over the problems) on the same
  model written in NumPyro: its particles, passed as batched :class:`probinfer.Particles`;
* the shipped PFN (``gp-1d``) against the exact GP posterior predictive on data from its prior:
  a ``BarDistribution`` and a numpyro ``Normal``.

The Distribution Transformer is not in this branch yet; its posterior (a ``GaussianMixture``)
is accepted by the same calls.

Run ``python examples/posterior_checks.py --plot posterior_checks.png`` (a few minutes on one
CPU core; ``--problems`` sets the number of simulated problems, default 500).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from calibration.posterior_checks import sbc, tarp
from calibration.posterior_draws import posterior_draws
from probinfer import Particles


def normal_mean_problems(seed: int, b: int, n_obs: int = 5):
    """theta ~ N(0, 1), y_j ~ N(theta, 1): the exact posterior is N(m, v)."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=b)
    y = theta[:, None] + rng.normal(size=(b, n_obs))
    v = 1.0 / (1.0 + n_obs)
    return theta, y, v * y.sum(axis=1), np.full(b, v)


def widened(draws: np.ndarray, factor: float) -> np.ndarray:
    """Draws spread ``factor`` times as far from their mean (2x wide, 0.5x narrow)."""
    m = draws.mean(axis=1, keepdims=True)
    return m + factor * (draws - m)


def factor_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.factor("lik", dist.Normal(mu, 1.0).log_prob(y).sum())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", type=int, default=500)
    ap.add_argument("--particles", type=int, default=128)
    ap.add_argument("--plot", default=None, help="save the figure to this file")
    args = ap.parse_args(argv)
    b = args.problems
    start = time.perf_counter()
    posteriors = {}

    theta, y, m, v = normal_mean_problems(0, b)
    posteriors["conjugate, exact"] = (dist.Normal(m, np.sqrt(v)), theta)
    posteriors["conjugate, 2x narrow"] = (dist.Normal(m, 0.5 * np.sqrt(v)), theta)
    posteriors["conjugate, 2x wide"] = (dist.Normal(m, 2.0 * np.sqrt(v)), theta)

    from probinfer.smc import tempered_smc_loop
    from probinfer.targets import from_numpyro

    def one(k, yi):
        return tempered_smc_loop(
            k, from_numpyro(factor_model, yi), args.particles
        ).state.values.theta

    smc_theta = jax.vmap(one)(jax.random.split(jax.random.key(1), b), jnp.asarray(y, jnp.float32))
    posteriors["tempered SMC"] = (jax.vmap(lambda t: Particles(t))(smc_theta), theta)
    smc_draws = np.asarray(smc_theta, np.float64)
    posteriors["tempered SMC, 2x narrow"] = (widened(smc_draws, 0.5), theta)
    print(f"tempered SMC on {b} problems: {time.perf_counter() - start:.0f} s")

    try:
        from amortized import load_pretrained
        from amortized.pretrained import GP_1D_PRIOR
    except ImportError:  # torch missing: no PFN
        print("amortized (torch) not available: skipping the PFN")
    else:
        n = 10
        x, yy = GP_1D_PRIOR.sample(jax.random.key(2), b, n + 1)
        xt, yt, xs, ys = x[:, :n], yy[:, :n], x[:, n:], yy[:, n:]
        pfn = load_pretrained("gp-1d").predict(xt, yt, xs)
        mean, var = GP_1D_PRIOR.posterior_predictive(xt, yt, xs)
        posteriors["PFN gp-1d"] = (pfn, ys)
        posteriors["exact GP"] = (dist.Normal(mean, np.sqrt(var)), ys)
        pfn_draws = posterior_draws(jax.random.key(3), pfn)
        posteriors["PFN gp-1d, 2x wide"] = (widened(pfn_draws, 2.0), ys)

    print(f"{'posterior':26s} {'SBC KS p':>9s} {'band':>5s} {'TARP ATC':>9s} {'TARP KS p':>9s}")
    results = {}
    for name, (post, truth) in posteriors.items():
        s = sbc(jax.random.key(10), post, truth)
        r = tarp(jax.random.key(11), post, truth)
        results[name] = (s, r)
        band = "in" if s.within_band.all() else "out"
        print(f"{name:26s} {s.pvalue:9.3g} {band:>5s} {r.atc:9.3f} {r.ks_pvalue:9.3g}"
              f"  {'pass' if s.passed and r.passed else 'FAIL'}")  # fmt: skip
    print(f"total {time.perf_counter() - start:.0f} s")

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, len(results), figsize=(2.6 * len(results), 5.2))
        for j, (name, (s, r)) in enumerate(results.items()):
            s.plot(ax=axes[0, j])
            r.plot(ax=axes[1, j])
            axes[0, j].set_title(name, fontsize=8)
            for a in axes[:, j]:
                if a.get_legend() is not None:
                    a.get_legend().remove()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"figure: {args.plot}")
    return results


if __name__ == "__main__":
    main()
