"""Particle filters for state-space models, on the Feynman-Kac driver.

A state-space model is ``x_0 ~ initial``, ``x_t | x_{t-1} ~ transition(x_{t-1}, t)``,
``y_t | x_t ~ observation(x_t, t)``; each is a numpyro distribution (batched over the
particle axis). The bootstrap filter proposes from the transition and weights by the
observation density; a guided filter proposes from ``proposal(x_{t-1}, y_t, t)`` (and
``initial_proposal(y_0)``) and weights by ``p(x_t | x_{t-1}) p(y_t | x_t) / q(x_t)``.
A :class:`~probinfer.lgssm.LinearGaussianSSM` is accepted directly; its guided proposal
is the locally optimal ``p(x_t | x_{t-1}, y_t)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from probinfer.engine.core import bucket_size, pad_rows, to_device
from probinfer.particles import Particles
from probinfer.smc.base import FeynmanKac, check_num_particles
from probinfer.smc.result import SMCChains, SMCResult, check_num_chains, run_chains
from probinfer.smc.run import run_smc

Array = jax.Array

__all__ = ["ParticleFilterResult", "StateSpaceModel", "particle_filter", "ssm_feynman_kac"]


@dataclass(frozen=True, eq=False)
class StateSpaceModel:
    """A state-space model given by numpyro distributions.

    Parameters
    ----------
    initial
        Distribution of ``x_0`` (a numpyro ``Distribution``, or a callable returning one).
    transition
        ``transition(x_prev, t) -> Distribution`` of ``x_t``, batched over the leading
        particle axis of ``x_prev``.
    observation
        ``observation(x, t) -> Distribution`` of ``y_t``, batched likewise.
    initial_proposal, proposal
        Optional guided proposals ``initial_proposal(y_0)`` (a distribution over ``x_0``,
        sampled with ``sample_shape=(N,)`` when unbatched) and ``proposal(x_prev, y_t, t)``.
    """

    initial: Any
    transition: Callable
    observation: Callable
    initial_proposal: Callable | None = None
    proposal: Callable | None = None

    def __post_init__(self):
        for name in ("transition", "observation"):
            if not callable(getattr(self, name)):
                raise TypeError(f"{name} must be a callable (x, t) -> Distribution")
        if (self.initial_proposal is None) != (self.proposal is None):
            raise ValueError("give both initial_proposal and proposal, or neither")


def _initial_dist(ssm: StateSpaceModel):
    import numpyro.distributions as dist

    d = ssm.initial
    if not isinstance(d, dist.Distribution):
        d = d()
    return d


def _draw(d, key, n):
    """n draws from a distribution that is either unbatched or batched over n particles."""
    if d.batch_shape and d.batch_shape[0] == n:
        return d.sample(key)
    return d.sample(key, (n,))


# ---- generic numpyro state-space models -----------------------------------------------------
@lru_cache(maxsize=64)
def _generic_fns(ssm: StateSpaceModel, guided: bool):
    def M0(key, n, ys):
        if guided:
            return _draw(ssm.initial_proposal(ys[0]), key, n)
        return _draw(_initial_dist(ssm), key, n)

    def M(key, t, x, ys):
        if guided:
            return ssm.proposal(x, ys[t], t).sample(key)
        return ssm.transition(x, t).sample(key)

    def logG(t, x_prev, x, ys):
        log_obs = ssm.observation(x, t).log_prob(ys[t])
        if not guided:
            return log_obs
        if x_prev is None:
            return (
                log_obs + _initial_dist(ssm).log_prob(x) - ssm.initial_proposal(ys[0]).log_prob(x)
            )
        return (
            log_obs
            + ssm.transition(x_prev, t).log_prob(x)
            - ssm.proposal(x_prev, ys[t], t).log_prob(x)
        )

    return M0, M, logG


# ---- linear-Gaussian models: closed-form callables over a parameter pytree --------------------
def _rows_times(x, M):
    """``x @ M.T`` for particles ``x (N, d)``. For small matrices this is written as
    broadcast products and a sum, which XLA fuses with the surrounding elementwise work
    (one pass over ``N``) instead of calling a GEMM with a tiny inner dimension."""
    if M.shape[0] * M.shape[1] <= 16:
        return jnp.sum(x[:, None, :] * M[None, :, :], axis=-1)
    return x @ M.T


def _mvn_rows(resid, chol_inv):
    """Gaussian log density of each row of ``resid`` given the inverse Cholesky factor
    (a matrix product instead of a batched triangular solve: much faster on CPU)."""
    z = _rows_times(resid, chol_inv)
    return (
        -0.5 * jnp.sum(z**2, axis=-1)
        + jnp.sum(jnp.log(jnp.diag(chol_inv)))
        - 0.5 * resid.shape[-1] * jnp.log(2 * jnp.pi)
    )


def _lgssm_data(ssm, ys: np.ndarray, dtype=np.float32) -> dict:
    A, Q, C, R, m0, P0 = ssm.A, ssm.Q, ssm.C, ssm.R, ssm.m0, ssm.P0
    # Locally optimal proposal p(x_t | x_{t-1}, y_t) = N(K1 x_{t-1} + K2 y_t, S).
    S = np.linalg.inv(np.linalg.inv(Q) + C.T @ np.linalg.solve(R, C))
    K1 = S @ np.linalg.solve(Q, A)
    K2 = S @ C.T @ np.linalg.inv(R)
    S0 = np.linalg.inv(np.linalg.inv(P0) + C.T @ np.linalg.solve(R, C))
    b0 = S0 @ np.linalg.solve(P0, m0)
    K0 = S0 @ C.T @ np.linalg.inv(R)
    arrays = dict(
        ys=ys,
        A=A,
        C=C,
        LQ=np.linalg.cholesky(Q),
        LR=np.linalg.cholesky(R),
        m0=m0,
        L0=np.linalg.cholesky(P0),
        K1=K1,
        K2=K2,
        LS=np.linalg.cholesky(S),
        b0=b0,
        K0=K0,
        LS0=np.linalg.cholesky(S0),
    )
    for name in ("LQ", "LR", "L0", "LS", "LS0"):
        arrays[name + "_inv"] = np.linalg.inv(arrays[name])
    return {k: to_device(np.asarray(v, dtype)) for k, v in arrays.items()}


@lru_cache(maxsize=4)
def _lgssm_fns(guided: bool):
    def noise(key, n, L):
        return _rows_times(jax.random.normal(key, (n, L.shape[0]), L.dtype), L)

    def q0_mean(p):
        return p["b0"] + p["K0"] @ p["ys"][0]

    def M0(key, n, p):
        if guided:
            return q0_mean(p) + noise(key, n, p["LS0"])
        return p["m0"] + noise(key, n, p["L0"])

    def M(key, t, x, p):
        if guided:
            mean = _rows_times(x, p["K1"]) + p["K2"] @ p["ys"][t]
            return mean + noise(key, x.shape[0], p["LS"])
        return _rows_times(x, p["A"]) + noise(key, x.shape[0], p["LQ"])

    def logG(t, x_prev, x, p):
        log_obs = _mvn_rows(p["ys"][t] - _rows_times(x, p["C"]), p["LR_inv"])
        if not guided:
            return log_obs
        if x_prev is None:
            return (
                log_obs
                + _mvn_rows(x - p["m0"], p["L0_inv"])
                - _mvn_rows(x - q0_mean(p), p["LS0_inv"])
            )
        mean = _rows_times(x_prev, p["K1"]) + p["K2"] @ p["ys"][t]
        return (
            log_obs
            + _mvn_rows(x - _rows_times(x_prev, p["A"]), p["LQ_inv"])
            - _mvn_rows(x - mean, p["LS_inv"])
        )

    return M0, M, logG


def check_observations(observations, name: str = "observations") -> np.ndarray:
    """The observations as a finite float64 array ``(T,)`` or ``(T, p)``; a ``ValueError``
    naming the argument ``name`` otherwise."""
    try:
        ys = np.asarray(observations, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric array of shape (T,) or (T, p)") from err
    if ys.ndim not in (1, 2) or ys.shape[0] == 0:
        raise ValueError(f"{name} must have shape (T,) or (T, p) with T >= 1, got {ys.shape}")
    if not np.all(np.isfinite(ys)):
        bad = int(np.argmax(~np.isfinite(ys.reshape(ys.shape[0], -1)).any(axis=1)))
        raise ValueError(f"{name} contain NaN or inf (first at t={bad})")
    return ys


def ssm_feynman_kac(ssm, observations, proposal: str = "bootstrap") -> FeynmanKac:
    """The Feynman-Kac model of a bootstrap or guided filter for ``ssm`` and ``observations``."""
    return _ssm_feynman_kac(ssm, observations, proposal, bucket=False)


def _ssm_feynman_kac(ssm, observations, proposal: str, bucket: bool) -> FeynmanKac:
    """:func:`ssm_feynman_kac`; with ``bucket`` the observations are padded to a bucketed
    number of steps and the model stops after the real ones (:func:`_stop_after`)."""
    from probinfer.lgssm import LinearGaussianSSM

    if proposal not in ("bootstrap", "guided"):
        raise ValueError(f"proposal must be 'bootstrap' or 'guided', got {proposal!r}")
    ys = check_observations(observations)
    guided = proposal == "guided"
    if isinstance(ssm, LinearGaussianSSM):
        if ys.ndim == 1:
            ys = ys[:, None]
        if ys.shape[1] != ssm.obs_dim:
            raise ValueError(f"observations must have shape (T, {ssm.obs_dim}), got {ys.shape}")
    elif not isinstance(ssm, StateSpaceModel):
        raise TypeError(
            f"ssm must be a StateSpaceModel or LinearGaussianSSM, got {type(ssm).__name__}"
        )
    elif guided and ssm.proposal is None:
        raise ValueError(
            "proposal='guided' needs a StateSpaceModel with proposal and initial_proposal"
        )
    num_steps = ys.shape[0]
    if bucket:  # the padding steps are never run (the model stops after num_steps)
        ys = pad_rows(ys, bucket_size(num_steps, 16))
    if isinstance(ssm, LinearGaussianSSM):
        fk = FeynmanKac(*_lgssm_fns(guided), ys.shape[0], _lgssm_data(ssm, ys))
    else:
        fk = FeynmanKac(*_generic_fns(ssm, guided), ys.shape[0], to_device(ys, np.float32))
    return _stop_after(fk, num_steps) if bucket else fk


@lru_cache(maxsize=64)
def _stopping_fns(M0, M, logG):
    """``M0``, ``M``, ``logG`` of a model over ``data["model"]``, with an ``adapt`` that
    records the step in ``data["t"]`` and a ``finished`` rule true at step ``data["last"]``."""

    def adapt(t, values, log_weights, data):
        return {**data, "t": jnp.asarray(t, jnp.int32)}

    def finished(values, data):
        return data["t"] >= data["last"]

    return (
        lambda key, n, data: M0(key, n, data["model"]),
        lambda key, t, x, data: M(key, t, x, data["model"]),
        lambda t, x_prev, x, data: logG(t, x_prev, x, data["model"]),
        adapt,
        finished,
    )


def _stop_after(fk: FeynmanKac, num_steps: int) -> FeynmanKac:
    """``fk`` (padded to ``fk.num_steps`` steps) run for its first ``num_steps`` steps only.

    The number of steps is data (traced), so models whose lengths share a bucket share one
    compiled program; the steps after ``num_steps`` are never run, so the result (keys
    included: ``jax.random.split`` gives the same first keys for any count) is that of the
    unpadded model.
    """
    data = {
        "model": fk.data,
        "last": to_device(np.int32(num_steps - 1)),
        "t": to_device(np.int32(0)),
    }
    M0, M, logG, adapt, finished = _stopping_fns(fk.M0, fk.M, fk.logG)
    return FeynmanKac(M0, M, logG, fk.num_steps, data, adapt=adapt, finished=finished)


@lru_cache(maxsize=16)
def _summary_fn(levels: tuple[float, ...]):
    q = jnp.asarray(levels, jnp.float32)

    def summary(particles: Particles, data):
        x = particles.values
        x2 = x.reshape(x.shape[0], -1)
        w = particles.normalized_weights.astype(x2.dtype)
        out = {"mean": (w @ x2).reshape(x.shape[1:])}
        if levels:
            order = jnp.argsort(x2, axis=0)
            xs = jnp.take_along_axis(x2, order, axis=0)
            cw = jnp.cumsum(w[order], axis=0)  # (N, d)
            idx = jax.vmap(lambda c: jnp.searchsorted(c, q * c[-1]), in_axes=1, out_axes=1)(cw)
            idx = jnp.clip(idx, 0, x2.shape[0] - 1)
            out["quantiles"] = jnp.take_along_axis(xs, idx, axis=0).reshape(
                (len(levels),) + x.shape[1:]
            )
        return out

    return summary


@dataclass(frozen=True, kw_only=True, repr=False)  # the base's one-line repr
class ParticleFilterResult(SMCResult):
    """Result of :func:`particle_filter` (an :class:`~probinfer.smc.SMCResult`).

    Attributes
    ----------
    particles
        Weighted particles approximating the last filtering distribution ``p(x_T | y_{1:T})``.
    log_evidence
        Estimate of ``log p(y_{1:T})`` (sum of the increments in float64; unbiased on the
        natural scale).
    log_evidence_increments
        ``(T,)`` estimates of ``log p(y_t | y_{1:t-1})``.
    filtering_means
        ``(T, *state_shape)`` weighted means ``E[x_t | y_{1:t}]``.
    filtering_quantiles
        ``(T, len(quantile_levels), *state_shape)`` weighted quantiles (``None`` if none
        were asked for).
    quantile_levels
        The quantile levels.
    ess, resampled, ancestors
        History: ESS after each reweighting, resampling flags, ``(T, N)`` ancestors.
    wall_time
        Seconds (including compilation on the first call with these shapes).
    """

    filtering_means: np.ndarray
    filtering_quantiles: np.ndarray | None
    quantile_levels: tuple[float, ...]

    def _arviz_particles(self) -> Particles:
        return Particles({"x": self.particles.values}, self.particles.log_weights)

    def _step_stats(self) -> dict[str, np.ndarray]:
        means = np.asarray(self.filtering_means)
        return {**super()._step_stats(), "filtering_mean": means.reshape((means.shape[0], -1))}


def particle_filter(
    key: Array,
    ssm,
    observations,
    num_particles: int,
    *,
    num_chains: int | None = None,
    proposal: str = "bootstrap",
    quantiles=(),
    **options,
) -> ParticleFilterResult | SMCChains:
    """Bootstrap or guided particle filter for a state-space model.

    Parameters
    ----------
    key
        ``jax.random`` key; same key, same filter.
    ssm
        A :class:`StateSpaceModel` or a :class:`~probinfer.lgssm.LinearGaussianSSM`.
    observations
        ``(T,)`` or ``(T, p)`` array ``y_0..y_{T-1}`` (finite).
    num_particles
        ``N >= 2``.
    num_chains
        ``None`` (default): one filter, a :class:`ParticleFilterResult`. An integer
        ``C >= 1``: ``C`` independent filters with the keys ``jax.random.split(key, C)``,
        one after another, returned as an :class:`~probinfer.smc.SMCChains` (``C`` ArviZ
        chains; the spread of ``log_evidence`` measures its Monte Carlo error). ``C``
        filters cost ``C`` times one.
    proposal
        ``"bootstrap"`` (propose from the transition) or ``"guided"`` (the model's
        proposals; the locally optimal one for a linear-Gaussian model).
    quantiles
        Levels of the weighted filtering quantiles to record at every step, e.g.
        ``(0.05, 0.5, 0.95)`` for a band plot. Off by default: each step then sorts all
        ``N`` particles, which costs 14-19x the filter itself at ``N = 10^6`` (see
        ``benchmarks/pf_vs_particles.py``).
    **options
        Run options (:class:`~probinfer.smc.kernel.RunOptions`): ``ess_threshold`` (0.5;
        ``1.0``: resample at every step), ``scheme``, ``keep_ancestors`` (here ``False``
        by default: the ``(T, N)`` genealogy), ``jit``, ``memory_budget`` (bytes the
        potential evaluation may use at once, chunked with ``lax.map``), ``shard`` (the
        particles over all devices, ``True``, or a ``jax.sharding.Mesh`` with a
        ``"particles"`` axis: the multi-GPU and, with ``jax.distributed``, multi-host
        path), ``progress`` (a bar over the time steps; ``None``: after 2 s) and
        ``callback``. With ``jit=True`` (default) the filter pads ``N`` to one of four
        bucket sizes per octave (zero-weight slots) and, without a progress bar (one
        compiled run), the observations to a power of two of steps (at least 16; the
        padding steps are never run, so the result is that of the unpadded filter):
        filters with many different particle counts and lengths share compiled code.
        ``jit=False`` runs the eager driver (same step functions).

    Returns
    -------
    ParticleFilterResult
        or :class:`~probinfer.smc.SMCChains` of them with ``num_chains``.
    """
    check_num_particles(num_particles)
    levels = tuple(float(q) for q in quantiles)
    if any(not 0.0 <= q <= 1.0 for q in levels):
        raise ValueError(f"quantiles must lie in [0, 1], got {levels}")
    chains = check_num_chains(num_chains)
    if chains is not None:
        one = dict(proposal=proposal, quantiles=levels, **options)
        return run_chains(
            key, chains, lambda k: particle_filter(k, ssm, observations, num_particles, **one)
        )
    opts = {"keep_ancestors": False, "progress": False, "desc": "particle filter", **options}
    jit = opts.setdefault("jit", True)
    opts.setdefault("bucket", jit)
    # a progress bar counts fk.num_steps: the time axis is padded on the one-program path only
    pad_time = jit and opts["progress"] is False and opts.get("callback") is None
    fk = _ssm_feynman_kac(ssm, observations, proposal, bucket=pad_time)
    res = run_smc(key, fk, num_particles, summary=_summary_fn(levels), **opts)
    sums = res.summaries
    return ParticleFilterResult(
        **{f.name: getattr(res, f.name) for f in dataclasses.fields(SMCResult)},
        filtering_means=np.asarray(sums["mean"]),
        filtering_quantiles=np.asarray(sums["quantiles"]) if levels else None,
        quantile_levels=levels,
    )
