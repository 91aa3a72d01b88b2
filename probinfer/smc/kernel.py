"""The run options and the factory that closes over a model once (BlackJAX's
``as_top_level_api``): :func:`build_kernel` returns an :class:`SMCKernel` whose ``init`` and
``step`` are either compiled (the model's data and the state are traced arguments; the
callables and settings are one static :class:`KernelSpec`, the compilation key) or eager
(black-box callables). The runners (:mod:`probinfer.smc.scan`, :mod:`probinfer.smc.loop`)
take the kernel or its spec, never a list of settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from probinfer.resampling import resampler
from probinfer.smc.base import FeynmanKac, SMCState, check_threshold, init, step
from probinfer.smc.layout import Layout, chunked, constrain, make_layout

__all__ = ["KernelSpec", "RunOptions", "SMCKernel", "build_kernel", "run_keys"]


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """The settings of an SMC run (:func:`probinfer.smc.run_smc`'s keyword arguments).

    Attributes
    ----------
    ess_threshold
        Resample before a move when ``ESS < ess_threshold * N``; ``1.0`` resamples at every
        step, ``0.0`` never.
    scheme
        Resampling scheme (see :func:`probinfer.resample`).
    resample_fn
        ``resample_fn(key, log_weights, num, num_valid=None) -> (num,)`` ancestors; default
        :func:`probinfer.resampling.resampler` of ``scheme``. Conditional SMC passes
        :func:`probinfer.resampling.conditional` of a resampler.
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
    progress
        Progress over the steps (:mod:`probinfer.progress`): ``None`` shows a bar after
        2 s when stderr is a terminal (else one summary line at the end), ``True`` at once,
        ``False`` nothing and keeps the whole run in one compiled program.
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
    """

    ess_threshold: float = 0.5
    scheme: str = "systematic"
    resample_fn: Callable | None = None
    jit: bool = True
    summary: Callable | None = None
    keep_ancestors: bool = True
    callback: Callable | None = None
    progress: bool | None = False
    desc: str = "SMC"
    bucket: bool = False
    shard: Any = False
    memory_budget: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "ess_threshold", check_threshold(self.ess_threshold, self.scheme))
        if self.resample_fn is None:
            object.__setattr__(self, "resample_fn", resampler(self.scheme))
        elif not callable(self.resample_fn):
            raise TypeError(f"resample_fn must be callable, got {type(self.resample_fn)}")
        for name in ("summary", "callback"):
            f = getattr(self, name)
            if f is not None and not callable(f):
                raise TypeError(f"{name} must be callable or None, got {type(f)}")
        sharded = self.shard is not False and self.shard is not None
        if not self.jit and (self.bucket or sharded):
            raise ValueError("bucket and shard apply to the jitted paths only (jit=True)")

    @property
    def one_program(self) -> bool:
        """Whether the run is one compiled ``scan``/``while_loop`` (no Python loop)."""
        return self.jit and self.callback is None and self.progress is False


class KernelSpec(NamedTuple):
    """Everything static about a jitted run: the compilation key of its programs."""

    fns: tuple
    num_steps: int
    layout: Layout
    resample_fn: Callable
    ess_threshold: float
    summary: Callable | None
    keep_ancestors: bool

    def model(self, data) -> FeynmanKac:
        """The model inside a trace, its potentials chunked when the layout asks."""
        M0, M, logG, adapt, finished = self.fns
        if self.layout.chunk is not None:
            logG = chunked(logG, self.layout.chunk)
        return FeynmanKac(M0, M, logG, self.num_steps, data, adapt=adapt, finished=finished)

    def record(self, state: SMCState, info):
        """``(info, summary)`` of a step (ancestors dropped unless kept) and ``done``."""
        fk = self.model(state.data)
        sv = None if self.summary is None else self.summary(state.particles, state.data)
        done = jnp.asarray(False) if fk.finished is None else fk.finished(state.values, state.data)
        anc = info.ancestors if self.keep_ancestors else None
        return (info._replace(ancestors=anc), sv), done

    def init(self, key, data, num_valid):
        state, info = init(key, self.model(data), self.layout.size, num_valid=num_valid)
        state = constrain(state, self.layout)
        return (state, *self.record(state, info))

    def step(self, key, t, state):
        fk = self.model(state.data)
        state, info = step(key, t, fk, state, self.resample_fn, self.ess_threshold)
        state = constrain(state, self.layout)
        return (state, *self.record(state, info))


_init_jit = jax.jit(KernelSpec.init, static_argnums=0)
_step_jit = jax.jit(KernelSpec.step, static_argnums=0)


class SMCKernel(NamedTuple):
    """A model's SMC kernel: ``init(key) -> (state, (info, summary), done)`` and
    ``step(key, t, state) -> (state, (info, summary), done)``."""

    init: Callable
    step: Callable


def run_keys(key, num_steps: int):
    """``k0`` for ``init`` and one key per later step (the same on every path)."""
    k0, k_rest = jax.random.split(key)
    return k0, jax.random.split(k_rest, max(num_steps - 1, 1))


def build_kernel(fk: FeynmanKac, num_particles: int, opts: RunOptions) -> SMCKernel:
    """The kernel of ``fk`` under ``opts``: compiled (``opts.jit``) or eager."""
    if not opts.jit:
        return SMCKernel(
            partial(_eager_init, fk, num_particles, opts),
            partial(_eager_step, fk, opts),
        )
    spec = kernel_spec(fk, num_particles, opts)
    nv = jnp.asarray(num_particles, jnp.int32) if spec.layout.bucketed else None
    return SMCKernel(
        lambda key: _init_jit(spec, key, fk.data, nv),
        lambda key, t, state: _step_jit(spec, key, t, state),
    )


def kernel_spec(fk: FeynmanKac, num_particles: int, opts: RunOptions) -> KernelSpec:
    """The static part of a jitted run of ``fk``."""
    layout = make_layout(fk, num_particles, opts.bucket, opts.shard, opts.memory_budget)
    return KernelSpec(
        fk.fns,
        int(fk.num_steps),
        layout,
        opts.resample_fn,
        float(opts.ess_threshold),
        opts.summary,
        bool(opts.keep_ancestors),
    )


def _eager_record(fk: FeynmanKac, opts: RunOptions, state: SMCState, info):
    sv = None if opts.summary is None else opts.summary(state.particles, state.data)
    done = fk.finished is not None and bool(fk.finished(state.values, state.data))
    return (info, sv), done


def _eager_init(fk, n, opts, key):
    state, info = init(key, fk, n, eager=True)
    return (state, *_eager_record(fk, opts, state, info))


def _eager_step(fk, opts, key, t, state):
    state, info = step(key, t, fk, state, opts.resample_fn, opts.ess_threshold, eager=True)
    return (state, *_eager_record(fk, opts, state, info))
