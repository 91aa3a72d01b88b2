"""Particle Gibbs: conditional SMC as a Markov kernel on whole trajectories.

One sweep of the conditional SMC kernel (Andrieu, Doucet & Holenstein 2010) keeps the current
trajectory in slot 0 of an otherwise ordinary SMC run (a model that pins slot 0,
:func:`~probinfer.smc.conditional.conditional_feynman_kac`, and a resampler that never
resamples it away, :func:`~probinfer.resampling.conditional`), then draws a new trajectory
by picking a particle in proportion to its final weight and tracing its ancestry. The
kernel leaves the smoothing distribution ``p(x_{0:T-1} | y_{0:T-1})`` of the Feynman-Kac
model invariant for any number of particles ``N >= 2``; iterating it is the particle Gibbs sampler.

Everything here runs on the one driver (:func:`probinfer.smc.smc_scan`) and is jitted and
vmappable over keys (many chains at once).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from probinfer.smc.base import FeynmanKac, check_num_particles
from probinfer.smc.conditional import conditional_smc_model
from probinfer.smc.scan import smc_scan

Array = jax.Array

__all__ = ["ParticleGibbsResult", "conditional_smc_kernel", "particle_gibbs", "trace_lineage"]


def _values(particles, data):
    return particles.values


def trace_lineage(history: Any, ancestors: Array, index: Array) -> Any:
    """The trajectory ending at particle ``index`` of the last step.

    Parameters
    ----------
    history
        Particle values at every step, leading axes ``(T, N)`` (pytree).
    ancestors
        ``(T, N)`` ancestor indices; row ``t`` maps particles at ``t`` to ``t - 1``.
    index
        Index of the chosen particle at step ``T - 1``.

    Returns
    -------
    The values along the lineage, leading axis ``T``.
    """

    def back(k, t):
        x = jax.tree_util.tree_map(lambda h: h[t, k], history)
        return ancestors[t, k], x

    num_steps = ancestors.shape[0]
    _, path = jax.lax.scan(back, jnp.asarray(index, jnp.int32), jnp.arange(num_steps)[::-1])
    return jax.tree_util.tree_map(lambda a: a[::-1], path)


def conditional_smc_kernel(
    key: Array,
    fk: FeynmanKac,
    num_particles: int,
    reference: Any = None,
    scheme: str = "systematic",
) -> tuple[Any, Array]:
    """One particle Gibbs move: conditional SMC given ``reference``, then a traced draw.

    With ``reference=None`` the run is unconditional (a draw from the particle
    approximation of the smoothing distribution, the usual way to start a chain).
    Resampling happens at every step (free particles draw their ancestors multinomially,
    as conditional SMC requires). Returns ``(trajectory, log_evidence)``; the trajectory has
    a leading time axis like ``reference``. Traceable and vmappable.
    """
    k_run, k_pick = jax.random.split(key)
    fk, resample_fn = conditional_smc_model(fk, reference, scheme=scheme)
    out = smc_scan(k_run, fk, num_particles, 1.0, summary=_values, resample_fn=resample_fn)
    index = jax.random.categorical(k_pick, out.state.log_weights)
    return trace_lineage(out.summaries, out.ancestors, index), out.log_evidence


class ParticleGibbsResult(NamedTuple):
    """A particle Gibbs chain.

    ``trajectories``: the states after each iteration, leading axes ``(num_iterations, T)``;
    ``log_evidence``: the conditional SMC run's ``log Z`` estimate at each iteration
    (a diagnostic: it is not an unbiased evidence estimate).
    """

    trajectories: Any
    log_evidence: Array


def particle_gibbs(
    key: Array,
    fk: FeynmanKac,
    num_particles: int,
    num_iterations: int,
    *,
    reference: Any = None,
    scheme: str = "systematic",
) -> ParticleGibbsResult:
    """Run a particle Gibbs chain on the trajectories of a Feynman-Kac model.

    Parameters
    ----------
    key
        ``jax.random`` key of the chain (one per sweep is split from it).
    fk
        The model, e.g. :func:`probinfer.smc.ssm_feynman_kac` of a state-space model.
    num_particles
        ``N >= 2`` particles per conditional SMC sweep (mixing improves with ``N``; the
        invariance holds for any ``N``).
    num_iterations
        Number of sweeps.
    reference
        Initial trajectory (leading time axis ``T``); default: one unconditional SMC draw.
    scheme
        Resampling scheme of the unconditional initial run (the conditional sweeps draw
        the free particles' ancestors multinomially).

    Returns
    -------
    ParticleGibbsResult
    """
    n = check_num_particles(num_particles)
    if isinstance(num_iterations, bool) or not isinstance(num_iterations, int | np.integer):
        raise TypeError(f"num_iterations must be an integer, got {type(num_iterations).__name__}")
    if num_iterations < 1:
        raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
    k0, k_chain = jax.random.split(key)
    if reference is None:
        reference, _ = conditional_smc_kernel(k0, fk, n, None, scheme)

    def sweep(ref, k):
        new, log_z = conditional_smc_kernel(k, fk, n, ref, scheme)
        return new, (new, log_z)

    _, (paths, log_z) = jax.lax.scan(
        sweep, reference, jax.random.split(k_chain, int(num_iterations))
    )
    return ParticleGibbsResult(paths, log_z)
