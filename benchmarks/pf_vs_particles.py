"""Bootstrap particle filter: probinfer vs the ``particles`` library, N = 10^5 and 10^6.

Two models, T = 100 observations each, simulated once with NumPy (the same data in both
precisions):

* the 1-D linear-Gaussian SSM (A = 0.9, Q = R = P0 = 1), written for probinfer through the
  generic :class:`~probinfer.smc.StateSpaceModel` API (numpyro distributions; probinfer's
  :class:`~probinfer.lgssm.LinearGaussianSSM` keeps its arrays in float32 whatever the JAX
  precision, and is benchmarked in ``pf_lgssm.py``) vs ``particles.kalman.LinearGauss(rho=0.9,
  sigmaX=1, sigmaY=1, sigma0=1)``, with the exact Kalman log evidence;
* the stochastic-volatility model of Pitt & Shephard (``particles``' ``StochVol`` with its
  default parameters), written for probinfer the same way.

Both libraries run the same estimator: a bootstrap filter, systematic resampling when
ESS < N/2, the standard log-evidence estimate. ``particles`` is configured as in its
tutorial (``SMC(fk=Bootstrap(ssm=..., data=...), N=...)``, defaults: systematic,
``ESSrmin=0.5``, no history, no moments collected) and computes in float64. probinfer runs
twice, in two processes: in JAX's default float32 and with ``JAX_ENABLE_X64=1`` (float64,
like ``particles``; the dtype of the particles is recorded in each row). Each process
interleaves probinfer and ``particles`` round-robin, so every ratio is a paired ratio of
runs under the same load; with ``quantiles=()`` (like for like) and, at the sizes of
``--quantile-sizes``, with filtering quantiles 5/50/95% recorded at every step (a weighted
sort of the N particles per step). The first call of each (JIT compilation) is excluded and
reported. Speed-ups are the median over repetitions of the per-round ratio ``particles time /
probinfer time``, with the minimum and maximum. Writes benchmarks/results/pf_vs_particles.json.

    OMP_NUM_THREADS=1 python benchmarks/pf_vs_particles.py --reps 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from _common import paired_ratio, write_results

from probinfer.lgssm import LinearGaussianSSM, kalman_filter
from probinfer.smc import StateSpaceModel, particle_filter

T = 100
LG = {"A": 0.9, "Q": 1.0, "R": 1.0, "P0": 1.0}
SV = {"mu": -1.02, "rho": 0.9702, "sigma": 0.178}  # particles.StochVol defaults
PRECISIONS = ("float32", "float64")


def linear_gaussian() -> StateSpaceModel:
    a, q, r, p0 = LG["A"], LG["Q"], LG["R"], LG["P0"]
    return StateSpaceModel(
        initial=dist.Normal(0.0, np.sqrt(p0)),
        transition=lambda x, t: dist.Normal(a * x, np.sqrt(q)),
        observation=lambda x, t: dist.Normal(x, np.sqrt(r)),
    )


def simulate_lgssm(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.sqrt(LG["P0"]) * rng.normal()
    ys = []
    for _ in range(T):
        ys.append(x + np.sqrt(LG["R"]) * rng.normal())
        x = LG["A"] * x + np.sqrt(LG["Q"]) * rng.normal()
    return np.asarray(ys, np.float64)


def exact_lgssm_log_z(ys: np.ndarray) -> float:
    ssm = LinearGaussianSSM(A=LG["A"], Q=LG["Q"], C=1.0, R=LG["R"], m0=0.0, P0=LG["P0"])
    return float(kalman_filter(ssm, ys).log_evidence)


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
    return np.asarray(ys, np.float64)


def probinfer_runner(ssm, ys, n, quantiles):
    def once(seed):
        res = particle_filter(jax.random.key(seed), ssm, ys, n, quantiles=quantiles)
        once.dtype = str(res.particles.values.dtype)
        return res.log_evidence

    return once


def particles_runner(model: str, ys, n):
    import particles
    from particles import kalman
    from particles import state_space_models as ssm

    if model == "lgssm":
        spec = kalman.LinearGauss(
            rho=LG["A"], sigmaX=np.sqrt(LG["Q"]), sigmaY=np.sqrt(LG["R"]), sigma0=np.sqrt(LG["P0"])
        )
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
            "dtype": getattr(runners[name], "dtype", "float64"),
        }
        for name in runners
    }


def run_precision(precision: str, args) -> dict:
    """One process, one JAX precision: every model and size, contenders interleaved."""
    data = {"lgssm": simulate_lgssm(0), "sv": simulate_sv(0)}
    models = {"lgssm": linear_gaussian(), "sv": stochastic_volatility()}
    exact = {"lgssm": exact_lgssm_log_z(data["lgssm"]), "sv": None}
    ours, with_q = f"probinfer {precision} (quantiles=())", f"probinfer {precision} (quantiles)"
    rows, ratios = [], {}
    for model in args.models:
        ys = data[model].astype(precision)
        for n in args.sizes:
            runners = {
                ours: probinfer_runner(models[model], ys, n, ()),
                "particles (float64)": particles_runner(model, data[model], n),
            }
            if n in args.quantile_sizes:
                runners[with_q] = probinfer_runner(models[model], ys, n, (0.05, 0.5, 0.95))
            out = bench(runners, args.reps, seed0=100)
            for name, row in out.items():
                row.update(model=model, N=n, T=T, library=name, exact_log_z=exact[model])
                rows.append(row)
                print(
                    f"{model:>5} N={n:>8} {name:<36} run {row['median_run_s']:8.3f}s "
                    f"first {row['first_call_s']:7.2f}s log Z {row['log_z_mean']:.3f} "
                    f"(exact {exact[model]}) {row['dtype']}",
                    flush=True,
                )
            peer = out["particles (float64)"]["run_s"]
            key = f"{model} N={n} probinfer {precision}"
            ratios[key] = {"like_for_like": paired_ratio(peer, out[ours]["run_s"])}
            if with_q in out:
                ratios[key]["with_quantiles"] = paired_ratio(peer, out[with_q]["run_s"])
            print(f"{key}: speed-up over particles {ratios[key]}", flush=True)
    return {"rows": rows, "speedups_over_particles": ratios}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--quantile-sizes", type=int, nargs="*", default=[100_000])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--models", nargs="+", default=["lgssm", "sv"], choices=["lgssm", "sv"])
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--out", default="pf_vs_particles")
    p.add_argument("--part", help=argparse.SUPPRESS)  # child process: one precision to a file
    args = p.parse_args(argv)
    if args.part:
        (precision,) = args.precisions
        with open(args.part, "w") as fh:
            json.dump(run_precision(precision, args), fh, default=float)
        return

    load_before = os.getloadavg()
    rows, ratios, env_flags = [], {}, {}
    for precision in args.precisions:
        env = dict(os.environ, JAX_ENABLE_X64="1" if precision == "float64" else "0")
        env_flags[precision] = env["JAX_ENABLE_X64"]
        with tempfile.NamedTemporaryFile(suffix=".json") as part:
            child = [a for a in (argv if argv is not None else sys.argv[1:])]
            child += ["--precisions", precision, "--part", part.name]
            subprocess.run([sys.executable, __file__, *child], env=env, check=True)
            with open(part.name) as fh:
                got = json.load(fh)
        rows += got["rows"]
        ratios.update(got["speedups_over_particles"])
    path = write_results(
        args.out,
        {
            "description": "bootstrap PF, systematic resampling at ESS < N/2, T=100; "
            "speed-up = median over rounds of particles run time / probinfer run time "
            "(paired, interleaved), with min and max",
            "rows": rows,
            "speedups_over_particles": ratios,
            "versions": {"particles": version("particles"), "jax": jax.__version__},
            "conditions": {
                "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
                "JAX_ENABLE_X64 per precision": env_flags,
                "load_average_before": load_before,
                "load_average_after": os.getloadavg(),
                "note": "2-core machine shared with other jobs; contenders interleaved "
                "round-robin within each precision's process",
                "jax_devices": [str(d) for d in jax.devices()],
            },
            "command": "python benchmarks/pf_vs_particles.py " + " ".join(sys.argv[1:]),
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
