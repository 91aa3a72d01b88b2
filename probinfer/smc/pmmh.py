"""Particle marginal Metropolis-Hastings (PMMH; Andrieu, Doucet and Holenstein 2010) for the
parameters of a state-space model.

Each chain is a random-walk Metropolis-Hastings chain on the unconstrained parameters ``u``
whose likelihood is the particle filter's unbiased estimate ``p_hat(y | theta(u))``
(:class:`~probinfer.smc.parameters.FilterModel`, a filter on the SMC driver). The estimate
at the current point is kept and only the proposal's is computed
(:func:`~probinfer.smc.parameters.pm_step`), so the chain targets the exact posterior
``p(theta | y)`` whatever the number of particles (fewer particles only mix worse).

Warm-up adapts the proposal (adaptive Metropolis, Haario, Saksman and Tamminen 2001): the
proposal covariance is ``(2.38^2 / D) Sigma`` (Roberts and Rosenthal's scaling), ``Sigma``
the within-chain covariance of the warm-up draws pooled over chains (from the second
quarter of warm-up on; ``init_cov`` before). It is frozen at the end of warm-up, so the
sampling phase is one fixed Metropolis-Hastings kernel; the warm-up draws are discarded.
(A Robbins-Monro global scale tuned to an acceptance rate was tried and left out: with
noisy likelihood estimates the acceptance rate hardly falls as the scale grows, so the
recursion drifted to proposals 10x too wide.) Chains are vmapped:
one compiled program runs them all, and it is reused by later calls with the same
``ssm_fn``, prior families, data shape and settings.
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

from probinfer.checks import check_num
from probinfer.smc.kernels import chol_or_diag
from probinfer.smc.parameters import (
    FilterModel,
    PMState,
    check_prior,
    check_ssm_fn,
    check_ys,
    constrain,
    constrain_rows,
    float_dtype,
    log_prior,
    pm_step,
    prior_draws,
    prior_sites,
)

Array = jax.Array

__all__ = ["PMMHResult", "pmmh"]

#: Roberts and Rosenthal's optimal random-walk scale is ``2.38 / sqrt(D)``.
RR_SCALE = 2.38


@dataclass(frozen=True, kw_only=True, repr=False)
class PMMHResult:
    """Result of :func:`pmmh`.

    Attributes
    ----------
    samples
        ``{name: (chain, draw, *shape)}`` constrained parameter draws (after warm-up).
    log_likelihood
        ``(chain, draw)`` the particle filter's estimate ``log p_hat(y | theta)`` kept with
        each draw.
    log_prior
        ``(chain, draw)`` log prior density of the unconstrained draw (Jacobian included).
    acceptance_rate
        ``(chain,)`` fraction of accepted proposals in the sampling phase.
    warmup_acceptance_rate
        Fraction accepted during warm-up, all chains together (NaN without warm-up).
    proposal_cov
        ``(D, D)`` the frozen random-walk covariance on the unconstrained scale.
    num_particles
        Particles per likelihood estimate.
    num_warmup
        Warm-up iterations per chain.
    num_nan
        Likelihood estimates (filter runs) that met NaN log potentials: those filter
        particles got weight 0 (an estimate whose particles all did is 0: rejected).
    wall_time
        Seconds (compilation included on the first call with these shapes).
    """

    samples: dict[str, np.ndarray]
    log_likelihood: np.ndarray
    log_prior: np.ndarray
    acceptance_rate: np.ndarray
    warmup_acceptance_rate: float
    proposal_cov: np.ndarray
    num_particles: int
    num_warmup: int
    num_nan: int = 0
    wall_time: float = 0.0

    @property
    def num_chains(self) -> int:
        return int(self.log_likelihood.shape[0])

    @property
    def num_samples(self) -> int:
        """Draws per chain."""
        return int(self.log_likelihood.shape[1])

    def __repr__(self) -> str:
        acc = ", ".join(f"{a:.2f}" for a in np.asarray(self.acceptance_rate))
        return (
            f"PMMHResult(num_chains={self.num_chains}, num_samples={self.num_samples}, "
            f"num_particles={self.num_particles}, parameters={list(self.samples)}, "
            f"acceptance=[{acc}], wall_time={float(self.wall_time):.1f}s)"
        )

    def to_arviz(self, *, attrs: dict | None = None, dims=None, coords=None):
        """ArviZ ``InferenceData``: the draws as ``posterior`` with dimensions
        ``(chain, draw, ...)`` (so ``az.rhat``, ``az.ess`` and ``az.summary`` apply), and
        ``lp``, ``log_likelihood`` and ``accepted`` in ``sample_stats``
        (:func:`probinfer.inference_data.to_inference_data`)."""
        from probinfer.inference_data import sample_stats_group, to_inference_data
        from probinfer.particles import Particles

        runs = [
            Particles({n: v[c] for n, v in self.samples.items()}) for c in range(self.num_chains)
        ]
        stats = sample_stats_group(log_prior=self.log_prior, log_likelihood=self.log_likelihood)
        all_attrs = {
            "algorithm": "pmmh",
            "num_particles": self.num_particles,
            "num_warmup": self.num_warmup,
            "acceptance_rate": np.asarray(self.acceptance_rate),
            "wall_time": float(self.wall_time),
            **(attrs or {}),
        }
        return to_inference_data(
            runs, attrs=all_attrs, groups={"sample_stats": stats}, dims=dims, coords=coords
        )

    def summary(self, **options):
        """``arviz.summary`` of :meth:`to_arviz` (``options`` are passed on)."""
        from probinfer.inference_data import import_arviz

        return import_arviz().summary(self.to_arviz(), **options)


class _Config(NamedTuple):
    """The static settings of a run (its compilation key)."""

    filt: FilterModel
    num_warmup: int
    num_samples: int


class _Adapt(NamedTuple):
    """Warm-up adaptation: the Welford moments of each chain."""

    count: Array  # draws in the moments
    mean: Array  # (C, D)
    m2: Array  # (C, D, D) sum of outer products of deviations


def _chol(cov):
    """Cholesky factor of a covariance, with a small ridge (and the diagonal as fallback)."""
    d = cov.shape[0]
    return chol_or_diag(cov + (1e-8 + 1e-8 * jnp.trace(cov) / d) * jnp.eye(d, dtype=cov.dtype))


def _proposal_cov(adapt: _Adapt, cov0, min_count: int):
    """``(2.38^2 / D) Sigma``, ``Sigma`` the pooled within-chain covariance once there are
    ``min_count`` draws, ``init_cov`` before."""
    d = cov0.shape[0]
    pooled = jnp.mean(adapt.m2, axis=0) / jnp.maximum(adapt.count - 1, 1)
    sigma = jnp.where(adapt.count >= min_count, pooled, cov0)
    return (RR_SCALE**2 / d) * sigma


@partial(jax.jit, static_argnames=("cfg",))
def _run(key, prior, ys, u0, cov0, *, cfg: _Config):
    filt = cfg.filt
    num_chains, d = u0.shape
    num_warmup, total = cfg.num_warmup, cfg.num_warmup + cfg.num_samples

    def estimate(k, u):
        ll, met_nan = filt.log_likelihood(k, constrain(prior, u), ys)
        return ll, None, met_nan

    step = jax.vmap(lambda k, s, chol: pm_step(k, s, chol, prior, estimate), in_axes=(0, 0, None))
    # The chains start with log_lik = -inf and make one step with a zero proposal, which is
    # always accepted: the first estimate at u0, and one trace of the filter in the program.
    state = PMState(u0, jax.vmap(partial(log_prior, prior))(u0), jnp.full(num_chains, -jnp.inf))
    start = num_warmup // 4  # warm-up draws before this are transient: not in the moments
    min_count = max(2 * d + 2, 10)

    def body(carry, xs):
        state, adapt = carry
        i, k = xs
        # adaptive Metropolis during warm-up; afterwards `adapt` no longer changes, so the
        # sampling phase is one fixed kernel
        cov = _proposal_cov(adapt, cov0, min_count)
        chol = jnp.where(i < 0, 0.0, _chol(cov))
        state, ok, nan = step(jax.random.split(k, num_chains), state, chol)
        use = (i >= start) & (i < num_warmup)  # Welford update of each chain's moments
        count = adapt.count + use
        delta = state.u - adapt.mean
        mean = adapt.mean + jnp.where(use, delta / jnp.maximum(count, 1), 0.0)
        m2 = adapt.m2 + jnp.where(use, delta[:, :, None] * (state.u - mean)[:, None, :], 0.0)
        out = (state.u, state.log_prior, state.log_lik, ok, jnp.sum(nan))
        return (state, _Adapt(count, mean, m2)), out

    adapt0 = _Adapt(
        jnp.zeros((), jnp.int32),
        jnp.zeros_like(u0),
        jnp.zeros((num_chains, d, d), u0.dtype),
    )
    xs = (jnp.arange(-1, total), jax.random.split(key, total + 1))
    (_, adapt), (us, lps, lls, oks, nans) = jax.lax.scan(body, (state, adapt0), xs)
    warm_rate = jnp.mean(oks[1 : num_warmup + 1]) if num_warmup else jnp.asarray(jnp.nan)
    cut = num_warmup + 1  # the draws after the initial estimate and warm-up, chain first
    us, lps, lls, oks = (jnp.swapaxes(a[cut:], 0, 1) for a in (us, lps, lls, oks))
    samples = jax.vmap(jax.vmap(partial(constrain, prior)))(us)
    cov = _proposal_cov(adapt, cov0, min_count)
    return samples, lls, lps, jnp.mean(oks, axis=1), warm_rate, cov, jnp.sum(nans)


def _unconstrain(prior: dict, init_params, num_chains: int) -> np.ndarray:
    """``init_params`` (``{name: value}``, one value or one per chain) as ``(C, D)``."""
    from numpyro.distributions import biject_to

    if not isinstance(init_params, dict) or set(init_params) != set(prior):
        raise ValueError(
            f"init_params must be a dict with the prior's names {sorted(prior)}, got "
            f"{sorted(init_params) if isinstance(init_params, dict) else type(init_params)}"
        )
    parts = []
    for site in prior_sites(prior):
        x = np.asarray(init_params[site.name], float_dtype())
        if x.shape == site.shape:
            x = np.broadcast_to(x, (num_chains,) + site.shape)
        if x.shape != (num_chains,) + site.shape:
            raise ValueError(
                f"init_params[{site.name!r}] must have shape {site.shape} or "
                f"{(num_chains,) + site.shape}, got {x.shape}"
            )
        support = prior[site.name].support
        if not np.all(np.asarray(support(jnp.asarray(x)))):
            raise ValueError(f"init_params[{site.name!r}] lies outside the prior's support")
        u = np.asarray(biject_to(support).inv(jnp.asarray(x)), float_dtype())
        parts.append(u.reshape(num_chains, -1))
    u = np.concatenate(parts, axis=1)
    if not np.all(np.isfinite(u)):
        raise ValueError("init_params must lie in the interior of the prior's support")
    return u


def _check_cov(init_cov, d: int) -> np.ndarray:
    cov = np.asarray(init_cov, np.float64)
    if cov.ndim == 0:
        cov = cov * np.eye(d)
    if cov.shape != (d, d):
        raise ValueError(f"init_cov must be a scalar or have shape ({d}, {d}), got {cov.shape}")
    if (
        not np.all(np.isfinite(cov))
        or not np.allclose(cov, cov.T)
        or np.min(np.linalg.eigvalsh(cov)) <= 0
    ):
        raise ValueError("init_cov must be a finite symmetric positive-definite matrix")
    return cov.astype(float_dtype())


def pmmh(
    key: Array,
    ssm_fn,
    prior,
    ys,
    num_particles: int,
    num_samples: int,
    *,
    num_chains: int = 4,
    num_warmup: int | None = None,
    proposal: str = "bootstrap",
    init_params: dict | None = None,
    init_cov: Any = None,
    ess_threshold: float = 0.5,
    scheme: str = "systematic",
) -> PMMHResult:
    """Particle marginal Metropolis-Hastings for the parameters of a state-space model.

    Parameters
    ----------
    key
        ``jax.random`` key; same key, same draws.
    ssm_fn
        ``ssm_fn(theta) -> StateSpaceModel``, ``theta`` a dict ``{name: value}`` (JAX
        values, traced: build the distributions with ``jnp`` operations).
    prior
        A numpyro distribution (the parameter is then called ``"theta"``) or a dict
        ``{name: distribution}``; continuous, any support (sampled on the unconstrained
        scale with ``biject_to``).
    ys
        Observations ``(T,)`` or ``(T, p)``.
    num_particles
        Particles of each likelihood estimate (``>= 2``). Aim for a standard deviation of
        the log-likelihood estimate near 1-1.5 at the posterior (Doucet et al. 2015).
    num_samples
        Draws per chain after warm-up.
    num_chains
        Independent chains (vmapped), each started at its own point.
    num_warmup
        Adaptation iterations per chain, discarded (default ``num_samples``; ``0``: no
        adaptation, the proposal is ``(2.38^2 / D) init_cov``).
    proposal
        The filter's proposal, ``"bootstrap"`` (the transition) or ``"guided"`` (the
        model's ``proposal``/``initial_proposal``).
    init_params
        Starting points ``{name: value}`` (constrained), one for all chains or one per
        chain (leading axis ``num_chains``); default: draws from the prior.
    init_cov
        Initial proposal covariance on the unconstrained scale (scalar or ``(D, D)``),
        before ``2.38^2 / D`` scaling; default: ``0.01`` times the diagonal of the
        unconstrained prior's variance (from 1000 prior draws).
    ess_threshold, scheme
        The filter's resampling rule.

    Returns
    -------
    PMMHResult

    Raises
    ------
    ValueError
        On invalid sizes or settings (naming the argument), observations that are not
        finite, or an ``ssm_fn`` that fails at a starting point (naming it).
    TypeError
        On a ``prior`` that is not numpyro distributions, or an ``ssm_fn`` that does not
        return a :class:`~probinfer.smc.StateSpaceModel` or needs concrete parameters.

    Notes
    -----
    A NaN log potential in a filter gives that filter particle weight 0 (so a proposal
    whose filter particles all have NaN potentials has likelihood 0 and is rejected); one
    ``RuntimeWarning`` reports how many estimates met NaN potentials.
    """
    start_time = time.perf_counter()
    prior = check_prior(prior)
    ys_host = check_ys(ys)
    filt = FilterModel.checked(ssm_fn, proposal, num_particles, ess_threshold, scheme)
    num_samples = check_num(num_samples, "num_samples")
    num_chains = check_num(num_chains, "num_chains")
    if num_warmup is None:
        num_warmup = num_samples
    if (
        isinstance(num_warmup, bool)
        or not isinstance(num_warmup, int | np.integer)
        or num_warmup < 0
    ):
        raise ValueError(f"num_warmup must be a non-negative integer, got {num_warmup!r}")
    d = sum(s.size for s in prior_sites(prior))
    k_draw, k_run = jax.random.split(key)
    draws = np.asarray(prior_draws(jax.random.split(k_draw, max(1000, num_chains)), prior))
    if init_params is None:
        u0 = draws[:num_chains]
    else:
        u0 = _unconstrain(prior, init_params, num_chains)
    if init_cov is None:
        cov0 = np.diag(0.01 * np.var(draws.astype(np.float64), axis=0) + 1e-8)
        cov0 = cov0.astype(float_dtype())
    else:
        cov0 = _check_cov(init_cov, d)
    check_ssm_fn(ssm_fn, prior, constrain_rows(prior, u0), ys_host, proposal)
    cfg = _Config(filt, int(num_warmup), num_samples)
    ys_dev = jnp.asarray(ys_host, float_dtype())
    out = _run(k_run, prior, ys_dev, jnp.asarray(u0), jnp.asarray(cov0), cfg=cfg)
    samples, lls, lps, acc, warm_rate, cov, num_nan = jax.device_get(out)
    num_nan = int(num_nan)
    if num_nan:
        warnings.warn(
            f"{num_nan} likelihood estimate(s) met NaN log potentials; those filter particles "
            "were given weight 0 (where all were, the proposal had likelihood 0: rejected)",
            RuntimeWarning,
            stacklevel=2,
        )
    return PMMHResult(
        samples={n: np.asarray(v) for n, v in samples.items()},
        log_likelihood=np.asarray(lls, np.float64),
        log_prior=np.asarray(lps, np.float64),
        acceptance_rate=np.asarray(acc, np.float64),
        warmup_acceptance_rate=float(warm_rate),
        proposal_cov=np.asarray(cov, np.float64),
        num_particles=filt.num_particles,
        num_warmup=int(num_warmup),
        num_nan=num_nan,
        wall_time=time.perf_counter() - start_time,
    )
