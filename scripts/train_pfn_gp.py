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

#: model flags -> PFNConfig fields (defaults: PFNConfig's)
MODEL_FLAGS = {
    "--d-model": "d_model",
    "--heads": "n_heads",
    "--layers": "n_layers",
    "--d-ff": "d_ff",
    "--buckets": "n_buckets",
}
#: optimisation flags -> (TrainConfig field, default); the dataset sizes are GP_1D_TRAIN's
TRAIN_FLAGS = {
    "--steps": ("n_steps", 6000),
    "--batch-size": ("batch_size", 32),
    "--lr": ("lr", 1e-3),
    "--warmup": ("warmup_steps", 200),
    "--seed": ("seed", 0),
}


def main(argv=None) -> int:
    from amortized.model import PFNConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="runs/pfn_gp_1d", help="checkpoint directory")
    p.add_argument("--out", default=None, help="where to write the final model (PFN.save)")
    for flag, (field, default) in TRAIN_FLAGS.items():
        p.add_argument(flag, dest=field, type=type(default), default=default)
    for flag, field in MODEL_FLAGS.items():
        p.add_argument(flag, dest=field, type=int, default=getattr(PFNConfig(), field))
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
    from amortized.pretrained import GP_1D_PRIOR, GP_1D_TRAIN
    from amortized.train import TrainConfig, train_pfn

    mc = PFNConfig(x_dim=1, **{field: getattr(a, field) for field in MODEL_FLAGS.values()})
    tc = TrainConfig(
        **GP_1D_TRAIN, **{field: getattr(a, field) for field, _ in TRAIN_FLAGS.values()}
    )
    log = open(a.log, "a") if a.log else None
    t0 = time.time()
    pfn = train_pfn(
        GP_1D_PRIOR,
        mc,
        tc,
        checkpoint_dir=a.checkpoint,
        checkpoint_every_s=a.checkpoint_every,
        log_file=log,
        max_seconds=None if a.max_minutes is None else 60 * a.max_minutes,
    )
    done = pfn.meta["training"]["steps_done"]
    print(
        f"steps {done}/{a.n_steps}, this run {time.time() - t0:.0f} s, "
        f"total {pfn.meta['training']['wall_time_s']} s",
        file=log or sys.stderr,
        flush=True,
    )
    if a.out and done >= a.n_steps:
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
