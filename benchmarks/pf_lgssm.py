"""Bootstrap particle filter on a 1-D linear-Gaussian SSM (T = 100): probinfer vs BlackJAX
(a filter built from ``blackjax.smc.base.step``) vs ``particles`` (numpy), same data.

Reports particle-steps per second (N T / median run time over interleaved rounds, so
every library sees the same background load; compilation excluded and reported
separately), with the per-round speed ratio to the faster peer (median, min, max over the
interleaved rounds), and the log-evidence bias and standard deviation against the exact Kalman
value over repeated runs. Writes benchmarks/results/pf_lgssm.json.

    python benchmarks/pf_lgssm.py [--sizes 10000 100000 1000000] [--reps 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from _common import interleaved_runs, machine, paired_ratio, write_results

from probinfer.lgssm import LinearGaussianSSM, kalman_filter
from probinfer.smc import smc_scan, ssm_feynman_kac

T = 100
SSM = LinearGaussianSSM(A=0.9, Q=1.0, C=1.0, R=1.0, m0=0.0, P0=1.0)


def run_probinfer(ys, n, reps, threshold):
    fk = ssm_feynman_kac(SSM, ys, "bootstrap")

    def once(key):
        out = smc_scan(key, fk, n, threshold, "systematic", keep_ancestors=False)
        jax.block_until_ready(out)
        return float(np.sum(np.asarray(out.log_evidence_increments, np.float64)))

    t0 = time.perf_counter()
    once(jax.random.key(999))
    return time.perf_counter() - t0, once


def run_blackjax(ys, n, reps):
    from blackjax.smc import base, resampling

    ys = jnp.asarray(ys[:, 0], jnp.float32)

    def loglik(x, y):
        return -0.5 * (y - x) ** 2 - 0.5 * jnp.log(2 * jnp.pi)

    @jax.jit
    def pf(key):
        k0, k = jax.random.split(key)
        x0 = jax.random.normal(k0, (n,))
        lw = loglik(x0, ys[0])
        logz0 = jax.scipy.special.logsumexp(lw) - jnp.log(n)
        state = base.init(x0, {})
        state = state._replace(weights=jnp.exp(lw - jax.scipy.special.logsumexp(lw)))

        def update_fn(keys, particles, params):
            noise = jax.vmap(lambda k: jax.random.normal(k))(keys)
            return 0.9 * particles + noise, None

        def body(state, inp):
            k, y = inp
            state, info = base.step(
                k, state, update_fn, lambda x: loglik(x, y), resampling.systematic
            )
            return state, info.log_likelihood_increment

        _, incs = jax.lax.scan(body, state, (jax.random.split(k, T - 1), ys[1:]))
        return logz0 + jnp.sum(incs)

    def once(key):
        return float(pf(key))

    t0 = time.perf_counter()
    once(jax.random.key(999))
    return time.perf_counter() - t0, once


def run_particles(ys, n, reps):
    import particles
    import particles.distributions as pd
    from particles import state_space_models as ssm

    class LG(ssm.StateSpaceModel):
        default_params = {"rho": 0.9, "sx": 1.0, "sy": 1.0, "s0": 1.0}

        def PX0(self):
            return pd.Normal(loc=0.0, scale=self.s0)

        def PX(self, t, xp):
            return pd.Normal(loc=self.rho * xp, scale=self.sx)

        def PY(self, t, xp, x):
            return pd.Normal(loc=x, scale=self.sy)

    data = list(np.asarray(ys[:, 0], np.float64))

    def once(key):
        np.random.seed(int(jax.random.randint(key, (), 0, 2**31 - 1)))  # global RNG
        alg = particles.SMC(
            fk=ssm.Bootstrap(ssm=LG(), data=data), N=n, resampling="systematic", ESSrmin=0.5
        )
        alg.run()
        return float(alg.logLt)

    return 0.0, once


def measure(runners, reps):
    """Interleaved timing (same key each round) and log Z over ``reps`` seeds."""
    times = interleaved_runs(
        {name: partial(once, jax.random.key(7)) for name, (_, once) in runners.items()},
        repeats=reps,
        warmup=0,
    )
    return {
        name: (compile_s, times[name], [once(jax.random.key(r)) for r in range(reps)])
        for name, (compile_s, once) in runners.items()
    }


def summarise(name, n, compile_s, runs, lz, exact, extra=None):
    best = float(np.median(runs))
    err = np.asarray(lz) - exact
    row = {
        "library": name,
        "N": n,
        "T": T,
        "reps": len(lz),
        "compile_s": compile_s,
        "median_run_s": best,
        "run_s": list(runs),
        "particle_steps_per_s": n * T / best,
        "log_z_bias": float(err.mean()),
        "log_z_sd": float(err.std(ddof=1)) if len(err) > 1 else float("nan"),
        **(extra or {}),
    }
    print(
        f"{name:<28} N={n:>8} run {best:8.3f}s  compile {compile_s:6.2f}s  "
        f"{row['particle_steps_per_s']:.3e} steps/s  bias {row['log_z_bias']:+.4f} "
        f"sd {row['log_z_sd']:.4f}"
    )
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", default="pf_lgssm", help="writes benchmarks/results/<out>.json")
    args = p.parse_args(argv)
    _, ys = SSM.simulate(jax.random.key(0), T)
    ys = np.asarray(ys)
    exact = kalman_filter(SSM, ys).log_evidence
    rows = []
    for n in args.sizes:
        runners = {
            "probinfer (ESS<0.5N)": run_probinfer(ys, n, args.reps, 0.5),
            "probinfer (every step)": run_probinfer(ys, n, args.reps, 1.0),
            "blackjax smc.base.step": run_blackjax(ys, n, args.reps),
            "particles 0.4 (numpy)": run_particles(ys, n, args.reps),
        }
        thresholds = [0.5, 1.0, 1.0, 0.5]
        for (name, res), thr in zip(measure(runners, args.reps).items(), thresholds):
            rows.append(summarise(name, n, *res, exact, {"ess_threshold": thr}))
    ratios = {}
    for n in args.sizes:
        by = {r["library"]: r for r in rows if r["N"] == n}
        peer = max(
            by["blackjax smc.base.step"]["particle_steps_per_s"],
            by["particles 0.4 (numpy)"]["particle_steps_per_s"],
        )
        fast = max(
            ("blackjax smc.base.step", "particles 0.4 (numpy)"),
            key=lambda k: by[k]["particle_steps_per_s"],
        )
        ours, every = by["probinfer (ESS<0.5N)"], by["probinfer (every step)"]
        ratios[str(n)] = {
            "faster_peer": fast,
            "probinfer_ess0.5_vs_faster_peer": ours["particle_steps_per_s"] / peer,
            "probinfer_every_step_vs_faster_peer": every["particle_steps_per_s"] / peer,
            # per interleaved round: the peer's run time over ours (a speed ratio)
            "probinfer_ess0.5_vs_faster_peer_per_round": paired_ratio(
                by[fast]["run_s"], ours["run_s"]
            ),
            "probinfer_every_step_vs_faster_peer_per_round": paired_ratio(
                by[fast]["run_s"], every["run_s"]
            ),
        }
        print(f"N={n}: speed ratio vs faster peer: {ratios[str(n)]}")
    result = {
        "benchmark": "bootstrap PF, 1-D LGSSM (A=0.9, Q=R=P0=1), T=100",
        "kalman_log_evidence": exact,
        "rows": rows,
        "speed_ratios": ratios,
        "machine": {**machine(), "jax_devices": [str(d) for d in jax.devices()]},
        "command": " ".join(
            ["python benchmarks/pf_lgssm.py", *(sys.argv[1:] if argv is None else argv)]
        ),
    }
    print(f"wrote {write_results(args.out, result)}")


if __name__ == "__main__":
    main()
