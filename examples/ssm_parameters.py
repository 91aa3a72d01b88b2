"""Parameters of a stochastic-volatility model: PMMH and SMC² side by side, on simulated returns.

The model (Pitt and Shephard's stochastic volatility, as in ``particles.StochVol``)::

    x_0 ~ N(mu, sigma^2 / (1 - rho^2)),  x_t = mu + rho (x_{t-1} - mu) + sigma e_t,
    y_t | x_t ~ N(0, exp(x_t))

Returns are simulated with known (mu, rho, sigma); the prior is the one of ``particles``'
tutorial (mu ~ N(0, 2^2), rho ~ U(-1, 1), sigma ~ Gamma(1, 1)). PMMH (four vmapped chains)
and SMC² (parameter particles, each with its own particle filter) estimate the posterior;
the script prints a table with the true values and saves a plot of the three marginals.
Both run in JAX's default float32, where the observation density of some filter particles of
extreme prior draws underflows (a NaN log potential): those particles get weight 0, and each
algorithm reports how many filter runs met one in a single warning. The full run takes a few
minutes on a laptop CPU, ``--quick`` well under one.

    python examples/ssm_parameters.py [--quick] [--out runs/ssm_parameters.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from probinfer.smc import StateSpaceModel, pmmh, smc2

TRUE = {"mu": -1.0, "rho": 0.95, "sigma": 0.4}
NAMES = tuple(TRUE)


def sv_ssm(theta) -> StateSpaceModel:
    """The model at ``theta`` (traced values: only ``jnp`` operations on them)."""
    mu, rho, sigma = theta["mu"], theta["rho"], theta["sigma"]
    return StateSpaceModel(
        initial=dist.Normal(mu, sigma / jnp.sqrt(1.0 - rho**2)),
        transition=lambda x, t: dist.Normal(mu + rho * (x - mu), sigma),
        observation=lambda x, t: dist.Normal(0.0, jnp.exp(0.5 * x)),
    )


PRIOR = {"mu": dist.Normal(0.0, 2.0), "rho": dist.Uniform(-1.0, 1.0), "sigma": dist.Gamma(1.0, 1.0)}


def simulate(key, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Log-volatilities and returns from the model at the true parameters."""
    mu, rho, sigma = TRUE["mu"], TRUE["rho"], TRUE["sigma"]
    k0, kx, ky = jax.random.split(key, 3)
    x0 = mu + sigma / np.sqrt(1 - rho**2) * jax.random.normal(k0)
    noise = sigma * jax.random.normal(kx, (num_steps - 1,))

    def advance(x, e):
        x = mu + rho * (x - mu) + e
        return x, x

    _, rest = jax.lax.scan(advance, x0, noise)
    xs = jnp.concatenate([x0[None], rest])
    ys = jnp.exp(0.5 * xs) * jax.random.normal(ky, (num_steps,))
    return np.asarray(xs), np.asarray(ys)


def weighted_quantiles(x, w, qs):
    order = np.argsort(x)
    cdf = np.cumsum(w[order]) / np.sum(w)
    return np.interp(qs, cdf, x[order])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps, particles and draws")
    p.add_argument("--num-steps", type=int, default=None, help="observations (default 300)")
    p.add_argument("--seed", type=int, default=0, help="root of every key")
    p.add_argument("--out", default="runs/ssm_parameters.png", help="where to save the plot")
    args = p.parse_args(argv)

    if args.quick:
        num_steps, num_x, num_draws, num_theta = args.num_steps or 100, 50, 500, 500
    else:
        num_steps, num_x, num_draws, num_theta = args.num_steps or 300, 100, 2500, 2000
    k_sim, k_pmmh, k_smc2 = jax.random.split(jax.random.key(args.seed), 3)
    _, ys = simulate(k_sim, num_steps)
    print(f"{num_steps} simulated returns, true parameters {TRUE}")

    chains = pmmh(k_pmmh, sv_ssm, PRIOR, ys, num_x, num_draws, num_chains=4)
    print(chains)
    idata = chains.to_arviz()
    import arviz as az

    rhat, ess = az.rhat(idata), az.ess(idata)

    res = smc2(k_smc2, sv_ssm, PRIOR, ys, num_theta, num_x, num_mcmc_steps=5)
    print(res)
    w = np.asarray(res.particles.normalized_weights, np.float64)
    values = {k: np.asarray(v, np.float64) for k, v in res.particles.values.items()}

    header = f"{'':>6} {'true':>6} | {'PMMH mean':>9} {'sd':>6} {'R-hat':>6} {'ESS':>6}"
    print(f"\n{header} | {'SMC2 mean':>9} {'sd':>6} {'90% interval':>17}")
    for k in NAMES:
        d = chains.samples[k].reshape(-1).astype(np.float64)
        m = float(np.sum(w * values[k]))
        sd = float(np.sqrt(np.sum(w * (values[k] - m) ** 2)))
        lo, hi = weighted_quantiles(values[k], w, [0.05, 0.95])
        print(
            f"{k:>6} {TRUE[k]:6.3f} | {d.mean():9.3f} {d.std():6.3f} {float(rhat[k]):6.3f} "
            f"{float(ess[k]):6.0f} | {m:9.3f} {sd:6.3f}  [{lo:7.3f}, {hi:7.3f}]"
        )
    print(
        f"\nPMMH: {chains.wall_time:.1f} s, acceptance {np.round(chains.acceptance_rate, 2)}; "
        f"SMC2: {res.wall_time:.1f} s, log evidence {res.log_evidence:.2f}, "
        f"{int(np.sum(res.moved))} moves"
    )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, k in zip(axes, NAMES, strict=True):
        d = chains.samples[k].reshape(-1)
        bins = np.linspace(*np.percentile(np.concatenate([d, values[k]]), [0.5, 99.5]), 40)
        ax.hist(d, bins=bins, density=True, alpha=0.5, label="PMMH")
        ax.hist(values[k], bins=bins, weights=w, density=True, histtype="step", lw=2, label="SMC²")
        ax.axvline(TRUE[k], color="k", ls="--", label="true")
        ax.set_xlabel(k)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Stochastic volatility, {num_steps} simulated returns: posterior marginals")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
