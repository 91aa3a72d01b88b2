"""Training a PFN, through the one training loop :func:`amortized.loop.train_loop`.

The loop (AdamW, warm-up then cosine decay, clipping, progress, crash-safe checkpoint and
resume) is shared with :func:`amortized.dt_train.train_dt`.

PFN training: each step draws ``batch_size`` datasets of ``n_points`` points from the prior,
picks one random split position ``n_train`` for the whole batch, and minimises the
bar-distribution NLL of the held-out points.

Randomness goes through ``jax.random`` keys: the data of step ``t`` comes from the key
:func:`step_key` ``(seed, t)`` only, so a run resumed from a checkpoint sees exactly the batches
it would have seen uninterrupted; the parameter initialisation uses a torch generator seeded
with ``seed`` inside :func:`torch.random.fork_rng` (the global torch RNG is left untouched).

The checkpoint holds the bucket borders too (placed once from prior draws), so a resumed run
uses the borders it started with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Unpack

import numpy as np
import torch

from amortized.bar_torch import bar_nll, borders_from_samples
from amortized.loop import OptimConfig, RunOptions, open_run, run_summary, seeded_init, train_loop
from amortized.model import PFNConfig, PFNTransformer
from amortized.pfn import PFN
from amortized.priors import indexed_key, key_words

__all__ = ["TrainConfig", "split_position", "step_key", "train_pfn"]

_BORDER_STEP = 2**32 - 1  # reserved "step" for the draws that place the borders


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of :func:`train_pfn`."""

    n_steps: int = 1000
    batch_size: int = 32
    n_points: int = 60
    min_train: int = 0
    max_train: int = 50
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0  # root of the step keys and of the torch initialisation generator
    n_border_datasets: int = 2000

    def __post_init__(self):
        if self.n_steps < 1 or self.batch_size < 1:
            raise ValueError("n_steps and batch_size must be positive integers")
        if not (0 <= self.min_train <= self.max_train < self.n_points):
            raise ValueError(
                "need 0 <= min_train <= max_train < n_points, got "
                f"min_train={self.min_train}, max_train={self.max_train}, n_points={self.n_points}"
            )
        if not (self.lr > 0 and self.warmup_steps >= 0):
            raise ValueError(
                f"lr must be > 0 and warmup_steps >= 0, got {self.lr}, {self.warmup_steps}"
            )


def step_key(seed: int, step: int):
    """The ``jax.random`` key of the datasets of step ``step`` (a function of ``(seed, step)``)."""
    return indexed_key(seed, step)


def split_position(key, min_train: int, max_train: int) -> int:
    """The number of context points ``n_train`` of one step, uniform on ``[min, max]``."""
    rng = np.random.default_rng([*key_words(key).tolist(), 1])
    return int(rng.integers(min_train, max_train + 1))


def _prior_description(prior) -> dict:
    d = {"class": type(prior).__name__}
    try:
        d.update({k: v for k, v in asdict(prior).items()})
    except TypeError:
        pass
    return d


def train_pfn(
    prior, model_config: PFNConfig, train_config: TrainConfig, **run: Unpack[RunOptions]
) -> PFN:
    """Train a PFN on ``prior``; resume from ``run["checkpoint_dir"]`` if it holds a checkpoint.

    Parameters
    ----------
    prior : Prior
        Dataset sampler (``prior.sample(key, n_datasets, n_points)``).
    model_config, train_config : PFNConfig, TrainConfig
    **run
        Where and how the run goes (checkpoint directory, device, progress, time limit):
        the keywords of :class:`~amortized.loop.RunOptions`. On resume the configs must match the
        checkpoint's, except ``n_steps``, which may be changed to extend or shorten a run (the
        cosine schedule is recomputed for the new total).

    Returns
    -------
    PFN
        The trained network (in eval mode), with ``meta["training"]`` describing the run.

    Raises
    ------
    ValueError
        If the checkpoint's configs differ, or its files are damaged (the message names the
        file and how to recover).
    TypeError
        If a keyword is not one of :class:`~amortized.loop.RunOptions`.
    """
    if getattr(prior, "x_dim", None) != model_config.x_dim:
        raise ValueError(
            f"prior.x_dim ({getattr(prior, 'x_dim', None)}) must equal "
            f"model_config.x_dim ({model_config.x_dim})"
        )
    tc = train_config
    with open_run(run) as (device, ckpt, loop_options):
        model = seeded_init(lambda: PFNTransformer(model_config), tc.seed).to(device)
        saved = ckpt.load() if ckpt is not None else None
        if saved is not None and "borders" in saved[1]:
            borders = saved[1]["borders"].numpy()
        else:
            key = step_key(tc.seed, _BORDER_STEP)
            _, y = prior.sample(key, tc.n_border_datasets, tc.n_points)
            borders = borders_from_samples(y, model_config.n_buckets)
        borders_t = torch.from_numpy(np.asarray(borders)).to(device)
        optim = OptimConfig(
            n_steps=tc.n_steps,
            lr=tc.lr,
            warmup_steps=tc.warmup_steps,
            weight_decay=tc.weight_decay,
            grad_clip=tc.grad_clip,
        )
        record = {
            "train_config": {k: v for k, v in asdict(tc).items() if k != "n_steps"},
            "model_config": model_config.to_dict(),
            "prior": _prior_description(prior),
        }

        def batch_fn(step: int):
            key = step_key(tc.seed, step)
            x, y = prior.sample(key, tc.batch_size, tc.n_points)
            n_train = split_position(key, tc.min_train, tc.max_train)
            return torch.from_numpy(x).to(device), torch.from_numpy(y).to(device), n_train

        def loss_fn(net, batch):
            xt, yt, n_train = batch
            logits = net(xt[:, :n_train], yt[:, :n_train], xt[:, n_train:])
            return bar_nll(borders_t, logits, yt[:, n_train:])

        state = train_loop(
            model,
            loss_fn,
            batch_fn,
            optim,
            record=record,
            extra_tensors={"borders": torch.from_numpy(np.array(borders, dtype=np.float32))},
            checkpoint=ckpt,
            **loop_options,
        )
    meta = {
        "prior": _prior_description(prior),
        "training": {**asdict(tc), **run_summary(state, device)},
    }
    return PFN(model, borders, meta)
