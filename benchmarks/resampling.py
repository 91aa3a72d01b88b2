"""Systematic resampling: probinfer vs BlackJAX on the same weights, in one process.

    python benchmarks/resampling.py [--sizes 10000 100000 1000000] [--repeats 20]

probinfer's resampler merges sorted uniforms against the cumulative weights in O(N)
(closed-form counts, one scatter-add, one cumulative sum); BlackJAX's
``blackjax.smc.resampling.systematic`` runs a binary search per uniform
(``searchsorted``). Both are jitted and timed after compilation on identical weights.
BlackJAX is handed normalised weights (its interface); probinfer starts from log
weights and normalises inside the timed call. Prints a table and writes
benchmarks/results/resampling.json.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from _common import time_interleaved, write_results

from probinfer.resampling import _resample, resample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    import blackjax.smc.resampling as bj

    bj_sys = jax.jit(bj.systematic, static_argnums=2)
    ours_jit = jax.jit(lambda k, lw: _resample(k, lw, lw.shape[0], "systematic"))
    rows = []
    for n in args.sizes:
        lw = jax.random.normal(jax.random.key(n), (n,), dtype=jnp.float32) * 2.0
        w = jnp.exp(lw - jax.scipy.special.logsumexp(lw))
        key = jax.random.key(1)

        # Same uniform => same ancestors wherever float rounding agrees.
        ours_idx = np.asarray(resample(key, lw))
        bj_idx = np.asarray(bj_sys(key, w, n))
        agree = float(np.mean(ours_idx == bj_idx))

        t = time_interleaved(
            {
                "bj": lambda k=key, w=w, n=n: bj_sys(k, w, n).block_until_ready(),
                "jit": lambda k=key, lw=lw: ours_jit(k, lw).block_until_ready(),
                "api": lambda k=key, lw=lw: resample(k, lw).block_until_ready(),
            },
            args.repeats,
        )
        t_bj, t_jit, t_api = t["bj"], t["jit"], t["api"]
        rows.append(
            {
                "n": n,
                "blackjax_s": t_bj,
                "probinfer_jit_s": t_jit,
                "probinfer_api_s": t_api,
                "speedup_jit": t_bj / t_jit,
                "speedup_api": t_bj / t_api,
                "index_agreement": agree,
            }
        )

    print(
        f"{'N':>9} {'blackjax ms':>12} {'ours (jit) ms':>14} {'ours (api) ms':>14} "
        f"{'speed-up jit':>13} {'speed-up api':>13} {'same idx':>9}"
    )
    for r in rows:
        print(
            f"{r['n']:>9} {1e3 * r['blackjax_s']:>12.3f} {1e3 * r['probinfer_jit_s']:>14.3f} "
            f"{1e3 * r['probinfer_api_s']:>14.3f} {r['speedup_jit']:>12.2f}x "
            f"{r['speedup_api']:>12.2f}x {r['index_agreement']:>9.4f}"
        )
    path = write_results(
        "resampling",
        {
            "description": "systematic resampling, median wall time after compilation",
            "jax": jax.__version__,
            "rows": rows,
            "notes": "api = probinfer.resample incl. input validation; jit = inside a jitted "
            "caller, as in SMC loops",
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
