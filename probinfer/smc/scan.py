"""The fully jitted runner: ``lax.scan`` over the steps, or ``lax.while_loop`` when the model
has a ``finished`` rule; vmappable over keys (:func:`smc_scan`)."""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from probinfer.particles import Particles
from probinfer.smc.base import FeynmanKac, SMCState, check_num_particles
from probinfer.smc.kernel import KernelSpec, RunOptions, kernel_spec, run_keys

Array = jax.Array

__all__ = ["SMCOutput", "smc_scan"]


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
        """The running ``log Z`` (compensated sum) of the final state."""
        return self.state.log_evidence - self.state.log_evidence_c


def _history(rec0, num_steps: int, size: int, keep_ancestors: bool):
    """``rec0`` at row 0 of ``num_steps`` rows padded with NaN / 0 / identity ancestors."""

    def pad(a):
        a = jnp.asarray(a)
        fill = jnp.nan if jnp.issubdtype(a.dtype, jnp.floating) else 0
        return jnp.full((num_steps,) + a.shape, fill, a.dtype).at[0].set(a)

    hist = jax.tree_util.tree_map(pad, rec0)
    if keep_ancestors:
        ident = jnp.broadcast_to(jnp.arange(size, dtype=jnp.int32), (num_steps, size))
        hist = (hist[0]._replace(ancestors=ident), hist[1])
    return hist


@partial(jax.jit, static_argnames=("spec",))
def _scan_jit(key, data, num_valid, *, spec: KernelSpec) -> SMCOutput:
    num_steps = spec.num_steps
    k0, keys = run_keys(key, num_steps)
    state, rec0, _ = spec.init(k0, data, num_valid)

    def advance(s, t):
        s, rec, _ = spec.step(keys[t - 1], t, s)
        return s, rec

    if spec.fns[4] is None:  # no finished rule: every step
        state, recs = jax.lax.scan(advance, state, jnp.arange(1, num_steps))
        count = jnp.asarray(num_steps)
        hist = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), rec0, recs)
    else:
        finished = spec.fns[4]

        def cond(c):
            s, t, _ = c
            return (t < num_steps) & jnp.logical_not(finished(s.values, s.data))

        def body(c):
            s, t, h = c
            s, rec = advance(s, t)
            return s, t + 1, jax.tree_util.tree_map(lambda a, v: a.at[t].set(v), h, rec)

        hist = _history(rec0, num_steps, spec.layout.size, spec.keep_ancestors)
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


def smc_scan(
    key: Array,
    fk: FeynmanKac,
    num_particles: int,
    ess_threshold: float = 0.5,
    scheme: str = "systematic",
    **options,
) -> SMCOutput:
    """Run SMC jitted (``lax.scan``, or ``lax.while_loop`` with a ``finished`` rule) and
    return raw JAX arrays (vmappable over ``key``).

    ``options`` are those of :class:`~probinfer.smc.kernel.RunOptions` that apply to one
    compiled program: ``resample_fn``, ``summary`` (``summary(particles, data) -> pytree``,
    evaluated after every reweighting and stacked along a leading time axis),
    ``keep_ancestors``, ``bucket``, ``shard`` and ``memory_budget``. Compiled code is
    cached on the model's callables, ``summary`` and the static settings, so reuse the same
    callables (and vary ``fk.data``) to avoid recompilation. With ``bucket=True`` the
    returned arrays have the padded length and ``state.num_particles`` real particles lead.
    """
    for name in ("jit", "callback", "progress", "desc"):
        if name in options:
            raise TypeError(f"smc_scan() got an unexpected keyword argument {name!r}")
    n = check_num_particles(num_particles, minimum=1)
    opts = RunOptions(ess_threshold=ess_threshold, scheme=scheme, **options)
    spec = kernel_spec(fk, n, opts)
    num_valid = jnp.asarray(n, jnp.int32) if spec.layout.bucketed else None
    return _scan_jit(key, fk.data, num_valid, spec=spec)
