"""Train the shipped 1-D GP-prior PFN (``amortized.load_pretrained("gp-1d")``).

Usage (CPU, one thread; resumable: rerun the same command to continue from the checkpoint)::

    python scripts/train_pfn_gp.py --checkpoint runs/pfn_gp_1d --steps 6000 \
        --out amortized/pretrained

The prior is the fixed-hyperparameter RBF GP of ``amortized.pretrained.GP_1D_PRIOR``
(lengthscale 0.25, outputscale 1, noise variance 0.05, x ~ U[0, 1]); 0..50 training points.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="runs/pfn_gp_1d", help="checkpoint directory")
    p.add_argument("--out", default=None, help="where to write the final model (PFN.save)")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=256)
    p.add_argument("--buckets", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="gp_1d", help="file stem of the saved model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--checkpoint-every", type=float, default=180.0, help="seconds")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (resumable) after this")
    p.add_argument(
        "--evaluate", type=int, default=200, help="held-out datasets per n_train (0: skip)"
    )
    p.add_argument("--log", default=None, help="progress-bar log file (default: stderr)")
    a = p.parse_args(argv)

    torch.set_num_threads(a.threads)
    from amortized.model import PFNConfig
    from amortized.pretrained import GP_1D_PRIOR, GP_1D_TRAIN
    from amortized.train import TrainConfig, train_pfn

    mc = PFNConfig(
        x_dim=1,
        d_model=a.d_model,
        n_heads=a.heads,
        n_layers=a.layers,
        d_ff=a.d_ff,
        n_buckets=a.buckets,
    )
    tc = TrainConfig(
        **{
            **GP_1D_TRAIN,
            "n_steps": a.steps,
            "batch_size": a.batch_size,
            "lr": a.lr,
            "warmup_steps": a.warmup,
            "seed": a.seed,
        }
    )
    log = open(a.log, "a") if a.log else None
    t0 = time.time()
    pfn = train_pfn(
        GP_1D_PRIOR,
        mc,
        tc,
        checkpoint_dir=a.checkpoint,
        checkpoint_every_s=a.checkpoint_every,
        device="cpu" if not torch.cuda.is_available() else "cuda",
        log_file=log,
        max_seconds=None if a.max_minutes is None else 60 * a.max_minutes,
    )
    done = pfn.meta["training"]["steps_done"]
    print(
        f"steps {done}/{a.steps}, this run {time.time() - t0:.0f} s, "
        f"total {pfn.meta['training']['wall_time_s']} s",
        file=log or sys.stderr,
        flush=True,
    )
    if a.out and done >= a.steps:
        pfn.meta["training"]["command"] = "python scripts/train_pfn_gp.py " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        pfn.meta["training"]["hardware"] = f"{platform.processor() or platform.machine()}, CPU"
        if a.evaluate:
            from amortized.evaluate import nll_vs_gp

            res = nll_vs_gp(pfn, GP_1D_PRIOR, n_datasets=a.evaluate, n_train_values=(5, 10, 20, 50))
            pfn.meta["evaluation"] = res
            print(json.dumps(res, indent=1), file=log or sys.stderr, flush=True)
        pfn.save(a.out, name=a.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
