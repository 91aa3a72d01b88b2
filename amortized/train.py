"""Training amortized networks, with checkpoint and resume.

:func:`train_loop` is the one training loop of the package (AdamW, linear warm-up then cosine
decay, gradient clipping, checkpoint/resume in safetensors + JSON, progress bar, CPU/CUDA); it
is model-agnostic and used by :func:`train_pfn` and by
:func:`amortized.dt_train.train_dt` (Distribution Transformers).

PFN training: each step draws ``batch_size`` datasets of ``n_points`` points from the prior,
picks one random split position ``n_train`` for the whole batch, and minimises the
bar-distribution NLL of the held-out points.

The data of step ``t`` is a function of ``(seed, t)`` only, so a run resumed from a checkpoint
sees exactly the batches it would have seen uninterrupted. A checkpoint directory holds

* the caller's loadable model files (for a PFN ``model.safetensors`` + ``config.json``),
* ``optimizer.safetensors`` (AdamW moments) and ``train_state.json`` (step, run record, loss log).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from amortized.bar_torch import bar_nll, borders_from_samples
from amortized.model import PFNConfig, PFNTransformer
from amortized.pfn import PFN

__all__ = ["OptimConfig", "TrainConfig", "step_key", "train_loop", "train_pfn"]

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
    seed: int = 0
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


def step_key(seed: int, step: int) -> np.ndarray:
    """Key (a uint32 pair usable by every :class:`~amortized.priors.Prior`) of one step."""
    return np.array([seed % 2**32, step % 2**32], dtype=np.uint32)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _save_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for i, st in opt.state_dict()["state"].items():
        for name, t in st.items():
            tensors[f"state.{i}.{name}"] = torch.as_tensor(t).detach().cpu().contiguous()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def _load_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
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
        Where checkpoints are written every ``checkpoint_every_s`` seconds and at the end. If it
        already holds a checkpoint, training resumes from it; its configs must match, except
        ``n_steps``, which may be changed to extend or shorten a run (the cosine schedule is
        recomputed for the new total).
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
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if getattr(prior, "x_dim", None) != model_config.x_dim:
        raise ValueError(
            f"prior.x_dim ({getattr(prior, 'x_dim', None)}) must equal "
            f"model_config.x_dim ({model_config.x_dim})"
        )
    tc = train_config
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None

    torch.manual_seed(tc.seed)  # parameter initialisation only; data comes from step keys
    model = PFNTransformer(model_config).to(device)
    if ckpt is not None and (ckpt / "train_state.json").is_file():
        loaded = PFN.load(ckpt, device=device, expected_config=model_config)
        model.load_state_dict(loaded.model.state_dict())
        borders = loaded.borders
    else:
        _, y = prior.sample(step_key(tc.seed, _BORDER_STEP), tc.n_border_datasets, tc.n_points)
        borders = borders_from_samples(y, model_config.n_buckets)
    borders_t = torch.from_numpy(np.asarray(borders)).to(device)
    optim = OptimConfig(
        n_steps=tc.n_steps,
        lr=tc.lr,
        warmup_steps=tc.warmup_steps,
        weight_decay=tc.weight_decay,
        grad_clip=tc.grad_clip,
    )
    # n_steps may change on resume (the cosine schedule is recomputed for the new total);
    # everything else must match, otherwise the run would silently change its data/model
    record = {
        "train_config": {k: v for k, v in asdict(tc).items() if k != "n_steps"},
        "model_config": model_config.to_dict(),
    }

    def batch_fn(step: int):
        x, y = prior.sample(step_key(tc.seed, step), tc.batch_size, tc.n_points)
        rng = np.random.default_rng([tc.seed, step, 1])
        n_train = int(rng.integers(tc.min_train, tc.max_train + 1))
        return torch.from_numpy(x).to(device), torch.from_numpy(y).to(device), n_train

    def loss_fn(net, batch):
        xt, yt, n_train = batch
        logits = net(xt[:, :n_train], yt[:, :n_train], xt[:, n_train:])
        return bar_nll(borders_t, logits, yt[:, n_train:])

    def make_pfn(state: dict) -> PFN:
        meta = {
            "prior": _prior_description(prior),
            "training": {
                **asdict(tc),
                "steps_done": state["step"],
                "wall_time_s": round(state["elapsed_s"], 1),
                "device": str(device),
                "torch_threads": torch.get_num_threads(),
            },
        }
        return PFN(model, borders, meta)

    state = train_loop(
        model,
        loss_fn,
        batch_fn,
        optim,
        record=record,
        save_model=lambda directory, st: make_pfn(st).save(directory),
        checkpoint_dir=ckpt,
        checkpoint_every_s=checkpoint_every_s,
        progress=progress,
        log_file=log_file,
        max_seconds=max_seconds,
    )
    return make_pfn(state)


# ---------------------------------------------------------------------------------------------
# The model-agnostic loop (shared by every amortized network)


@dataclass(frozen=True)
class OptimConfig:
    """Optimisation settings of :func:`train_loop` (AdamW, warm-up then cosine decay)."""

    n_steps: int = 1000
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0

    def __post_init__(self):
        if not (isinstance(self.n_steps, int) and self.n_steps >= 1):
            raise ValueError(f"n_steps must be a positive integer, got {self.n_steps!r}")
        if not (self.lr > 0 and self.warmup_steps >= 0 and self.grad_clip > 0):
            raise ValueError(
                "lr and grad_clip must be > 0 and warmup_steps >= 0, got "
                f"{self.lr}, {self.grad_clip}, {self.warmup_steps}"
            )


def train_loop(
    model: torch.nn.Module,
    loss_fn,
    batch_fn,
    optim: OptimConfig,
    *,
    record: dict,
    save_model=None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every_s: float = 180.0,
    progress: bool = True,
    log_file=None,
    max_seconds: float | None = None,
) -> dict:
    """Minimise ``loss_fn(model, batch_fn(step))`` over steps, with checkpoint and resume.

    Parameters
    ----------
    model : torch.nn.Module
        Trained in place. On resume its weights are read from ``checkpoint_dir`` by the caller
        (the saved model format belongs to the caller, see ``save_model``).
    loss_fn : callable ``(model, batch) -> scalar tensor``
    batch_fn : callable ``(step) -> batch``
        Must be a function of the step only (e.g. drawn from a key folded with the step), so a
        resumed run sees exactly the batches of an uninterrupted one.
    optim : OptimConfig
    record : dict
        JSON description of the run (model and data settings). A checkpoint is resumed only if
        its record equals this one; ``optim.n_steps`` alone may change on resume.
    save_model : callable ``(directory, state) -> None``, optional
        Writes the loadable model files; called at every checkpoint with the loop state
        ``{"step", "losses", "elapsed_s"}``.
    checkpoint_dir : path, optional
        Holds ``optimizer.safetensors`` and ``train_state.json`` (written last) next to the
        caller's model files.

    Returns
    -------
    dict
        ``{"step", "losses", "elapsed_s"}``; ``losses`` is a list of ``[step, ema_loss]``.
    """
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    state_file = ckpt / "train_state.json" if ckpt is not None else None
    opt = torch.optim.AdamW(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
    state = {"step": 0, "losses": [], "elapsed_s": 0.0}
    if state_file is not None and state_file.is_file():
        saved = json.loads(state_file.read_text())
        mine = {k: v for k, v in asdict(optim).items() if k != "n_steps"}
        theirs = {k: v for k, v in saved.get("optim", {}).items() if k != "n_steps"}
        theirs_rec, mine_rec = saved.get("record") or {}, json.loads(json.dumps(record))
        differ = sorted(
            k for k in set(theirs_rec) | set(mine_rec) if theirs_rec.get(k) != mine_rec.get(k)
        ) + (["optim"] if mine != theirs else [])
        if differ:
            raise ValueError(
                f"checkpoint in {str(ckpt)!r} was written by a different run ({differ} differ; "
                "only n_steps may change on resume)"
            )
        _load_optimizer(opt, ckpt / "optimizer.safetensors")
        state = {k: saved[k] for k in ("step", "losses", "elapsed_s")}
        # a changed n_steps (recomputed cosine schedule) is kept in the record of the run
        state["n_steps_changes"] = saved.get("n_steps_changes", [])
        if saved["optim"]["n_steps"] != optim.n_steps:
            state["n_steps_changes"].append(
                [saved["step"], saved["optim"]["n_steps"], optim.n_steps]
            )
    step = int(state["step"])
    for g in opt.param_groups:
        g["lr"] = optim.lr * lr_factor(step, optim.warmup_steps, optim.n_steps)

    t0 = time.time()

    def checkpoint() -> None:
        state.update(step=step, elapsed_s=state_elapsed + time.time() - t0)
        if ckpt is None:
            return
        ckpt.mkdir(parents=True, exist_ok=True)
        if save_model is not None:
            save_model(ckpt, dict(state))
        _save_optimizer(opt, ckpt / "optimizer.safetensors")
        tmp = state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({**state, "optim": asdict(optim), "record": record}))
        os.replace(tmp, state_file)

    state_elapsed = float(state["elapsed_s"])
    last_ckpt = t0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=optim.n_steps, initial=step, file=log_file, mininterval=5.0, dynamic_ncols=False
        )
    model.train()
    ema = None
    while step < optim.n_steps:
        loss = loss_fn(model, batch_fn(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        opt.step()
        step += 1
        for g in opt.param_groups:
            g["lr"] = optim.lr * lr_factor(step, optim.warmup_steps, optim.n_steps)
        lv = float(loss.detach())
        ema = lv if ema is None else 0.99 * ema + 0.01 * lv
        if step % 50 == 0 or step == optim.n_steps:
            state["losses"].append([step, round(ema, 5)])
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
    return dict(state)
