"""Adaptive tempered SMC for static models, as a Feynman-Kac model on the one driver.

Targets the path ``pi_lambda(theta) ∝ p(theta) p(y | theta)^lambda`` from the prior
(``lambda = 0``) to the posterior (``lambda = 1``). Tempering is a Feynman-Kac model
(:func:`tempering_feynman_kac`) run by :func:`probinfer.smc.run_smc` with resampling at
every step; each step ``t``

1. resamples (the driver);
2. rejuvenates with MCMC moves invariant for ``pi_{lambda_{t-1}}`` (random-walk MH and HMC
   with the particle covariance, NUTS with a diagonal mass from the particle variances);
   the scale / step size is fixed during a step and adapted between steps from the
   observed acceptance rate (HMC: capped at a quarter-period integration time);
3. picks ``lambda_t`` (the model's ``adapt`` hook) by bisection so that the ESS of the
   incremental weights ``exp((lambda_t - lambda_{t-1}) log p(y | theta_i))`` is
   ``ess_target * N`` (or jumps to 1); the increment is at least :data:`MIN_DELTA`, so the
   float32 schedule never stalls;
4. reweights, adding the evidence increment
   ``log E_{pi_{lambda_{t-1}}}[exp((lambda_t - lambda_{t-1}) log p(y | theta))]``, estimated
   by the driver's plain mean of the incremental weights (``"is"``, the standard SMC
   estimator) and, optionally, with zero-variance control variates built from the
   particles' scores (``"zv"``: several times lower variance where ``log p(y | theta)``
   is close to quadratic; each increment falls back to the plain mean when the
   cross-fitted control variates do not reduce the variance, e.g. for heavy-tailed or
   funnel-shaped particles; see :mod:`probinfer.smc.evidence`).

A last move at ``lambda = 1`` makes the output equally weighted. The run is one jitted
``lax.while_loop`` (``progress=False``; :func:`tempered_smc_loop` is vmappable over keys),
a Python loop over the jitted step (progress bar), or eager steps (``jit=False``). Jitted
runs pad the particle count to a bucketed size (``bucket=True``): the padding slots carry
weight 0 and are masked out of the kernel tuning, the temperature choice and the evidence,
so many different particle counts reuse a bounded set of compiled programs.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from probinfer.checks import check_num
from probinfer.engine.core import bucket_size
from probinfer.particles import Particles
from probinfer.smc.evidence import EVIDENCE_ESTIMATORS, zv_degree, zv_log_mean_weight
from probinfer.smc.feynman_kac import (
    FeynmanKac,
    SMCOutput,
    SMCResult,
    check_num_particles,
    check_threshold,
    run_smc,
    smc_scan,
)
from probinfer.smc.kernels import (
    KERNELS,
    Densities,
    hmc_move,
    log_target_and_score,
    max_hmc_step_size,
    nuts_move,
    rwmh_move,
)
from probinfer.weights import ess

Array = jax.Array

__all__ = [
    "StepStats",
    "TemperedParticles",
    "TemperedSMCResult",
    "TemperingData",
    "tempered_smc",
    "tempered_smc_loop",
    "tempering_feynman_kac",
]

_TARGET_ACCEPT = {"rwmh": 0.3, "hmc": 0.65, "nuts": 0.8}


class TemperedParticles(NamedTuple):
    """Tempered-SMC particle values (every leaf has a leading particle axis)."""

    theta: Array  # (N, D) unconstrained particles
    log_prior: Array  # (N,)
    log_lik: Array  # (N,)
    score: Array  # (N, D) grad log pi_lambda at theta (zeros when the "is" estimator is used)
    acceptance: Array  # (N,) mean acceptance of the move that produced them (broadcast)


class TemperingData(NamedTuple):
    """The tempering schedule and kernel tuning carried by the driver (scalars)."""

    lam: Array  # temperature the weights target (after adapt)
    lam_prev: Array  # temperature of the last move (the particles' target before reweighting)
    scale: Array  # RWMH scale / step size for the next move
    scale_used: Array  # the one used by the last move
    acceptance: Array  # mean acceptance of the last move (NaN at t = 0)
    initial: TemperedParticles  # the prior draws, made before the run
    # the target when it is a pytree (its data then enters compiled code as an argument, so
    # a new target of the same model and data shapes reuses the compiled run), else None
    target: Any = None
    # bucketed runs: the number of real particles (they lead; the padding slots carry
    # weight 0 and are left out of every population statistic), else None
    num_valid: Any = None


class StepStats(NamedTuple):
    """Per-step tempering statistics (the driver's ``summary``)."""

    lam: Array
    log_evidence_increment_zv: Array  # control-variate increment (NaN with "is")
    acceptance_rate: Array
    scale: Array
    # whether the control variates were used for the increment (they are not where they
    # do not reduce the cross-fitted variance; the increment is then the plain one)
    zv_used: Array


class _Config(NamedTuple):
    kernel: str
    num_mcmc_steps: int
    ess_target: float
    scheme: str
    num_leapfrog: int
    max_tree_depth: int
    zv_degree: int  # 0: plain "is" increments; 1 or 2: control variates of that degree


#: Smallest temperature increment: larger than float32's spacing near 1 (6e-8), so the
#: schedule always moves and a run can never stall on a step that rounds to zero.
MIN_DELTA = 1e-6


def _next_delta(log_lik, log_weights, lam, ess_target, num_valid=None, num_bisection: int = 40):
    """Largest ``delta <= 1 - lam`` with ``ESS(lw + delta * log_lik) >= ess_target * N``
    (at least :data:`MIN_DELTA`); ``N`` is ``num_valid`` in a bucketed run."""
    n = log_lik.shape[0] if num_valid is None else num_valid
    finite = jnp.isfinite(log_lik)

    def ess_frac(delta):
        return ess(jnp.where(finite, log_weights + delta * log_lik, -jnp.inf)) / n

    room = 1.0 - lam

    def bisect(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        ok = ess_frac(mid) >= ess_target
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, num_bisection, bisect, (jnp.zeros_like(room), room))
    lo = jnp.maximum(lo, jnp.minimum(room, MIN_DELTA))
    return jnp.where(ess_frac(room) >= ess_target, room, lo)


def _max_scale(cfg: _Config) -> float:
    return max_hmc_step_size(cfg.num_leapfrog) if cfg.kernel == "hmc" else 10.0


def _adapt_scale(scale, acc, cfg: _Config):
    """Scale / step size for the *next* step from this step's acceptance rate.

    The kernel of a step uses the scale fixed before it started (so every move is
    invariant for its ``pi_lambda``); the update is a multiplicative Robbins-Monro step
    towards the target acceptance, capped for HMC at a quarter-period integration time
    (:func:`~probinfer.smc.kernels.max_hmc_step_size`).
    """
    target = _TARGET_ACCEPT[cfg.kernel]
    return jnp.clip(scale * jnp.exp(2.0 * (acc - target)), 1e-4, _max_scale(cfg))


def _move(key, lam, values: TemperedParticles, scale, dens: Densities, cfg: _Config, mask=None):
    """``cfg.num_mcmc_steps`` MCMC moves invariant for ``pi_lam`` (tuned on the ``mask``ed
    particles when given)."""
    th, lp, ll = values.theta, values.log_prior, values.log_lik
    steps = cfg.num_mcmc_steps
    if cfg.kernel == "rwmh":
        th, lp, ll, acc = rwmh_move(key, th, lp, ll, lam, dens, scale, steps, mask=mask)
    elif cfg.kernel == "hmc":
        th, lp, ll, acc = hmc_move(
            key, th, lp, ll, lam, dens, scale, steps, cfg.num_leapfrog, mask=mask
        )
    else:
        th, lp, ll, acc = nuts_move(
            key, th, lp, ll, lam, dens, scale, steps, cfg.max_tree_depth, mask=mask
        )
    score = values.score
    if cfg.zv_degree:
        _, _, score = log_target_and_score(dens, th, lam)
    ll = jnp.where(jnp.isnan(ll), -jnp.inf, ll)
    return TemperedParticles(th, lp, ll, score, jnp.full(ll.shape, acc, ll.dtype))


@lru_cache(maxsize=64)
def tempering_feynman_kac_fns(dens: Densities | None, cfg: _Config):
    """``(M0, M, logG, adapt, finished, summary)`` of adaptive tempering as a Feynman-Kac
    model (Del Moral, Doucet & Jasra 2006; the ``particles`` library's ``AdaptiveTempering``).

    Step ``t``: the particles, resampled at every step, are moved by MCMC invariant for
    ``pi_{lambda_{t-1}}`` (``M``); ``adapt`` picks ``lambda_t`` by bisection on the ESS of the
    incremental weights of the moved particles, and tunes the kernel scale from the move's
    acceptance; ``G_t(x) = exp((lambda_t - lambda_{t-1}) log p(y | x))``. The run ends after
    one last move at ``lambda = 1`` (weight increment 0), so the output is equally weighted.
    Cached on ``(dens, cfg)`` so the compiled run is reused; ``dens=None`` reads the
    densities from the pytree target in the data (``TemperingData.target``), so that the
    functions, and the compiled run, are shared by every target of the same structure.
    """

    def M0(key, n, data: TemperingData):
        return data.initial

    def M(key, t, values, data: TemperingData):
        d = _densities(data.target) if dens is None else dens
        mask = None
        if data.num_valid is not None:
            mask = jnp.arange(values.log_lik.shape[0]) < data.num_valid
        return _move(key, data.lam, values, data.scale, d, cfg, mask)

    def adapt(t, values, log_weights, data: TemperingData):
        lam = data.lam
        moved = jnp.asarray(t) > 0
        acc = jnp.where(moved, jnp.mean(values.acceptance), jnp.nan)
        scale = jnp.where(moved, _adapt_scale(data.scale, acc, cfg), data.scale)
        delta = _next_delta(
            values.log_lik, log_weights.astype(lam.dtype), lam, cfg.ess_target, data.num_valid
        )
        new_lam = jnp.where(1.0 - (lam + delta) < 1e-6, 1.0, lam + delta).astype(lam.dtype)
        return data._replace(
            lam=new_lam, lam_prev=lam, scale=scale, scale_used=data.scale, acceptance=acc
        )

    def logG(t, prev, values, data: TemperingData):
        delta = data.lam - data.lam_prev
        ll = values.log_lik
        return jnp.where(jnp.isfinite(ll), delta * ll, -jnp.inf)

    def finished(values, data: TemperingData):
        return data.lam_prev >= 1.0

    def summary(particles, data: TemperingData):
        v = particles.values
        delta = data.lam - data.lam_prev
        if cfg.zv_degree:
            log_w = jnp.where(jnp.isfinite(v.log_lik), delta * v.log_lik, -jnp.inf)
            inc, used = zv_log_mean_weight(
                log_w,
                v.theta,
                v.score,
                cfg.zv_degree,
                num_valid=data.num_valid,
                return_used=True,
            )
            inc, used = jnp.where(delta > 0, inc, 0.0), used & (delta > 0)
        else:
            inc, used = jnp.full((), jnp.nan, data.lam.dtype), jnp.asarray(False)
        return StepStats(data.lam, inc, data.acceptance, data.scale_used, used)

    return M0, M, logG, adapt, finished, summary


def _densities(target) -> Densities:
    return Densities(target.log_prior, target.log_likelihood)


def _is_pytree(target) -> bool:
    """Whether ``target`` is a registered pytree (not a leaf), e.g. a NumPyro target whose
    data can be traced (:attr:`~probinfer.targets.NumPyroTarget.traced_data`)."""
    return not jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(target))


def _terms(target, theta, with_score: bool):
    """Log prior, log likelihood (NaN -> ``-inf``) and, ``with_score``, the prior's score
    (zeros without) of the draws ``theta``."""
    if with_score:
        lp, ll, score = log_target_and_score(_densities(target), theta, 0.0)
    else:
        lp, ll = target.log_prior(theta), target.log_likelihood(theta)
        score = jnp.zeros_like(theta)
    return lp, jnp.where(jnp.isnan(ll), -jnp.inf, ll), score


_terms_of_pytree = jax.jit(_terms, static_argnums=(2,))  # e.g. one per model and data shapes
_terms_of_static = jax.jit(_terms, static_argnums=(0, 2))  # one per (hashable) target


def _initial_terms(target, theta, with_score: bool):
    """:func:`_terms` in one compiled call: run eagerly, every operation of the model and
    of its gradient would compile on its own (seconds on a first run). A target that is
    neither a pytree nor hashable, or cannot be traced, is evaluated eagerly."""
    try:
        if _is_pytree(target):
            return _terms_of_pytree(target, theta, with_score)
        hash(target)
        return _terms_of_static(target, theta, with_score)
    except TypeError:  # unhashable, or numpy on traced values: the eager evaluation
        return _terms(target, theta, with_score)


def _initial_data(
    key, target, n, kernel, initial_scale, num_leapfrog=10, with_score=False, size=None
):
    """The prior draws and the initial tuning. With ``size`` (a bucketed run) ``size >= n``
    prior draws are made and evaluated; the first ``n`` are the particles, the others fill
    the padding slots (weight 0)."""
    theta = jnp.asarray(target.sample_prior(key, n if size is None else size))
    lp, ll, score = _initial_terms(target, theta, with_score)
    d = theta.shape[1]
    if initial_scale is None:
        if kernel == "rwmh":
            initial_scale = 2.38 / np.sqrt(d)
        elif kernel == "hmc":
            initial_scale = max_hmc_step_size(num_leapfrog)
        else:
            initial_scale = 0.5 / d**0.25
    scale = jnp.asarray(initial_scale, theta.dtype)
    zero = jnp.zeros((), theta.dtype)
    initial = TemperedParticles(theta, lp, ll, score, jnp.full(ll.shape, jnp.nan, ll.dtype))
    num_valid = None if size is None else jnp.asarray(n, jnp.int32)
    nan = jnp.full((), jnp.nan, theta.dtype)
    return TemperingData(zero, zero, scale, scale, nan, initial, num_valid=num_valid)


def _bucket(num_particles: int) -> int:
    """The padded particle count of a bucketed run (that of :func:`probinfer.smc.run_smc`)."""
    return bucket_size(int(num_particles), 16, per_octave=4)


def _check_init(data: TemperingData):
    ll = np.asarray(data.initial.log_lik)
    if data.num_valid is not None:
        ll = ll[: int(data.num_valid)]
    bad = int(np.sum(~np.isfinite(ll)))
    if bad == ll.shape[0]:
        raise ValueError(
            "the log likelihood is NaN or -inf for every initial particle: check the model "
            "and the data"
        )
    if bad:
        warnings.warn(
            f"{bad} initial particle(s) have a NaN or -inf log likelihood; they get weight 0",
            RuntimeWarning,
            stacklevel=3,
        )


def tempering_feynman_kac(
    key,
    target,
    num_particles: int,
    *,
    kernel="rwmh",
    num_mcmc_steps=5,
    ess_target=0.5,
    scheme="systematic",
    initial_scale=None,
    max_steps=200,
    num_leapfrog=10,
    max_tree_depth=6,
    evidence="auto",
    bucket=False,
) -> tuple[FeynmanKac, Callable, _Config]:
    """Adaptive tempering of ``target`` as a :class:`~probinfer.smc.FeynmanKac` model.

    Returns ``(fk, summary, cfg)``; run it with :func:`~probinfer.smc.run_smc` (or
    :func:`~probinfer.smc.smc_scan`, vmappable over keys) with ``ess_threshold=1.0``
    (and the same ``bucket``). The prior draws are made here, eagerly, with ``key`` (the
    target's sampler may be a black box); see :func:`tempered_smc` for the arguments.
    """
    cfg = _config(
        target,
        num_particles,
        kernel,
        num_mcmc_steps,
        ess_target,
        scheme,
        num_leapfrog,
        max_tree_depth,
        evidence,
    )
    size = _bucket(num_particles) if bucket else None
    data = _initial_data(
        key, target, num_particles, kernel, initial_scale, num_leapfrog, cfg.zv_degree > 0, size
    )
    if getattr(target, "traced_data", False) and _is_pytree(target):  # data: an argument
        data = data._replace(target=target)
        dens = None
    else:
        dens = _densities(target)
    M0, M, logG, adapt, finished, summary = tempering_feynman_kac_fns(dens, cfg)
    # t = 0 weights the prior draws; the last step is the final move at lambda = 1.
    fk = FeynmanKac(M0, M, logG, int(max_steps) + 2, data, adapt=adapt, finished=finished)
    return fk, summary, cfg


def tempered_smc_loop(
    key,
    target,
    num_particles: int,
    *,
    kernel="rwmh",
    num_mcmc_steps=5,
    ess_target=0.5,
    scheme="systematic",
    initial_scale=None,
    max_steps=200,
    num_leapfrog=10,
    max_tree_depth=6,
    evidence="auto",
) -> SMCOutput:
    """The whole run as one jitted ``lax.while_loop`` of the driver (vmappable over
    ``key``; the prior draws inside are JAX draws, so the target must be a JAX target).

    Returns the driver's :class:`~probinfer.smc.SMCOutput`: ``state.values`` are the final
    :class:`TemperedParticles`, ``state.data.lam`` the final temperature,
    ``log_evidence_increments`` the standard increments and ``summaries`` the per-step
    :class:`StepStats` (NaN-padded after ``num_steps``). See :func:`tempered_smc`.
    """
    k_init, k_run = jax.random.split(key)
    fk, summary, cfg = tempering_feynman_kac(
        k_init,
        target,
        num_particles,
        kernel=kernel,
        num_mcmc_steps=num_mcmc_steps,
        ess_target=ess_target,
        scheme=scheme,
        initial_scale=initial_scale,
        max_steps=max_steps,
        num_leapfrog=num_leapfrog,
        max_tree_depth=max_tree_depth,
        evidence=evidence,
    )
    return smc_scan(
        k_run, fk, num_particles, 1.0, cfg.scheme, summary=summary, keep_ancestors=False
    )


def _config(
    target,
    num_particles,
    kernel,
    num_mcmc_steps,
    ess_target,
    scheme,
    num_leapfrog,
    max_tree_depth,
    evidence,
) -> _Config:
    if evidence not in EVIDENCE_ESTIMATORS:
        raise ValueError(f"evidence must be one of {EVIDENCE_ESTIMATORS}, got {evidence!r}")
    has_grad = getattr(target, "backend", "jax") == "jax"
    if evidence == "zv" and not has_grad:
        raise ValueError(
            "evidence='zv' needs gradients of the log densities: use evidence='is' for a "
            f"{target.backend} target"
        )
    degree = 0
    if evidence == "zv" or (evidence == "auto" and has_grad):
        degree = zv_degree(int(num_particles), int(target.dim))
    return _Config(
        kernel,
        int(num_mcmc_steps),
        float(ess_target),
        scheme,
        int(num_leapfrog),
        int(max_tree_depth),
        degree,
    )


@dataclass(frozen=True, kw_only=True)
class TemperedSMCResult(SMCResult):
    """Result of :func:`tempered_smc` (an :class:`~probinfer.smc.SMCResult`).

    Attributes
    ----------
    particles
        Equally weighted posterior particles, unconstrained ``(N, D)``.
    samples
        Constrained values per latent site (and NumPyro ``deterministic`` site),
        ``{name: (N, *shape)}``.
    log_likelihood
        Pointwise log likelihood of each particle, ``{observed site: (N, *obs_shape)}`` (the
        ArviZ ``log_likelihood`` group: ``az.loo``/``az.waic``), or ``None``.
    observed_data
        The observed values, ``{observed site: array}`` (the ``observed_data`` group).
    log_evidence
        ``log p(y)`` estimate (float64 sum of the increments) from the ``evidence``
        estimator.
    log_evidence_is
        The standard SMC estimate (plain importance-sampling increments; its exponential is
        unbiased for ``p(y)``). Equal to ``log_evidence`` when ``evidence == "is"``.
    evidence
        ``"zv"`` (control variates, with ``zv_degree``) or ``"is"``.
    zv_degree
        Degree of the control variates (0 for ``"is"``).
    zv_used
        Per step: whether the increment in ``log_evidence_increments`` used the control
        variates (``False`` where they did not reduce the cross-fitted variance, and
        everywhere for ``"is"``); the other increments are the plain ones.
    log_evidence_increments, log_evidence_increments_is, temperatures, ess,
    acceptance_rates, scales
        Per-step history. Step 0 weights the prior draws, each later step moves the
        particles at the previous temperature and reweights them to ``temperatures[k]``;
        the last step is the final move at ``lambda = 1`` (increment 0). ``ess`` is the
        ESS of the incremental weights, ``acceptance_rates`` that of the step's move (NaN
        at step 0), ``scales`` the RWMH scale / step size it used.
    wall_time
        Seconds, including compilation.
    """

    samples: dict[str, Any]
    log_evidence_is: float
    log_evidence_increments_is: np.ndarray
    evidence: str
    zv_degree: int
    temperatures: np.ndarray
    acceptance_rates: np.ndarray
    scales: np.ndarray
    zv_used: np.ndarray
    kernel: str
    log_likelihood: dict[str, np.ndarray] | None = None
    observed_data: dict[str, np.ndarray] | None = None

    def _arviz_groups(self) -> dict:
        groups = {}
        if self.log_likelihood:
            groups["log_likelihood"] = self.log_likelihood
        if self.observed_data:
            groups["observed_data"] = self.observed_data
        return groups

    def _arviz_particles(self) -> Particles:
        return Particles(
            {k: np.asarray(v) for k, v in self.samples.items()}, self.particles.log_weights
        )

    def _step_stats(self) -> dict[str, np.ndarray]:
        return {
            **super()._step_stats(),
            "temperature": self.temperatures,
            "acceptance_rate": self.acceptance_rates,
            "scale": self.scales,
            "log_evidence_increment_is": self.log_evidence_increments_is,
            "zv_used": self.zv_used,
        }

    def _attrs(self) -> dict:
        return {
            **super()._attrs(),
            "kernel": self.kernel,
            "evidence_estimator": self.evidence,
            "log_evidence_is": self.log_evidence_is,
        }


def _check(target, num_particles, kernel, num_mcmc_steps, ess_target, scheme, max_steps):
    from probinfer.targets.base import Target

    check_num_particles(num_particles)
    check_threshold(0.5, scheme)
    if not isinstance(target, Target):
        raise TypeError(
            f"target must be a probinfer Target (from_numpyro/from_pyro), got "
            f"{type(target).__name__}"
        )
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel != "rwmh" and not target.has_gradients:
        raise ValueError(
            f"kernel={kernel!r} needs gradients: use kernel='rwmh' for a {target.backend} target"
        )
    check_num(num_mcmc_steps, "num_mcmc_steps")
    if not 0.0 < float(ess_target) < 1.0:
        raise ValueError(f"ess_target must be in (0, 1), got {ess_target!r}")
    check_num(max_steps, "max_steps")


def tempered_smc(
    key: Array,
    target,
    num_particles: int,
    *,
    kernel: str = "rwmh",
    num_mcmc_steps: int = 5,
    ess_target: float = 0.5,
    scheme: str = "systematic",
    initial_scale: float | None = None,
    max_steps: int = 200,
    num_leapfrog: int = 10,
    max_tree_depth: int = 6,
    evidence: str = "auto",
    jit: bool = True,
    progress: bool | None = None,
    shard: bool = False,
    bucket: bool = True,
) -> TemperedSMCResult:
    """Adaptive tempered SMC from the prior to the posterior of a static model.

    Parameters
    ----------
    key
        ``jax.random`` key.
    target
        A :class:`~probinfer.targets.Target` (``from_numpyro``/``from_pyro``).
    num_particles
        ``N >= 2``.
    kernel
        ``"rwmh"`` (random-walk MH, proposal ``scale^2 x`` particle covariance), ``"hmc"``
        (``num_leapfrog`` leapfrog steps, particle covariance as inverse mass) or
        ``"nuts"`` (tree depth up to ``max_tree_depth``); gradient kernels need a JAX
        target.
    num_mcmc_steps
        MCMC moves after each resampling.
    ess_target
        Fraction of ``N`` the incremental-weight ESS is held at by the bisection.
    scheme
        Resampling scheme.
    initial_scale
        Initial RWMH scale (default ``2.38 / sqrt(D)``), HMC step size in coordinates
        whitened by the particle covariance (default and maximum
        ``pi / (2 num_leapfrog)``, a quarter-period integration time) or NUTS step size
        relative to the particle standard deviations (default ``0.5 / D^(1/4)``); adapted
        between steps towards acceptance 0.3 / 0.65 / 0.8.
    max_steps
        Upper bound on the number of tempering steps (a ``ValueError`` if it does not
        reach ``lambda = 1``).
    evidence
        Estimator of the evidence increments: ``"zv"`` (zero-variance control variates
        from the particles' scores: several times lower variance of ``log p(y)`` where the
        log likelihood is close to quadratic in the particles, for one extra gradient
        evaluation per step; needs a JAX target), ``"is"`` (the standard estimator,
        unbiased for ``p(y)``) or ``"auto"`` (``"zv"`` for JAX targets). With ``"zv"``
        each increment uses the control variates only if their cross-fitted residuals
        have a smaller variance than the plain weights, and is the plain increment
        otherwise (``zv_used`` says which): on heavy-tailed or funnel-shaped particles
        (centred eight schools, HMC, N = 2000, 10 seeds) control variates everywhere gave
        a log Z RMSE of 0.235 against 0.035 for the plain estimator; with the check, 0.035.
        Both estimates are always computed when ``"zv"`` is used (``log_evidence_is``).
        Neither changes the particles.
    jit
        ``True``: jitted steps. ``False``: eager steps (same functions, no compilation).
    progress
        ``None``/``True``: a Python loop over the jitted step with a tqdm bar over steps
        that appears after 2 s (``True``: immediately). ``False``: no bar; with
        ``jit=True`` the whole run in one ``lax.while_loop`` (fastest).
    shard
        ``True`` places the particles over all devices (or pass a ``jax.sharding.Mesh``
        with a ``"particles"`` axis); ``num_particles`` must divide evenly. The moves and
        likelihoods run on each device's particles; see :func:`probinfer.smc.run_smc`.
    bucket
        Jitted, unsharded runs: pad the particle arrays to one of four sizes per octave
        (:func:`probinfer.engine.bucket_size`; at most 25% extra work) with slots that carry
        weight 0, are never resampled and are left out of the kernel tuning, the
        temperature choice and the evidence, so that runs with many different
        ``num_particles`` reuse a bounded set of compiled programs. The result for a given
        ``num_particles`` has the distribution of the unpadded run (its random numbers
        differ); the same key gives the same result.

    Returns
    -------
    TemperedSMCResult
    """
    _check(target, num_particles, kernel, num_mcmc_steps, ess_target, scheme, max_steps)
    start = time.perf_counter()
    bucket = bool(bucket) and jit and (shard is False or shard is None)
    k_init, k_run = jax.random.split(key)
    fk, summary, cfg = tempering_feynman_kac(
        k_init,
        target,
        num_particles,
        kernel=kernel,
        num_mcmc_steps=num_mcmc_steps,
        ess_target=ess_target,
        scheme=scheme,
        initial_scale=initial_scale,
        max_steps=max_steps,
        num_leapfrog=num_leapfrog,
        max_tree_depth=max_tree_depth,
        evidence=evidence,
        bucket=bucket,
    )
    _check_init(fk.data)
    res = run_smc(
        k_run,
        fk,
        num_particles,
        ess_threshold=1.0,
        scheme=cfg.scheme,
        jit=jit,
        summary=summary,
        keep_ancestors=False,
        progress=progress,
        desc="tempered SMC",
        shard=shard,
        bucket=bucket,
    )
    stats = res.summaries
    lams = np.asarray(stats.lam)
    if res.num_steps < 2 or lams[-1] < 1.0 or lams[-2] < 1.0:
        raise ValueError(
            f"tempering did not reach lambda = 1 within max_steps={max_steps} "
            f"(lambda = {float(lams[-1]):.3g}); increase max_steps"
        )
    incs_is = res.log_evidence_increments
    incs = incs_is
    if cfg.zv_degree:
        incs = np.asarray(stats.log_evidence_increment_zv, dtype=np.float64)
    theta = jnp.asarray(res.particles.values.theta)
    particles = Particles(theta, np.zeros(num_particles, theta.dtype))
    # constrained values and pointwise terms of the particles, evaluated at the bucketed
    # size (padded on the host with copies of particle 0) and cut on the host
    padded = theta
    if bucket:
        rows = np.asarray(theta)
        fill = np.broadcast_to(rows[:1], (_bucket(num_particles) - num_particles, rows.shape[1]))
        padded = jnp.asarray(np.concatenate([rows, fill]))
    samples = {k: np.asarray(v)[:num_particles] for k, v in target.constrain(padded).items()}
    log_lik, observed = _pointwise_groups(target, padded, num_particles)
    return TemperedSMCResult(
        particles=particles,
        log_evidence=float(np.sum(incs)),
        log_evidence_increments=incs,
        ess=res.ess,
        resampled=res.resampled,
        wall_time=time.perf_counter() - start,
        samples=samples,
        log_evidence_is=float(np.sum(incs_is)),
        log_evidence_increments_is=incs_is,
        evidence="zv" if cfg.zv_degree else "is",
        zv_degree=cfg.zv_degree,
        zv_used=np.asarray(stats.zv_used, dtype=bool),
        temperatures=lams,
        acceptance_rates=np.asarray(stats.acceptance_rate),
        scales=np.asarray(stats.scale),
        kernel=kernel,
        log_likelihood=log_lik,
        observed_data=observed,
    )


def _pointwise_groups(target, theta, num: int) -> tuple[dict | None, dict | None]:
    """The pointwise log likelihood of the first ``num`` rows of ``theta`` split per
    observed site, and the observed values."""
    observed = target.observed_data() if hasattr(target, "observed_data") else None
    pointwise = np.asarray(target.log_likelihood(theta, pointwise=True), np.float64)[:num]
    if not observed:
        return {"obs": pointwise}, None
    sizes = [int(np.size(v)) for v in observed.values()]
    if sum(sizes) != pointwise.shape[1]:  # log probs not one per observed value
        return {"obs": pointwise}, observed
    out, start = {}, 0
    for (name, value), size in zip(observed.items(), sizes, strict=True):
        out[name] = pointwise[:, start : start + size].reshape((-1,) + np.shape(value))
        start += size
    return out, observed
