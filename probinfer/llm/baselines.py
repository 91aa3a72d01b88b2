"""Baselines at the same budget (full-rollout equivalents): best-of-N, self-consistency,
weighted majority voting and PRM-guided beam search."""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from probinfer.checks import check_num
from probinfer.llm.filtering import _check_model, sample_rollouts
from probinfer.llm.protocols import Usage, check_rewards
from probinfer.llm.result import LLMResult, build_result
from probinfer.llm.ssm import LLMStateSpaceModel, check_budget, check_prompt

__all__ = ["beam_search", "best_of_n", "self_consistency", "weighted_majority"]


def _need_reward(model, name):
    if model.reward is None:
        raise ValueError(f"{name} needs a reward model (model.reward is None)")


def _outcome_scores(model, store, usage) -> np.ndarray:
    """The reward model's score of each whole answer (an outcome reward)."""
    n = len(store)
    r = model.reward.score([store.prompt] * n, [("".join(s),) for s in store.steps])
    usage.reward_calls += 1
    usage.rewards_scored += n
    return check_rewards(r, n)


def _process_scores(model, store) -> np.ndarray:
    return np.array([model.aggregate(s) for s in store.scores])


def _setup(model, prompt, budget):
    _check_model(model)
    check_prompt(prompt)
    return check_budget(budget), time.perf_counter(), Usage()


def best_of_n(
    key, model: LLMStateSpaceModel, prompt: str, budget: int, *, select: str = "outcome"
) -> LLMResult:
    """Sample ``budget`` answers and keep the one the reward model likes best.

    ``select="outcome"`` scores each whole answer once (outcome reward); ``"process"`` uses
    the aggregated process score (``model.aggregation``) of the steps.
    """
    n, start, usage = _setup(model, prompt, budget)
    _need_reward(model, "best_of_n")
    if select not in ("outcome", "process"):
        raise ValueError(f"select must be 'outcome' or 'process', got {select!r}")
    store, _ = sample_rollouts(key, model, prompt, n, usage)
    s = (
        _outcome_scores(model, store, usage)
        if select == "outcome"
        else _process_scores(model, store)
    )
    best = int(np.argmax(s))
    lw = np.full(n, -np.inf)
    lw[best] = 0.0
    return build_result(
        "best_of_n", model, prompt, store, lw, n, usage, start, select="argmax", info={"scores": s}
    )


def self_consistency(key, model: LLMStateSpaceModel, prompt: str, budget: int) -> LLMResult:
    """Majority vote over ``budget`` sampled answers (no reward model used)."""
    n, start, usage = _setup(model, prompt, budget)
    plain = dataclasses.replace(model, reward=None)
    store, _ = sample_rollouts(key, plain, prompt, n, usage)
    return build_result("self_consistency", plain, prompt, store, np.zeros(n), n, usage, start)


def weighted_majority(key, model: LLMStateSpaceModel, prompt: str, budget: int) -> LLMResult:
    """Weighted majority voting: answer mass = sum of the outcome rewards of its samples."""
    n, start, usage = _setup(model, prompt, budget)
    _need_reward(model, "weighted_majority")
    store, _ = sample_rollouts(key, model, prompt, n, usage)
    r = _outcome_scores(model, store, usage)
    with np.errstate(divide="ignore"):
        lw = np.log(r)
    if np.all(lw == -np.inf):
        lw = np.zeros(n)
    return build_result(
        "weighted_majority", model, prompt, store, lw, n, usage, start, info={"scores": r}
    )


def beam_search(
    key, model: LLMStateSpaceModel, prompt: str, budget: int, *, expansion: int = 4
) -> LLMResult:
    """Step-level beam search guided by the process reward.

    ``budget`` candidates per step: ``width = max(1, budget // expansion)`` beams, each
    expanded into ``budget // width`` children; the ``width`` candidates with the highest
    aggregated score (finished or not) are kept. Stops when every kept beam is finished or
    at ``max_steps``; returns the best finished beam. Greedy in the reward, so it exploits
    the reward model's errors (reward hacking) when the PRM is imperfect.
    """
    n, start, usage = _setup(model, prompt, budget)
    _need_reward(model, "beam_search")
    check_num(expansion, "expansion")
    width = max(1, n // expansion)
    children = n // width
    from probinfer.llm.store import Trajectories

    keys = jax.random.split(key, model.max_steps)
    pool = model.extend(keys[0], Trajectories.empty(prompt, n), usage)
    for t in range(1, model.max_steps + 1):
        s = _process_scores(model, pool)
        keep = np.argsort(-s, kind="stable")[:width]
        beams = pool.take(keep)
        if t == model.max_steps or not beams.live.size:
            pool = beams
            break
        fin = [i for i in range(len(beams)) if beams.finished[i]]
        live = [i for i in range(len(beams)) if not beams.finished[i]]
        pool = beams.take(fin + [i for i in live for _ in range(children)])
        pool = model.extend(keys[t], pool, usage)
    s = _process_scores(model, pool)
    done = np.asarray(pool.finished)
    best = int(np.argmax(np.where(done, s, -np.inf))) if done.any() else int(np.argmax(s))
    lw = np.full(len(pool), -np.inf)
    lw[best] = 0.0
    return build_result(
        "beam_search",
        model,
        prompt,
        pool,
        lw,
        n,
        usage,
        start,
        select="argmax",
        info={"scores": s, "width": width},
    )
