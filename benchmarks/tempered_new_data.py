"""Tempered SMC on a sequence of datasets of one NumPyro model: data traced vs data as
constants of the compiled run.

A NumPyro target is a JAX pytree of its data when its model traces with abstract data
(``NumPyroTarget.traced_data``): the compiled tempered-SMC run takes the data as an
argument, so a new dataset of the same shapes reuses it. A model that calls numpy on its
data keeps the data as constants, and every new dataset compiles the run again (that was
every NumPyro target's behaviour before). Same model otherwise, same keys, interleaved
dataset by dataset in one process; the log evidences of the two agree (reported).

Workload: Bayesian linear regression (3 coefficients, a half-normal noise scale, 50
observations), 500 particles, RWMH moves, ``--datasets`` simulated datasets.

    OMP_NUM_THREADS=1 python benchmarks/tempered_new_data.py [--datasets 6]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_results  # noqa: E402

from probinfer.smc import tempered_smc  # noqa: E402
from probinfer.targets import from_numpyro  # noqa: E402


def model(x, y=None):
    w = numpyro.sample("w", dist.Normal(0, 1).expand([3]).to_event(1))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    numpyro.sample("y", dist.Normal(x @ w, s), obs=y)


def constant_model(x, y=None):
    """The same model with a numpy call on the data: its target keeps the data constant."""
    model(np.asarray(x), y)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", type=int, default=6)
    p.add_argument("--particles", type=int, default=500)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(args.datasets):
        x = rng.normal(size=(50, 3))
        y = x @ np.array([1.0, -1.0, 0.5]) + 0.3 * rng.normal(size=50)
        row = {"dataset": i}
        order = [("traced", model), ("constant", constant_model)]
        if i % 2:
            order.reverse()
        for name, m in order:
            t0 = time.perf_counter()
            target = from_numpyro(m, x, y=y)
            res = tempered_smc(jax.random.key(i), target, args.particles, progress=False)
            row[name] = {
                "seconds": time.perf_counter() - t0,
                "traced_data": bool(target.traced_data),
                "log_evidence": res.log_evidence,
            }
        rows.append(row)
        print(
            f"dataset {i}: traced {row['traced']['seconds']:.2f} s, "
            f"constant {row['constant']['seconds']:.2f} s"
        )
    later = rows[1:]
    t_traced = float(np.median([r["traced"]["seconds"] for r in later]))
    t_const = float(np.median([r["constant"]["seconds"] for r in later]))
    diff = max(abs(r["traced"]["log_evidence"] - r["constant"]["log_evidence"]) for r in rows)
    payload = {
        "benchmark": "tempered_new_data",
        "machine": machine(),
        "workload": {
            "model": "Bayesian linear regression, 3 coefficients + noise scale, 50 obs",
            "particles": args.particles,
            "kernel": "rwmh",
            "datasets": args.datasets,
        },
        "rows": rows,
        "median_seconds_per_later_dataset": {"traced": t_traced, "constant": t_const},
        "speedup_per_later_dataset": t_const / t_traced,
        "first_dataset_seconds": {
            "traced": rows[0]["traced"]["seconds"],
            "constant": rows[0]["constant"]["seconds"],
        },
        "max_abs_log_evidence_difference": diff,
    }
    path = write_results("tempered_new_data", payload)
    print(
        f"later datasets: traced {t_traced:.2f} s vs constant {t_const:.2f} s per dataset "
        f"({t_const / t_traced:.0f}x); max |log Z difference| {diff:.2e}; wrote {path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
