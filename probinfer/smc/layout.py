"""How a jitted SMC run lays its particles out: bucketing, sharding, chunking.

Each is a wrapper around the model's callables or the state, in the manner of BlackJAX's
``map_fn``, so the pure ``init``/``step`` (:mod:`probinfer.smc.base`) know nothing of them:

* **bucketing** pads the particle count to a bucketed size (the package's one rule,
  :mod:`probinfer.engine.core`: :func:`~probinfer.engine.bucket_size`, padding slots of
  weight 0 that are never resampled); the state's ``num_particles`` says how many lead;
* **sharding** keeps the particle axis of the state placed over devices
  (:func:`constrain`);
* **chunking** evaluates ``logG`` a chunk of particles at a time within a memory budget
  (:func:`chunked`, :func:`probinfer.engine.map_in_chunks`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from probinfer.engine.core import bucket_size, chunk_size_for, map_in_chunks, row_bytes
from probinfer.particles import Particles
from probinfer.smc.base import FeynmanKac, SMCState

__all__ = ["Layout", "chunked", "constrain", "make_layout", "unpad"]


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


def _mesh(shard):
    from jax.sharding import Mesh

    if shard is True:
        return Mesh(np.asarray(jax.devices()), ("particles",))
    if isinstance(shard, Mesh):
        if "particles" not in shard.axis_names:
            raise ValueError(f"shard mesh must have a 'particles' axis, got {shard.axis_names}")
        return shard
    raise TypeError(f"shard must be a bool or a jax.sharding.Mesh, got {type(shard)}")


def make_layout(fk: FeynmanKac, num_particles: int, bucket: bool, shard, memory_budget) -> Layout:
    """Validate the layout options and fix the static array length."""
    size = bucket_size(num_particles, 16, per_octave=4) if bucket else num_particles
    sharding = None
    if shard is not False and shard is not None:
        from jax.sharding import NamedSharding, PartitionSpec

        mesh = _mesh(shard)
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


@lru_cache(maxsize=64)
def chunked(logG, chunk: int):
    """``logG`` evaluated ``chunk`` particles at a time (:func:`probinfer.engine.map_in_chunks`)."""

    def logG_chunked(t, prev, values, data):
        if prev is None:
            return map_in_chunks(lambda v: logG(t, None, v, data), values, chunk)
        return map_in_chunks(lambda pv: logG(t, pv[0], pv[1], data), (prev, values), chunk)

    return logG_chunked


def constrain(state: SMCState, layout: Layout) -> SMCState:
    """Keep the particle axis of the state sharded over the layout's devices."""
    if layout.sharding is None:
        return state

    def put(a):
        if jnp.ndim(a) >= 1 and jnp.shape(a)[0] == layout.size:
            return jax.lax.with_sharding_constraint(a, layout.sharding)
        return a

    values, lw = jax.tree_util.tree_map(put, (state.values, state.log_weights))
    return state._replace(values=values, log_weights=lw)


def _first_rows(a, n: int):
    """``a[:n]`` without compiling a slice per ``n`` for single-device JAX arrays (cut on
    the host and put back on the array's device; a device slice has a static size, so every
    new particle count would compile, and keep, one more program). Arrays sharded over
    several devices are sliced on the devices, which keeps their sharding."""
    if isinstance(a, jax.Array) and len(a.sharding.device_set) == 1:
        return jax.device_put(np.asarray(a)[:n], next(iter(a.sharding.device_set)))
    return a[:n]


def unpad(particles: Particles, n: int) -> Particles:
    """The first ``n`` (real) particles of a bucketed run."""
    if np.shape(particles.log_weights)[0] == n:
        return particles
    values = jax.tree_util.tree_map(lambda a: _first_rows(a, n), particles.values)
    return Particles.tree_unflatten(None, (values, _first_rows(particles.log_weights, n)))
