"""Training a Distribution Transformer on a task's meta-prior (through the shared loop).

Each step draws ``batch_size`` problems ``(prior GMM, theta, data)`` from the task with the key
``fold_in(key(seed), step)`` (a ``batch_ramp`` raises the batch size from given steps on) and
minimises the NLL of the true ``theta`` under the predicted
posterior GMM, optionally plus ``prior_weight`` times its NLL under the network's reconstruction
of the prior (the output given no data). The loop itself (AdamW, warm-up + cosine, clipping,
checkpoint/resume, progress) is :func:`amortized.loop.train_loop`, shared with the PFN.

Rao-Blackwellised loss (``theta_draws=S``): the expected loss ``E[-log q(theta | prior, data)]``
over the joint of (prior, theta, data) equals ``E_data[ E_{theta ~ p(. | prior, data)}
[-log q(theta)] ]``, the cross-entropy of the predicted posterior ``q`` to the exact posterior
``p``, which differs from ``E_data[KL(p || q)]`` by a constant. Both tasks have their exact
posterior (:mod:`amortized.exact`), so the inner expectation can be estimated by averaging the
NLL over the true ``theta`` and ``S`` more exact-posterior draws: the same expected loss and
gradient as the one-``theta`` NLL, with a much smaller variance from the parameter (the true
``theta`` is itself a draw from the posterior given the data). ``init`` starts from a trained
model's weights (a fine-tuning phase) with a fresh optimiser.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Unpack

import torch

from amortized.dt import DistributionTransformer
from amortized.dt_model import DTConfig, DTNetwork, gmm_log_prob
from amortized.loop import (
    OptimConfig,
    RunOptions,
    open_run,
    run_summary,
    seeded_init,
    train_loop,
)

__all__ = ["batch_tensors", "dt_loss", "train_dt"]


def batch_tensors(batch, device) -> dict:
    """A :class:`~amortized.dt_tasks.DTBatch` as torch tensors on ``device`` (None fields kept)."""
    return {
        k: None if v is None else torch.from_numpy(v).to(device) for k, v in batch._asdict().items()
    }


def dt_loss(network: DTNetwork, t: dict, prior_weight: float = 0.0) -> torch.Tensor:
    """Mean NLL of ``theta`` under the predicted posterior (+ ``prior_weight`` x prior NLL).

    When the batch carries exact-posterior draws ``t["theta_draws"]`` ``(B, S, D)``, the NLL of
    each problem is averaged over the true ``theta`` and its ``S`` draws (the Rao-Blackwellised
    loss of the module docstring: same expectation, lower variance).
    """
    src = [(t["tokens"], t["data_mask"])]
    lg, mu, tril = network(t["logits"], t["means"], t["scale_trils"], t["comp_mask"], src)
    draws = t.get("theta_draws")
    pts = t["theta"] if draws is None else torch.cat([t["theta"][:, None], draws], dim=1)
    loss = -gmm_log_prob(lg, mu, tril, pts).mean()
    if prior_weight > 0:
        empty = [(t["tokens"], torch.zeros_like(t["data_mask"]))]
        lg0, mu0, tril0 = network(t["logits"], t["means"], t["scale_trils"], t["comp_mask"], empty)
        loss = loss - prior_weight * gmm_log_prob(lg0, mu0, tril0, t["theta"]).mean()
    return loss


def train_dt(
    task,
    model_config: DTConfig,
    optim: OptimConfig,
    *,
    batch_size: int = 128,
    batch_ramp=(),
    seed: int = 0,
    prior_weight: float = 0.0,
    theta_draws: int = 0,
    init: DistributionTransformer | None = None,
    **run: Unpack[RunOptions],
) -> DistributionTransformer:
    """Train a DT on ``task``; resume from ``run["checkpoint_dir"]`` when it holds a checkpoint.

    Parameters
    ----------
    task : LinearGaussianTask or InverseGammaVarianceTask
        Meta-prior sampler (``task.sample(key, batch_size)``); its ``param_dim`` and
        ``source_dims`` must match ``model_config``.
    model_config : DTConfig
    optim : OptimConfig
    batch_size, seed : int
        Problems per step; ``seed`` sets the parameter initialisation and the data keys.
    batch_ramp : sequence of (step, batch_size)
        From each ``step`` on (increasing), use this batch size instead (e.g. larger batches
        late in training, where the gradient noise of the one-``theta`` NLL dominates).
    prior_weight : float
        Weight of the prior-reconstruction NLL term.
    theta_draws : int
        Exact-posterior draws per problem added to the true ``theta`` in the NLL (0: the
        one-``theta`` loss); see the module docstring.
    init : DistributionTransformer, optional
        Start from this model's weights (its config must equal ``model_config``) with a fresh
        optimiser; its ``meta["training"]`` is recorded as ``training["init"]`` and its wall
        time is added to ``training["total_wall_time_s"]``.
    **run
        Where and how the run goes: the keywords of :class:`amortized.loop.RunOptions`
        (checkpoint directory, device, progress, time limit).

    Returns
    -------
    DistributionTransformer
        In eval mode, with ``meta["training"]`` describing the run.
    """
    import jax

    ramp = _checked_ramp(task, model_config, batch_size, batch_ramp, theta_draws, init)
    network = seeded_init(lambda: DTNetwork(model_config), seed)
    init_meta = None
    if init is not None:
        network.load_state_dict(init.network.state_dict())
        init_meta = dict(init.meta.get("training") or {})
    base = jax.random.key(int(seed))
    settings = {
        "batch_size": batch_size,
        "batch_ramp": [list(r) for r in ramp],
        "seed": seed,
        "prior_weight": prior_weight,
    }
    record = {"model": model_config.to_dict(), "task": task.to_dict(), **settings}
    if not ramp:  # records of runs without a ramp are unchanged (their checkpoints resume)
        del record["batch_ramp"]
    extra = {"theta_draws": theta_draws} if theta_draws else {}
    if init_meta is not None:
        extra["init"] = init_meta
    record.update(extra)

    def size_at(step: int) -> int:
        return next((b for a, b in reversed(ramp) if step >= a), batch_size)

    def batch_fn(step: int) -> dict:
        key = jax.random.fold_in(base, step)
        if theta_draws:
            return batch_tensors(task.sample(key, size_at(step), theta_draws), device)
        return batch_tensors(task.sample(key, size_at(step)), device)

    def loss_fn(net, t):
        return dt_loss(net, t, prior_weight)

    with open_run(run) as (device, ckpt, loop_options):
        network.to(device)
        state = train_loop(
            network, loss_fn, batch_fn, optim, record=record, checkpoint=ckpt, **loop_options
        )
    training = {**asdict(optim), **settings, **run_summary(state, device), **extra}
    if init_meta is not None:
        before = init_meta.get("total_wall_time_s", init_meta.get("wall_time_s", 0.0))
        training["total_wall_time_s"] = round(state["elapsed_s"] + float(before), 1)
    return DistributionTransformer(network, task, {"training": training})


def _checked_ramp(task, model_config, batch_size, batch_ramp, theta_draws, init) -> list:
    """Validate :func:`train_dt`'s arguments; return ``batch_ramp`` as ``(step, size)`` ints."""
    if task.param_dim != model_config.param_dim or tuple(task.source_dims) != tuple(
        model_config.source_dims
    ):
        raise ValueError(
            f"task (param_dim={task.param_dim}, source_dims={tuple(task.source_dims)}) does not "
            f"match model_config (param_dim={model_config.param_dim}, "
            f"source_dims={model_config.source_dims})"
        )
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    ramp = [(int(a), int(b)) for a, b in batch_ramp]
    if any(a < 0 or b < 1 for a, b in ramp) or any(
        ramp[i][0] >= ramp[i + 1][0] for i in range(len(ramp) - 1)
    ):
        raise ValueError(
            "batch_ramp must be (step, batch_size) pairs with increasing steps >= 0 and "
            f"positive batch sizes, got {batch_ramp!r}"
        )
    if not (isinstance(theta_draws, int) and theta_draws >= 0):
        raise ValueError(f"theta_draws must be a non-negative integer, got {theta_draws!r}")
    if init is not None and init.config != model_config:
        raise ValueError(
            f"init's config {init.config.to_dict()} differs from model_config "
            f"{model_config.to_dict()}"
        )
    return ramp
