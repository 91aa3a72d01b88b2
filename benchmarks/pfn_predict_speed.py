"""Latency of one PFN prediction (one dataset) on CPU, next to the exact GP it imitates.

    python benchmarks/pfn_predict_speed.py [--repeats 200] [--n-train 20] [--n-test 50]

The shipped ``gp-1d`` PFN (0.63M parameters, torch, one thread) predicts one dataset from the
``gp-1d`` prior: ``pfn.predict(x_train, y_train, x_test)``, i.e. input checks, range guard, the
forward pass and the ``BarDistribution``. The exact GP (numpy Cholesky with the true
hyperparameters, the Bayes-optimal answer the PFN approximates) runs on the same data, the two
interleaved so that they share the background load. Reported: median wall time and median
thread CPU time (``time.thread_time``; on a shared, loaded machine the wall time also counts the
time the thread waits for a core, the CPU time does not), the load average, and the ratios.
Target (issue 15): PFN predict <= 5 ms median on CPU. Writes
benchmarks/results/pfn_predict_speed.json.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from _common import write_results


def _median_times(fns: dict, repeats: int) -> dict:
    for fn in fns.values():
        fn()
        fn()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t, c = time.perf_counter(), time.thread_time()
            fn()
            cpu[k].append(time.thread_time() - c)
            wall[k].append(time.perf_counter() - t)
    return {
        k: {"wall_ms": 1e3 * float(np.median(wall[k])), "cpu_ms": 1e3 * float(np.median(cpu[k]))}
        for k in fns
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200, help="timed calls of each")
    ap.add_argument("--n-train", type=int, default=20, help="context points")
    ap.add_argument("--n-test", type=int, default=50, help="query points")
    args = ap.parse_args()

    import jax
    import torch

    from amortized.pretrained import load_pretrained, prior_of

    torch.set_num_threads(1)
    pfn = load_pretrained("gp-1d")
    prior = prior_of("gp-1d")
    x, y = prior.sample(jax.random.key(0), 1, args.n_train + args.n_test)
    xt, yt, xs = x[0, : args.n_train, 0], y[0, : args.n_train], x[0, args.n_train :, 0]

    def pfn_predict():
        d = pfn.predict(xt, yt, xs)
        d.logits.block_until_ready()

    def exact_gp():
        prior.posterior_predictive(xt[None, :, None], yt[None], xs[None, :, None])

    load_before = os.getloadavg()
    times = _median_times({"pfn": pfn_predict, "exact_gp": exact_gp}, args.repeats)
    load_after = os.getloadavg()
    result = {
        "settings": vars(args) | {"torch_threads": 1, "model": "gp-1d", "parameters": 630_000},
        "load_average_1min": [load_before[0], load_after[0]],
        "times": times,
        "pfn_over_exact_gp_wall": times["pfn"]["wall_ms"] / times["exact_gp"]["wall_ms"],
        "pfn_over_exact_gp_cpu": times["pfn"]["cpu_ms"] / times["exact_gp"]["cpu_ms"],
        "target_ms": 5.0,
    }
    print(
        f"PFN predict (one dataset, n={args.n_train}, m={args.n_test}): "
        f"{times['pfn']['wall_ms']:.2f} ms wall, {times['pfn']['cpu_ms']:.2f} ms CPU; exact GP "
        f"{times['exact_gp']['wall_ms']:.3f} ms wall, {times['exact_gp']['cpu_ms']:.3f} ms CPU "
        f"(PFN / GP: {result['pfn_over_exact_gp_wall']:.0f}x wall); load {load_before[0]:.1f}"
    )
    write_results("pfn_predict_speed", result)


if __name__ == "__main__":
    main()
