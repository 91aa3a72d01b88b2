"""Particle-filter throughput with the particle axis sharded over 1 vs D devices.

Workload: bootstrap PF on the 1-D LGSSM (A = 0.9, Q = R = P0 = 1), T = 100 observations,
N = 10^6 particles, systematic resampling at ESS < N/2, ``quantiles=()``. The same
process runs ``particle_filter(..., shard=False)`` (one device) and
``particle_filter(..., shard=True)`` (particles placed along a ``"particles"`` mesh axis
over all ``D`` local devices), interleaved round-robin, first call (compilation)
excluded. Throughput is particle-steps per second, ``N * T / run time``.

Without accelerators, XLA is forced to expose ``D`` host devices
(``--xla_force_host_platform_device_count``). Those devices share this machine's CPU
cores, so the figure measures the *cost* of the sharded program (collectives for the
resampling cumulative sum, the all-gather of ancestors) rather than a scale-out: on a
2-core machine 4 "devices" cannot be 4x faster. On a host with several GPUs run it
without ``--force-host-devices`` to measure the real scale-out. Writes
``benchmarks/results/pf_sharding.json``.

    python benchmarks/pf_sharding.py [--devices 4] [--num-particles 1000000] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=4)
    p.add_argument("--num-particles", type=int, default=1_000_000)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument(
        "--no-force-host-devices",
        action="store_true",
        help="use the real local devices (GPUs) instead of forced host devices",
    )
    p.add_argument("--out", default="pf_sharding")
    args = p.parse_args(argv)
    if not args.no_force_host_devices:
        # must be set before jax initialises its backends
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={args.devices}"
        )
        os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import jax
    import numpy as np
    from _common import machine, time_interleaved, write_results

    from probinfer.lgssm import LinearGaussianSSM, kalman_filter
    from probinfer.smc import particle_filter

    devices = jax.devices()
    if len(devices) < args.devices:
        raise SystemExit(f"--devices {args.devices}: only {len(devices)} devices are visible")
    ssm = LinearGaussianSSM(A=0.9, Q=1.0, C=1.0, R=1.0, m0=0.0, P0=1.0)
    _, ys = ssm.simulate(jax.random.key(0), args.steps)
    ys = np.asarray(ys)
    exact = float(kalman_filter(ssm, ys).log_evidence)
    n = args.num_particles
    log_z = {"1 device": [], f"{args.devices} devices": []}
    seeds = iter(range(10_000))

    def runner(name, shard):
        def run():
            res = particle_filter(jax.random.key(next(seeds)), ssm, ys, n, shard=shard)
            log_z[name].append(float(res.log_evidence))

        return run

    fns = {"1 device": runner("1 device", False)}
    fns[f"{args.devices} devices"] = runner(f"{args.devices} devices", True)
    times = time_interleaved(fns, repeats=args.reps, warmup=1)
    rows = {
        name: {
            "median_run_s": t,
            "particle_steps_per_s": n * args.steps / t,
            "log_z_mean": float(np.mean(log_z[name])),
            "log_z_sd": float(np.std(log_z[name], ddof=1)) if len(log_z[name]) > 1 else None,
            "runs": len(log_z[name]),
        }
        for name, t in times.items()
    }
    for name, row in rows.items():
        print(
            f"{name:>10}: {row['median_run_s']:.3f} s/run, "
            f"{row['particle_steps_per_s']:.3g} particle-steps/s, "
            f"log Z {row['log_z_mean']:.3f} (exact {exact:.3f})"
        )
    speedup = rows["1 device"]["median_run_s"] / rows[f"{args.devices} devices"]["median_run_s"]
    print(f"throughput {args.devices} devices / 1 device: {speedup:.2f}x")
    path = write_results(
        args.out,
        {
            "benchmark": "pf_sharding",
            "machine": machine(),
            "description": "bootstrap PF, 1-D LGSSM, systematic at ESS < N/2, quantiles=(); "
            "1 device (shard=False) vs the particle axis sharded over all devices "
            "(shard=True), interleaved in one process",
            "devices": [str(d) for d in devices[: args.devices]],
            "forced_host_devices": not args.no_force_host_devices,
            "caveat": None
            if args.no_force_host_devices
            else f"{args.devices} forced host devices share {os.cpu_count()} CPU cores: "
            "this measures the overhead of the sharded program, not a scale-out",
            "num_particles": n,
            "steps": args.steps,
            "exact_log_z": exact,
            "rows": rows,
            "throughput_ratio_sharded_over_one_device": speedup,
            "load_average": os.getloadavg(),
            "versions": {"jax": jax.__version__},
            "command": "python benchmarks/pf_sharding.py " + " ".join(sys.argv[1:]),
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
