"""The Feynman-Kac model and the pure SMC ``init``/``step`` every runner shares.

A Feynman-Kac model is given by an initial proposal ``M0``, transitions ``M_t`` and log
potentials ``log G_t`` (``t = 0..T-1``). SMC targets the normalised flow

    Q_t(dx_{0:t}) ∝ M0(dx_0) G_0(x_0) prod_{s=1}^t M_s(x_{s-1}, dx_s) G_s(x_{s-1}, x_s)

and estimates its normalising constant ``Z_T`` without bias. Written in BlackJAX's form
over an immutable :class:`SMCState`:

* :func:`init` draws ``x_0 ~ M0`` and weights by ``G_0``;
* :func:`step` (``t >= 1``) resamples with ``resample_fn`` when ``ESS < ess_threshold * N``
  (``1.0`` = every step), moves ``x_t ~ M_t(x_{t-1}, .)``, lets the model adapt its
  parameters to the moved particles (``adapt``: the next temperature of tempered SMC, an
  MCMC scale, ...) and reweights by ``G_t``, recording the evidence increment
  ``log sum_i W_{t-1}^i G_t^i`` (:func:`probinfer.weights.reweight`).

The state holds *normalised* log weights, so each increment is one log-sum-exp of
quantities of order one, and ``log Z`` is summed one way on every path: a compensated
(Kahan) sum in the state, read as ``total - compensation`` in float64 on the host
(:func:`log_evidence_of`), so a long run keeps ``log Z`` exact to the rounding of the
increments (a constant potential over 3000 steps is exact to < 1e-3).

Both functions run traced (``jnp``, ``lax.cond``; the jitted runners) or eagerly
(``eager=True``: black-box transitions such as language models; particle values may be any
store with ``take(indices)`` and ``__len__``, the weights are numpy float64 and the
resampling decision is a Python ``if``, so the store is indexed only when it happens).
Conditional SMC is a resampler that pins slot 0
(:func:`probinfer.resampling.conditional`) with a model that writes the reference into
slot 0 (:func:`probinfer.smc.conditional.conditional_feynman_kac`).

User callables (``data`` is ``FeynmanKac.data``, possibly updated by ``adapt``; on the
jitted paths it is a traced argument, so compiled code is reused across data sets):

``M0(key, num_particles, data) -> values``
    Draw the initial particles.
``M(key, t, values, data) -> values``
    Move every particle from step ``t - 1`` to step ``t`` (``t >= 1``).
``logG(t, prev_values, values, data) -> (N,) array``
    Log potential of each particle at step ``t``; ``prev_values`` is ``None`` at ``t = 0``.
    NaN potentials are treated as ``-inf`` (weight 0) with a warning; if every particle has
    weight 0 a ``ValueError`` is raised.
``adapt(t, values, log_weights, data) -> data`` (optional)
    Called after the move and before reweighting, with the normalised log weights the
    moved particles carry; returns the (same-structure) data used by ``logG`` and by the
    following steps.
``finished(values, data) -> bool`` (optional)
    The run stops after the first step at which it is true (at most ``num_steps`` steps).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from probinfer.checks import check_num
from probinfer.particles import Particles, take
from probinfer.resampling import SCHEMES, resampler
from probinfer.weights import reweight

Array = jax.Array

__all__ = [
    "FeynmanKac",
    "SMCState",
    "StepInfo",
    "check_num_particles",
    "check_threshold",
    "init",
    "log_evidence_of",
    "step",
]


@dataclass(frozen=True, eq=False)
class FeynmanKac:
    """A Feynman-Kac model: ``M0``, ``M``, ``logG``, the number of steps and the data.

    Parameters
    ----------
    M0, M, logG
        The initial proposal, the transitions and the log potentials (module docstring).
    num_steps
        ``T``, the number of potentials (``t = 0..T-1``); with ``finished``, the most steps.
    data
        Any pytree (observations, parameters) handed to the callables.
    adapt
        Optional ``adapt(t, values, log_weights, data) -> data`` (tempering, scale tuning).
    finished
        Optional ``finished(values, data) -> bool``: stop after the step where it holds.
    """

    M0: Callable
    M: Callable
    logG: Callable
    num_steps: int
    data: Any = None
    adapt: Callable | None = None
    finished: Callable | None = None

    def __post_init__(self):
        for name in ("M0", "M", "logG"):
            if not callable(getattr(self, name)):
                raise TypeError(f"{name} must be callable, got {type(getattr(self, name))}")
        for name in ("adapt", "finished"):
            f = getattr(self, name)
            if f is not None and not callable(f):
                raise TypeError(f"{name} must be callable or None, got {type(f)}")
        check_num(self.num_steps, "num_steps")

    @property
    def fns(self) -> tuple:
        """The callables ``(M0, M, logG, adapt, finished)``, a hashable key for compiled code."""
        return (self.M0, self.M, self.logG, self.adapt, self.finished)


class SMCState(NamedTuple):
    """The state of an SMC run (a pytree on the jitted paths).

    ``log_weights`` are normalised (``logsumexp = 0``); ``log_evidence`` is the running
    ``log Z`` as a compensated sum with its compensation ``log_evidence_c``; ``data`` is the
    model's data after the last ``adapt``. In a bucketed run the arrays have a padded
    length and ``num_particles`` (traced) says how many leading slots are real; the others
    carry weight 0 and are never resampled.
    """

    values: Any
    log_weights: Any
    ess: Any
    log_evidence: Any
    log_evidence_c: Any
    data: Any
    num_particles: Any = None  # bucketed runs: the traced number of real particles

    @property
    def particles(self) -> Particles:
        # No validation: the state may be batched over runs (vmap).
        return Particles.tree_unflatten(None, (self.values, self.log_weights))


class StepInfo(NamedTuple):
    """What one SMC step records."""

    log_evidence_increment: Any  # log sum_i W_{t-1}^i G_t^i
    ess: Any  # ESS after reweighting
    resampled: Any  # bool: resampled before moving
    ancestors: Any  # (N,) int32 ancestor of each particle (identity if not resampled)
    num_nan: Any  # number of NaN log potentials (set to -inf)


def check_num_particles(num_particles, minimum: int = 2) -> int:
    """Validate ``num_particles`` (an integer ``>= minimum``; the driver runs with one
    particle, a sequential importance sample, but most algorithms need two)."""
    if (
        isinstance(num_particles, bool)
        or not isinstance(num_particles, int | np.integer)
        or num_particles < minimum
    ):
        raise ValueError(
            f"num_particles must be an integer >= {minimum}, got {num_particles!r}"
        )
    return int(num_particles)


def check_threshold(ess_threshold, scheme) -> float:
    """Validate the ESS threshold (in ``[0, 1]``) and the resampling scheme."""
    try:
        thr = float(ess_threshold)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"ess_threshold must be a number in [0, 1], got {ess_threshold!r}"
        ) from err
    if not 0.0 <= thr <= 1.0:
        raise ValueError(f"ess_threshold must be in [0, 1], got {ess_threshold!r}")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    return thr


def log_evidence_of(state: SMCState) -> float:
    """``log Z`` of a (concrete) state in float64: the compensated sum read with its
    compensation, so the float32 rounding of the running total does not enter."""
    return float(np.float64(state.log_evidence) - np.float64(state.log_evidence_c))


def _clean_log_potential(log_g, n: int, eager: bool):
    """The log potentials as an ``(n,)`` float array with NaN set to ``-inf``, and the
    number of NaNs."""
    if eager:
        g = np.asarray(log_g.detach().cpu() if hasattr(log_g, "detach") else log_g, np.float64)
    else:
        g = jnp.asarray(log_g)
        if not jnp.issubdtype(g.dtype, jnp.floating):
            g = g.astype(jnp.float32)
    if g.shape != (n,):
        raise ValueError(
            f"logG must return one log potential per particle, shape ({n},), got {g.shape}"
        )
    xp = np if eager else jnp
    bad = xp.isnan(g)
    if eager and not bad.any():
        return g, 0
    return xp.where(bad, -xp.inf, g), xp.sum(bad)


def _kahan(total, comp, x):
    """One compensated (Kahan) addition: the new ``(total, compensation)``."""
    y = x - comp
    t = total + y
    return t, (t - total) - y


def _uniform_log_weights(n: int, dtype, eager: bool, num_valid=None):
    if eager:
        return np.full(n, -np.log(n))
    if num_valid is None:
        return jnp.full(n, -jnp.log(jnp.asarray(n, dtype)), dtype)
    lw = -jnp.log(jnp.asarray(num_valid, dtype))
    return jnp.where(jnp.arange(n) < num_valid, lw, -jnp.inf).astype(dtype)


@jax.jit
def _split_in_two(key):
    """``jax.random.split(key)`` as two outputs: eagerly one device call (unpacking the
    split array would make another per key)."""
    k_res, k_move = jax.random.split(key)
    return k_res, k_move


def init(
    key: Array,
    fk: FeynmanKac,
    num_particles: int,
    *,
    eager: bool = False,
    num_valid: Any = None,
) -> tuple[SMCState, StepInfo]:
    """Draw ``x_0 ~ M0``, adapt, and weight by ``G_0`` (eagerly or traceably).

    ``num_valid`` (traceable, jitted path only): only the first ``num_valid`` of the
    ``num_particles`` slots are real particles; the rest get weight 0 (bucketed shapes).
    """
    n = num_particles
    values = fk.M0(key, n, fk.data)
    lw0 = _uniform_log_weights(n, jnp.float32, eager, num_valid)
    data = fk.data if fk.adapt is None else fk.adapt(0, values, lw0, fk.data)
    log_g, num_nan = _clean_log_potential(fk.logG(0, None, values, data), n, eager)
    if not eager:
        lw0 = lw0.astype(log_g.dtype)
    lw, inc, ess = reweight(lw0, log_g)
    zero = 0.0 if eager else jnp.zeros((), inc.dtype)
    state = SMCState(values, lw, ess, inc + zero, zero, data, num_valid)
    anc = np.arange(n, dtype=np.int32) if eager else jnp.arange(n, dtype=jnp.int32)
    return state, StepInfo(inc, ess, False if eager else jnp.asarray(False), anc, num_nan)


def step(
    key: Array,
    t,
    fk: FeynmanKac,
    state: SMCState,
    resample_fn: Callable | None = None,
    ess_threshold: float = 0.5,
    *,
    eager: bool = False,
) -> tuple[SMCState, StepInfo]:
    """One SMC step ``t >= 1``: ESS-triggered resampling, move, adapt, reweight.

    ``resample_fn(key, log_weights, num, num_valid=None) -> (num,)`` ancestor indices
    (:func:`probinfer.resampling.resampler`, or its :func:`~probinfer.resampling.conditional`
    wrapper for conditional SMC); default systematic.
    """
    resample_fn = resampler("systematic") if resample_fn is None else resample_fn
    k_res, k_move = _split_in_two(key)
    lw, nv = state.log_weights, state.num_particles  # nv: None unless bucketed
    n = lw.shape[0]
    if eager:
        do = bool(ess_threshold >= 1.0 or state.ess < ess_threshold * n)
        if do:
            anc = np.asarray(resample_fn(k_res, lw, n))
            prev, lw = take(state.values, anc), _uniform_log_weights(n, None, True)
        else:
            anc, prev = np.arange(n, dtype=np.int32), state.values
    else:
        n_real = n if nv is None else nv
        do = jnp.logical_or(jnp.asarray(ess_threshold) >= 1.0, state.ess < ess_threshold * n_real)

        def resampled():
            a = resample_fn(k_res, lw, n, nv)
            return take(state.values, a), _uniform_log_weights(n, lw.dtype, False, nv), a

        def kept():
            return state.values, lw, jnp.arange(n, dtype=jnp.int32)

        prev, lw, anc = jax.lax.cond(do, resampled, kept)
    values = fk.M(k_move, t, prev, state.data)
    data = state.data if fk.adapt is None else fk.adapt(t, values, lw, state.data)
    log_g, num_nan = _clean_log_potential(fk.logG(t, prev, values, data), n, eager)
    new_lw, inc, ess = reweight(lw, log_g)
    log_z, comp = _kahan(state.log_evidence, state.log_evidence_c, inc)
    new = SMCState(values, new_lw, ess, log_z, comp, data, nv)
    return new, StepInfo(inc, ess, do, anc, num_nan)
