"""Particle filtering for LLM inference-time scaling (Puri et al. 2025, Algorithm 1).

Runs the :class:`~probinfer.llm.LLMStateSpaceModel` on the SMC driver's eager path
(:func:`probinfer.smc.run_smc` with ``jit=False``): every SMC step is one batched LM call
for all unfinished particles and one batched reward call. Budget ``N`` = ``N`` particles,
i.e. ``N`` full-rollout equivalents; ``N = 1`` is the driver run with one particle (one
LM sample, weighted by its potentials).
"""

from __future__ import annotations

import time

import jax
import numpy as np

from probinfer.llm.protocols import Usage
from probinfer.llm.result import LLMResult, build_result
from probinfer.llm.ssm import LLMStateSpaceModel, check_budget, check_prompt
from probinfer.llm.store import Trajectories
from probinfer.smc.base import check_threshold
from probinfer.smc.run import run_smc

__all__ = ["particle_filter", "sample_rollouts"]


def _check_model(model) -> None:
    if not isinstance(model, LLMStateSpaceModel):
        raise TypeError(f"model must be an LLMStateSpaceModel, got {type(model).__name__}")


def sample_rollouts(
    key, model: LLMStateSpaceModel, prompt: str, n: int, usage: Usage
) -> tuple[Trajectories, np.ndarray]:
    """``n`` independent complete samples from the LM (batched step by step) and the sum of
    their log potentials (their importance weights for the particle filter's target)."""
    store = Trajectories.empty(prompt, n)
    keys = jax.random.split(key, model.max_steps)
    for t in range(model.max_steps):
        store = model.extend(keys[t], store, usage)
        if not store.live.size or model.budget_spent(usage):
            break
    return store, model.total_log_potential(store)


def particle_filter(
    key,
    model: LLMStateSpaceModel,
    prompt: str,
    budget: int,
    *,
    ess_threshold: float = 1.0,
    scheme: str = "systematic",
    select: str = "mass",
    callback=None,
) -> LLMResult:
    """Particle filtering over reasoning steps.

    Parameters
    ----------
    key
        ``jax.random`` key (same key, same result for deterministic backends).
    model
        The state-space model (LM, reward model, potentials, guards).
    prompt
        The question.
    budget
        Number of particles ``N >= 1`` (``N = 1`` is a single sample).
    ess_threshold
        Resample when ``ESS < ess_threshold * N``; ``1.0`` (default) resamples at every
        step as in the paper.
    scheme
        Resampling scheme.
    select
        ``"mass"`` (answer of highest posterior mass) or ``"argmax"`` (answer of the
        highest-weight particle).
    callback
        ``callback(t, particles, info)`` after each SMC step.

    Returns
    -------
    LLMResult
        With the log-evidence estimate ``log Z`` of the target (see
        :mod:`probinfer.llm.ssm`), which is unbiased on the natural scale.
    """
    _check_model(model)
    check_prompt(prompt)
    n = check_budget(budget)
    check_threshold(ess_threshold, scheme)
    start = time.perf_counter()
    usage = Usage()
    fk = model.feynman_kac(prompt, usage)
    res = run_smc(
        key,
        fk,
        n,
        ess_threshold=ess_threshold,
        scheme=scheme,
        jit=False,
        keep_ancestors=False,
        callback=callback,
    )
    return build_result(
        "particle_filter",
        model,
        prompt,
        res.particles.values,
        res.particles.log_weights,
        n,
        usage,
        start,
        select=select,
        smc=res,
    )
