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
a Python loop over the jitted step (progress bar), or eager steps (``jit=False``). With
``bucket=True`` jitted runs pad the particle count to a bucketed size: the padding slots
carry weight 0 and are masked out of the kernel tuning, the temperature choice and the
evidence, so many different particle counts reuse a bounded set of compiled programs.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from probinfer.engine.core import pad_rows
from probinfer.inference_data import sample_stats_group
from probinfer.particles import Particles
from probinfer.smc.base import check_num_particles
from probinfer.smc.result import SMCChains, SMCResult, check_num_chains, run_chains
from probinfer.smc.run import run_smc
from probinfer.smc.scan import SMCOutput, smc_scan
from probinfer.smc.tempering import (
    StepStats,
    TemperedParticles,
    TemperingData,
    TemperingSettings,
    _bucket,
    _check_init,
    tempering_feynman_kac,
)

Array = jax.Array

__all__ = [
    "StepStats",
    "TemperedParticles",
    "TemperedSMCResult",
    "TemperingData",
    "TemperingSettings",
    "tempered_smc",
    "tempered_smc_loop",
    "tempering_feynman_kac",
]


def tempered_smc_loop(key, target, num_particles: int, **settings) -> SMCOutput:
    """The whole run as one jitted ``lax.while_loop`` of the driver (vmappable over
    ``key``; the prior draws inside are JAX draws, so the target must be a JAX target).

    ``settings`` are those of :func:`tempered_smc` (:class:`TemperingSettings`). Returns the
    driver's :class:`~probinfer.smc.SMCOutput`: ``state.values`` are the final
    :class:`TemperedParticles`, ``state.data.lam`` the final temperature,
    ``log_evidence_increments`` the standard increments and ``summaries`` the per-step
    :class:`StepStats` (NaN-padded after ``num_steps``).
    """
    k_init, k_run = jax.random.split(key)
    fk, summary, cfg = tempering_feynman_kac(k_init, target, num_particles, **settings)
    return smc_scan(
        k_run, fk, num_particles, 1.0, cfg.scheme, summary=summary, keep_ancestors=False
    )


@dataclass(frozen=True, kw_only=True, repr=False)  # the base's one-line repr
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
        ArviZ ``log_likelihood`` group: ``az.loo``/``az.waic``), or ``None`` when the target
        has no pointwise terms.
    observed_data
        The observed values, ``{observed site: array}`` (the ``observed_data`` group).
    sample_stats
        ``lp`` (log prior density of the unconstrained particle, Jacobian included, plus log
        likelihood: ``az.from_numpyro``'s ``lp``) and ``log_likelihood`` (the total) per
        particle, ``(N,)`` each (the ``sample_stats`` group).
    posterior_predictive
        Draws of the observed sites given each particle, ``{observed site: (N, *shape)}``
        (``tempered_smc(..., posterior_predictive=True)``; the ``posterior_predictive``
        group: ``az.plot_ppc``), or ``None``.
    dims
        ArviZ dimension names per site, after the model's plates (``target.dims()``); the
        default ``dims`` of :meth:`to_arviz`.
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
    sample_stats: dict[str, np.ndarray] | None = None
    posterior_predictive: dict[str, np.ndarray] | None = None
    dims: dict[str, list[str]] | None = None

    def _arviz_groups(self) -> dict:
        groups = {}
        for name in ("log_likelihood", "observed_data", "sample_stats", "posterior_predictive"):
            if getattr(self, name):
                groups[name] = getattr(self, name)
        return groups

    def _arviz_dims(self) -> dict[str, list[str]]:
        return dict(self.dims or {})

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


# fold_in tag of the posterior predictive draws' key: a stream of ``key`` that the run never
# uses (the run uses ``jax.random.split(key)``'s two keys)
_PREDICTIVE_STREAM = 0x5050


def tempered_smc(
    key: Array,
    target,
    num_particles: int,
    *,
    num_chains: int | None = None,
    posterior_predictive: bool = False,
    jit: bool = True,
    progress: bool | None = None,
    shard: bool = False,
    bucket: bool = False,
    **settings,
) -> TemperedSMCResult | SMCChains:
    """Adaptive tempered SMC from the prior to the posterior of a static model.

    Parameters
    ----------
    key
        ``jax.random`` key of the prior draws and of the run.
    target
        A :class:`~probinfer.targets.Target` (``from_numpyro``/``from_pyro``).
    num_particles
        ``N >= 2``.
    num_chains
        ``None`` (default): one run, a :class:`TemperedSMCResult`. An integer ``C >= 1``:
        ``C`` independent runs with the keys ``jax.random.split(key, C)``, one after
        another (adaptive tempering gives each run its own number of steps), returned as
        an :class:`~probinfer.smc.SMCChains` whose ``to_arviz`` has ``C`` chains (ArviZ's
        ``r_hat``) and whose ``log_evidence`` spread measures the evidence's Monte Carlo
        error. ``C`` runs cost ``C`` times one run.
    posterior_predictive
        ``True``: draw the observed sites given each final particle with the target's
        ``posterior_predictive(key, samples)`` (NumPyro's / Pyro's ``Predictive``; the key
        is ``jax.random.fold_in(key, 0x5050)``, a stream the run does not use, so the
        posterior is the same with or without it), stored in
        ``result.posterior_predictive`` and exported as the ``posterior_predictive``
        group (``az.plot_ppc``). Off by default: it runs the model once more per particle.
    **settings
        The tempering settings, :class:`~probinfer.smc.tempering.TemperingSettings`:
        ``kernel`` (``"rwmh"``, ``"hmc"``, ``"nuts"``), ``num_mcmc_steps`` (5),
        ``ess_target`` (0.5), ``scheme``, ``initial_scale``, ``max_steps`` (200),
        ``num_leapfrog`` (10), ``max_tree_depth`` (6) and ``evidence`` (``"auto"``).
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
        differ); the same key gives the same result. Off by default: a padded size can
        be much slower than the requested one. On XLA's CPU backend a likelihood mapped
        over the particles and the observations transposes ``(N, num_obs)`` arrays, and at
        ``N`` a multiple of 512 those transposes thrash the cache: the logistic regression
        of ``benchmarks/tempered_smc.py`` (``N = 1000``, padded to 1024) ran 3.5x slower
        padded. Turn it on when one process runs many particle counts (each unpadded count
        compiles its own program, 10-20 s for HMC moves).

    Returns
    -------
    TemperedSMCResult
        or :class:`~probinfer.smc.SMCChains` of them with ``num_chains``.

    Raises
    ------
    TypeError, ValueError
        On a bad ``num_particles``, ``num_chains``, ``posterior_predictive`` or setting, or
        ``posterior_predictive=True`` with a target that has no ``posterior_predictive``.
    """
    check_num_particles(num_particles)
    st = TemperingSettings(**settings)
    chains = check_num_chains(num_chains)
    if not isinstance(posterior_predictive, bool | np.bool_):
        raise TypeError(
            f"posterior_predictive must be a bool, got {type(posterior_predictive).__name__}"
        )
    if posterior_predictive and not callable(getattr(target, "posterior_predictive", None)):
        raise ValueError(
            "posterior_predictive=True needs a target with a posterior_predictive(key, samples) "
            f"method (from_numpyro, from_pyro); {type(target).__name__} has none"
        )
    if chains is not None:
        options = dict(jit=jit, progress=progress, shard=shard, bucket=bucket, **settings)
        return run_chains(
            key,
            chains,
            lambda k: tempered_smc(
                k, target, num_particles, posterior_predictive=posterior_predictive, **options
            ),
        )
    start = time.perf_counter()
    bucket = bool(bucket) and jit and (shard is False or shard is None)
    k_init, k_run = jax.random.split(key)
    fk, summary, cfg = tempering_feynman_kac(
        k_init, target, num_particles, bucket=bucket, **dataclasses.asdict(st)
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
    k_pred = jax.random.fold_in(key, _PREDICTIVE_STREAM) if posterior_predictive else None
    return _result(res, target, num_particles, st, cfg, bucket, start, k_pred)


def _result(
    res: SMCResult, target, n: int, st, cfg, bucket: bool, start, k_pred=None
) -> TemperedSMCResult:
    """The result of a tempering run: the history, the particles' constrained values,
    pointwise log likelihoods, log densities and (with ``k_pred``) posterior predictive
    draws, and the evidence of the chosen estimator."""
    stats = res.summaries
    lams = np.asarray(stats.lam)
    if res.num_steps < 2 or lams[-1] < 1.0 or lams[-2] < 1.0:
        raise ValueError(
            f"tempering did not reach lambda = 1 within max_steps={st.max_steps} "
            f"(lambda = {float(lams[-1]):.3g}); increase max_steps"
        )
    incs_is, incs, log_z = res.log_evidence_increments, res.log_evidence_increments, None
    if cfg.zv_degree:  # the control-variate estimator's own increments, summed on the host
        incs = np.asarray(stats.log_evidence_increment_zv, dtype=np.float64)
        log_z = float(np.sum(incs))
    theta = jnp.asarray(res.particles.values.theta)
    particles = Particles(theta, np.zeros(n, theta.dtype))
    # constrained values and pointwise terms of the particles, evaluated at the bucketed
    # size (padded on the host with copies of particle 0) and cut on the host
    padded = jnp.asarray(pad_rows(np.asarray(theta), _bucket(n))) if bucket else theta
    samples = {k: np.asarray(v)[:n] for k, v in target.constrain(padded).items()}
    log_lik, observed = _pointwise_groups(target, padded, n)
    final = res.particles.values  # the last move's log densities of the final particles
    stats_group = sample_stats_group(
        log_prior=np.asarray(final.log_prior)[:n], log_likelihood=np.asarray(final.log_lik)[:n]
    )
    predictive = None if k_pred is None else target.posterior_predictive(k_pred, samples)
    dims = target.dims() if callable(getattr(target, "dims", None)) else {}
    return TemperedSMCResult(
        particles=particles,
        log_evidence=res.log_evidence if log_z is None else log_z,
        log_evidence_increments=incs,
        ess=res.ess,
        resampled=res.resampled,
        wall_time=time.perf_counter() - start,
        samples=samples,
        log_evidence_is=res.log_evidence,
        log_evidence_increments_is=incs_is,
        evidence="zv" if cfg.zv_degree else "is",
        zv_degree=cfg.zv_degree,
        zv_used=np.asarray(stats.zv_used, dtype=bool),
        temperatures=lams,
        acceptance_rates=np.asarray(stats.acceptance_rate),
        scales=np.asarray(stats.scale),
        kernel=st.kernel,
        log_likelihood=log_lik,
        observed_data=observed,
        sample_stats=stats_group,
        posterior_predictive=predictive,
        dims=dims,
    )


def _pointwise_groups(target, theta, num: int) -> tuple[dict | None, dict | None]:
    """The pointwise log likelihood of the first ``num`` rows of ``theta`` split per
    observed site, and the observed values."""
    observed = target.observed_data() if hasattr(target, "observed_data") else None
    if not getattr(target, "has_pointwise", True):  # no pointwise terms: no log_likelihood group
        return None, observed
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
