"""Adaptive tempered SMC for static models.

Targets the path ``pi_lambda(theta) ∝ p(theta) p(y | theta)^lambda`` from the prior
(``lambda = 0``) to the posterior (``lambda = 1``). Each step (:func:`tempering_step`) is the
Feynman-Kac step of the driver specialised to tempering:

1. choose the next temperature by bisection so that the ESS of the incremental weights
   ``exp((lambda' - lambda) log p(y | theta_i))`` is ``ess_target * N`` (or jump to 1);
2. add the evidence increment ``log E_{pi_lambda}[exp((lambda' - lambda) log p(y | theta))]``,
   estimated from the particles either by the plain mean of the incremental weights
   (``"is"``, the standard SMC estimator) or with zero-variance control variates built from
   the particles' scores (``"zv"``, several times lower variance; see
   :mod:`probinfer.smc.evidence`);
3. resample;
4. rejuvenate with MCMC moves invariant for ``pi_lambda'`` (random-walk MH and HMC with
   the particle covariance, NUTS with a diagonal mass from the particle variances); the
   scale / step size is fixed during a step and adapted between steps from the observed
   acceptance rate (HMC: capped at a quarter-period integration time, which makes one
   move nearly independent of its start on near-Gaussian targets).

Log-likelihoods are evaluated through the targets' :class:`~probinfer.engine.LikelihoodEngine`.
The run is driven from Python with one jitted step (progress bar, any target) or entirely
inside ``lax.while_loop`` (:func:`tempered_smc_loop`, vmappable over keys).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from probinfer.particles import Particles
from probinfer.resampling import resample
from probinfer.smc.evidence import EVIDENCE_ESTIMATORS, zv_degree, zv_log_mean_weight
from probinfer.smc.feynman_kac import check_num_particles, check_threshold
from probinfer.smc.kernels import (
    KERNELS,
    Densities,
    hmc_move,
    log_target_and_score,
    max_hmc_step_size,
    nuts_move,
    rwmh_move,
)
from probinfer.weights import ess, log_mean_weight

Array = jax.Array

__all__ = [
    "TemperedSMCResult",
    "TemperedState",
    "tempered_smc",
    "tempered_smc_loop",
    "tempering_step",
]

_TARGET_ACCEPT = {"rwmh": 0.3, "hmc": 0.65, "nuts": 0.8}


class TemperedState(NamedTuple):
    """The state of a tempered SMC run (a pytree)."""

    theta: Array  # (N, D) unconstrained particles (equally weighted after each step)
    log_prior: Array  # (N,)
    log_lik: Array  # (N,)
    lam: Array  # current temperature
    scale: Array  # RWMH scale or (relative) step size, adapted
    log_evidence: Array  # running sum (device dtype; the result is re-summed in float64)
    score: Array  # (N, D) grad log pi_lam at theta (zeros when the "is" estimator is used)


class StepStats(NamedTuple):
    lam: Array
    log_evidence_increment: Array  # the run's estimator
    log_evidence_increment_is: Array  # the plain importance-sampling estimator
    ess: Array  # ESS of the incremental weights (before resampling)
    acceptance_rate: Array
    scale: Array


class _Config(NamedTuple):
    kernel: str
    num_mcmc_steps: int
    ess_target: float
    scheme: str
    num_leapfrog: int
    max_tree_depth: int
    zv_degree: int  # 0: plain "is" increments; 1 or 2: control variates of that degree


def _next_delta(log_lik, lam, ess_target, num_bisection: int = 40):
    """Largest ``delta <= 1 - lam`` with ``ESS(delta * log_lik) >= ess_target * N``."""
    n = log_lik.shape[0]
    finite = jnp.isfinite(log_lik)

    def ess_frac(delta):
        return ess(jnp.where(finite, delta * log_lik, -jnp.inf)) / n

    room = 1.0 - lam

    def bisect(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        ok = ess_frac(mid) >= ess_target
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, num_bisection, bisect, (jnp.zeros_like(room), room))
    lo = jnp.maximum(lo, jnp.minimum(room, 1e-12 * jnp.ones_like(room)))
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


def tempering_step(key, state: TemperedState, dens: Densities, cfg: _Config):
    """One adaptive tempering step (reweight, resample, move); traceable."""
    k_res, k_move = jax.random.split(key)
    ll = state.log_lik
    delta = _next_delta(ll, state.lam, cfg.ess_target)
    lam = jnp.where(1.0 - (state.lam + delta) < 1e-6, 1.0, state.lam + delta)
    delta = lam - state.lam
    log_w = jnp.where(jnp.isfinite(ll), delta * ll, -jnp.inf)
    inc_is = log_mean_weight(log_w)
    inc = inc_is
    if cfg.zv_degree:
        inc = zv_log_mean_weight(log_w, state.theta, state.score, cfg.zv_degree)
    ess_inc = ess(log_w)
    idx = resample(k_res, log_w, scheme=cfg.scheme)
    theta, lp, ll = state.theta[idx], state.log_prior[idx], ll[idx]
    if cfg.kernel == "rwmh":
        theta, lp, ll, acc = rwmh_move(
            k_move, theta, lp, ll, lam, dens, state.scale, cfg.num_mcmc_steps
        )
    elif cfg.kernel == "hmc":
        theta, lp, ll, acc = hmc_move(
            k_move, theta, lp, ll, lam, dens, state.scale, cfg.num_mcmc_steps, cfg.num_leapfrog
        )
    else:
        theta, lp, ll, acc = nuts_move(
            k_move, theta, lp, ll, lam, dens, state.scale, cfg.num_mcmc_steps, cfg.max_tree_depth
        )
    new_scale = _adapt_scale(state.scale, acc, cfg)
    score = state.score
    if cfg.zv_degree:
        _, _, score = log_target_and_score(dens, theta, lam)
    new = TemperedState(theta, lp, ll, lam, new_scale, state.log_evidence + inc, score)
    return new, StepStats(lam, inc, inc_is, ess_inc, acc, state.scale)


def _densities(target) -> Densities:
    return Densities(target.log_prior, target.log_likelihood)


def _prior_draws(key, target, n):
    """``n`` prior draws with their log prior and log likelihood."""
    theta = jnp.asarray(target.sample_prior(key, n))
    return theta, target.log_prior(theta), target.log_likelihood(theta)


def _init_state(key, target, n, kernel, initial_scale, num_leapfrog=10, with_score=False):
    theta, lp, ll = _prior_draws(key, target, n)
    score = jnp.zeros_like(theta)
    if with_score:
        _, _, score = log_target_and_score(_densities(target), theta, 0.0)
    ll = jnp.where(jnp.isnan(ll), -jnp.inf, ll)
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
    return TemperedState(theta, lp, ll, zero, scale, zero, score)


def _check_init(state: TemperedState):
    ll = np.asarray(state.log_lik)
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


@partial(jax.jit, static_argnames=("dens", "cfg", "max_steps"))
def _loop_jit(state, key, *, dens, cfg, max_steps):
    dtype = state.theta.dtype
    hist = StepStats(*(jnp.full(max_steps, jnp.nan, dtype) for _ in StepStats._fields))

    def cond(c):
        s, _, i, _ = c
        return (s.lam < 1.0) & (i < max_steps)

    def body(c):
        s, k, i, h = c
        k, sub = jax.random.split(k)
        s, st = tempering_step(sub, s, dens, cfg)
        h = jax.tree_util.tree_map(lambda a, v: a.at[i].set(v.astype(dtype)), h, st)
        return s, k, i + 1, h

    state, _, steps, hist = jax.lax.while_loop(cond, body, (state, key, 0, hist))
    return state, steps, hist


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
):
    """The whole run inside one ``lax.while_loop`` (pure JAX; vmappable over ``key``).

    Returns ``(state, num_steps, history)`` with the history padded with NaN up to
    ``max_steps``. See :func:`tempered_smc` for the arguments.
    """
    cfg, state, k_run = _setup(
        key,
        target,
        num_particles,
        kernel,
        num_mcmc_steps,
        ess_target,
        scheme,
        initial_scale,
        num_leapfrog,
        max_tree_depth,
        evidence,
    )
    return _loop_jit(state, k_run, dens=_densities(target), cfg=cfg, max_steps=int(max_steps))


def _setup(
    key,
    target,
    num_particles,
    kernel,
    num_mcmc_steps,
    ess_target,
    scheme,
    initial_scale,
    num_leapfrog,
    max_tree_depth,
    evidence,
):
    """The run's static configuration, its initial state and the key for the steps."""
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
    k_init, k_run = jax.random.split(key)
    state = _init_state(
        k_init, target, num_particles, kernel, initial_scale, num_leapfrog, cfg.zv_degree > 0
    )
    return cfg, state, k_run


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


@dataclass(frozen=True)
class TemperedSMCResult:
    """Result of :func:`tempered_smc`.

    Attributes
    ----------
    particles
        Equally weighted posterior particles, unconstrained ``(N, D)``.
    samples
        Constrained values per latent site, ``{name: (N, *shape)}``.
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
    log_evidence_increments, log_evidence_increments_is, temperatures, ess,
    acceptance_rates, scales
        Per-step history (``temperatures[k]`` is lambda after step ``k``; ``ess`` is the ESS
        of the incremental weights; ``scales`` the RWMH scale / step size used).
    wall_time
        Seconds, including compilation.
    """

    particles: Particles
    samples: dict[str, Any]
    log_evidence: float
    log_evidence_increments: np.ndarray
    log_evidence_is: float
    log_evidence_increments_is: np.ndarray
    evidence: str
    zv_degree: int
    temperatures: np.ndarray
    ess: np.ndarray
    acceptance_rates: np.ndarray
    scales: np.ndarray
    kernel: str
    wall_time: float

    @property
    def num_steps(self) -> int:
        return int(self.temperatures.shape[0])

    def to_arviz(self, key: Array | None = None, attrs: dict | None = None):
        """ArviZ ``InferenceData``: constrained draws as one chain, history in ``smc_steps``."""
        from probinfer.inference_data import to_inference_data

        run = Particles(
            {k: np.asarray(v) for k, v in self.samples.items()}, self.particles.log_weights
        )
        return to_inference_data(
            [run],
            key=key,
            log_evidence=self.log_evidence,
            step_stats={
                "temperature": self.temperatures,
                "ess": self.ess,
                "acceptance_rate": self.acceptance_rates,
                "scale": self.scales,
                "log_evidence_increment": self.log_evidence_increments,
                "log_evidence_increment_is": self.log_evidence_increments_is,
            },
            attrs={
                "kernel": self.kernel,
                "wall_time": self.wall_time,
                "evidence_estimator": self.evidence,
                "log_evidence_is": self.log_evidence_is,
                **(attrs or {}),
            },
        )


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
    if (
        isinstance(num_mcmc_steps, bool)
        or not isinstance(num_mcmc_steps, int)
        or (num_mcmc_steps < 1)
    ):
        raise ValueError(f"num_mcmc_steps must be a positive integer, got {num_mcmc_steps!r}")
    if not 0.0 < float(ess_target) < 1.0:
        raise ValueError(f"ess_target must be in (0, 1), got {ess_target!r}")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")


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
        from the particles' scores: several times lower variance of ``log p(y)`` for one
        extra gradient evaluation per step; needs a JAX target), ``"is"`` (the standard
        estimator, unbiased for ``p(y)``) or ``"auto"`` (``"zv"`` for JAX targets). Both
        are always computed when ``"zv"`` is used (``log_evidence_is``). Neither changes
        the particles.
    jit
        ``True``: jitted steps. ``False``: eager steps (same functions, no compilation).
    progress
        ``None``/``True``: a Python loop over jitted steps with a tqdm bar that appears
        after 2 s (``True``: immediately). ``False``: no bar; with ``jit=True`` the whole
        run in one ``lax.while_loop`` (fastest).

    Returns
    -------
    TemperedSMCResult
    """
    _check(target, num_particles, kernel, num_mcmc_steps, ess_target, scheme, max_steps)
    start = time.perf_counter()
    cfg, state, k_run = _setup(
        key,
        target,
        num_particles,
        kernel,
        num_mcmc_steps,
        ess_target,
        scheme,
        initial_scale,
        num_leapfrog,
        max_tree_depth,
        evidence,
    )
    _check_init(state)
    dens = _densities(target)
    if progress is False and jit:
        state, steps, hist = _loop_jit(state, k_run, dens=dens, cfg=cfg, max_steps=max_steps)
        steps = int(steps)
        stats = [np.asarray(h)[:steps] for h in hist]
    else:
        step = jax.jit(tempering_step, static_argnames=("dens", "cfg")) if jit else tempering_step
        from tqdm.auto import tqdm

        bar = tqdm(
            total=1.0,
            desc="tempered SMC",
            unit="lambda",
            delay=0 if progress else 2.0,
            disable=progress is False,
            bar_format="{l_bar}{bar}| lambda={n:.3f} [{elapsed}]",
        )
        rows = []
        k = k_run
        try:
            while float(state.lam) < 1.0 and len(rows) < max_steps:
                k, sub = jax.random.split(k)
                state, st = step(sub, state, dens=dens, cfg=cfg)
                rows.append([np.asarray(v) for v in st])
                bar.update(float(state.lam) - bar.n)
        finally:
            bar.close()
        stats = [np.asarray(c) for c in zip(*rows)] if rows else [np.zeros(0)] * 6
    lams, incs, incs_is, esses, accs, scales = stats
    if float(state.lam) < 1.0:
        raise ValueError(
            f"tempering did not reach lambda = 1 within max_steps={max_steps} "
            f"(lambda = {float(state.lam):.3g}); increase max_steps"
        )
    incs = np.asarray(incs, dtype=np.float64)
    incs_is = np.asarray(incs_is, dtype=np.float64)
    if not np.all(np.isfinite(incs_is)):
        raise ValueError(
            "the log evidence is not finite: the log likelihood is NaN or -inf "
            "for all particles at some temperature"
        )
    particles = Particles(state.theta, jnp.zeros(num_particles, state.theta.dtype))
    samples = target.constrain(state.theta)
    jax.block_until_ready(samples)
    return TemperedSMCResult(
        particles,
        samples,
        float(np.sum(incs)),
        incs,
        float(np.sum(incs_is)),
        incs_is,
        "zv" if cfg.zv_degree else "is",
        cfg.zv_degree,
        lams,
        esses,
        accs,
        scales,
        kernel,
        time.perf_counter() - start,
    )
