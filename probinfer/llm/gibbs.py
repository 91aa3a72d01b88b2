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

Each sweep is one run of the single SMC driver (:func:`probinfer.smc.run_smc` on its
eager path) on the conditional SMC kernel that :mod:`probinfer.smc.gibbs` uses
(:func:`probinfer.smc.conditional.conditional_smc_model`): slot 0 pinned to the reference, the
ancestors of slots ``1..N-1`` drawn multinomially; the model never extends slot 0, and the
run stops as soon as every particle (the reference included) has finished.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from probinfer.llm.filtering import _check_model
from probinfer.llm.protocols import Usage
from probinfer.llm.result import LLMResult, build_result
from probinfer.llm.ssm import LLMStateSpaceModel, check_budget, check_prompt, pin_prefix
from probinfer.llm.store import Trajectories
from probinfer.resampling import resample
from probinfer.smc.conditional import conditional_smc_model
from probinfer.smc.run import run_smc
from probinfer.weights import host_normalize

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
    """One sweep of conditional SMC on the SMC driver (plain SMC with multinomial
    resampling at every step when ``reference`` is ``None``).

    Returns
    -------
    store, log_weights, new_reference
        The final particles (particle 0 is the reference when one was given), their
        normalised log weights, and a new reference drawn from the final weights (a
        one-particle store).
    """
    k_run, k_ref = jax.random.split(key)
    fk = model.feynman_kac(prompt, usage, conditional=reference is not None)
    fk, resample_fn = conditional_smc_model(fk, reference, pin=pin_prefix, scheme="multinomial")
    res = run_smc(
        k_run,
        fk,
        num_particles,
        ess_threshold=1.0,
        resample_fn=resample_fn,
        jit=False,
        keep_ancestors=False,
    )
    store = res.particles.values.without_state()
    lw = np.asarray(res.particles.log_weights, dtype=np.float64)
    j = int(np.asarray(resample(k_ref, lw, num=1, scheme="multinomial"))[0])
    return store, lw, store.prefix(j, model.max_steps)


def _split_budget(budget, num_particles, chains=1):
    np_ = max(2, min(num_particles, budget // chains))
    iters = max(1, budget // (np_ * chains))
    return np_, iters


def _pool(iterations):
    """Concatenate per-iteration weighted stores, each normalised to mass ``1/K``."""
    store, lws = None, []
    for s, lw in iterations:
        store = s if store is None else store.concat(s)
        lws.append(np.log(host_normalize(lw)) - np.log(len(iterations)))
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
    if b == 1:  # one particle: a sample of the LM weighted by its potentials
        store, lw, _ = conditional_smc(key, model, prompt, 1, None, usage)
        return build_result("particle_gibbs", model, prompt, store, lw, b, usage, start)
    n, iters = _split_budget(b, num_particles)
    if num_iterations is not None:
        iters = check_budget(num_iterations)
    ref, sweeps, refs = None, [], []
    for k in jax.random.split(key, iters):
        store, lw, ref = conditional_smc(k, model, prompt, n, ref, usage)
        sweeps.append((store, lw))
        refs.append(ref)
    info = {
        "references": refs,
        "reference_answers": [model.answers(r)[0] for r in refs],
        "num_particles": n,
        "num_iterations": iters,
    }
    return build_result("particle_gibbs", model, prompt, *_pool(sweeps), b, usage, start, info=info)


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
    info = {
        "swap_acceptance": (accepted / np.maximum(proposed, 1))[: K - 1],
        "reference_answers": ref_answers,
        "betas": betas,
        "num_particles": n,
        "num_iterations": iters,
    }
    pooled, lw = _pool(sweeps)
    return build_result("parallel_tempering", model, prompt, pooled, lw, b, usage, start, info=info)
