"""Training a PFN on draws from a prior, with crash-safe checkpoint and resume.

Each step draws ``batch_size`` datasets of ``n_points`` points from the prior, picks one random
split position ``n_train`` for the whole batch (PFN training), and minimises the bar-distribution
NLL of the held-out points (AdamW, linear warm-up then cosine decay, gradient clipping).

Randomness goes through ``jax.random`` keys: the data of step ``t`` comes from the key
:func:`step_key` ``(seed, t)`` only, so a run resumed from a checkpoint sees exactly the batches
it would have seen uninterrupted; the parameter initialisation uses a torch generator seeded
with ``seed`` inside :func:`torch.random.fork_rng` (the global torch RNG is left untouched).

A checkpoint directory is a :class:`~amortized.checkpoint.CheckpointDir`: one tensor file
(network weights, bucket borders, AdamW state, with the step in its metadata) and a manifest
committed last by atomic rename, a lock held while training, checksums verified on resume. A run
killed at any point (``kill -9`` included) resumes to weights bit-identical to an uninterrupted
run.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import numpy as np
import torch

from amortized.bar_torch import bar_nll, borders_from_samples
from amortized.checkpoint import CheckpointDir
from amortized.model import PFNConfig, PFNTransformer
from amortized.pfn import PFN
from amortized.priors import indexed_key, key_words

__all__ = ["TrainConfig", "train_pfn", "step_key", "split_position"]

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


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state (AdamW moments and step counts) as named tensors."""
    tensors = {}
    for i, st in opt.state_dict()["state"].items():
        for name, t in st.items():
            tensors[f"optimizer.{i}.{name}"] = torch.as_tensor(t).detach().cpu().contiguous()
    return tensors


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict = {}
    for key, t in tensors.items():
        _, i, name = key.split(".", 2)
        state.setdefault(int(i), {})[name] = t
    sd["state"] = state
    opt.load_state_dict(sd)


def _prior_description(prior) -> dict:
    d = {"class": type(prior).__name__}
    try:
        d.update({k: v for k, v in asdict(prior).items()})
    except TypeError:
        pass
    return d


def train_pfn(
    prior,
    model_config: PFNConfig,
    train_config: TrainConfig,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every_s: float = 180.0,
    device: str | torch.device | None = None,
    progress: bool = True,
    log_file=None,
    max_seconds: float | None = None,
) -> PFN:
    """Train a PFN on ``prior``; resume from ``checkpoint_dir`` if it holds a checkpoint.

    Parameters
    ----------
    prior : Prior
        Dataset sampler (``prior.sample(key, n_datasets, n_points)``).
    model_config, train_config : PFNConfig, TrainConfig
    checkpoint_dir : path, optional
        Where checkpoints are committed every ``checkpoint_every_s`` seconds and at the end
        (see :mod:`amortized.checkpoint`). If it already holds a checkpoint, training resumes
        from it; its configs must match, except ``n_steps``, which may be changed to extend or
        shorten a run (the cosine schedule is recomputed for the new total). The directory is
        locked while training: a second trainer on it gets
        :class:`~amortized.checkpoint.CheckpointLockedError`.
    checkpoint_every_s : float
        Seconds between checkpoints (0: after every step).
    device : str, optional
        ``"cuda"`` when available unless given.
    progress : bool
        Show a tqdm progress bar (to ``log_file`` if given).
    max_seconds : float, optional
        Stop (after checkpointing) when this wall time is exceeded; resume later.

    Returns
    -------
    PFN
        The trained network (in eval mode), with ``meta["training"]`` describing the run.

    Raises
    ------
    ValueError
        If the checkpoint's configs differ, or its files are damaged (the message names the
        file and how to recover).
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if getattr(prior, "x_dim", None) != model_config.x_dim:
        raise ValueError(
            f"prior.x_dim ({getattr(prior, 'x_dim', None)}) must equal "
            f"model_config.x_dim ({model_config.x_dim})"
        )
    tc = train_config
    ckpt = CheckpointDir(checkpoint_dir) if checkpoint_dir is not None else None
    with ckpt if ckpt is not None else nullcontext():
        return _train(
            prior,
            model_config,
            tc,
            ckpt,
            checkpoint_every_s,
            device,
            progress,
            log_file,
            max_seconds,
        )


def _train(
    prior, model_config, tc, ckpt, checkpoint_every_s, device, progress, log_file, max_seconds
) -> PFN:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tc.seed)  # parameter initialisation only; data comes from step keys
        model = PFNTransformer(model_config)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    step = 0
    losses: list[list[float]] = []
    ema = None
    elapsed_before = 0.0

    saved = ckpt.load() if ckpt is not None else None
    if saved is not None:
        step, tensors, st = saved
        # n_steps may change on resume (the cosine schedule is recomputed for the new total);
        # everything else must match, otherwise the run would silently change its data/model
        had = {k: v for k, v in st["train_config"].items() if k != "n_steps"}
        wanted = {k: v for k, v in asdict(tc).items() if k != "n_steps"}
        if had != wanted:
            raise ValueError(
                f"checkpoint train_config {st['train_config']} does not match {asdict(tc)} "
                "(only n_steps may differ on resume)"
            )
        if st["model_config"] != model_config.to_dict():
            raise ValueError(
                f"checkpoint model config {st['model_config']} does not match the expected "
                f"config {model_config.to_dict()}"
            )
        model.load_state_dict(
            {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        )
        borders = tensors["borders"].numpy()
        _load_optimizer(opt, {k: v for k, v in tensors.items() if k.startswith("optimizer.")})
        losses = st["losses"]
        ema = st["loss_ema"]
        elapsed_before = float(st["elapsed_s"])
    else:
        _, y = prior.sample(step_key(tc.seed, _BORDER_STEP), tc.n_border_datasets, tc.n_points)
        borders = borders_from_samples(y, model_config.n_buckets)

    borders_t = torch.from_numpy(np.asarray(borders)).to(device)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, tc.warmup_steps, tc.n_steps), last_epoch=-1
    )
    for g in opt.param_groups:
        g["lr"] = tc.lr * lr_factor(step, tc.warmup_steps, tc.n_steps)
    sched.last_epoch = step

    def make_pfn() -> PFN:
        meta = {
            "prior": _prior_description(prior),
            "training": {
                **asdict(tc),
                "steps_done": step,
                "wall_time_s": round(elapsed_before + time.time() - t0, 1),
                "device": str(device),
                "torch_threads": torch.get_num_threads(),
            },
        }
        return PFN(model, borders, meta)

    committed = step if saved is not None else -1

    def checkpoint() -> None:
        nonlocal committed
        if ckpt is None or committed == step:
            return
        tensors = {
            f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()
        }
        tensors["borders"] = torch.from_numpy(np.array(borders, dtype=np.float32))
        tensors.update(_optimizer_tensors(opt))
        st = {
            "train_config": asdict(tc),
            "model_config": model_config.to_dict(),
            "prior": _prior_description(prior),
            "losses": losses,
            "loss_ema": ema,
            "elapsed_s": elapsed_before + time.time() - t0,
        }
        ckpt.save(step, tensors, st)
        committed = step

    t0 = time.time()
    last_ckpt = t0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=tc.n_steps, initial=step, file=log_file, mininterval=5.0, dynamic_ncols=False
        )
    model.train()
    while step < tc.n_steps:
        key = step_key(tc.seed, step)
        x, y = prior.sample(key, tc.batch_size, tc.n_points)
        n_train = split_position(key, tc.min_train, tc.max_train)
        xt = torch.from_numpy(x).to(device)
        yt = torch.from_numpy(y).to(device)
        logits = model(xt[:, :n_train], yt[:, :n_train], xt[:, n_train:])
        loss = bar_nll(borders_t, logits, yt[:, n_train:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        sched.step()
        step += 1
        lv = float(loss.detach())
        ema = lv if ema is None else 0.99 * ema + 0.01 * lv
        if step % 50 == 0 or step == tc.n_steps:
            losses.append([step, round(ema, 5)])
        if bar is not None:
            bar.update(1)
            if step % 25 == 0:
                bar.set_postfix(loss=f"{ema:.4f}", lr=f"{opt.param_groups[0]['lr']:.2e}")
        now = time.time()
        if now - last_ckpt >= checkpoint_every_s:
            checkpoint()
            last_ckpt = now
        if max_seconds is not None and now - t0 >= max_seconds:
            break
    if bar is not None:
        bar.close()
    checkpoint()
    model.eval()
    return make_pfn()
