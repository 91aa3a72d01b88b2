"""Adaptive tempered SMC on NumPyro Bayesian logistic regression (1000 particles,
5 coefficients, 1000 observations): probinfer vs ``blackjax.adaptive_tempered_smc`` with the
same particles, the same HMC move (10 leapfrog steps) and the same number of MCMC steps.

The reference log evidence comes from importance sampling with a multivariate-t proposal
fitted at the Laplace approximation (400k draws, its standard error reported). Writes
benchmarks/results/tempered_smc.json.

    python benchmarks/tempered_smc.py [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from scipy import optimize, stats
from scipy.special import log_expit, logsumexp

from probinfer.smc import tempered_smc
from probinfer.targets import from_numpyro

N_PART, D, N_OBS, MCMC_STEPS, LEAPFROG = 1000, 5, 1000, 5, 10


def model(X, y):
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    numpyro.sample("y", dist.Bernoulli(logits=X @ beta), obs=y)


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N_OBS, D)).astype(np.float32)
    beta = rng.normal(size=D)
    y = (rng.random(N_OBS) < 1 / (1 + np.exp(-X @ beta))).astype(np.float32)
    return X, y


def reference_log_z(X, y, draws=400_000, seed=1):
    X64, y64 = X.astype(np.float64), y.astype(np.float64)

    def log_joint(b):  # b (n, D)
        logits = b @ X64.T
        ll = (y64 * log_expit(logits) + (1 - y64) * log_expit(-logits)).sum(-1)
        return ll + stats.norm.logpdf(b).sum(-1)

    res = optimize.minimize(lambda b: -log_joint(b[None])[0], np.zeros(D), method="BFGS")
    p = 1 / (1 + np.exp(-X64 @ res.x))
    cov = np.linalg.inv(X64.T @ (X64 * (p * (1 - p))[:, None]) + np.eye(D))
    q = stats.multivariate_t(loc=res.x, shape=1.5 * cov, df=5, seed=seed)
    logw = []
    for _ in range(draws // 50_000):
        b = q.rvs(50_000)
        logw.append(log_joint(b) - q.logpdf(b))
    logw = np.concatenate(logw)
    log_z = logsumexp(logw) - np.log(logw.size)
    w = np.exp(logw - logw.max())
    se = w.std() / w.mean() / np.sqrt(w.size)  # delta method on the log scale
    return float(log_z), float(se)


def run_probinfer(target, reps):
    def once(key):
        r = tempered_smc(
            key,
            target,
            N_PART,
            kernel="hmc",
            num_mcmc_steps=MCMC_STEPS,
            num_leapfrog=LEAPFROG,
            progress=False,
        )
        return r.log_evidence, r.num_steps

    t0 = time.perf_counter()
    once(jax.random.key(999))
    first = time.perf_counter() - t0
    times, lz, steps = [], [], []
    for r in range(reps):
        t0 = time.perf_counter()
        z, k = once(jax.random.key(r))
        times.append(time.perf_counter() - t0)
        lz.append(z)
        steps.append(k)
    return first, times, lz, steps


def run_blackjax(target, reps, step_size):
    import blackjax
    from blackjax.smc import resampling

    def logprior(b):
        return target.log_prior_one(b)

    def loglik(b):
        return target.log_likelihood_one(b)

    smc = blackjax.adaptive_tempered_smc(
        logprior,
        loglik,
        blackjax.hmc.build_kernel(),
        blackjax.hmc.init,
        {
            "step_size": jnp.array([step_size]),
            "inverse_mass_matrix": jnp.ones((1, D)),
            "num_integration_steps": jnp.array([LEAPFROG]),
        },
        resampling.systematic,
        0.5,
        num_mcmc_steps=MCMC_STEPS,
    )

    @jax.jit
    def run(key):
        k0, k = jax.random.split(key)
        theta = jax.random.normal(k0, (N_PART, D))  # the N(0, I) prior
        state = smc.init(theta)

        def cond(c):
            return c[0].tempering_param < 1

        def body(c):
            s, k, lz, n, acc = c
            k, sub = jax.random.split(k)
            s, info = smc.step(sub, s)
            return s, k, lz + info.log_likelihood_increment, n + 1, acc

        s, _, lz, n, _ = jax.lax.while_loop(cond, body, (state, k, 0.0, 0, 0.0))
        return lz, n

    t0 = time.perf_counter()
    jax.block_until_ready(run(jax.random.key(999)))
    first = time.perf_counter() - t0
    times, lz, steps = [], [], []
    for r in range(reps):
        t0 = time.perf_counter()
        z, n = jax.block_until_ready(run(jax.random.key(r)))
        times.append(time.perf_counter() - t0)
        lz.append(float(z))
        steps.append(int(n))
    return first, times, lz, steps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--blackjax-step-size", type=float, default=0.05)
    p.add_argument("--out", default="benchmarks/results/tempered_smc.json")
    args = p.parse_args(argv)
    X, y = make_data()
    ref, ref_se = reference_log_z(X, y)
    print(f"reference log Z = {ref:.4f} +- {ref_se:.4f} (importance sampling)")
    target = from_numpyro(model, X, y)
    rows = []
    for name, (first, times, lz, steps) in [
        ("probinfer tempered_smc (HMC)", run_probinfer(target, args.reps)),
        (
            "blackjax adaptive_tempered_smc (HMC)",
            run_blackjax(target, args.reps, args.blackjax_step_size),
        ),
    ]:
        err = np.asarray(lz) - ref
        row = {
            "library": name,
            "first_call_s": first,
            "median_run_s": float(np.median(times)),
            "log_z": lz,
            "abs_error_mean": float(np.abs(err).mean()),
            "rmse": float(np.sqrt((err**2).mean())),
            "tempering_steps": steps,
        }
        rows.append(row)
        print(
            f"{name:<40} run {row['median_run_s']:7.2f}s (first call {first:6.2f}s)  "
            f"|log Z error| {row['abs_error_mean']:.4f}  rmse {row['rmse']:.4f}  "
            f"steps {steps}"
        )
    ratio = rows[0]["median_run_s"] / rows[1]["median_run_s"]
    print(
        f"wall-time ratio probinfer / blackjax = {ratio:.2f}; "
        f"log Z rmse ratio = {rows[0]['rmse'] / rows[1]['rmse']:.2f}"
    )
    result = {
        "benchmark": "adaptive tempered SMC, logistic regression (N=1000 particles, D=5, "
        "1000 observations, 5 HMC steps x 10 leapfrog per tempering step)",
        "reference_log_z": ref,
        "reference_se": ref_se,
        "rows": rows,
        "wall_time_ratio_probinfer_over_blackjax": ratio,
        "rmse_ratio_probinfer_over_blackjax": rows[0]["rmse"] / rows[1]["rmse"],
        "machine": {
            "platform": platform.platform(),
            "jax_devices": [str(d) for d in jax.devices()],
        },
        "command": "python benchmarks/tempered_smc.py " + " ".join(argv or []),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
