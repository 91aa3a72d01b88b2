"""Pyro models with gradients: tempered SMC (HMC) on a Pyro model vs Pyro's own NUTS vs
tempered SMC (HMC) on the same model written in NumPyro.

The model is a Bayesian linear regression with known noise (``D`` coefficients,
``M`` observations), so the posterior is Gaussian and known exactly; every method's
posterior means are scored against it (error in posterior standard deviations) and its
Monte-Carlo standard error is reported. Wall times are medians of interleaved rounds
(every contender sees the same background load); the first call of each (compilation,
tracing) is timed separately. Writes benchmarks/results/pyro_targets.json.

The same regression written the usual way (``X @ b``, which does not broadcast over the
particle plate) is evaluated through ``torch.func.vmap`` and, for comparison, by the
per-particle loop it fell back to before: the log likelihood and its gradient for all
particles (the unit of work of an HMC leapfrog step) and a whole tempered SMC (HMC) run,
interleaved; both must give the same densities. Only ``--only usual-way`` runs that part
(writes benchmarks/results/pyro_targets_usual_way.json): the per-particle loop at the main
run's 1000 particles and 3 moves would take hours.

    OMP_NUM_THREADS=1 python benchmarks/pyro_targets.py [--reps 3] [--particles 1000]
    OMP_NUM_THREADS=1 python benchmarks/pyro_targets.py --only usual-way --particles 500
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import time_interleaved, write_results

D, M, SIGMA = 5, 200, 0.5


def make_data(seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(M, D)).astype(np.float32)
    y = (X @ rng.normal(size=D) + SIGMA * rng.normal(size=M)).astype(np.float32)
    return X, y


def exact_posterior(X, y):
    X64 = X.astype(np.float64)
    cov = np.linalg.inv(np.eye(D) + X64.T @ X64 / SIGMA**2)
    return cov @ X64.T @ y / SIGMA**2, cov


def pyro_model(X, y):
    import pyro
    import pyro.distributions as pdist

    b = pyro.sample("b", pdist.Normal(0.0, 1.0).expand([X.shape[-1]]).to_event(1))
    with pyro.plate("n", X.shape[0], dim=-1):
        pyro.sample("y", pdist.Normal((X * b).sum(-1), SIGMA), obs=y)


def pyro_model_matmul(X, y):
    """The model written the usual way: ``X @ b`` does not broadcast over the particle
    plate (``b`` has shape ``(N, 1, D)`` there), so it runs through ``torch.func.vmap``."""
    import pyro
    import pyro.distributions as pdist

    b = pyro.sample("b", pdist.Normal(0.0, 1.0).expand([X.shape[-1]]).to_event(1))
    with pyro.plate("n", X.shape[0]):
        pyro.sample("y", pdist.Normal(X @ b, SIGMA), obs=y)


def usual_way(X, y, num_particles: int, mcmc_steps: int, reps: int) -> dict:
    """``torch.func.vmap`` against the per-particle loop on the ``X @ b`` model."""
    import torch

    from probinfer.targets import from_pyro

    Xt, yt = torch.tensor(X), torch.tensor(y)
    t_vmap = from_pyro(pyro_model_matmul, Xt, yt)
    t_loop = from_pyro(pyro_model_matmul, Xt, yt)
    t_loop._mode[0] = "loop"  # the evaluation the model fell back to before vmap
    theta = t_vmap.sample_prior(jax.random.key(0), num_particles)

    def grad_of(t):
        fn = jax.jit(jax.value_and_grad(lambda th: jnp.sum(t.log_likelihood(th))))
        return lambda: jax.block_until_ready(fn(theta + 1e-3 * next(shifts)))

    shifts = iter(range(1, 10_000_000))  # a new point per call (no cached callback result)
    v_vmap, g_vmap = jax.value_and_grad(lambda th: jnp.sum(t_vmap.log_likelihood(th)))(theta)
    v_loop, g_loop = jax.value_and_grad(lambda th: jnp.sum(t_loop.log_likelihood(th)))(theta)
    assert t_vmap.evaluation == "vmap", t_vmap.evaluation
    agreement = {
        "max_rel_diff_log_lik": float(
            np.max(
                np.abs(np.asarray(t_vmap.log_likelihood(theta)) - t_loop.log_likelihood(theta))
                / np.abs(np.asarray(t_loop.log_likelihood(theta)))
            )
        ),
        "max_abs_diff_grad": float(np.max(np.abs(np.asarray(g_vmap) - np.asarray(g_loop)))),
        "rel_diff_sum": float(abs(v_vmap - v_loop) / abs(v_loop)),
    }
    eval_times = time_interleaved(
        {"vmap": grad_of(t_vmap), "loop": grad_of(t_loop)}, repeats=max(reps, 3), warmup=1
    )
    smc = {"vmap": smc_runner(t_vmap, num_particles, mcmc_steps)}
    smc["loop"] = smc_runner(t_loop, num_particles, mcmc_steps)
    seeds = iter(range(1, 10_000))
    smc_times = time_interleaved(
        {k: (lambda once=once: once(next(seeds))) for k, once in smc.items()},
        repeats=reps,
        warmup=1,
    )
    row = {
        "num_particles": num_particles,
        "num_mcmc_steps": mcmc_steps,
        "evaluation": t_vmap.evaluation,
        "log_lik_and_grad_median_s": eval_times,
        "tempered_smc_hmc_median_s": smc_times,
        "loop_over_vmap": {
            "log_lik_and_grad": eval_times["loop"] / eval_times["vmap"],
            "tempered_smc_hmc": smc_times["loop"] / smc_times["vmap"],
        },
        "agreement": agreement,
    }
    print("usual way (X @ b):", row, flush=True)
    return row


def numpyro_model(X, y):
    import numpyro
    import numpyro.distributions as dist

    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([X.shape[-1]]).to_event(1))
    with numpyro.plate("n", X.shape[0]):
        numpyro.sample("y", dist.Normal(jnp.sum(X * b, -1), SIGMA), obs=y)


def smc_runner(target, n, mcmc_steps):
    from probinfer.smc import tempered_smc

    def once(seed):
        res = tempered_smc(
            jax.random.key(seed),
            target,
            n,
            kernel="hmc",
            num_mcmc_steps=mcmc_steps,
            evidence="is",
            progress=False,
        )
        return np.asarray(res.samples["b"], np.float64).mean(0), res.num_steps

    return once


def pyro_nuts_runner(X, y, warmup, samples):
    import pyro
    import torch
    from pyro.infer import MCMC, NUTS

    Xt, yt = torch.tensor(X), torch.tensor(y)

    def once(seed):
        pyro.set_rng_seed(seed)
        mcmc = MCMC(
            NUTS(pyro_model), num_samples=samples, warmup_steps=warmup, disable_progbar=True
        )
        mcmc.run(Xt, yt)
        b = mcmc.get_samples()["b"].double().numpy()
        return b.mean(0), b

    return once


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--accuracy-seeds", type=int, default=5, help="SMC seeds for the error")
    p.add_argument("--particles", type=int, default=1000)
    p.add_argument("--mcmc-steps", type=int, default=3)
    p.add_argument("--nuts-warmup", type=int, default=500)
    p.add_argument("--nuts-samples", type=int, default=1000)
    p.add_argument("--out", default=None, help="result name (default from --only)")
    p.add_argument("--only", choices=["all", "usual-way"], default="all")
    args = p.parse_args(argv)
    if args.only == "usual-way":
        import torch

        X, y = make_data()
        row = usual_way(X, y, args.particles, args.mcmc_steps, args.reps)
        path = write_results(
            args.out or "pyro_targets_usual_way",
            {
                "model": f"Bayesian linear regression, D={D}, M={M}, written with X @ b",
                "usual_way": row,
                "conditions": _conditions(torch),
                "command": "python benchmarks/pyro_targets.py " + " ".join(sys.argv[1:]),
            },
        )
        print(f"wrote {path}")
        return

    import arviz as az
    import torch

    from probinfer.targets import from_numpyro, from_pyro

    X, y = make_data()
    mean, cov = exact_posterior(X, y)
    sd = np.sqrt(np.diag(cov))
    t_pyro = from_pyro(pyro_model, torch.tensor(X), torch.tensor(y))
    t_numpyro = from_numpyro(numpyro_model, X, y)
    runners = {
        "tempered SMC (HMC), Pyro model": smc_runner(t_pyro, args.particles, args.mcmc_steps),
        "tempered SMC (HMC), NumPyro model": smc_runner(t_numpyro, args.particles, args.mcmc_steps),
        "Pyro NUTS": pyro_nuts_runner(X, y, args.nuts_warmup, args.nuts_samples),
    }
    load_before = os.getloadavg()
    first = {}
    for name, once in runners.items():
        start = time.perf_counter()
        once(0)
        first[name] = time.perf_counter() - start
        print(f"{name}: first call {first[name]:.2f}s", flush=True)
    seeds = iter(range(1, 10_000))
    times = time_interleaved(
        {name: (lambda once=once: once(next(seeds))) for name, once in runners.items()},
        repeats=args.reps,
        warmup=0,
    )
    rows = {}
    for name, once in runners.items():
        row = {"median_wall_s": times[name], "first_call_s": first[name]}
        if name.startswith("tempered"):
            outs = [once(1000 + s) for s in range(args.accuracy_seeds)]
            means = np.array([o[0] for o in outs])
            err = (means - mean) / sd
            # SE of one run's mean from the spread over independent seeds
            se = means.std(0, ddof=1) / sd
            row.update(
                num_particles=args.particles,
                num_mcmc_steps=args.mcmc_steps,
                tempering_steps=[int(o[1]) for o in outs],
                seeds=args.accuracy_seeds,
                mean_error_in_sd=err.mean(0).tolist(),
                max_abs_error_in_sd_per_seed=np.abs(err).max(1).tolist(),
                mc_se_in_sd_one_run=se.tolist(),
                max_abs_error_of_seed_average_in_se=float(
                    np.max(np.abs(err.mean(0)) / (se / np.sqrt(args.accuracy_seeds)))
                ),
            )
        else:
            bmean, b = once(1000)
            ess = np.array([float(az.ess(b[:, i])) for i in range(D)])
            se = np.sqrt(np.diag(cov) / ess) / sd
            err = (bmean - mean) / sd
            row.update(
                warmup=args.nuts_warmup,
                samples=args.nuts_samples,
                ess=ess.tolist(),
                mean_error_in_sd=err.tolist(),
                mc_se_in_sd=se.tolist(),
                max_abs_error_in_se=float(np.max(np.abs(err) / se)),
            )
        rows[name] = row
        print(name, {k: v for k, v in row.items() if not isinstance(v, list)}, flush=True)
    smc_pyro = times["tempered SMC (HMC), Pyro model"]
    ratios = {
        "pyro_nuts_time_over_smc_pyro": times["Pyro NUTS"] / smc_pyro,
        "smc_pyro_time_over_smc_numpyro": smc_pyro / times["tempered SMC (HMC), NumPyro model"],
    }
    print("ratios:", ratios)
    path = write_results(
        args.out or "pyro_targets",
        {
            "model": f"Bayesian linear regression, D={D}, M={M}, known noise sd {SIGMA}; "
            "exact Gaussian posterior",
            "rows": rows,
            "ratios": ratios,
            "conditions": {**_conditions(torch), "load_average_before": load_before},
            "command": "python benchmarks/pyro_targets.py " + " ".join(sys.argv[1:]),
        },
    )
    print(f"wrote {path}")


def _conditions(torch) -> dict:
    return {
        "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "torch_threads": torch.get_num_threads(),
        "load_average_after": os.getloadavg(),
        "note": "2-core machine shared with other jobs; contenders interleaved",
        "jax_devices": [str(d) for d in jax.devices()],
    }


if __name__ == "__main__":
    main()
