"""SMC² (Chopin, Jacob and Papaspiliopoulos 2013): sequential inference on the parameters of a
state-space model, with a particle filter per parameter particle, on the one SMC driver.

The outer SMC is a :class:`~probinfer.smc.FeynmanKac` model (:func:`smc2_feynman_kac`) over
``num_theta`` parameter particles, run by :func:`~probinfer.smc.smc_scan`. Each particle
value holds the unconstrained parameters ``u``, their log prior and the state of its own
bootstrap filter of ``num_x`` particles (an :class:`~probinfer.smc.SMCState`):

* ``M0`` draws ``u`` from the prior (the draws are made before the run and carried in the
  data) and starts every filter on ``y_0`` (``jax.vmap`` of :func:`probinfer.smc.init`);
* ``M`` at step ``t`` first rejuvenates, when the data say so, and then advances every
  filter to ``y_t`` (``jax.vmap`` of :func:`probinfer.smc.step`);
* ``logG`` at step ``t`` is each filter's evidence increment
  ``log p_hat(y_t | y_{0:t-1}, theta)``, so the weights are ``p_hat(y_{0:t} | theta)``
  and the driver's ``log Z`` estimates ``log p(y_{0:T-1})``, unbiased on the natural scale.

Rejuvenation is a pseudo-marginal random-walk move (:func:`~probinfer.smc.parameters.pm_step`)
of every particle: ``u' = u + L z`` with ``L L^T = (2.38^2 / D)`` times the covariance of the
(resampled) parameter particles; the proposal's filter is re-run on ``y_0..y_{t-1}`` (the
driver's stop rule: one compiled program for every ``t``) and accepted with the ratio of
``p(u') p_hat(y_{0:t-1} | u')`` to the particle's kept value. The move leaves the extended
target of step ``t - 1`` (parameters and filters) invariant.

When to move
    The driver resamples before the move at step ``t`` when the ESS after step ``t - 1``'s
    reweighting is below ``ess_threshold * num_theta``; ``M`` does not see that decision. So
    ``adapt`` at step ``t - 1`` (after the filters have advanced, before reweighting) computes
    the same ESS from the increments stored in the values and the weights it is handed (the
    driver's own :func:`probinfer.weights.reweight` on the same numbers) and records
    ``move`` in the data; ``M`` at step ``t`` rejuvenates exactly when it is set. The rule is
    decided before the move from the particle system, and the move kernel is invariant for
    the current weighted target, so the algorithm is exact whatever the rule (a move
    without resampling would still be valid; here they coincide).

Left out: Chopin et al.'s doubling of ``num_x`` when the acceptance rate falls (the
exchange step changes the filters' array shapes mid-run, which a single compiled program
cannot do without padding every filter to the largest size).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from probinfer.checks import check_num
from probinfer.particles import Particles
from probinfer.resampling import resampler
from probinfer.smc.base import FeynmanKac, SMCState, check_threshold, log_evidence_of
from probinfer.smc.base import init as smc_init
from probinfer.smc.base import step as smc_step
from probinfer.smc.kernels import _particle_chol
from probinfer.smc.parameters import (
    FilterModel,
    PMState,
    check_particles,
    check_prior,
    check_ssm_fn,
    check_ys,
    constrain,
    constrain_rows,
    float_dtype,
    log_prior,
    pm_step,
    prior_draws,
)
from probinfer.smc.pmmh import RR_SCALE
from probinfer.smc.result import SMCResult, _final_ess
from probinfer.smc.scan import smc_scan

Array = jax.Array

__all__ = ["SMC2Data", "SMC2Particles", "SMC2Result", "rejuvenate", "smc2", "smc2_feynman_kac"]

KERNELS = ("pmmh",)


class SMC2Particles(NamedTuple):
    """The outer particle values (leading axis ``num_theta`` on every leaf)."""

    u: Array  # (N, D) unconstrained parameters
    log_prior: Array  # (N,) log prior density of u (Jacobian included)
    filters: SMCState  # each particle's filter (num_x particles; data None)
    increment: Array  # (N,) last log p_hat(y_t | y_{0:t-1}, theta)
    acceptance: Array  # (N,) fraction of this step's moves accepted (0 without a move)
    num_nan: Array  # (N,) this step's filter runs (move proposals, step) meeting NaN potentials


class SMC2Data(NamedTuple):
    """The outer model's data: the problem, the move rule and the move statistics."""

    prior: Any  # the prior dict (numpyro distributions: a pytree)
    ys: Array  # (T, ...) observations
    initial: Array  # (N, D) the prior draws, made before the run
    move: Array  # bool: rejuvenate before advancing at the next step
    moved: Array  # bool: rejuvenated at this step
    acceptance: Array  # acceptance rate of this step's move (NaN without a move)
    num_nan: Array  # filter runs so far that met NaN log potentials


def log_likelihoods(values: SMC2Particles) -> Array:
    """``(N,)`` each filter's running ``log p_hat(y_{0:t} | theta)``."""
    return values.filters.log_evidence - values.filters.log_evidence_c


def _start(filt: FilterModel, key, theta, ys):
    """A filter for one parameter value, started on ``y_0``: its state, increment and
    whether it met NaN log potentials."""
    fk = filt.model(theta, ys)
    state, info = smc_init(key, fk, filt.num_particles)
    return state._replace(data=None), *_increment(info)


def _advance(filt: FilterModel, key, t, theta, state: SMCState, ys):
    """One filter step ``t`` of one parameter value's filter: its state, increment and
    whether it met NaN log potentials."""
    fk = filt.model(theta, ys)
    state, info = smc_step(
        key,
        t,
        fk,
        state._replace(data=fk.data),
        resampler(filt.scheme),
        filt.ess_threshold,
    )
    return state._replace(data=None), *_increment(info)


def _increment(info) -> tuple[Array, Array]:
    """A filter step's evidence increment (``-inf``, never NaN, for zero) and whether it met
    NaN log potentials (those particles got weight 0)."""
    inc = info.log_evidence_increment
    return jnp.where(jnp.isnan(inc), -jnp.inf, inc), info.num_nan > 0


def rejuvenate(key, values: SMC2Particles, data: SMC2Data, last, filt: FilterModel, num_steps):
    """``num_steps`` pseudo-marginal random-walk moves of every parameter particle, for the
    target given ``y_0..y_last``.

    The proposal covariance is ``2.38^2 / D`` times the particles' covariance (computed
    once, before the moves, so the kernel is fixed while it moves them); a proposal's filter
    is re-run on ``y_0..y_last`` (:meth:`FilterModel.run_until`) and replaces the particle's
    filter when accepted. Returns the moved values (``acceptance`` and ``num_nan``, the
    proposals whose filter met NaN log potentials, filled in).
    """
    prior, ys = data.prior, data.ys
    n, d = values.u.shape
    chol = jnp.sqrt(RR_SCALE**2 / d) * _particle_chol(values.u)

    def estimate(k, u):
        state, ll, met_nan = filt.run_until(k, constrain(prior, u), ys, last)
        return ll, state, met_nan

    move = jax.vmap(lambda k, s: pm_step(k, s, chol, prior, estimate))

    def one(state, k):
        state, ok, nan = move(jax.random.split(k, n), state)
        return state, (ok, nan)

    state = PMState(values.u, values.log_prior, log_likelihoods(values), values.filters)
    state, (oks, nans) = jax.lax.scan(one, state, jax.random.split(key, num_steps))
    return values._replace(
        u=state.u,
        log_prior=state.log_prior,
        filters=state.aux,
        acceptance=jnp.mean(oks, axis=0, dtype=jnp.float32),
        num_nan=jnp.sum(nans, axis=0, dtype=jnp.int32),
    )


@lru_cache(maxsize=32)
def _smc2_fns(filt: FilterModel, num_mcmc_steps: int, ess_threshold: float) -> tuple:
    """``(M0, M, logG, adapt)`` of the outer model (one set per settings, so compiled runs
    are reused)."""
    from probinfer.weights import reweight

    def M0(key, n, data: SMC2Data):
        u = data.initial
        theta = jax.vmap(lambda r: constrain(data.prior, r))(u)
        filters, inc, met_nan = jax.vmap(lambda k, th: _start(filt, k, th, data.ys))(
            jax.random.split(key, n), theta
        )
        lp = jax.vmap(lambda r: log_prior(data.prior, r))(u)
        zeros = jnp.zeros(n, jnp.float32)
        return SMC2Particles(u, lp, filters, inc, zeros, met_nan.astype(jnp.int32))

    def M(key, t, values: SMC2Particles, data: SMC2Data):
        k_move, k_step = jax.random.split(key)
        n = values.u.shape[0]

        def move(v):
            return rejuvenate(k_move, v, data, t - 1, filt, num_mcmc_steps)

        def stay(v):
            return v._replace(acceptance=jnp.zeros(n, jnp.float32), num_nan=jnp.zeros(n, jnp.int32))

        values = jax.lax.cond(data.move, move, stay, values)
        theta = jax.vmap(lambda r: constrain(data.prior, r))(values.u)
        filters, inc, met_nan = jax.vmap(lambda k, th, s: _advance(filt, k, t, th, s, data.ys))(
            jax.random.split(k_step, n), theta, values.filters
        )
        num_nan = values.num_nan + met_nan
        return values._replace(filters=filters, increment=inc, num_nan=num_nan)

    def logG(t, prev, values: SMC2Particles, data):
        return values.increment

    def adapt(t, values: SMC2Particles, log_weights, data: SMC2Data):
        # the ESS the driver will compute after this step's reweighting (its rule below)
        _, _, ess = reweight(log_weights, values.increment)
        n = log_weights.shape[0]
        move = jnp.logical_or(jnp.asarray(ess_threshold) >= 1.0, ess < ess_threshold * n)
        moved = jnp.asarray(data.move)
        return data._replace(
            move=move,
            moved=moved,
            acceptance=jnp.where(moved, jnp.mean(values.acceptance), jnp.nan),
            num_nan=data.num_nan + jnp.sum(values.num_nan),
        )

    return M0, M, logG, adapt


def _summary(particles, data: SMC2Data) -> dict:
    """Per-step move statistics (the driver's ``summary``)."""
    return {"moved": data.moved, "acceptance": data.acceptance}


def smc2_feynman_kac(
    ssm_fn,
    prior,
    ys,
    initial,
    num_x: int,
    *,
    ess_threshold: float = 0.5,
    num_mcmc_steps: int = 1,
    proposal: str = "bootstrap",
    x_ess_threshold: float = 0.5,
    x_scheme: str = "systematic",
) -> FeynmanKac:
    """The outer Feynman-Kac model of SMC² (see the module docstring), for the driver.

    ``initial`` are the unconstrained starting draws ``(num_theta, D)`` (e.g.
    :func:`~probinfer.smc.parameters.prior_draws`); ``ess_threshold`` must be the one the
    driver runs with (it decides when ``M`` rejuvenates). No checks beyond the settings':
    :func:`smc2` validates ``ssm_fn`` and the data.
    """
    prior = check_prior(prior)
    filt = FilterModel.checked(ssm_fn, proposal, num_x, x_ess_threshold, x_scheme, "num_x")
    thr = check_threshold(ess_threshold, "systematic")
    num_mcmc_steps = check_num(num_mcmc_steps, "num_mcmc_steps")
    ys = jnp.asarray(ys, float_dtype())
    data = SMC2Data(
        prior,
        ys,
        jnp.asarray(initial, float_dtype()),
        jnp.asarray(False),
        jnp.asarray(False),
        jnp.asarray(jnp.nan, jnp.float32),
        jnp.zeros((), jnp.int32),
    )
    M0, M, logG, adapt = _smc2_fns(filt, num_mcmc_steps, thr)
    return FeynmanKac(M0, M, logG, int(ys.shape[0]), data, adapt=adapt)


@dataclass(frozen=True, kw_only=True, repr=False)
class SMC2Result(SMCResult):
    """Result of :func:`smc2` (an :class:`~probinfer.smc.SMCResult`).

    Attributes
    ----------
    particles
        Weighted parameter particles: values ``{name: (num_theta, *shape)}`` (constrained),
        approximating ``p(theta | y_{0:T-1})``.
    log_evidence
        ``log p_hat(y_{0:T-1})`` (float64; unbiased for the evidence on the natural scale).
    log_evidence_increments, ess, resampled
        Per time step: ``log p_hat(y_t | y_{0:t-1})``, the ESS of the parameter particles,
        whether they were resampled (and then moved) before step ``t``.
    acceptance_rate
        ``(T,)`` acceptance rate of the move made at step ``t`` (NaN where none was).
    moved
        ``(T,)`` whether the particles were moved at step ``t``.
    log_likelihood
        ``(num_theta,)`` each particle's ``log p_hat(y_{0:T-1} | theta)``.
    num_x
        Particles of each filter.
    num_nan
        Filter runs (steps and move proposals) that met NaN log potentials: those filter
        particles got weight 0.
    """

    acceptance_rate: np.ndarray
    moved: np.ndarray
    log_likelihood: np.ndarray
    num_x: int
    num_nan: int = 0

    def __repr__(self) -> str:
        acc = self.acceptance_rate[self.moved]
        moves = f"{int(self.moved.sum())} moves"
        if acc.size:
            moves += f" (acceptance {np.min(acc):.2f}-{np.max(acc):.2f})"
        return (
            f"SMC2Result(num_theta={self.num_particles}, num_x={self.num_x}, "
            f"num_steps={self.num_steps}, log_evidence={self.log_evidence:.2f}, {moves}, "
            f"final_ess={_final_ess(self.particles.log_weights):.1f}, "
            f"wall_time={self.wall_time:.1f}s)"
        )

    def _step_stats(self) -> dict[str, np.ndarray]:
        return {
            **super()._step_stats(),
            "acceptance_rate": np.asarray(self.acceptance_rate),
            "moved": np.asarray(self.moved),
        }

    def _attrs(self) -> dict:
        return {**super()._attrs(), "algorithm": "smc2", "num_x": self.num_x}


def smc2(
    key: Array,
    ssm_fn,
    prior,
    ys,
    num_theta: int,
    num_x: int,
    *,
    ess_threshold: float = 0.5,
    kernel: str = "pmmh",
    num_mcmc_steps: int = 1,
    proposal: str = "bootstrap",
    scheme: str = "systematic",
    x_ess_threshold: float = 0.5,
) -> SMC2Result:
    """SMC² for the parameters of a state-space model: the posterior after each observation
    and the model evidence.

    Parameters
    ----------
    key
        ``jax.random`` key; same key, same result.
    ssm_fn
        ``ssm_fn(theta) -> StateSpaceModel``, ``theta`` a dict ``{name: value}`` (traced:
        build the distributions with ``jnp`` operations).
    prior
        A numpyro distribution (the parameter is then ``"theta"``) or a dict
        ``{name: distribution}`` of continuous distributions.
    ys
        Observations ``(T,)`` or ``(T, p)``.
    num_theta
        Parameter particles (``>= 2``).
    num_x
        Particles of each parameter particle's filter (``>= 2``).
    ess_threshold
        Resample and rejuvenate the parameter particles when their ESS falls below
        ``ess_threshold * num_theta`` (``1.0``: at every step).
    kernel
        The rejuvenation kernel: ``"pmmh"``, a pseudo-marginal random walk scaled to the
        particles' covariance.
    num_mcmc_steps
        Kernel steps per rejuvenation.
    proposal
        The filters' proposal, ``"bootstrap"`` or ``"guided"`` (the model's proposals).
    scheme
        Resampling scheme of the parameter particles (and of the filters).
    x_ess_threshold
        The filters' resampling threshold.

    Returns
    -------
    SMC2Result

    Raises
    ------
    ValueError
        On invalid sizes or settings (naming the argument), observations that are not
        finite, an ``ssm_fn`` that fails at one of the initial prior draws (naming it), or
        every parameter particle having zero weight.
    TypeError
        As :func:`~probinfer.smc.pmmh`.

    Notes
    -----
    A NaN log potential gives that filter particle weight 0, so a parameter particle
    whose filter particles all have NaN potentials gets weight 0 (a proposal like it is
    rejected); one ``RuntimeWarning`` reports how many filter runs met NaN potentials.
    The whole run is one compiled program, reused by later calls with the same ``ssm_fn``,
    prior families, data shape and settings.
    """
    start_time = time.perf_counter()
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    prior = check_prior(prior)
    ys_host = check_ys(ys)
    num_theta = check_particles(num_theta, "num_theta")
    thr = check_threshold(ess_threshold, scheme)
    k_draw, k_run = jax.random.split(key)
    u0 = prior_draws(jax.random.split(k_draw, num_theta), prior)
    fk = smc2_feynman_kac(
        ssm_fn,
        prior,
        ys_host,
        u0,
        num_x,
        ess_threshold=thr,
        num_mcmc_steps=num_mcmc_steps,
        proposal=proposal,
        x_ess_threshold=x_ess_threshold,
        x_scheme=scheme,
    )
    check_ssm_fn(ssm_fn, prior, constrain_rows(prior, u0), ys_host, proposal)
    out = smc_scan(k_run, fk, num_theta, thr, scheme, summary=_summary, keep_ancestors=False)
    jax.block_until_ready(out)
    incs = np.asarray(out.log_evidence_increments, np.float64)
    num_nan = int(out.state.data.num_nan)
    if num_nan:
        warnings.warn(
            f"{num_nan} filter run(s) met NaN log potentials; those filter particles were "
            "given weight 0 (a parameter value where all were has weight 0)",
            RuntimeWarning,
            stacklevel=2,
        )
    dead = ~(incs > -np.inf)
    if np.any(dead):
        raise ValueError(
            f"every parameter particle has weight 0 at step {int(np.argmax(dead))}: the "
            "model cannot explain the data at any of them, or its log likelihood is NaN"
        )
    values = out.state.values
    theta = {n: np.asarray(v) for n, v in constrain_rows(prior, values.u).items()}
    return SMC2Result(
        particles=Particles(theta, out.state.log_weights),
        log_evidence=log_evidence_of(out.state),
        log_evidence_increments=incs,
        ess=np.asarray(out.ess),
        resampled=np.asarray(out.resampled),
        acceptance_rate=np.asarray(out.summaries["acceptance"], np.float64),
        moved=np.asarray(out.summaries["moved"], bool),
        log_likelihood=np.asarray(log_likelihoods(values), np.float64),
        num_x=int(num_x),
        num_nan=num_nan,
        wall_time=time.perf_counter() - start_time,
    )
