"""The Feynman-Kac SMC driver shared by every particle algorithm.

A Feynman-Kac model is given by an initial proposal ``M0``, transitions ``M_t`` and log
potentials ``log G_t`` (``t = 0..T-1``). SMC targets the normalised flow

    Q_t(dx_{0:t}) ∝ M0(dx_0) G_0(x_0) prod_{s=1}^t M_s(x_{s-1}, dx_s) G_s(x_{s-1}, x_s)

and estimates its normalising constant ``Z_T`` without bias. One step of the algorithm
(:func:`transition_step`) is: resample when ``ESS < ess_threshold * N`` (``1.0`` = every
step), move ``x_t ~ M_t(x_{t-1}, .)``, reweight by ``G_t``, and record the evidence increment
``log sum_i W_{t-1}^i G_t^i`` (normalised weights ``W``).

Two drivers run the *same* step functions:

* :func:`smc_scan` — pure JAX, jitted, ``lax.scan`` over time; vmappable over keys. Use it
  when ``M0``, ``M``, ``logG`` are traceable JAX functions of array particles.
* :func:`run_smc` with ``jit=False`` — an eager Python loop for black-box transitions
  (language models, simulators). Particle values may then be any store with
  ``take(indices)`` and ``__len__``; only the log potentials must be arrays. Log evidence
  is accumulated in float64 with numpy.

User callables (``data`` is the pytree given as ``FeynmanKac.data``; it is passed as a
traced argument on the jitted path so that compiled code is reused across data sets):

``M0(key, num_particles, data) -> values``
    Draw the initial particles.
``M(key, t, values, data) -> values``
    Move every particle from step ``t - 1`` to step ``t`` (``t >= 1``).
``logG(t, prev_values, values, data) -> (N,) array``
    Log potential of each particle at step ``t``; ``prev_values`` is ``None`` at ``t = 0``.
    NaN potentials are treated as ``-inf`` (the particle gets weight 0) with a warning; if
    every particle has weight 0 a ``ValueError`` is raised.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from probinfer.engine.evidence import log_increment64
from probinfer.particles import Particles, take
from probinfer.resampling import SCHEMES, resample
from probinfer.weights import ess, should_resample

Array = jax.Array

__all__ = [
    "FeynmanKac",
    "SMCOutput",
    "SMCResult",
    "StepInfo",
    "check_num_particles",
    "check_threshold",
    "initial_step",
    "run_smc",
    "smc_scan",
    "transition_step",
]


@dataclass(frozen=True, eq=False)
class FeynmanKac:
    """A Feynman-Kac model: ``M0``, ``M``, ``logG``, the number of steps and the data.

    Parameters
    ----------
    M0
        ``M0(key, num_particles, data) -> values``: the initial proposal.
    M
        ``M(key, t, values, data) -> values``: the transition from step ``t-1`` to ``t``.
    logG
        ``logG(t, prev_values, values, data) -> (N,)``: log potentials (``prev_values`` is
        ``None`` at ``t = 0``).
    num_steps
        ``T``, the number of potentials (``t = 0..T-1``).
    data
        Any pytree (observations, parameters) handed to the callables. On the jitted
        path it is a traced argument: new data with the same shapes reuses the compiled
        code, as long as the same callables are used.
    """

    M0: Callable
    M: Callable
    logG: Callable
    num_steps: int
    data: Any = None

    def __post_init__(self):
        for name in ("M0", "M", "logG"):
            if not callable(getattr(self, name)):
                raise TypeError(f"{name} must be callable, got {type(getattr(self, name))}")
        n = self.num_steps
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"num_steps must be a positive integer, got {n!r}")


class StepInfo(NamedTuple):
    """What one SMC step records."""

    log_evidence_increment: Array  # log sum_i W_{t-1}^i G_t^i
    ess: Array  # ESS after reweighting
    resampled: Array  # bool: resampled before moving
    ancestors: Array  # (N,) int32 ancestor of each particle (identity if not resampled)
    num_nan: Array  # number of NaN log potentials (set to -inf)


def check_num_particles(num_particles) -> int:
    """Validate ``num_particles`` (an integer >= 2)."""
    if (
        isinstance(num_particles, bool)
        or not isinstance(num_particles, int | np.integer)
        or num_particles < 2
    ):
        raise ValueError(f"num_particles must be an integer >= 2, got {num_particles!r}")
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


def _clean_log_potential(log_g, n: int) -> tuple[Array, Array]:
    g = jnp.asarray(log_g)
    if g.shape != (n,):
        raise ValueError(
            f"logG must return one log potential per particle, shape ({n},), got {g.shape}"
        )
    if not jnp.issubdtype(g.dtype, jnp.floating):
        g = g.astype(jnp.float32)
    bad = jnp.isnan(g)
    return jnp.where(bad, -jnp.inf, g), jnp.sum(bad)


def _report_nan(num_nan: int, where: str) -> None:
    if num_nan:
        warnings.warn(
            f"{num_nan} particle(s) had a NaN log potential {where}; they were given weight 0",
            RuntimeWarning,
            stacklevel=3,
        )


def _check_alive(log_weights, t) -> None:
    if bool(np.all(np.asarray(log_weights) == -np.inf)):
        raise ValueError(
            f"every particle has weight 0 at step {t} (log potentials all NaN or -inf): "
            "the model cannot explain the data or the log likelihood is NaN everywhere"
        )


def initial_step(
    key: Array, fk: FeynmanKac, num_particles: int, *, eager: bool = False
) -> tuple[Particles, StepInfo]:
    """Draw ``x_0 ~ M0`` and weight by ``G_0`` (works eagerly and under ``jit``)."""
    values = fk.M0(key, num_particles, fk.data)
    log_g, num_nan = _clean_log_potential(fk.logG(0, None, values, fk.data), num_particles)
    particles = Particles(values, log_g)
    if eager:
        inc = log_increment64(np.zeros(num_particles), log_g)
    else:
        inc = jax.scipy.special.logsumexp(log_g) - jnp.log(num_particles)
    info = StepInfo(
        inc, ess(log_g), jnp.asarray(False), jnp.arange(num_particles, dtype=jnp.int32), num_nan
    )
    return particles, info


def transition_step(
    key: Array,
    t,
    fk: FeynmanKac,
    particles: Particles,
    ess_threshold: float = 0.5,
    scheme: str = "systematic",
    *,
    eager: bool = False,
) -> tuple[Particles, StepInfo]:
    """One SMC step ``t >= 1``: ESS-triggered resampling, move with ``M``, reweight with ``G``.

    With ``eager=True`` the resampling decision is a Python ``if`` (the particle store is
    only indexed when resampling happens, so any store with ``take`` works); otherwise
    ``lax.cond`` is used and the function is traceable.
    """
    lw = particles.log_weights
    if not eager:
        log_sum_w = jax.scipy.special.logsumexp(lw)
        particles, info, _ = _advance(
            key, t, fk, particles, log_sum_w, ess(lw), ess_threshold, scheme, True
        )
        return particles, info
    k_res, k_move = jax.random.split(key)
    n = lw.shape[0]
    do = should_resample(lw, ess_threshold)
    if bool(do):
        anc = resample(k_res, lw, scheme=scheme)
        prev, lw = take(particles.values, anc), jnp.zeros(n, lw.dtype)
    else:
        anc, prev = jnp.arange(n, dtype=jnp.int32), particles.values
    values = fk.M(k_move, t, prev, fk.data)
    log_g, num_nan = _clean_log_potential(fk.logG(t, prev, values, fk.data), n)
    new_lw = lw + log_g
    inc = log_increment64(lw, log_g)
    return Particles(values, new_lw), StepInfo(inc, ess(new_lw), do, anc, num_nan)


def _log_sum_and_ess(log_weights: Array) -> tuple[Array, Array]:
    """``(logsumexp(lw), ESS(lw))`` from one max and one exp pass over the weights."""
    m = jnp.max(log_weights)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    e = jnp.exp(log_weights - m)
    s1, s2 = jnp.sum(e), jnp.sum(e * e)
    return m + jnp.log(s1), s1 * s1 / s2


def _advance(
    key, t, fk, particles, log_sum_w, ess_now, ess_threshold, scheme, keep_ancestors
) -> tuple[Particles, StepInfo, Array]:
    """The traced SMC step. ``log_sum_w`` and ``ess_now`` (``logsumexp`` and ESS of the
    current log weights) come from the previous step, so each step makes one reduction
    pass over its new weights; the particles are only gathered when resampling happens.
    Returns the new particles, the step's info and the ``logsumexp`` of the new weights.
    """
    k_res, k_move = jax.random.split(key)
    lw = particles.log_weights
    n = lw.shape[0]
    do = jnp.logical_or(jnp.asarray(ess_threshold) >= 1.0, ess_now < ess_threshold * n)

    def resampled():
        anc = resample(k_res, lw, scheme=scheme)
        out = (take(particles.values, anc), jnp.zeros_like(lw), jnp.log(jnp.asarray(n, lw.dtype)))
        return out + ((anc,) if keep_ancestors else ())

    def kept():
        out = (particles.values, lw, log_sum_w.astype(lw.dtype))
        return out + ((jnp.arange(n, dtype=jnp.int32),) if keep_ancestors else ())

    prev, lw, log_sum_prev, *anc = jax.lax.cond(do, resampled, kept)
    values = fk.M(k_move, t, prev, fk.data)
    log_g, num_nan = _clean_log_potential(fk.logG(t, prev, values, fk.data), n)
    new_lw = lw + log_g
    log_sum_new, ess_new = _log_sum_and_ess(new_lw)
    inc = log_sum_new - log_sum_prev  # log sum_i W_i G_i with W = normalised lw
    info = StepInfo(inc, ess_new, do, anc[0] if keep_ancestors else None, num_nan)
    return Particles(values, new_lw), info, log_sum_new


class SMCOutput(NamedTuple):
    """Raw output of :func:`smc_scan` (JAX arrays, vmappable)."""

    particles: Particles  # final weighted particles
    log_evidence_increments: Array  # (T,)
    ess: Array  # (T,)
    resampled: Array  # (T,) bool
    ancestors: Array | None  # (T, N) int32, row 0 = identity; None if not kept
    summaries: Any  # pytree with leading axis T, or None
    num_nan: Array  # (T,) NaN log potentials per step


@partial(
    jax.jit,
    static_argnames=(
        "fk_fns",
        "num_steps",
        "num_particles",
        "ess_threshold",
        "scheme",
        "summary",
        "keep_ancestors",
    ),
)
def _scan_jit(
    key, data, *, fk_fns, num_steps, num_particles, ess_threshold, scheme, summary, keep_ancestors
):
    fk = FeynmanKac(*fk_fns, num_steps=num_steps, data=data)
    k0, k_rest = jax.random.split(key)
    particles, info0 = initial_step(k0, fk, num_particles)

    def summarize(p):
        return None if summary is None else summary(p, data)

    def body(carry, inputs):
        p, log_sum_w, ess_now = carry
        k, t = inputs
        p, info, log_sum_w = _advance(
            k, t, fk, p, log_sum_w, ess_now, ess_threshold, scheme, keep_ancestors
        )
        return (p, log_sum_w, info.ess), (info, summarize(p))

    s0 = summarize(particles)
    ts = jnp.arange(1, num_steps)
    keys = jax.random.split(k_rest, num_steps - 1)
    log_sum_0 = jax.scipy.special.logsumexp(particles.log_weights)
    (particles, _, _), (infos, sums) = jax.lax.scan(
        body, (particles, log_sum_0, info0.ess), (keys, ts)
    )
    if not keep_ancestors:
        info0 = info0._replace(ancestors=None)

    def cat(first, rest):
        return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), first, rest)

    infos = cat(info0, infos)
    sums = None if summary is None else cat(s0, sums)
    return SMCOutput(
        particles,
        infos.log_evidence_increment,
        infos.ess,
        infos.resampled,
        infos.ancestors,
        sums,
        infos.num_nan,
    )


def smc_scan(
    key: Array,
    fk: FeynmanKac,
    num_particles: int,
    ess_threshold: float = 0.5,
    scheme: str = "systematic",
    *,
    summary: Callable | None = None,
    keep_ancestors: bool = True,
) -> SMCOutput:
    """Run SMC jitted under ``lax.scan`` and return raw JAX arrays (vmappable over ``key``).

    ``summary(particles, data) -> pytree`` is evaluated after every reweighting (e.g.
    filtering means); its values are stacked along a leading time axis. Compiled code
    is cached on ``(fk.M0, fk.M, fk.logG, summary)`` and the static settings, so reuse the
    same callables (and vary ``fk.data``) to avoid recompilation.
    """
    return _scan_jit(
        key,
        fk.data,
        fk_fns=(fk.M0, fk.M, fk.logG),
        num_steps=int(fk.num_steps),
        num_particles=int(num_particles),
        ess_threshold=float(ess_threshold),
        scheme=scheme,
        summary=summary,
        keep_ancestors=bool(keep_ancestors),
    )


@dataclass(frozen=True)
class SMCResult:
    """Result of :func:`run_smc`.

    Attributes
    ----------
    particles
        Final weighted particles (values: whatever the transitions return).
    log_evidence
        ``log Z_T``, the sum of the increments accumulated in float64.
    log_evidence_increments
        ``(T,)`` float64 increments ``log sum_i W_{t-1}^i G_t^i``.
    ess
        ``(T,)`` ESS after each reweighting.
    resampled
        ``(T,)`` whether resampling happened before the move at step ``t``.
    ancestors
        ``(T, N)`` ancestor indices (row ``t`` maps particles at ``t`` to ``t - 1``), or
        ``None`` when not kept.
    summaries
        Per-step summaries (leading axis ``T``), or ``None``.
    wall_time
        Seconds for the run (including compilation on the first jitted call).
    """

    particles: Particles
    log_evidence: float
    log_evidence_increments: np.ndarray
    ess: np.ndarray
    resampled: np.ndarray
    ancestors: np.ndarray | None
    summaries: Any
    wall_time: float

    def to_arviz(
        self,
        key: Array | None = None,
        *,
        scheme: str = "systematic",
        var_name="x",
        attrs: dict | None = None,
    ):
        """One chain of equally weighted final particles; per-step history in ``smc_steps``."""
        from probinfer.inference_data import to_inference_data

        return to_inference_data(
            [self.particles],
            key=key,
            scheme=scheme,
            var_name=var_name,
            log_evidence=self.log_evidence,
            step_stats={
                "ess": self.ess,
                "resampled": self.resampled,
                "log_evidence_increment": self.log_evidence_increments,
            },
            attrs=attrs,
        )


def _finish(output: SMCOutput) -> tuple[float, np.ndarray]:
    incs = np.asarray(output.log_evidence_increments, dtype=np.float64)
    num_nan = int(np.sum(np.asarray(output.num_nan)))
    _report_nan(num_nan, "during the run")
    if np.any(np.isnan(incs)) or np.any(incs == -np.inf):
        t = int(np.argmax(np.isnan(incs) | (incs == -np.inf)))
        _check_alive(np.full(1, -np.inf), t)
    return float(np.sum(incs)), incs


def run_smc(
    key: Array,
    fk: FeynmanKac,
    num_particles: int,
    *,
    ess_threshold: float = 0.5,
    scheme: str = "systematic",
    jit: bool = True,
    summary: Callable | None = None,
    keep_ancestors: bool = True,
    callback: Callable | None = None,
) -> SMCResult:
    """Run SMC on a Feynman-Kac model and return weights, log evidence and history.

    Parameters
    ----------
    key
        ``jax.random`` key; same key, same result (on both paths).
    fk
        The model (:class:`FeynmanKac`).
    num_particles
        ``N >= 2``.
    ess_threshold
        Resample before a move when ``ESS < ess_threshold * N``; ``1.0`` resamples at every
        step, ``0.0`` never.
    scheme
        Resampling scheme (see :func:`probinfer.resample`).
    jit
        ``True``: the jitted ``lax.scan`` path (pure-JAX callables). ``False``: the eager
        loop (black-box callables; particle values may be any store with ``take``).
    summary
        ``summary(particles, data) -> pytree`` recorded after each reweighting.
    keep_ancestors
        Store the ``(T, N)`` ancestor indices (memory ``4 T N`` bytes).
    callback
        Eager path only: ``callback(t, particles, info)`` after every step (progress,
        logging, checkpointing).

    Raises
    ------
    ValueError
        On bad settings, or when every particle has weight 0 at some step. NaN log
        potentials give weight 0 and a ``RuntimeWarning``.
    """
    num_particles = check_num_particles(num_particles)
    ess_threshold = check_threshold(ess_threshold, scheme)
    if not isinstance(fk, FeynmanKac):
        raise TypeError(f"fk must be a FeynmanKac model, got {type(fk).__name__}")
    start = time.perf_counter()
    if jit:
        if callback is not None:
            raise ValueError("callback is only supported on the eager path (jit=False)")
        out = smc_scan(
            key,
            fk,
            num_particles,
            ess_threshold,
            scheme,
            summary=summary,
            keep_ancestors=keep_ancestors,
        )
        jax.block_until_ready(out)
        log_z, incs = _finish(out)
        return SMCResult(
            out.particles,
            log_z,
            incs,
            np.asarray(out.ess),
            np.asarray(out.resampled),
            None if out.ancestors is None else np.asarray(out.ancestors),
            out.summaries,
            time.perf_counter() - start,
        )
    return _run_eager(
        key, fk, num_particles, ess_threshold, scheme, summary, keep_ancestors, callback, start
    )


def _run_eager(key, fk, n, ess_threshold, scheme, summary, keep_ancestors, callback, start):
    k0, k_rest = jax.random.split(key)
    keys = jax.random.split(k_rest, max(fk.num_steps - 1, 1))
    particles, info = initial_step(k0, fk, n, eager=True)
    incs, esses, flags, ancestors, sums = [], [], [], [], []
    log_z = 0.0
    for t in range(fk.num_steps):
        if t > 0:
            particles, info = transition_step(
                keys[t - 1], t, fk, particles, ess_threshold, scheme, eager=True
            )
        inc = float(info.log_evidence_increment)
        _report_nan(int(info.num_nan), f"at step {t}")
        _check_alive(particles.log_weights, t)
        log_z += inc
        incs.append(inc)
        esses.append(float(info.ess))
        flags.append(bool(info.resampled))
        if keep_ancestors:
            ancestors.append(np.asarray(info.ancestors))
        if summary is not None:
            sums.append(summary(particles, fk.data))
        if callback is not None:
            callback(t, particles, info)
    stacked = None
    if summary is not None:
        stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *sums)
    return SMCResult(
        particles,
        float(log_z),
        np.asarray(incs, dtype=np.float64),
        np.asarray(esses),
        np.asarray(flags),
        np.stack(ancestors) if keep_ancestors else None,
        stacked,
        time.perf_counter() - start,
    )
