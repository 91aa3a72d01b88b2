"""Memory of one process that resamples and filters with many distinct particle counts.

Before bucketing, every new particle count compiled new executables that were never
freed: ``probinfer.resample`` on 580 distinct N reached 2.5 GB RSS, then aborted with
``LLVM ERROR: Unable to allocate section memory``. Now eager ``resample`` validates and
pads on the host to powers of two, and the jitted particle filter pads N to four bucket
sizes per octave (zero-weight slots that are never resampled), so the set of compiled
programs, and with it the memory, is bounded.

Workload, in one process:

1. ``probinfer.resample`` on 2,000 distinct particle counts between 2 and 10^5
   (log-uniform, shuffled), systematic scheme;
2. ``particle_filter`` (bootstrap, 1-D LGSSM, T = 20) on 100 distinct counts between
   100 and 10^5, then on 100 *other* distinct counts in the same range.

The resident set size (``VmRSS``) is sampled every 100 resample calls and every 10
filters. The figures of merit are the growth over the second half of the resample phase
and over the second set of filter sizes (new counts, but no new bucket sizes): with a
bounded set of compiled programs both are flat up to allocator noise. Writes
``benchmarks/results/many_sizes_memory.json``.

    python benchmarks/many_sizes_memory.py
"""

from __future__ import annotations

import argparse
import os
import sys


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resample-sizes", type=int, default=2000)
    p.add_argument("--filter-sizes", type=int, default=100)
    p.add_argument("--out", default="many_sizes_memory")
    args = p.parse_args(argv)

    import jax
    import numpy as np
    from _common import machine, write_results

    import probinfer
    from probinfer.engine.core import bucket_size
    from probinfer.lgssm import LinearGaussianSSM
    from probinfer.smc import particle_filter

    rng = np.random.default_rng(0)

    def distinct_sizes(count, low, high):
        sizes = set()
        while len(sizes) < count:
            sizes.add(int(np.exp(rng.uniform(np.log(low), np.log(high + 1)))))
        sizes = np.array(sorted(sizes))
        rng.shuffle(sizes)
        return sizes

    start = rss_mib()
    trace_resample = []
    sizes = distinct_sizes(args.resample_sizes, 2, 100_000)
    for i, n in enumerate(sizes):
        log_w = rng.normal(size=n)
        idx = probinfer.resample(jax.random.key(i), log_w, scheme="systematic")
        assert idx.shape == (n,)
        if (i + 1) % 100 == 0:
            trace_resample.append((i + 1, rss_mib()))
            print(f"resample: {i + 1:>5} sizes, RSS {trace_resample[-1][1]:8.1f} MiB", flush=True)

    ssm = LinearGaussianSSM(A=0.9, Q=1.0, C=1.0, R=1.0, m0=0.0, P0=1.0)
    _, ys = ssm.simulate(jax.random.key(0), 20)
    ys = np.asarray(ys)
    trace_filter = []
    sizes_f = distinct_sizes(2 * args.filter_sizes, 100, 100_000)  # two disjoint sets
    for i, n in enumerate(sizes_f):
        res = particle_filter(jax.random.key(i), ssm, ys, int(n))
        assert np.isfinite(res.log_evidence)
        if (i + 1) % 10 == 0:
            trace_filter.append((i + 1, rss_mib()))
            print(f"filter: {i + 1:>4} sizes, RSS {trace_filter[-1][1]:8.1f} MiB", flush=True)

    def half_growth(trace):
        mid = trace[len(trace) // 2 - 1][1]
        return trace[-1][1] - mid

    summary = {
        "rss_at_start_mib": start,
        "resample_rss_end_mib": trace_resample[-1][1],
        "resample_growth_second_half_mib": half_growth(trace_resample),
        "filter_rss_end_mib": trace_filter[-1][1],
        "filter_growth_second_set_mib": half_growth(trace_filter),
        "distinct_filter_buckets": len({bucket_size(int(n), 16, per_octave=4) for n in sizes_f}),
        "peak_rss_mib": max(r for _, r in trace_resample + trace_filter),
    }
    print(summary)
    path = write_results(
        args.out,
        {
            "benchmark": "many_sizes_memory",
            "machine": machine(),
            "description": f"resample on {len(sizes)} distinct N in [2, 1e5], then "
            f"particle_filter (LGSSM, T=20) on 2 x {args.filter_sizes} distinct N in [100, 1e5], "
            "one process; RSS sampled along the way",
            "summary": summary,
            "resample_rss_trace_mib": trace_resample,
            "filter_rss_trace_mib": trace_filter,
            "versions": {"jax": jax.__version__},
            "load_average": os.getloadavg(),
            "command": "python benchmarks/many_sizes_memory.py " + " ".join(sys.argv[1:]),
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
