r"""Particle Gibbs and parallel tempering over LLM reasoning steps (Puri et al. 2025).

Particle Gibbs iterates *conditional SMC* (Andrieu, Doucet & Holenstein 2010): particle 0
is the reference trajectory of the previous iteration, kept fixed at every step (its
prefix of length ``t`` is particle 0 at step ``t``, and it is never resampled away);
particles ``1..N-1`` are resampled (multinomially, every step) from all ``N`` and extended
by the language model. A new reference is drawn from the final weights. The kernel leaves
the particle filter's target invariant, so the reference's answer is a Markov chain whose
stationary law is the answer posterior.

Parallel tempering runs ``K`` such chains on tempered targets
``pi_k(x) ∝ p_LM(x) exp(beta_k L(x))`` (``L`` = total log potential, ``beta_0 = 1``) and
proposes, after every sweep, to swap the references of neighbouring chains, accepted
with probability ``min(1, exp((beta_i - beta_j) (L(x_j) - L(x_i))))``
(:func:`swap_log_acceptance`; the LM terms cancel).

The conditional step needs a resampling move that the SMC driver does not have (one
particle pinned), so the sweep is a small loop here using the same model moves, potentials
and :func:`probinfer.resample`.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from probinfer.llm.filtering import _check_model, sample_rollouts
from probinfer.llm.protocols import Usage
from probinfer.llm.result import LLMResult, build_result
from probinfer.llm.ssm import LLMStateSpaceModel, check_budget, check_prompt
from probinfer.llm.store import Trajectories
from probinfer.resampling import resample

__all__ = ["conditional_smc", "parallel_tempering", "particle_gibbs", "swap_log_acceptance"]


def swap_log_acceptance(beta_i: float, beta_j: float, L_i: float, L_j: float) -> float:
    """Log acceptance probability of swapping states ``x_i <-> x_j`` between tempered
    targets ``p(x) exp(beta L(x))``: ``min(0, (beta_i - beta_j) (L_j - L_i))``."""
    d = (beta_i - beta_j) * (L_j - L_i)
    return float(min(0.0, d)) if np.isfinite(d) else (0.0 if d > 0 else -np.inf)


def conditional_smc(
    key,
    model: LLMStateSpaceModel,
    prompt: str,
    num_particles: int,
    reference: Trajectories | None,
    usage: Usage,
):
    """One sweep of conditional SMC (plain SMC with multinomial resampling when
    ``reference`` is ``None``).

    Returns
    -------
    store, log_weights, new_reference
        The final particles (particle 0 is the reference when one was given), their log
        weights, and a new reference drawn from the final weights (a one-particle store).
    """
    n = num_particles
    keys = jax.random.split(key, model.max_steps + 1)
    lw = np.zeros(n)
    store = Trajectories.empty(prompt, n)
    for t in range(1, model.max_steps + 1):
        if t > 1:
            k = n - 1 if reference is not None else n
            anc = np.asarray(resample(keys[t], lw, num=k, scheme="multinomial"))
            idx = np.concatenate([[0], anc]) if reference is not None else anc
            store, lw = store.take(idx), np.zeros(n)
        free = np.arange(1 if reference is not None else 0, n)
        store = model.extend(keys[t - 1], store, usage, which=free)
        if reference is not None:
            ref_t = reference.prefix(0, t)
            store = store.replace([0], ref_t.steps, ref_t.finished, ref_t.scores)
        lw = lw + model.step_log_potential(store, t)
        if not store.live.size and (reference is None or t >= len(reference.steps[0])):
            break
    if np.all(lw == -np.inf):
        raise ValueError("every particle has weight 0 in a conditional SMC sweep")
    j = int(jax.random.choice(keys[-1], n, p=jax.numpy.asarray(_normalized(lw))))
    return store, lw, store.prefix(j, model.max_steps)


def _normalized(lw):
    w = np.exp(lw - np.max(lw))
    return w / w.sum()


def _split_budget(budget, num_particles, chains=1):
    np_ = max(2, min(num_particles, budget // chains))
    iters = max(1, budget // (np_ * chains))
    return np_, iters


def _pool(iterations):
    """Concatenate per-iteration weighted stores, each normalised to mass ``1/K``."""
    store, lws = None, []
    for s, lw in iterations:
        store = s if store is None else store.concat(s)
        lws.append(np.log(_normalized(lw)) - np.log(len(iterations)))
    return store, np.concatenate(lws)


def particle_gibbs(
    key,
    model: LLMStateSpaceModel,
    prompt: str,
    budget: int,
    *,
    num_particles: int = 4,
    num_iterations: int | None = None,
) -> LLMResult:
    """Particle Gibbs: iterated conditional SMC with the reference kept across sweeps.

    ``budget`` is split into ``num_iterations`` sweeps of ``num_particles`` particles
    (default ``budget // num_particles`` sweeps). The answer distribution averages the
    weighted particles of every sweep (each sweep's weighted set is a consistent estimate
    of the posterior); ``info["reference_answers"]`` is the Markov chain of reference
    answers.
    """
    _check_model(model)
    check_prompt(prompt)
    b = check_budget(budget)
    start, usage = time.perf_counter(), Usage()
    if b == 1:
        store, lw = sample_rollouts(key, model, prompt, 1, usage)
        return build_result("particle_gibbs", model, prompt, store, lw, b, usage, start)
    n, iters = _split_budget(b, num_particles)
    if num_iterations is not None:
        iters = check_budget(num_iterations)
    ref, sweeps, refs = None, [], []
    for k in jax.random.split(key, iters):
        store, lw, ref = conditional_smc(k, model, prompt, n, ref, usage)
        sweeps.append((store, lw))
        refs.append(ref)
    pooled, lw = _pool(sweeps)
    ref_answers = [model.answers(r)[0] for r in refs]
    return build_result(
        "particle_gibbs",
        model,
        prompt,
        pooled,
        lw,
        b,
        usage,
        start,
        info={
            "references": refs,
            "reference_answers": ref_answers,
            "num_particles": n,
            "num_iterations": iters,
        },
    )


def parallel_tempering(
    key,
    model: LLMStateSpaceModel,
    prompt: str,
    budget: int,
    *,
    betas=(1.0, 0.5),
    num_particles: int = 4,
    num_iterations: int | None = None,
) -> LLMResult:
    """Parallel tempering of particle Gibbs chains with reference swaps between neighbours.

    Parameters
    ----------
    betas
        Inverse temperatures, ``betas[0] == 1`` (the target), decreasing.
    num_particles, num_iterations
        Particles per sweep and sweeps per chain (default: the budget split evenly over
        ``len(betas)`` chains).

    The answer distribution is that of the ``beta = 1`` chain;
    ``info["swap_acceptance"]`` gives the acceptance rate of each neighbour pair.
    """
    _check_model(model)
    check_prompt(prompt)
    b = check_budget(budget)
    betas = tuple(float(x) for x in betas)
    if (
        not betas
        or betas[0] != 1.0
        or any(x <= 0 for x in betas)
        or list(betas) != sorted(betas, reverse=True)
    ):
        raise ValueError(f"betas must be decreasing positive numbers starting at 1.0, got {betas}")
    start, usage = time.perf_counter(), Usage()
    K = len(betas)
    if b < 2 * K:  # too small to temper: one particle-Gibbs chain
        res = particle_gibbs(key, model, prompt, b, num_particles=num_particles)
        return dataclasses.replace(res, algorithm="parallel_tempering")
    n, iters = _split_budget(b, num_particles, K)
    if num_iterations is not None:
        iters = check_budget(num_iterations)
    chains = [
        dataclasses.replace(model, reward_temperature=model.reward_temperature / bt) for bt in betas
    ]
    refs = [None] * K
    sweeps, accepted, proposed = [], np.zeros(max(K - 1, 1)), np.zeros(max(K - 1, 1))
    ref_answers = []
    for k_it in jax.random.split(key, iters):
        ks = jax.random.split(k_it, K + 1)
        for c in range(K):
            store, lw, refs[c] = conditional_smc(ks[c], chains[c], prompt, n, refs[c], usage)
            if c == 0:
                sweeps.append((store, lw))
        L = [float(model.total_log_potential(r)[0]) for r in refs]
        u = np.asarray(jax.random.uniform(ks[K], (max(K - 1, 1),)))
        for i in range(K - 1):
            la = swap_log_acceptance(betas[i], betas[i + 1], L[i], L[i + 1])
            proposed[i] += 1
            if np.log(u[i]) < la:
                accepted[i] += 1
                refs[i], refs[i + 1] = refs[i + 1], refs[i]
                L[i], L[i + 1] = L[i + 1], L[i]
        ref_answers.append(model.answers(refs[0])[0])
    pooled, lw = _pool(sweeps)
    rate = (accepted / np.maximum(proposed, 1))[: K - 1]
    return build_result(
        "parallel_tempering",
        model,
        prompt,
        pooled,
        lw,
        b,
        usage,
        start,
        info={
            "swap_acceptance": rate,
            "reference_answers": ref_answers,
            "betas": betas,
            "num_particles": n,
            "num_iterations": iters,
        },
    )
