"""Adaptive tempered SMC on a NumPyro Bayesian logistic regression, compared with NumPyro NUTS.

python examples/tempered_smc_logistic.py
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS

from probinfer.smc import tempered_smc
from probinfer.targets import from_numpyro


def model(X, y):
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    numpyro.sample("y", dist.Bernoulli(logits=X @ beta), obs=y)


def main():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 5)).astype(np.float32)
    beta_true = np.array([1.0, -0.5, 0.0, 0.8, -1.2])
    y = (rng.random(500) < 1 / (1 + np.exp(-X @ beta_true))).astype(np.float32)

    target = from_numpyro(model, X, y)
    res = tempered_smc(jax.random.key(0), target, 1000, kernel="hmc", num_mcmc_steps=5)
    smc_mean = np.asarray(res.samples["beta"]).mean(0)
    smc_sd = np.asarray(res.samples["beta"]).std(0)
    print(
        f"tempered SMC: log Z = {res.log_evidence:.3f} ({res.evidence}; standard estimator "
        f"{res.log_evidence_is:.3f}), {res.num_steps} temperatures, "
        f"acceptance {np.round(res.acceptance_rates, 2)}, {res.wall_time:.1f} s"
    )

    t0 = time.perf_counter()
    mcmc = MCMC(NUTS(model), num_warmup=500, num_samples=2000, progress_bar=False)
    mcmc.run(jax.random.key(1), jnp.asarray(X), jnp.asarray(y))
    nuts = np.asarray(mcmc.get_samples()["beta"])
    print(f"NumPyro NUTS: {time.perf_counter() - t0:.1f} s")
    print(f"{'coef':>5} {'true':>6} {'SMC mean':>9} {'NUTS mean':>10} {'SMC sd':>7} {'NUTS sd':>8}")
    for j in range(5):
        print(
            f"{j:>5} {beta_true[j]:>6.2f} {smc_mean[j]:>9.3f} {nuts[:, j].mean():>10.3f} "
            f"{smc_sd[j]:>7.3f} {nuts[:, j].std():>8.3f}"
        )
    # The two agree within Monte-Carlo error (a few hundredths here).
    print(f"max |SMC mean - NUTS mean| = {np.abs(smc_mean - nuts.mean(0)).max():.3f}")


if __name__ == "__main__":
    main()
