"""Memory of one process that calls every public entry point with many distinct sizes.

Every compiled XLA program stays in memory (7-88 MB each), so an entry point that compiles
per new shape grows without bound: ``probinfer.resample`` on 580 distinct N reached 2.5 GB
RSS, then aborted with ``LLVM ERROR: Unable to allocate section memory``; issue 22 (item 10)
found the same for ``BarDistribution.icdf`` (+2.0 GB after 23 sizes), ``Particles``
(+3.0 GB after 126 N), the weight summaries (+3.1 GB after 289 N), ``tempered_smc`` in N,
``DT.posterior`` (+2.8 GB after 165 batch sizes), ``GaussianMixture``, ``sbc``/``tarp`` and
the filters in T. Now each pads its sizes to a bounded set of buckets
(:func:`probinfer.engine.bucket_size`) or runs on the host.

Workload, in one process, one phase per entry point (sizes log-uniform in a range, shuffled,
all distinct):

* ``resample``: ``probinfer.resample`` (systematic) in N in [2, 1e5];
* ``filter_n``: ``particle_filter`` (bootstrap, 1-D LGSSM, T = 20) in N in [100, 4000];
* ``weights``: ``ess``, ``should_resample``, ``log_mean_weight`` in N in [2, 1e5];
* ``particles``: ``Particles`` ``ess``, ``expectation``, ``resample`` in N in [2, 1e5];
* ``tempered_smc``: a one-parameter model, 2 RWMH moves, at most 4 steps, N in [64, 512];
* ``dt_posterior``: ``DistributionTransformer.posterior`` (small untrained network) in the
  batch size B in [1, 2000];
* ``gaussian_mixture``: construction, ``log_prob`` and ``sample`` in B in [1, 1e4];
* ``bar_icdf``: ``BarDistribution.icdf`` of PFN-shaped output (K = 100 buckets) at m test
  points, m in [1, 1e4];
* ``sbc``, ``tarp``: in the number of problems B in [10, 2000] (100 draws of 2 parameters);
* ``filter_t``, ``kalman_t``: ``particle_filter`` (N = 256) and ``kalman_filter`` in the
  number of time steps T in [2, 2000].

The first half of each phase's sizes holds a size of every bucket class that occurs (four
per octave, the finest bucketing in use; sizes swapped across the halves), so the second half
brings new sizes but no new bucket. The resident set size (``VmRSS``, after ``gc.collect()``
and ``malloc_trim(0)`` so that freed numpy buffers do not count) is sampled along each phase.
The figure of merit is the growth over the second half of each phase (new sizes, but no new
buckets): with a bounded set of compiled programs it is flat up to allocator noise. The XLA
compilations of each second half are counted too. A phase stops early (``truncated``) after
``--phase-seconds``. Writes ``benchmarks/results/many_sizes_memory.json``.

    OMP_NUM_THREADS=1 python benchmarks/many_sizes_memory.py
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import os
import sys
import time


def rss_mib() -> float:
    """Resident set size after a collection and returning freed heap pages to the system."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class CompileCounter(logging.Handler):
    """Counts the XLA compilations JAX logs (``jax_log_compiles``)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record):
        if record.getMessage().startswith("Compiling"):
            self.count += 1


def run_phase(name, call, sizes, counter, samples: int, max_seconds: float) -> dict:
    """``call(n)`` for every size, sampling ``(calls, RSS MiB, compilations)`` ``samples``
    times; growth and compilations over the second half of the calls made."""
    every = max(len(sizes) // samples, 1)
    counter.count = 0
    trace, start = [(0, rss_mib(), 0)], time.perf_counter()
    for i, n in enumerate(sizes):
        call(int(n))
        over = time.perf_counter() - start > max_seconds
        if (i + 1) % every == 0 or i + 1 == len(sizes) or over:
            trace.append((i + 1, rss_mib(), counter.count))
        if over:
            break
    done = trace[-1][0]
    mid = min(trace, key=lambda p: abs(p[0] - done / 2))
    summary = {
        "calls": done,
        "size_range": [int(min(sizes[:done])), int(max(sizes[:done]))],
        "rss_start_mib": trace[0][1],
        "rss_end_mib": trace[-1][1],
        "growth_mib": trace[-1][1] - trace[0][1],
        "second_half_from_call": mid[0],
        "growth_second_half_mib": trace[-1][1] - mid[1],
        "compiles": trace[-1][2],
        "compiles_second_half": trace[-1][2] - mid[2],
        "seconds": time.perf_counter() - start,
        "truncated": done < len(sizes),
    }
    print(f"{name}: {summary}", flush=True)
    return {"summary": summary, "trace": trace}


def warm_first_half(sizes):
    """``sizes`` reordered (swaps across the halves) so that the first half holds a size of
    every class of the finest bucketing in use (four per octave, :func:`bucket_size`) that
    occurs: the second half then brings new sizes but no new bucket."""
    from collections import Counter

    import numpy as np

    from probinfer.engine.core import bucket_size

    half = len(sizes) // 2
    first, second = list(sizes[:half]), list(sizes[half:])
    cls = [bucket_size(int(n), 1, per_octave=4) for n in first]
    for i, n in enumerate(second):
        c = bucket_size(int(n), 1, per_octave=4)
        if c in cls:
            continue
        counts = Counter(cls)
        j = next((j for j, k in enumerate(cls) if counts[k] > 1), None)
        if j is None:
            break
        first[j], second[i], cls[j] = n, first[j], c
    return np.array(first + second)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resample-sizes", type=int, default=1000)
    p.add_argument("--filter-sizes", type=int, default=200)
    p.add_argument("--sizes", type=int, default=300, help="sizes per other phase")
    p.add_argument("--slow-sizes", type=int, default=100, help="tempered_smc, sbc/tarp, filters")
    p.add_argument("--samples", type=int, default=20, help="RSS samples per phase")
    p.add_argument("--phase-seconds", type=float, default=120.0)
    p.add_argument("--only", default=None, help="comma-separated phase names")
    p.add_argument("--out", default="many_sizes_memory")
    args = p.parse_args(argv)

    import jax
    import numpy as np
    from _common import machine, write_results

    import probinfer
    from probinfer.distributions import BarDistribution, GaussianMixture
    from probinfer.lgssm import LinearGaussianSSM, kalman_filter
    from probinfer.particles import Particles
    from probinfer.smc import particle_filter

    rng = np.random.default_rng(0)

    def distinct_sizes(count, low, high):
        count = min(count, high - low + 1)
        sizes = set()
        while len(sizes) < count:
            sizes.add(int(np.exp(rng.uniform(np.log(low), np.log(high + 1)))))
        sizes = np.array(sorted(sizes))
        rng.shuffle(sizes)
        return warm_first_half(sizes)

    ssm = LinearGaussianSSM(A=0.9, Q=1.0, C=1.0, R=1.0, m0=0.0, P0=1.0)
    ys = np.asarray(ssm.simulate(jax.random.key(0), 2000)[1])

    def resample(n):
        idx = probinfer.resample(jax.random.key(n), rng.normal(size=n), scheme="systematic")
        assert idx.shape == (n,)

    def filter_n(n):
        assert np.isfinite(particle_filter(jax.random.key(n), ssm, ys[:20], n).log_evidence)

    def weights(n):
        lw = rng.normal(size=n)
        float(probinfer.ess(lw)), bool(probinfer.should_resample(lw))
        float(probinfer.log_mean_weight(lw))

    def particles(n):
        ps = Particles(rng.normal(size=(n, 2)), rng.normal(size=n))
        float(ps.ess), np.asarray(ps.expectation()), ps.resample(jax.random.key(n))

    def tempered():
        import numpyro
        import numpyro.distributions as dist

        from probinfer.smc import tempered_smc
        from probinfer.targets import from_numpyro

        def model(y):
            mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

        target = from_numpyro(model, np.float32(0.5))

        settings = dict(num_mcmc_steps=2, max_steps=4, progress=False, bucket=True)

        def call(n):
            res = tempered_smc(jax.random.key(n), target, n, **settings)
            assert np.isfinite(res.log_evidence)

        return call

    def dt_posterior():
        import torch

        from amortized.dt import DistributionTransformer
        from amortized.dt_model import DTConfig, DTNetwork
        from amortized.dt_tasks import LinearGaussianTask

        torch.manual_seed(0)
        net = DTNetwork(DTConfig(d_model=32, n_layers=2, d_ff=64))
        dt = DistributionTransformer(net.eval(), LinearGaussianTask())
        cov = np.array([[1.0, 0.3], [0.3, 0.5]], np.float32)

        def call(b):
            prior = GaussianMixture(
                rng.uniform(-1, 1, size=(b, 2, 2)).astype(np.float32),
                np.broadcast_to(cov, (b, 2, 2, 2)),
                weights=np.full((b, 2), 0.5, np.float32),
            )
            x, y = rng.uniform(-1, 1, size=(b, 8, 2)), rng.normal(size=(b, 8))
            assert dt.posterior(prior, x, y).batch_shape == (b,)

        return call

    def gaussian_mixture(b):
        means = rng.normal(size=(b, 3, 2)).astype(np.float32)
        cov = np.broadcast_to(np.eye(2, dtype=np.float32), (b, 3, 2, 2))
        gm = GaussianMixture(means, cov, weights=np.full((b, 3), 1 / 3, np.float32))
        np.asarray(gm.log_prob(means[:, 0])), np.asarray(gm.sample(jax.random.key(b)))

    borders = np.linspace(-5.0, 5.0, 101)

    def bar_icdf(m):
        bar = BarDistribution(borders, rng.normal(size=(m, 100)).astype(np.float32))
        assert np.asarray(bar.icdf(np.float32(0.9))).shape == (m,)

    def calibration(check):
        from calibration.posterior_checks import sbc, tarp

        fn = sbc if check == "sbc" else tarp

        def call(b):
            fn(jax.random.key(b), rng.normal(size=(b, 100, 2)), rng.normal(size=(b, 2)))

        return call

    def filter_t(t):
        res = particle_filter(jax.random.key(t), ssm, ys[:t], 256)
        assert res.log_evidence_increments.shape == (t,)

    def kalman_t(t):
        assert kalman_filter(ssm, ys[:t]).means.shape == (t, 1)

    s, slow = args.sizes, args.slow_sizes
    phases = {
        "resample": (resample, (args.resample_sizes, 2, 100_000)),
        "filter_n": (filter_n, (args.filter_sizes, 100, 4000)),
        "weights": (weights, (s, 2, 100_000)),
        "particles": (particles, (s, 2, 100_000)),
        "tempered_smc": (tempered, (slow, 64, 512)),
        "dt_posterior": (dt_posterior, (s, 1, 2000)),
        "gaussian_mixture": (gaussian_mixture, (s, 1, 10_000)),
        "bar_icdf": (bar_icdf, (s, 1, 10_000)),
        "sbc": (lambda: calibration("sbc"), (slow, 10, 2000)),
        "tarp": (lambda: calibration("tarp"), (slow, 10, 2000)),
        "filter_t": (filter_t, (slow, 2, 2000)),
        "kalman_t": (kalman_t, (slow, 2, 2000)),
    }
    factories = {"tempered_smc", "dt_posterior", "sbc", "tarp"}
    only = set(args.only.split(",")) if args.only else set(phases)

    counter = CompileCounter()
    compiles = logging.getLogger("jax._src.interpreters.pxla")
    compiles.addHandler(counter)
    compiles.setLevel(logging.WARNING)
    compiles.propagate = False  # count, do not print
    logging.getLogger("jax").setLevel(logging.ERROR)  # nor the other compile-time logs
    jax.config.update("jax_log_compiles", True)
    start = rss_mib()
    results = {}
    for name, (fn, (count, low, high)) in phases.items():
        if name not in only:
            continue
        call = fn() if name in factories else fn
        sizes = distinct_sizes(count, low, high)
        results[name] = run_phase(name, call, sizes, counter, args.samples, args.phase_seconds)

    summary = {name: r["summary"] for name, r in results.items()}
    path = write_results(
        args.out,
        {
            "benchmark": "many_sizes_memory",
            "machine": machine(),
            "description": "one process; each phase calls one entry point with distinct sizes "
            "(log-uniform in the range, shuffled); RSS (after gc and malloc_trim) sampled "
            "along the way; growth_second_half_mib is the figure of merit",
            "rss_at_start_mib": start,
            "peak_rss_mib": max(r for res in results.values() for _, r, _ in res["trace"]),
            "growth_second_half_mib": {
                name: round(s["growth_second_half_mib"], 1) for name, s in summary.items()
            },
            "summary": summary,
            "traces_calls_rss_mib_compiles": {name: r["trace"] for name, r in results.items()},
            "versions": {"jax": jax.__version__},
            "load_average": os.getloadavg(),
            "command": "OMP_NUM_THREADS=1 python benchmarks/many_sizes_memory.py "
            + " ".join(sys.argv[1:]),
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
