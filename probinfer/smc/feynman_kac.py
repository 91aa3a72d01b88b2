"""The one Feynman-Kac SMC driver shared by every particle algorithm.

A Feynman-Kac model is given by an initial proposal ``M0``, transitions ``M_t`` and log
potentials ``log G_t`` (``t = 0..T-1``). SMC targets the normalised flow

    Q_t(dx_{0:t}) ∝ M0(dx_0) G_0(x_0) prod_{s=1}^t M_s(x_{s-1}, dx_s) G_s(x_{s-1}, x_s)

and estimates its normalising constant ``Z_T`` without bias. The driver is written in
BlackJAX's ``init``/``step`` form over an immutable :class:`SMCState`:

* :func:`init` draws ``x_0 ~ M0`` and weights by ``G_0``;
* :func:`step` (``t >= 1``) resamples when ``ESS < ess_threshold * N`` (``1.0`` = every
  step), moves ``x_t ~ M_t(x_{t-1}, .)``, lets the model adapt its parameters to the moved
  particles (``adapt``: the next temperature of tempered SMC, an MCMC scale, ...) and
  reweights by ``G_t``, recording the evidence increment ``log sum_i W_{t-1}^i G_t^i``.

The state holds *normalised* log weights, so each increment is one log-sum-exp of
quantities of order one (never a difference of two large unnormalised log sums), and the
running ``log Z`` is a compensated (Kahan) sum; the runners also re-sum the per-step
increments in float64 on the host. Long runs therefore keep ``log Z`` exact to float64
rounding of the increments (a constant potential over 3000 steps is exact to < 1e-3).

Three runners share the same functions (:func:`run_smc`):

* fully jitted (``jit=True``, no callback, no progress bar): ``lax.scan`` over the ``T``
  steps, or ``lax.while_loop`` when the model has a ``finished`` rule; vmappable over keys
  (:func:`smc_scan`);
* a Python loop over the jitted ``step`` (``jit=True`` with a ``callback`` or a progress
  bar): the same compiled step every time;
* eager (``jit=False``) for black-box transitions (language models, simulators): particle
  values may be any store with ``take(indices)`` and ``__len__``, the weights are numpy
  float64, and the loop stops as soon as ``finished`` says every particle is done.

Conditional SMC (the kernel of particle Gibbs) is the ``reference`` option: slot 0 holds
the reference trajectory at every step (``pin``), is never resampled away (its ancestor
is 0) and slots ``1..N-1`` draw their ancestors multinomially from all ``N`` particles
(Andrieu, Doucet & Holenstein 2010).

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
``pin(t, values, reference, data) -> values`` (optional)
    Write the reference's state at step ``t`` into slot 0. The default, for array
    particles, sets slot 0 to ``reference[t]`` (the reference has a leading time axis).
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

from probinfer.checks import check_num
from probinfer.engine.core import bucket_size, chunk_size_for, map_in_chunks, row_bytes
from probinfer.particles import Particles, take
from probinfer.resampling import (
    SCHEMES,
    resample,
    resample_draws,
    resample_host,
    resample_padded,
)

Array = jax.Array

__all__ = [
    "FeynmanKac",
    "SMCOutput",
    "SMCResult",
    "SMCState",
    "StepInfo",
    "check_num_particles",
    "check_threshold",
    "init",
    "run_smc",
    "smc_scan",
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
    pin
        Optional ``pin(t, values, reference, data) -> values`` for conditional SMC on
        non-array particle stores.
    """

    M0: Callable
    M: Callable
    logG: Callable
    num_steps: int
    data: Any = None
    adapt: Callable | None = None
    finished: Callable | None = None
    pin: Callable | None = None

    def __post_init__(self):
        for name in ("M0", "M", "logG"):
            if not callable(getattr(self, name)):
                raise TypeError(f"{name} must be callable, got {type(getattr(self, name))}")
        for name in ("adapt", "finished", "pin"):
            f = getattr(self, name)
            if f is not None and not callable(f):
                raise TypeError(f"{name} must be callable or None, got {type(f)}")
        check_num(self.num_steps, "num_steps")

    @property
    def fns(self) -> tuple:
        """The callables, a hashable key for compiled code."""
        return (self.M0, self.M, self.logG, self.adapt, self.finished, self.pin)


class SMCState(NamedTuple):
    """The state of an SMC run (a pytree on the jitted paths).

    ``log_weights`` are normalised (``logsumexp = 0``); ``log_evidence`` is the running
    ``log Z`` as a compensated sum with its compensation ``log_evidence_c``; ``data`` is the
    model's data after the last ``adapt``. In a bucketed run (:func:`smc_scan` with
    ``bucket=True``) the arrays have a padded length and ``num_particles`` (traced) says how
    many leading slots are real; the others carry weight 0 and are never resampled.
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


# --------------------------------------------------------------------------- reweighting
def _clean_log_potential(log_g, n: int, eager: bool):
    xp = np if eager else jnp
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
    bad = xp.isnan(g)
    if eager and not bad.any():
        return g, 0
    return xp.where(bad, -xp.inf, g), xp.sum(bad)


def _reweight(log_weights, log_g, eager: bool):
    """``(new normalised log weights, log sum_i W_i G_i, ESS)`` in one pass.

    ``log_weights`` are normalised, so the increment is a log-sum-exp of terms of order
    one; all ``-inf`` gives increment ``-inf`` and the weights are left unnormalised.
    """
    xp = np if eager else jnp
    u = log_weights + log_g
    if eager:  # host fast path (no error-state context): a finite maximum
        m = u.max()
        if np.isfinite(m):
            e = np.exp(u - m)
            s1, s2 = e.sum(), (e * e).sum()
            inc = m + np.log(s1)
            return u - inc, inc, s1 * s1 / s2
    m = xp.max(u)
    m = xp.where(xp.isfinite(m), m, 0.0)
    e = xp.exp(u - m)
    s1, s2 = xp.sum(e), xp.sum(e * e)
    with np.errstate(divide="ignore", invalid="ignore"):
        inc = m + xp.log(s1)
        alive = s1 > 0
        new_lw = xp.where(alive, u - xp.where(alive, inc, 0.0), u)
        ess = xp.where(alive, s1 * s1 / xp.where(alive, s2, 1.0), 0.0)
    return new_lw, inc, ess


def _kahan(total, comp, x):
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


def _pin(fk: FeynmanKac, t, values, reference, data):
    if fk.pin is not None:
        return fk.pin(t, values, reference, data)
    return jax.tree_util.tree_map(lambda v, r: v.at[0].set(r[t]), values, reference)


def _ancestors(key, log_weights, scheme, conditional: bool, eager: bool, num_valid=None):
    n = log_weights.shape[0]
    if num_valid is not None:  # bucketed: draw num_valid ancestors into n slots
        if not conditional:
            return resample_padded(key, log_weights, n, num_valid, scheme)
        rest = resample_padded(key, log_weights, n - 1, num_valid - 1, "multinomial")
        return jnp.concatenate([jnp.zeros(1, jnp.int32), rest])
    if eager:  # host indices (from draws made up front, or the compiled resampler)
        draws = key.draws if isinstance(key, _HostDraws) else None
        key = None if draws is not None else key
        if not conditional:
            return resample_host(key, log_weights, scheme=scheme, draws=draws)
        rest = resample_host(key, log_weights, num=n - 1, scheme="multinomial", draws=draws)
        return np.concatenate([[0], rest]).astype(np.int32)
    if not conditional:
        return resample(key, log_weights, scheme=scheme)
    rest = resample(key, log_weights, num=n - 1, scheme="multinomial")
    return jnp.concatenate([jnp.zeros(1, jnp.int32), rest])


# --------------------------------------------------------------------------- init / step
def init(
    key: Array,
    fk: FeynmanKac,
    num_particles: int,
    *,
    reference: Any = None,
    eager: bool = False,
    num_valid: Any = None,
) -> tuple[SMCState, StepInfo]:
    """Draw ``x_0 ~ M0``, adapt, and weight by ``G_0`` (eagerly or traceably).

    ``num_valid`` (traceable, jitted path only): only the first ``num_valid`` of the
    ``num_particles`` slots are real particles; the rest get weight 0 (bucketed shapes).
    """
    n = num_particles
    values = fk.M0(key, n, fk.data)
    if reference is not None:
        values = _pin(fk, 0, values, reference, fk.data)
    lw0 = _uniform_log_weights(n, jnp.float32, eager, num_valid)
    data = fk.data if fk.adapt is None else fk.adapt(0, values, lw0, fk.data)
    log_g, num_nan = _clean_log_potential(fk.logG(0, None, values, data), n, eager)
    if not eager:
        lw0 = lw0.astype(log_g.dtype)
    lw, inc, ess = _reweight(lw0, log_g, eager)
    zero = 0.0 if eager else jnp.zeros((), inc.dtype)
    state = SMCState(values, lw, ess, inc if eager else inc + zero, zero, data, num_valid)
    anc = np.arange(n, dtype=np.int32) if eager else jnp.arange(n, dtype=jnp.int32)
    return state, StepInfo(inc, ess, False if eager else jnp.asarray(False), anc, num_nan)


def step(
    key: Array,
    t,
    fk: FeynmanKac,
    state: SMCState,
    ess_threshold: float = 0.5,
    scheme: str = "systematic",
    *,
    reference: Any = None,
    eager: bool = False,
) -> tuple[SMCState, StepInfo]:
    """One SMC step ``t >= 1``: ESS-triggered resampling, move, adapt, reweight.

    With ``eager=True`` the resampling decision is a Python ``if`` (the store is indexed
    only when resampling happens, so any store with ``take`` works) and the weights are
    numpy float64; otherwise ``lax.cond`` is used and the function is traceable.
    """
    # a pre-split (k_res, k_move) pair is accepted: the eager loop splits every step's key
    # in one call up front instead of one small device call per step (its k_res may carry
    # the step's resampling draws, _HostDraws, so resampling runs on the host)
    k_res, k_move = key if isinstance(key, tuple) else jax.random.split(key)
    lw, data = state.log_weights, state.data
    n = lw.shape[0]
    nv = state.num_particles  # None unless bucketed
    n_real = n if nv is None else nv
    conditional = reference is not None
    if eager:
        do = bool(ess_threshold >= 1.0 or state.ess < ess_threshold * n)
        if do:
            anc = _ancestors(k_res, lw, scheme, conditional, True)
            prev, lw = take(state.values, anc), _uniform_log_weights(n, None, True)
        else:
            anc, prev = np.arange(n, dtype=np.int32), state.values
    else:
        do = jnp.logical_or(jnp.asarray(ess_threshold) >= 1.0, state.ess < ess_threshold * n_real)

        def resampled():
            a = _ancestors(k_res, lw, scheme, conditional, False, nv)
            return take(state.values, a), _uniform_log_weights(n, lw.dtype, False, nv), a

        def kept():
            return state.values, lw, jnp.arange(n, dtype=jnp.int32)

        prev, lw, anc = jax.lax.cond(do, resampled, kept)
    values = fk.M(k_move, t, prev, data)
    if conditional:
        values = _pin(fk, t, values, reference, data)
    if fk.adapt is not None:
        data = fk.adapt(t, values, lw, data)
    log_g, num_nan = _clean_log_potential(fk.logG(t, prev, values, data), n, eager)
    new_lw, inc, ess = _reweight(lw, log_g, eager)
    if eager:
        log_z, comp = state.log_evidence + inc, 0.0
    else:
        log_z, comp = _kahan(state.log_evidence, state.log_evidence_c, inc)
    new = SMCState(values, new_lw, ess, log_z, comp, data, nv)
    return new, StepInfo(inc, ess, do, anc, num_nan)


# --------------------------------------------------------------------------- jitted runner
class SMCOutput(NamedTuple):
    """Raw output of :func:`smc_scan` (JAX arrays, vmappable).

    With a ``finished`` rule the histories are padded with NaN (``resampled``: False,
    ancestors: identity) after ``num_steps``.
    """

    state: SMCState  # final state (particles, normalised weights, running log Z, data)
    log_evidence_increments: Array  # (T,)
    ess: Array  # (T,)
    resampled: Array  # (T,) bool
    ancestors: Array | None  # (T, N) int32, row 0 = identity; None if not kept
    summaries: Any  # pytree with leading axis T, or None
    num_nan: Array  # (T,) NaN log potentials per step
    num_steps: Array  # number of steps run

    @property
    def particles(self) -> Particles:
        return self.state.particles

    @property
    def log_evidence(self) -> Array:
        return self.state.log_evidence


def _record(info: StepInfo, summary_value, keep_ancestors: bool):
    anc = info.ancestors if keep_ancestors else None
    return (info._replace(ancestors=anc), summary_value)


class Layout(NamedTuple):
    """How a jitted run lays particles out (static, part of the compilation key).

    ``size``: the array length (``num_particles``, or its bucket when ``bucketed``);
    ``bucketed``: whether only a traced prefix of ``size`` slots holds real particles;
    ``sharding``: a ``NamedSharding`` placing the particle axis over devices, or ``None``;
    ``chunk``: potentials are evaluated this many particles at a time, or ``None``.
    """

    size: int
    bucketed: bool = False
    sharding: Any = None
    chunk: int | None = None


def _model(fns, num_steps, data, layout: Layout) -> FeynmanKac:
    """The model inside a trace: potentials chunked through the engine when asked."""
    logG = fns[2]
    if layout.chunk is not None:
        logG = _chunked(fns[2], layout.chunk)
    return FeynmanKac(
        fns[0],
        fns[1],
        logG,
        num_steps=num_steps,
        data=data,
        adapt=fns[3],
        finished=fns[4],
        pin=fns[5],
    )


def _chunked(logG, chunk):
    """``logG`` evaluated ``chunk`` particles at a time (:func:`probinfer.engine.map_in_chunks`)."""

    def chunked(t, prev, values, data):
        if prev is None:
            return map_in_chunks(lambda v: logG(t, None, v, data), values, chunk)
        return map_in_chunks(lambda pv: logG(t, pv[0], pv[1], data), (prev, values), chunk)

    return chunked


def _constrain(state: SMCState, layout: Layout) -> SMCState:
    """Keep the particle axis of the state sharded over the layout's devices."""
    if layout.sharding is None:
        return state

    def put(a):
        if jnp.ndim(a) >= 1 and jnp.shape(a)[0] == layout.size:
            return jax.lax.with_sharding_constraint(a, layout.sharding)
        return a

    values, lw = jax.tree_util.tree_map(put, (state.values, state.log_weights))
    return state._replace(values=values, log_weights=lw)


# the static (compilation-key) arguments of the jitted runners
_STATIC = ("fns", "num_steps", "layout", "ess_threshold", "scheme", "summary", "keep_ancestors")


@partial(jax.jit, static_argnames=_STATIC)
def _run_jit(
    key,
    data,
    reference,
    num_valid,
    *,
    fns,
    num_steps,
    layout,
    ess_threshold,
    scheme,
    summary,
    keep_ancestors,
):
    fk = _model(fns, num_steps, data, layout)
    size = layout.size
    k0, k_rest = jax.random.split(key)
    keys = jax.random.split(k_rest, max(num_steps - 1, 1))
    state, info0 = init(k0, fk, size, reference=reference, num_valid=num_valid)
    state = _constrain(state, layout)

    def summarize(s):
        return None if summary is None else summary(s.particles, s.data)

    rec0 = _record(info0, summarize(state), keep_ancestors)

    def advance(s, t):
        s, info = step(keys[t - 1], t, fk, s, ess_threshold, scheme, reference=reference)
        s = _constrain(s, layout)
        return s, _record(info, summarize(s), keep_ancestors)

    if fk.finished is None:
        state, recs = jax.lax.scan(advance, state, jnp.arange(1, num_steps))
        count = jnp.asarray(num_steps)
        hist = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), rec0, recs)
    else:

        def pad(a):
            a = jnp.asarray(a)
            fill = jnp.nan if jnp.issubdtype(a.dtype, jnp.floating) else 0
            return jnp.full((num_steps,) + a.shape, fill, a.dtype).at[0].set(a)

        hist = jax.tree_util.tree_map(pad, rec0)
        if keep_ancestors:
            ident = jnp.broadcast_to(jnp.arange(size, dtype=jnp.int32), (num_steps, size))
            hist = (hist[0]._replace(ancestors=ident), hist[1])

        def cond(c):
            s, t, _ = c
            return (t < num_steps) & jnp.logical_not(fk.finished(s.values, s.data))

        def body(c):
            s, t, h = c
            s, rec = advance(s, t)
            h = jax.tree_util.tree_map(lambda a, v: a.at[t].set(v), h, rec)
            return s, t + 1, h

        state, count, hist = jax.lax.while_loop(cond, body, (state, jnp.asarray(1), hist))
    infos, sums = hist
    return SMCOutput(
        state,
        infos.log_evidence_increment,
        infos.ess,
        infos.resampled,
        infos.ancestors,
        sums,
        infos.num_nan,
        count,
    )


def _layout(fk: FeynmanKac, num_particles: int, bucket: bool, shard, memory_budget) -> Layout:
    """Validate the layout options and fix the static array length."""
    size = num_particles
    if bucket:
        size = bucket_size(num_particles, 16, per_octave=4)
    sharding = None
    if shard is not False and shard is not None:
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        if shard is True:
            mesh = Mesh(np.asarray(jax.devices()), ("particles",))
        elif isinstance(shard, Mesh):
            if "particles" not in shard.axis_names:
                raise ValueError(f"shard mesh must have a 'particles' axis, got {shard.axis_names}")
            mesh = shard
        else:
            raise TypeError(f"shard must be a bool or a jax.sharding.Mesh, got {type(shard)}")
        ndev = mesh.shape["particles"]
        if bucket:
            size = -(-size // ndev) * ndev
        elif size % ndev:
            raise ValueError(
                f"num_particles ({num_particles}) must be a multiple of the {ndev} devices "
                "to shard over, or pass bucket=True to pad it"
            )
        sharding = NamedSharding(mesh, PartitionSpec("particles"))
    chunk = None
    if memory_budget is not None:
        mb = memory_budget
        if isinstance(mb, bool) or not isinstance(mb, int | np.integer) or mb <= 0:
            raise ValueError(f"memory_budget must be a positive integer (bytes), got {mb!r}")
        one = jax.eval_shape(lambda k: fk.M0(k, 1, fk.data), jax.random.key(0))
        chunk = chunk_size_for(max(16 * row_bytes(one), 1024), int(memory_budget))
    return Layout(int(size), bool(bucket), sharding, chunk)


def smc_scan(
    key: Array,
    fk: FeynmanKac,
    num_particles: int,
    ess_threshold: float = 0.5,
    scheme: str = "systematic",
    *,
    summary: Callable | None = None,
    keep_ancestors: bool = True,
    reference: Any = None,
    bucket: bool = False,
    shard: Any = False,
    memory_budget: int | None = None,
) -> SMCOutput:
    """Run SMC jitted (``lax.scan``, or ``lax.while_loop`` with a ``finished`` rule) and
    return raw JAX arrays (vmappable over ``key``).

    ``summary(particles, data) -> pytree`` is evaluated after every reweighting (e.g.
    filtering means); its values are stacked along a leading time axis. Compiled code
    is cached on the model's callables, ``summary`` and the static settings, so reuse the
    same callables (and vary ``fk.data``) to avoid recompilation. ``bucket``, ``shard`` and
    ``memory_budget`` are described in :func:`run_smc`; with ``bucket=True`` the returned
    arrays have the padded length and ``state.num_particles`` real particles lead.
    """
    layout = _layout(fk, int(num_particles), bucket, shard, memory_budget)
    return _run_jit(
        key,
        fk.data,
        reference,
        jnp.asarray(num_particles, jnp.int32) if layout.bucketed else None,
        fns=fk.fns,
        num_steps=int(fk.num_steps),
        layout=layout,
        ess_threshold=float(ess_threshold),
        scheme=scheme,
        summary=summary,
        keep_ancestors=bool(keep_ancestors),
    )


@partial(jax.jit, static_argnames=_STATIC)
def _step_jit(
    key,
    t,
    state,
    reference,
    *,
    fns,
    num_steps,
    layout,
    ess_threshold,
    scheme,
    summary,
    keep_ancestors,
):
    fk = _model(fns, num_steps, state.data, layout)
    state, info = step(key, t, fk, state, ess_threshold, scheme, reference=reference)
    state = _constrain(state, layout)
    done = jnp.asarray(False) if fk.finished is None else fk.finished(state.values, state.data)
    sv = None if summary is None else summary(state.particles, state.data)
    return state, _record(info, sv, keep_ancestors), done


@partial(jax.jit, static_argnames=("fns", "num_steps", "layout", "summary", "keep_ancestors"))
def _init_jit(key, data, reference, num_valid, *, fns, num_steps, layout, summary, keep_ancestors):
    fk = _model(fns, num_steps, data, layout)
    state, info = init(key, fk, layout.size, reference=reference, num_valid=num_valid)
    state = _constrain(state, layout)
    done = jnp.asarray(False) if fk.finished is None else fk.finished(state.values, state.data)
    sv = None if summary is None else summary(state.particles, state.data)
    return state, _record(info, sv, keep_ancestors), done


def _first_rows(a, n: int):
    """``a[:n]`` without compiling a slice per ``n`` for single-device JAX arrays (cut on
    the host and put back on the array's device; a device slice has a static size, so every
    new particle count would compile, and keep, one more program). Arrays sharded over
    several devices are sliced on the devices, which keeps their sharding."""
    if isinstance(a, jax.Array) and len(a.sharding.device_set) == 1:
        return jax.device_put(np.asarray(a)[:n], next(iter(a.sharding.device_set)))
    return a[:n]


def _unpad(particles: Particles, n: int) -> Particles:
    """The first ``n`` (real) particles of a bucketed run."""
    if np.shape(particles.log_weights)[0] == n:
        return particles
    values = jax.tree_util.tree_map(lambda a: _first_rows(a, n), particles.values)
    return Particles.tree_unflatten(None, (values, _first_rows(particles.log_weights, n)))


# --------------------------------------------------------------------------- results
@dataclass(frozen=True, kw_only=True)
class SMCResult:
    """What every SMC run returns (the base of the algorithms' results).

    Attributes
    ----------
    particles
        Final weighted particles (values: whatever the transitions return).
    log_evidence
        ``log Z``, the float64 sum of the increments.
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
    ancestors: np.ndarray | None = None
    summaries: Any = None
    wall_time: float = 0.0

    @property
    def num_steps(self) -> int:
        """Number of SMC steps run (``T``)."""
        return int(np.shape(self.log_evidence_increments)[0])

    # What the subclasses extend ------------------------------------------------------
    def _arviz_particles(self) -> Particles:
        """The weighted draws exported to the ``posterior`` group."""
        return self.particles

    def _step_stats(self) -> dict[str, np.ndarray]:
        return {
            "ess": np.asarray(self.ess),
            "resampled": np.asarray(self.resampled),
            "log_evidence_increment": np.asarray(self.log_evidence_increments),
        }

    def _attrs(self) -> dict:
        return {"wall_time": float(self.wall_time)}

    def _arviz_groups(self) -> dict:
        """Extra ArviZ groups (``log_likelihood``, ``observed_data``, ...)."""
        return {}

    def to_arviz(
        self,
        key: Array | None = None,
        *,
        scheme: str = "systematic",
        attrs: dict | None = None,
    ):
        """ArviZ ``InferenceData``: the final particles as one chain of equally weighted
        draws (resampled with ``key`` when weighted), per-step history in ``smc_steps``,
        ``log_evidence`` in the attributes. Combine independent runs with
        :func:`probinfer.inference_data.combine_chains`."""
        from probinfer.inference_data import combine_chains

        return combine_chains([self], key=key, scheme=scheme, attrs=attrs)


# --------------------------------------------------------------------------- run_smc
def _check_history(incs: np.ndarray, num_nan) -> None:
    _report_nan(int(np.sum(np.asarray(num_nan))), "during the run")
    bad = np.isnan(incs) | (incs == -np.inf)
    if np.any(bad):
        _raise_dead(int(np.argmax(bad)))


def _report_nan(num_nan: int, where: str) -> None:
    if num_nan:
        warnings.warn(
            f"{num_nan} particle(s) had a NaN log potential {where}; they were given weight 0",
            RuntimeWarning,
            stacklevel=4,
        )


def _raise_dead(t: int):
    raise ValueError(
        f"every particle has weight 0 at step {t} (log potentials all NaN or -inf): "
        "the model cannot explain the data or the log likelihood is NaN everywhere"
    )


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
    reference: Any = None,
    progress: bool | None = False,
    desc: str = "SMC",
    bucket: bool = False,
    shard: Any = False,
    memory_budget: int | None = None,
) -> SMCResult:
    """Run SMC on a Feynman-Kac model and return weights, log evidence and history.

    Parameters
    ----------
    key
        ``jax.random`` key; same key, same result (on every path).
    fk
        The model (:class:`FeynmanKac`).
    num_particles
        ``N >= 2``.
    ess_threshold
        Resample before a move when ``ESS < ess_threshold * N``; ``1.0`` resamples at every
        step, ``0.0`` never.
    scheme
        Resampling scheme (see :func:`probinfer.resample`); conditional SMC uses
        multinomial draws for the free particles.
    jit
        ``True``: jitted steps (pure-JAX callables); the whole run is one compiled
        ``scan``/``while_loop`` unless a ``callback`` or a progress bar asks for a Python
        loop over the compiled step. ``False``: the eager loop (black-box callables;
        particle values may be any store with ``take``; numpy float64 weights).
    summary
        ``summary(particles, data) -> pytree`` recorded after each reweighting.
    keep_ancestors
        Store the ``(T, N)`` ancestor indices (memory ``4 T N`` bytes).
    callback
        ``callback(t, particles, info)`` after every step (progress, logging,
        checkpointing).
    reference
        Conditional SMC: the trajectory kept in slot 0 (array particles: a pytree with a
        leading time axis; other stores: whatever ``fk.pin`` reads).
    progress
        Show a tqdm bar over the steps (``None``: after 2 s).
    desc
        The bar's label.
    bucket
        Jitted paths: pad the particle arrays to one of four sizes per octave
        (:func:`probinfer.engine.bucket_size`) with zero-weight slots that are never
        resampled, so that runs with many different ``num_particles`` reuse a bounded set of
        compiled programs (memory stays flat in long-lived processes). The result holds the
        ``num_particles`` real particles only. Costs at most 25% extra work.
    shard
        Jitted paths: ``True`` places the particle axis over all devices
        (``jax.devices()``: every local GPU, or every host's devices after
        ``jax.distributed.initialize()``), or pass a ``jax.sharding.Mesh`` with a
        ``"particles"`` axis. Moves and potentials run on each device's particles;
        resampling gathers across devices (XLA inserts the collectives), so the algorithm
        and, for the same key, the random numbers are those of the one-device run.
        ``num_particles`` must divide evenly over the devices unless ``bucket=True``.
    memory_budget
        Jitted paths: bytes the potential evaluation may use at once; ``logG`` is then
        evaluated in chunks of particles with ``lax.map``
        (:func:`probinfer.engine.map_in_chunks`), the chunk sized from the particles'
        bytes. ``None``: all particles at once.

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
    if not jit and (bucket or (shard is not False and shard is not None)):
        raise ValueError("bucket and shard apply to the jitted paths only (jit=True)")
    start = time.perf_counter()
    layout_opts = dict(bucket=bucket, shard=shard, memory_budget=memory_budget)
    if jit and callback is None and not progress and progress is not None:
        out = smc_scan(
            key,
            fk,
            num_particles,
            ess_threshold,
            scheme,
            summary=summary,
            keep_ancestors=keep_ancestors,
            reference=reference,
            **layout_opts,
        )
        jax.block_until_ready(out)
        k = int(out.num_steps)
        incs = np.asarray(out.log_evidence_increments, dtype=np.float64)[:k]
        _check_history(incs, np.asarray(out.num_nan)[:k])
        # histories on the host (a device slice would compile once per number of steps)
        cut = (lambda a: np.asarray(a)[:k]) if k < fk.num_steps else np.asarray
        n = num_particles
        return SMCResult(
            particles=_unpad(out.particles, n),
            log_evidence=float(np.sum(incs)),
            log_evidence_increments=incs,
            ess=cut(np.asarray(out.ess)),
            resampled=cut(np.asarray(out.resampled)),
            ancestors=None if out.ancestors is None else cut(np.asarray(out.ancestors)[:, :n]),
            summaries=None if summary is None else jax.tree_util.tree_map(cut, out.summaries),
            wall_time=time.perf_counter() - start,
        )
    layout = _layout(fk, num_particles, **layout_opts) if jit else None
    return _run_loop(
        key,
        fk,
        num_particles,
        ess_threshold,
        scheme,
        summary,
        keep_ancestors,
        callback,
        reference,
        layout,
        progress,
        desc,
        start,
    )


def _run_keys(key, num_steps: int):
    """``k0`` for ``init`` and one key per later step."""
    k0, k_rest = jax.random.split(key)
    return k0, jax.random.split(k_rest, max(num_steps - 1, 1))


class _HostDraws(NamedTuple):
    """A step's resampling randomness, drawn ahead of time (the eager loop's ``k_res``)."""

    draws: np.ndarray


#: the most steps whose keys :func:`_eager_step_keys` returns as separate outputs: its
#: compile time grows with the number of outputs (2 s at 64 steps, 80 s at 3000)
_MAX_KEY_OUTPUTS = 64


@partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _eager_step_keys(key, num_steps: int, scheme: str | None = None, num: int = 0, split=True):
    """The eager loop's keys in one compiled call: ``k0``, each step's ``k_move`` and either
    each step's ``k_res`` or, with a ``scheme``, every step's resampling draws from its
    ``k_res`` (:func:`~probinfer.resampling.resample_draws` at ``num`` slots). Each step's
    ``(k_res, k_move)`` is its key of :func:`_run_keys` split in two. With ``split`` every
    key is an output of its own, so the host never slices a key array (one more device
    call per step); without, the keys come stacked (long runs, see ``_MAX_KEY_OUTPUTS``)."""
    k0, keys = _run_keys(key, num_steps)
    pairs = jax.vmap(jax.random.split)(keys)

    def each(a):
        return tuple(a[i] for i in range(a.shape[0])) if split else a

    if scheme is None:
        return k0, each(pairs[:, 1]), each(pairs[:, 0])
    return k0, each(pairs[:, 1]), jax.vmap(lambda k: resample_draws(k, scheme, num))(pairs[:, 0])


def _eager_keys(key, num_steps: int, num_particles: int, scheme: str, conditional: bool):
    """``(k0, step_keys)`` for the eager loop, with one device call in all (for runs of up
    to ``_MAX_KEY_OUTPUTS`` steps; longer runs slice a stacked key array at each step).

    ``step_keys(t)`` is the ``(k_res, k_move)`` pair of step ``t``; ``k_res`` carries the
    step's resampling draws (:class:`_HostDraws`) when they are small enough to draw up
    front (systematic resampling always; other schemes up to 2^20 numbers per run), so
    resampling runs on the host (:func:`~probinfer.resampling.resample_host`) with the
    indices of the jitted path.
    """
    res_scheme, m = ("multinomial", num_particles - 1) if conditional else (scheme, num_particles)
    num_pad = bucket_size(m, 16) if m >= 1 else 0
    small = res_scheme == "systematic" or (num_steps - 1) * (num_pad + 1) <= 2**20
    pre = res_scheme if m >= 1 and small else None
    split = num_steps <= _MAX_KEY_OUTPUTS
    k0, moves, res = _eager_step_keys(key, num_steps, pre, num_pad, split)
    host: list = []  # filled at step 1: the device computes while M0 runs (async dispatch)

    def step_keys(t):
        if not host:  # no device call per step
            host.append(res if pre is None else np.asarray(res))
        k_res = host[0][t - 1] if pre is None else _HostDraws(host[0][t - 1])
        return k_res, moves[t - 1]

    return k0, step_keys


def _run_loop(
    key,
    fk,
    n,
    ess_threshold,
    scheme,
    summary,
    keep_ancestors,
    callback,
    reference,
    layout,
    progress,
    desc,
    start,
):
    """The Python loop over the jitted step (``layout`` given) or the eager one."""
    from tqdm.auto import tqdm

    jit = layout is not None
    if jit:
        k0, keys = _run_keys(key, int(fk.num_steps))
    else:
        k0, step_keys = _eager_keys(key, int(fk.num_steps), n, scheme, reference is not None)
    static = dict(
        fns=fk.fns,
        num_steps=int(fk.num_steps),
        summary=summary,
        keep_ancestors=keep_ancestors,
        layout=layout,
    )
    if jit:
        nv = jnp.asarray(n, jnp.int32) if layout.bucketed else None
        state, (info, sv), done = _init_jit(k0, fk.data, reference, nv, **static)
    else:
        state, info = init(k0, fk, n, reference=reference, eager=True)
        sv = None if summary is None else summary(state.particles, state.data)
        done = fk.finished is not None and bool(fk.finished(state.values, state.data))
    rows, sums = [], []
    bar = tqdm(
        total=fk.num_steps, desc=desc, delay=0 if progress else 2.0, disable=progress is False
    )
    try:
        for t in range(fk.num_steps):
            if t > 0:
                if jit:
                    state, (info, sv), done = _step_jit(
                        keys[t - 1],
                        t,
                        state,
                        reference,
                        ess_threshold=ess_threshold,
                        scheme=scheme,
                        **static,
                    )
                else:
                    state, info = step(
                        step_keys(t),
                        t,
                        fk,
                        state,
                        ess_threshold,
                        scheme,
                        reference=reference,
                        eager=True,
                    )
                    sv = None if summary is None else summary(state.particles, state.data)
                    done = fk.finished is not None and bool(fk.finished(state.values, state.data))
            inc = float(info.log_evidence_increment)
            _report_nan(int(info.num_nan), f"at step {t}")
            if not inc > -np.inf:
                _raise_dead(t)
            rows.append(
                (
                    inc,
                    float(info.ess),
                    bool(info.resampled),
                    np.asarray(info.ancestors)[:n] if keep_ancestors else None,
                )
            )
            if summary is not None:
                sums.append(sv)
            if callback is not None:
                callback(t, state.particles, info)
            bar.update(1)
            if bool(done):
                break
    finally:
        bar.close()
    incs = np.asarray([r[0] for r in rows], dtype=np.float64)
    stacked = None
    if summary is not None:
        stacked = jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *sums)
    return SMCResult(
        particles=_unpad(state.particles, n),
        log_evidence=float(np.sum(incs)),
        log_evidence_increments=incs,
        ess=np.asarray([r[1] for r in rows]),
        resampled=np.asarray([r[2] for r in rows]),
        ancestors=np.stack([r[3] for r in rows]) if keep_ancestors else None,
        summaries=stacked,
        wall_time=time.perf_counter() - start,
    )
