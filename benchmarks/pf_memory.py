"""Peak memory of a bootstrap particle filter on the 1-D LGSSM at N = 10^7, T = 100.

Each configuration runs in a fresh child process under ``/usr/bin/time -v``; its
"Maximum resident set size" (peak RSS of the whole process: Python, JAX runtime, compiled
code, particles) is recorded, with the wall time and the log evidence against the exact
Kalman value. A baseline child that imports everything and runs the filter at N = 10^3
gives the fixed cost, so the per-particle cost is ``(peak - baseline) / N``. Writes
benchmarks/results/pf_memory.json.

    OMP_NUM_THREADS=1 python benchmarks/pf_memory.py [--num-particles 10000000]
        [--memory-budget BYTES]

``--memory-budget`` is passed to ``particle_filter(..., memory_budget=...)``; it is an
error when this version of ``particle_filter`` has no such parameter.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

T = 100


def child(n: int, quantiles: tuple[float, ...], memory_budget: int | None) -> None:
    """Run one filter and print a JSON line (called in the child process)."""
    import time

    import jax
    import numpy as np

    from probinfer.lgssm import LinearGaussianSSM, kalman_filter
    from probinfer.smc import particle_filter

    ssm = LinearGaussianSSM(A=0.9, Q=1.0, C=1.0, R=1.0, m0=0.0, P0=1.0)
    _, ys = ssm.simulate(jax.random.key(0), T)
    ys = np.asarray(ys)
    kwargs = {"quantiles": quantiles}
    if memory_budget is not None:
        kwargs["memory_budget"] = memory_budget
    start = time.perf_counter()
    res = particle_filter(jax.random.key(1), ssm, ys, n, **kwargs)
    wall = time.perf_counter() - start
    exact = float(kalman_filter(ssm, ys).log_evidence)
    print(
        "RESULT "
        + json.dumps(
            {"log_evidence": float(res.log_evidence), "kalman_log_evidence": exact, "wall_s": wall}
        )
    )


def measure(n: int, quantiles: tuple[float, ...], memory_budget: int | None) -> dict:
    cmd = [
        "/usr/bin/time",
        "-v",
        sys.executable,
        __file__,
        "--child",
        "--num-particles",
        str(n),
        "--quantiles",
        *map(str, quantiles),
    ]
    if memory_budget is not None:
        cmd += ["--memory-budget", str(memory_budget)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    elapsed = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", proc.stderr).group(1)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])
    out.update(
        num_particles=n,
        T=T,
        quantiles=list(quantiles),
        memory_budget=memory_budget,
        peak_rss_bytes=rss_kb * 1024,
        peak_rss_gib=rss_kb / 2**20,
        process_elapsed=elapsed,
    )
    print(
        f"N={n:>9} quantiles={list(quantiles)!s:<18} budget={memory_budget} peak RSS "
        f"{out['peak_rss_gib']:.3f} GiB, filter {out['wall_s']:.1f}s, log Z "
        f"{out['log_evidence']:.3f} (Kalman {out['kalman_log_evidence']:.3f})",
        flush=True,
    )
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-particles", type=int, default=10_000_000)
    p.add_argument("--memory-budget", type=int, default=None, help="bytes")
    p.add_argument("--quantiles", type=float, nargs="*", default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default="pf_memory")
    args = p.parse_args(argv)
    if args.child:
        child(args.num_particles, tuple(args.quantiles or ()), args.memory_budget)
        return

    from probinfer.smc import particle_filter

    if (
        args.memory_budget is not None
        and "memory_budget" not in inspect.signature(particle_filter).parameters
    ):
        raise SystemExit(
            "--memory-budget: this version of probinfer.smc.particle_filter has no "
            "memory_budget parameter"
        )
    sys.path.insert(0, str(Path(__file__).parent))
    from _common import write_results

    load_before = os.getloadavg()
    band = (0.05, 0.5, 0.95)
    rows = {
        "baseline N=1000 (fixed cost)": measure(1000, (), args.memory_budget),
        "default: quantiles=()": measure(args.num_particles, (), args.memory_budget),
        f"quantiles={band}": measure(args.num_particles, band, args.memory_budget),
    }
    base = rows["baseline N=1000 (fixed cost)"]["peak_rss_bytes"]
    for row in rows.values():
        if row["num_particles"] > 1000:
            row["bytes_per_particle_above_baseline"] = (row["peak_rss_bytes"] - base) / row[
                "num_particles"
            ]
    path = write_results(
        args.out + ("" if args.memory_budget is None else f"_budget{args.memory_budget}"),
        {
            "description": "bootstrap PF, 1-D LGSSM (A=0.9, Q=R=P0=1), T=100, peak RSS of "
            "a fresh process measured with /usr/bin/time -v",
            "rows": rows,
            "conditions": {
                "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
                "load_average_before": load_before,
                "load_average_after": os.getloadavg(),
                "note": "2-core machine shared with other jobs (affects time, not memory)",
            },
            "command": "python benchmarks/pf_memory.py " + " ".join(sys.argv[1:]),
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
