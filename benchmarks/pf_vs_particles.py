"""Bootstrap particle filter: probinfer vs the ``particles`` library, N = 10^5 and 10^6.

Two models, T = 100 observations each, simulated once:

* the 1-D linear-Gaussian SSM of ``pf_lgssm.py`` (A = 0.9, Q = R = P0 = 1): probinfer's
  :class:`~probinfer.lgssm.LinearGaussianSSM` vs ``particles.kalman.LinearGauss`` (the
  class the ``particles`` docs point to for linear-Gaussian models), with the exact
  Kalman log evidence;
* the stochastic-volatility model of Pitt & Shephard (``particles``'
  ``StochVol`` with its default parameters) written for probinfer through the generic
  :class:`~probinfer.smc.StateSpaceModel` API (numpyro distributions).

Both libraries run the same estimator: a bootstrap filter, systematic resampling when
ESS < N/2, the standard log-evidence estimate. ``particles`` is configured as in its
tutorial (``SMC(fk=Bootstrap(ssm=..., data=...), N=...)``, defaults: systematic,
``ESSrmin=0.5``, no history, no moments collected); probinfer runs with its defaults first
(``quantiles=()``: no per-step quantiles, like for like) and then with filtering quantiles
5/50/95% recorded at every step (a weighted sort of the N particles per step). Runs are
interleaved round-robin (every contender sees the same background load); the first call of
each (JIT compilation) is excluded and reported. Writes benchmarks/results/pf_vs_particles.json.

    OMP_NUM_THREADS=1 python benchmarks/pf_vs_particles.py [--sizes 100000 1000000] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from _common import write_results

from probinfer.lgssm import LinearGaussianSSM, kalman_filter
from probinfer.smc import StateSpaceModel, particle_filter

T = 100
LGSSM = LinearGaussianSSM(A=0.9, Q=1.0, C=1.0, R=1.0, m0=0.0, P0=1.0)
SV = {"mu": -1.02, "rho": 0.9702, "sigma": 0.178}  # particles.StochVol defaults


def stochastic_volatility() -> StateSpaceModel:
    mu, rho, sigma = SV["mu"], SV["rho"], SV["sigma"]
    return StateSpaceModel(
        initial=dist.Normal(mu, sigma / np.sqrt(1.0 - rho**2)),
        transition=lambda x, t: dist.Normal(mu + rho * (x - mu), sigma),
        observation=lambda x, t: dist.Normal(0.0, jnp.exp(0.5 * x)),
    )


def simulate_sv(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mu, rho, sigma = SV["mu"], SV["rho"], SV["sigma"]
    x = mu + sigma / np.sqrt(1 - rho**2) * rng.normal()
    ys = []
    for _ in range(T):
        ys.append(np.exp(0.5 * x) * rng.normal())
        x = mu + rho * (x - mu) + sigma * rng.normal()
    return np.asarray(ys, np.float32)


def probinfer_runner(ssm, ys, n, quantiles):
    def once(seed):
        res = particle_filter(jax.random.key(seed), ssm, ys, n, quantiles=quantiles)
        return res.log_evidence

    return once


def particles_runner(model: str, ys, n):
    import particles
    from particles import kalman
    from particles import state_space_models as ssm

    if model == "lgssm":
        spec = kalman.LinearGauss(A=0.9, B=1.0, sigmaX=1.0, sigmaY=1.0, sigma0=1.0)
    else:
        spec = ssm.StochVol(**SV)
    data = [float(v) for v in np.asarray(ys, np.float64).reshape(-1)]

    def once(seed):
        np.random.seed(seed)  # particles draws from numpy's global generator
        alg = particles.SMC(fk=ssm.Bootstrap(ssm=spec, data=data), N=n)
        alg.run()
        return float(alg.logLt)

    return once


def bench(runners: dict, reps: int, seed0: int) -> dict:
    first = {}
    for name, once in runners.items():
        start = time.perf_counter()
        once(seed0)
        first[name] = time.perf_counter() - start
    times = {name: [] for name in runners}
    log_z = {name: [] for name in runners}
    for r in range(reps):
        for name, once in runners.items():
            start = time.perf_counter()
            log_z[name].append(once(seed0 + 1 + r))
            times[name].append(time.perf_counter() - start)
    return {
        name: {
            "first_call_s": first[name],
            "median_run_s": float(np.median(times[name])),
            "run_s": times[name],
            "log_z": log_z[name],
            "log_z_mean": float(np.mean(log_z[name])),
            "log_z_sd": float(np.std(log_z[name], ddof=1)) if reps > 1 else None,
        }
        for name in runners
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--models", nargs="+", default=["lgssm", "sv"], choices=["lgssm", "sv"])
    p.add_argument("--out", default="pf_vs_particles")
    args = p.parse_args(argv)

    _, ys_lg = LGSSM.simulate(jax.random.key(0), T)
    data = {"lgssm": np.asarray(ys_lg), "sv": simulate_sv(0)}
    models = {"lgssm": LGSSM, "sv": stochastic_volatility()}
    exact = {"lgssm": float(kalman_filter(LGSSM, data["lgssm"]).log_evidence), "sv": None}
    load_before = os.getloadavg()
    results, ratios = [], {}
    for model in args.models:
        for n in args.sizes:
            ys = data[model]
            runners = {
                "probinfer (default: quantiles=())": probinfer_runner(models[model], ys, n, ()),
                "particles": particles_runner(model, ys, n),
                "probinfer (quantiles 5/50/95%)": probinfer_runner(
                    models[model], ys, n, (0.05, 0.5, 0.95)
                ),
            }
            rows = bench(runners, args.reps, seed0=100)
            for name, row in rows.items():
                row.update(model=model, N=n, T=T, library=name, exact_log_z=exact[model])
                results.append(row)
                print(
                    f"{model:>5} N={n:>8} {name:<42} run {row['median_run_s']:8.3f}s "
                    f"first {row['first_call_s']:7.2f}s log Z {row['log_z_mean']:.3f} "
                    f"(exact {exact[model]})",
                    flush=True,
                )
            peer = rows["particles"]["median_run_s"]
            ratios[f"{model} N={n}"] = {
                "speedup_default_like_for_like": peer
                / rows["probinfer (default: quantiles=())"]["median_run_s"],
                "speedup_with_quantiles": peer
                / rows["probinfer (quantiles 5/50/95%)"]["median_run_s"],
            }
            print(f"{model} N={n} speed-up over particles: {ratios[f'{model} N={n}']}")
    import particles

    path = write_results(
        args.out,
        {
            "description": "bootstrap PF, systematic resampling at ESS < N/2, T=100; "
            "speed-up = particles median run time / probinfer median run time",
            "rows": results,
            "speedups_over_particles": ratios,
            "versions": {
                "particles": getattr(particles, "__version__", "?"),
                "jax": jax.__version__,
            },
            "conditions": {
                "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
                "load_average_before": load_before,
                "load_average_after": os.getloadavg(),
                "note": "2-core machine shared with other jobs; contenders interleaved "
                "round-robin; medians over reps",
                "jax_devices": [str(d) for d in jax.devices()],
            },
            "command": "python benchmarks/pf_vs_particles.py " + " ".join(sys.argv[1:]),
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
