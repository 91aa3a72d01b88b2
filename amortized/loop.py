"""The one training loop of :mod:`amortized`: AdamW, warm-up and cosine decay, checkpoint/resume.

:func:`train_loop` is model-agnostic (AdamW, linear warm-up then cosine decay, gradient
clipping, progress bar, CPU/CUDA, checkpoint/resume); :func:`amortized.train.train_pfn` and
:func:`amortized.dt_train.train_dt` build a network, a batch function and a loss and hand them
to it. :class:`RunOptions` are the keywords of such a run (checkpoint directory, device,
progress, time limit), resolved by :func:`open_run`; :func:`seeded_init` makes a network's
initialisation a function of the seed (the global torch RNG is left untouched).

A checkpoint directory is a :class:`~amortized.checkpoint.CheckpointDir`: one tensor file
(network weights, the caller's extra tensors such as the PFN's bucket borders, AdamW state,
with the step in its metadata) and a manifest committed last by atomic rename, a lock held
while training, checksums verified on resume. A run killed at any point (``kill -9``
included) resumes to weights bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import IO, Any, TypedDict, Unpack

import torch

from amortized.checkpoint import CheckpointDir
from probinfer.progress import progress_bar

__all__ = [
    "LOOP_DEFAULTS",
    "LoopOptions",
    "OptimConfig",
    "RunOptions",
    "lr_factor",
    "open_run",
    "param_groups",
    "run_summary",
    "seeded_init",
    "train_loop",
]


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


class LoopOptions(TypedDict, total=False):
    """How :func:`train_loop` runs (all optional; the defaults are :data:`LOOP_DEFAULTS`).

    Attributes
    ----------
    checkpoint_every_s : float
        Seconds between checkpoints (0: after every step; default 180).
    progress : bool or None
        ``None`` (default): a tqdm bar when ``log_file`` (stderr when None) is a terminal or
        in a Jupyter kernel with widgets, else one summary line at the end; ``True``: the
        bar; ``False``: nothing (:func:`probinfer.progress.progress_bar`).
    log_file : file or None
        Where the progress bar or summary line is written (stderr when None).
    max_seconds : float or None
        Stop (after checkpointing) when this wall time is exceeded; resume later.
    """

    checkpoint_every_s: float
    progress: bool | None
    log_file: IO[str] | None
    max_seconds: float | None


#: The defaults of :class:`LoopOptions`.
LOOP_DEFAULTS: LoopOptions = {
    "checkpoint_every_s": 180.0,
    "progress": None,
    "log_file": None,
    "max_seconds": None,
}


class RunOptions(LoopOptions, total=False):
    """The keywords of a training run, shared by :func:`train_pfn` and
    :func:`amortized.dt_train.train_dt` (all optional): those of :class:`LoopOptions`, and

    Attributes
    ----------
    checkpoint_dir : path or None
        Where checkpoints are committed every ``checkpoint_every_s`` seconds and at the end
        (see :mod:`amortized.checkpoint`). If it already holds a checkpoint, training resumes
        from it. The directory is locked while training: a second trainer on it gets
        :class:`~amortized.checkpoint.CheckpointLockedError`.
    device : str or torch.device or None
        ``"cuda"`` when available unless given.
    """

    checkpoint_dir: str | os.PathLike | None
    device: str | torch.device | None


def _check_keywords(given: dict, allowed) -> None:
    """``TypeError`` naming the keywords of ``given`` not in ``allowed`` (a misspelt option)."""
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise TypeError(
            f"unexpected keyword arguments {unknown}; expected some of {sorted(allowed)}"
        )


@contextmanager
def open_run(run: RunOptions) -> Iterator[tuple[str | torch.device, CheckpointDir | None, dict]]:
    """Resolve a run's options: its device, its checkpoint directory (locked while the
    ``with`` block runs) and the keywords left for :func:`train_loop`.

    Raises
    ------
    TypeError
        If ``run`` has a key that is not one of :class:`RunOptions` (a misspelt keyword).
    """
    _check_keywords(run, RunOptions.__annotations__)
    loop_options = dict(run)
    device = loop_options.pop("device", None)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    path = loop_options.pop("checkpoint_dir", None)
    ckpt = CheckpointDir(path) if path is not None else None
    with ckpt if ckpt is not None else nullcontext():
        yield device, ckpt, loop_options


def run_summary(state: dict, device) -> dict:
    """What a finished (or stopped) :func:`train_loop` run did, for a model's
    ``meta["training"]``."""
    return {
        "steps_done": state["step"],
        # [step, old n_steps, new n_steps] for each resume that changed the schedule
        "n_steps_changes": state.get("n_steps_changes", []),
        "final_loss": state["losses"][-1][1] if state["losses"] else None,
        "wall_time_s": round(state["elapsed_s"], 1),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
    }


def seeded_init(build: Callable[[], torch.nn.Module], seed: int) -> torch.nn.Module:
    """``build()`` with torch's CPU generator seeded by ``seed``: a network's parameter
    initialisation is a function of the seed, and the global torch RNG is left untouched."""
    gen = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.set_state(gen.get_state())
        return build()


@dataclass(frozen=True)
class OptimConfig:
    """Optimisation settings of :func:`train_loop` (AdamW, warm-up then cosine decay).

    ``no_decay`` holds :func:`fnmatch.fnmatch` patterns of parameter names (as in
    ``model.named_parameters()``, e.g. ``"*.bias"``) trained without weight decay.
    """

    n_steps: int = 1000
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    no_decay: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "no_decay", tuple(self.no_decay))
        if not all(isinstance(p, str) for p in self.no_decay):
            raise TypeError(f"no_decay must be a tuple of strings, got {self.no_decay!r}")
        if not (isinstance(self.n_steps, int) and self.n_steps >= 1):
            raise ValueError(f"n_steps must be a positive integer, got {self.n_steps!r}")
        if not (self.lr > 0 and self.warmup_steps >= 0 and self.grad_clip > 0):
            raise ValueError(
                "lr and grad_clip must be > 0 and warmup_steps >= 0, got "
                f"{self.lr}, {self.grad_clip}, {self.warmup_steps}"
            )


def param_groups(model: torch.nn.Module, optim: OptimConfig) -> list[dict]:
    """AdamW groups: ``optim.weight_decay`` except on the names matching ``optim.no_decay``.

    Raises
    ------
    ValueError
        If a ``no_decay`` pattern matches no parameter (a typo would silently decay).
    """
    decay, no_decay, used = [], [], set()
    for name, p in model.named_parameters():
        hits = {pat for pat in optim.no_decay if fnmatch.fnmatchcase(name, pat)}
        used |= hits
        (no_decay if hits else decay).append(p)
    unused = sorted(set(optim.no_decay) - used)
    if unused:
        raise ValueError(f"no_decay patterns {unused} match no parameter of the model")
    groups = [{"params": decay, "weight_decay": optim.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def train_loop(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    batch_fn: Callable[[int], Any],
    optim: OptimConfig,
    *,
    record: dict[str, Any],
    extra_tensors: dict[str, torch.Tensor] | None = None,
    checkpoint: CheckpointDir | None = None,
    **options: Unpack[LoopOptions],
) -> dict[str, Any]:
    """Minimise ``loss_fn(model, batch_fn(step))`` over steps, with checkpoint and resume.

    Parameters
    ----------
    model : torch.nn.Module
        Trained in place; on resume its weights are restored from the checkpoint.
    loss_fn : callable ``(model, batch) -> scalar tensor``
    batch_fn : callable ``(step) -> batch``
        Must be a function of the step only (e.g. drawn from a key folded with the step), so a
        resumed run sees exactly the batches of an uninterrupted one.
    optim : OptimConfig
    record : dict
        JSON description of the run (model and data settings). A checkpoint is resumed only if
        its record equals this one; ``optim.n_steps`` alone may change on resume.
    extra_tensors : dict, optional
        Tensors committed with every checkpoint (e.g. the PFN's bucket borders); the caller
        reads them back with ``checkpoint.load()`` before resuming.
    checkpoint : CheckpointDir, optional
        The run's (locked) checkpoint directory: model weights, ``extra_tensors`` and the AdamW
        state in one tensor file, the loop state in the manifest, committed atomically.
    **options
        Checkpoint interval, progress display, time limit: :class:`LoopOptions`.

    Returns
    -------
    dict
        ``{"step", "losses", "elapsed_s", "loss_ema", "n_steps_changes"}``; ``losses`` is a
        list of ``[step, ema_loss]``.
    """
    _check_keywords(options, LOOP_DEFAULTS)
    o: LoopOptions = {**LOOP_DEFAULTS, **options}
    opt = torch.optim.AdamW(param_groups(model, optim), lr=optim.lr)
    saved = checkpoint.load() if checkpoint is not None else None
    state = {"step": 0, "losses": [], "elapsed_s": 0.0, "loss_ema": None, "n_steps_changes": []}
    if saved is not None:
        state = _resume(saved, str(checkpoint.path), model, opt, optim, record)
    step = int(state["step"])
    ema = state["loss_ema"]
    _set_lr(opt, optim, step)
    t0 = time.time()
    elapsed_before = float(state["elapsed_s"])
    committed = step if saved is not None else -1

    def commit() -> None:
        nonlocal committed
        state.update(step=step, elapsed_s=elapsed_before + time.time() - t0, loss_ema=ema)
        if checkpoint is None or committed == step:
            return
        tensors = _checkpoint_tensors(model, extra_tensors or {}, opt)
        checkpoint.save(step, tensors, {**state, "optim": asdict(optim), "record": record})
        committed = step

    last_ckpt = t0
    bar = progress_bar(
        optim.n_steps,
        desc="training",
        progress=o["progress"],
        file=o["log_file"],
        unit="step",
        initial=step,
        mininterval=5.0,
    )
    model.train()
    while step < optim.n_steps:
        loss = loss_fn(model, batch_fn(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        opt.step()
        step += 1
        _set_lr(opt, optim, step)
        lv = float(loss.detach())
        ema = lv if ema is None else 0.99 * ema + 0.01 * lv
        if step % 50 == 0 or step == optim.n_steps:
            state["losses"].append([step, round(ema, 5)])
        bar.update(1)
        if step % 25 == 0 or step == optim.n_steps:
            bar.set_postfix(loss=f"{ema:.4f}", lr=f"{opt.param_groups[0]['lr']:.2e}")
        now = time.time()
        if now - last_ckpt >= o["checkpoint_every_s"]:
            commit()
            last_ckpt = now
        if o["max_seconds"] is not None and now - t0 >= o["max_seconds"]:
            break
    bar.close()
    commit()
    model.eval()
    return dict(state)


def _checkpoint_tensors(model: torch.nn.Module, extra: dict, opt) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint: ``model.*`` weights, the caller's extra tensors and the
    ``optimizer.*`` state, on the CPU."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(extra)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return {**tensors, **_optimizer_tensors(opt)}


def _set_lr(opt: torch.optim.Optimizer, optim: OptimConfig, step: int) -> None:
    """The learning rate of ``step`` on the schedule (warm-up, then cosine decay)."""
    for g in opt.param_groups:
        g["lr"] = optim.lr * lr_factor(step, optim.warmup_steps, optim.n_steps)


def _resume(saved: tuple, where: str, model, opt, optim: OptimConfig, record: dict) -> dict:
    """Restore ``model`` and ``opt`` from a loaded checkpoint and return the loop state.

    Raises
    ------
    ValueError
        If the checkpoint's record or optimiser settings (``n_steps`` aside) differ from this
        run's.
    """
    step0, tensors, st = saved
    # JSON round trip (tuples are saved as lists); fields newer than the checkpoint default
    defaults = json.loads(json.dumps(asdict(OptimConfig())))
    mine = {k: v for k, v in json.loads(json.dumps(asdict(optim))).items() if k != "n_steps"}
    theirs = {k: v for k, v in {**defaults, **st.get("optim", {})}.items() if k != "n_steps"}
    theirs_rec, mine_rec = st.get("record") or {}, json.loads(json.dumps(record))
    differ = sorted(
        k for k in set(theirs_rec) | set(mine_rec) if theirs_rec.get(k) != mine_rec.get(k)
    ) + (["optim"] if mine != theirs else [])
    if differ:
        raise ValueError(
            f"checkpoint in {where!r} does not match this run: {differ} "
            "differ (only n_steps may change on resume)"
        )
    model.load_state_dict(
        {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    )
    _load_optimizer(opt, {k: v for k, v in tensors.items() if k.startswith("optimizer.")})
    state = {k: st[k] for k in ("step", "losses", "elapsed_s", "loss_ema", "n_steps_changes")}
    state["step"] = step0
    if st["optim"]["n_steps"] != optim.n_steps:  # the recomputed schedule is recorded
        state["n_steps_changes"].append([step0, st["optim"]["n_steps"], optim.n_steps])
    return state
