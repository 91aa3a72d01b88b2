"""Batched evaluation of per-particle log-likelihoods within a memory budget.

:class:`LikelihoodEngine` evaluates ``f(theta_i)`` for ``N`` particles (a scalar, or ``M``
pointwise values each) on one device:

* **chunking** — particles are processed in chunks of ``chunk_size`` rows, derived from
  ``memory_budget`` and the bytes one particle's evaluation needs;
* **bucketing** — ``N`` is padded to a bucket size (a power of two, at least
  ``min_bucket``; multiples of the chunk above it) so that the compiled function is reused
  across calls with different ``N``;
* **backends** — ``"jax"`` (``jit`` + ``vmap``; under a JAX trace, ``lax.map`` over
  chunks) and ``"torch"`` (batched ``no_grad`` forward on CUDA when present; arrays cross
  with DLPack; under a JAX trace it runs through ``jax.pure_callback``).

Bucketing, the package's one rule
---------------------------------
A compiled function called eagerly on a new shape compiles, and keeps, a new program, so
every eager entry point that takes a batch of ``n`` rows pads it to :func:`bucket_size`
rows (a bounded set of sizes, logarithmic in ``n``) and cuts the result back on the host:

* the padding rows repeat row 0 (:func:`pad_rows`): valid inputs, so the padded
  evaluation is finite, and its rows are simply dropped (this engine, the batched
  distributions' methods, the particle filter's observations);
* where the rows are weighted particles (the SMC driver's bucketed runs, resampling) the
  padding slots also carry weight 0 (log weight ``-inf``): they never enter a weighted
  sum and are never resampled.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache, partial
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from probinfer.checks import check_num
from probinfer.engine.dlpack import to_jax, to_torch

Array = jax.Array

__all__ = [
    "LikelihoodEngine",
    "bucket_size",
    "chunk_size_for",
    "map_in_chunks",
    "pad_rows",
    "row_bytes",
    "to_device",
]


def bucket_size(n: int, min_bucket: int = 64, chunk: int | None = None, per_octave: int = 1) -> int:
    """The padded size for ``n`` rows.

    With ``per_octave=1``: the next power of two ``>= max(n, min_bucket)``. With
    ``per_octave=k`` (a power of two): the next of ``k`` sizes per octave,
    ``(k + j) 2^e`` for ``j = 0..k-1``, so padding costs at most ``1/k`` extra rows while the
    number of distinct sizes stays logarithmic in ``n``. When the result exceeds ``chunk`` it is
    the next multiple of ``chunk`` instead (rows are processed ``chunk`` at a time).
    """
    check_num(n, "n")
    if per_octave < 1 or per_octave & (per_octave - 1):
        raise ValueError(f"per_octave must be a power of two, got {per_octave}")
    n = max(int(n), int(min_bucket), 1)
    if n <= per_octave:
        b = n
    else:
        e = (n - 1).bit_length() - per_octave.bit_length()  # (k + j) 2^e >= n, j < k
        b = -(-n // (1 << e)) << e
    if chunk is not None and b > chunk:
        b = -(-n // chunk) * chunk
    return b


def to_device(x, dtype=None) -> jax.Array:
    """``x`` as a JAX array (``dtype``: cast first), compiling nothing for host inputs.

    JAX arrays and tracers pass through ``astype``; anything else is converted with numpy
    and placed with ``jax.device_put`` (float64 becomes float32 unless x64 is enabled).
    """
    if isinstance(x, jax.Array):
        return x if dtype is None or x.dtype == dtype else x.astype(dtype)
    return jax.device_put(np.asarray(x, dtype))


def pad_rows(a, size: int, axis: int = 0):
    """``a`` padded along ``axis`` to ``size`` by repeating its first entry (the bucketing
    rule of the module docstring); numpy arrays on the host, JAX arrays with ``jnp``."""
    extra = size - a.shape[axis]
    if extra <= 0:
        return a
    xp = np if isinstance(a, np.ndarray) else jnp
    first = xp.take(a, xp.zeros(1, dtype=np.int32), axis=axis)
    reps = [1] * a.ndim
    reps[axis] = extra
    return xp.concatenate([a, xp.tile(first, reps)], axis=axis)


def chunk_size_for(bytes_per_particle: int, memory_budget: int) -> int:
    """The largest power of two of particles whose evaluation fits ``memory_budget`` bytes."""
    per = max(int(bytes_per_particle), 1)
    rows = max(int(memory_budget) // per, 1)
    return 1 << (rows.bit_length() - 1)


def row_bytes(tree) -> int:
    """Bytes of one row (one particle) of a pytree of arrays with a leading particle axis."""
    return int(
        sum(
            np.dtype(a.dtype).itemsize * int(np.prod(np.shape(a)[1:], dtype=np.int64))
            for a in jax.tree_util.tree_leaves(tree)
        )
    )


def map_in_chunks(fn: Callable, xs, chunk: int | None):
    """``fn(xs)`` for a function batched over the leading axis, evaluated ``chunk`` rows at a
    time with ``lax.map`` so that at most ``chunk`` rows' intermediates are live at once.

    Traceable (this is how memory budgets apply inside ``jit``). ``xs`` is a pytree whose
    leaves share the leading axis ``N``; the last chunk is padded by repeating row 0 and the
    padding is dropped from the output. ``chunk=None`` or ``N <= chunk`` calls ``fn`` once.
    """
    leaves = jax.tree_util.tree_leaves(xs)
    n = int(np.shape(leaves[0])[0])
    if chunk is None or n <= chunk:
        return fn(xs)
    k = -(-n // chunk)
    pad = k * chunk - n

    def split(a):
        a = jnp.asarray(a)
        if pad:
            a = jnp.concatenate([a, jnp.broadcast_to(a[:1], (pad,) + a.shape[1:])])
        return a.reshape((k, chunk) + a.shape[1:])

    out = jax.lax.map(fn, jax.tree_util.tree_map(split, xs))
    return jax.tree_util.tree_map(lambda a: a.reshape((k * chunk,) + a.shape[2:])[:n], out)


@lru_cache(maxsize=256)
def _shared_batched(fn: Callable, num_args: int, batched: bool) -> Callable:
    """``fn(*args, theta)`` batched over ``theta`` only (one object per ``fn``)."""
    return fn if batched else jax.vmap(fn, in_axes=(None,) * num_args + (0,))


@lru_cache(maxsize=256)
def _shared_jitted(fn: Callable, num_args: int, batched: bool) -> Callable:
    """The jitted :func:`_shared_batched` (one compiled cache per ``fn``)."""
    return jax.jit(_shared_batched(fn, num_args, batched))


def _is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


class LikelihoodEngine:
    """Evaluate a log-likelihood for a batch of particles.

    Parameters
    ----------
    fn
        JAX backend: ``fn(theta_i) -> scalar or (M,)`` for one particle (vmapped here), or
        with ``batched=True`` ``fn(theta) -> (n,) or (n, M)``. Torch backend: always batched,
        ``fn(tensor (n, ...)) -> tensor (n,) or (n, M)``.
    backend
        ``"jax"`` or ``"torch"``.
    batched
        Whether ``fn`` already takes a leading particle axis (JAX backend).
    memory_budget
        Bytes one chunk may use (default 512 MiB).
    bytes_per_particle
        Memory one particle's evaluation needs; estimated from the output size when
        omitted (``16 x`` the output bytes, at least 1 KiB).
    min_bucket
        Smallest padded batch.
    device
        JAX backend: a ``jax.Device`` (default: the default device). Torch backend: a torch
        device string (default ``"cuda"`` when available, else ``"cpu"``).
    dtype
        Torch backend: the dtype the inputs are cast to (default: unchanged).
    args
        JAX backend: arguments passed to ``fn`` before ``theta_i`` (a tuple of pytrees, not
        batched), e.g. a model's data: ``fn(*args, theta_i)``. They are arguments of the
        compiled function, not constants, and the compiled function is shared by every
        engine of the same ``fn``, so engines that differ only in the values of ``args``
        compile once.
    """

    def __init__(
        self,
        fn: Callable,
        *,
        backend: Literal["jax", "torch"] = "jax",
        batched: bool = False,
        memory_budget: int = 512 * 2**20,
        bytes_per_particle: int | None = None,
        min_bucket: int = 64,
        device=None,
        dtype=None,
        args: tuple = (),
    ):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if backend not in ("jax", "torch"):
            raise ValueError(f"backend must be 'jax' or 'torch', got {backend!r}")
        if memory_budget <= 0:
            raise ValueError(f"memory_budget must be positive, got {memory_budget}")
        if min_bucket < 1:
            raise ValueError(f"min_bucket must be >= 1, got {min_bucket}")
        self.fn = fn
        self.backend = backend
        self.batched = bool(batched) or backend == "torch"
        self.memory_budget = int(memory_budget)
        self.bytes_per_particle = bytes_per_particle
        self.min_bucket = int(min_bucket)
        self.device = device
        self.dtype = dtype
        if args:
            if self.backend != "jax":
                raise ValueError("args are supported by the JAX backend only")
            args = tuple(args)
            self._batched_fn = partial(_shared_batched(fn, len(args), self.batched), *args)
            self._jitted = partial(_shared_jitted(fn, len(args), self.batched), *args)
        else:
            self._batched_fn = fn if self.batched else jax.vmap(fn)
            self._jitted = jax.jit(self._batched_fn)
        self.num_compiled_shapes: set[tuple] = set()

    # ---- sizes -----------------------------------------------------------------------
    def _out_bytes(self, theta) -> int:
        if self.backend == "torch":
            return 8 * int(np.prod(theta.shape[1:], dtype=np.int64) or 1)
        one = jax.tree_util.tree_map(lambda a: a[:1], theta)
        out = jax.eval_shape(self._batched_fn, one)
        return int(out.size * out.dtype.itemsize)

    def chunk_size(self, theta) -> int:
        """Rows per chunk for inputs shaped like ``theta``."""
        per = self.bytes_per_particle
        if per is None:
            per = max(16 * self._out_bytes(theta), 1024)
        return chunk_size_for(per, self.memory_budget)

    # ---- evaluation --------------------------------------------------------------------
    def __call__(self, theta) -> Array:
        """Evaluate for ``theta`` with a leading axis of ``N`` particles."""
        leaves = jax.tree_util.tree_leaves(theta)
        if not leaves or jnp.ndim(leaves[0]) == 0:
            raise ValueError("theta must have a leading particle axis")
        n = jnp.shape(leaves[0])[0]
        if self.backend == "torch":
            return self._torch_call(theta, n)
        chunk = self.chunk_size(theta)
        if any(_is_traced(x) for x in leaves):
            return map_in_chunks(self._batched_fn, theta, chunk)
        return self._eager_jax(theta, n, chunk)

    def _pad(self, theta, n, size):
        return jax.tree_util.tree_map(lambda a: pad_rows(jnp.asarray(a), size), theta)

    def _eager_jax(self, theta, n, chunk):
        size = bucket_size(n, self.min_bucket, chunk)
        theta = self._pad(theta, n, size)
        if self.device is not None:
            theta = jax.device_put(theta, self.device)
        step = min(size, chunk)
        outs = []
        for start in range(0, size, step):
            part = jax.tree_util.tree_map(lambda a, s=start: a[s : s + step], theta)
            self.num_compiled_shapes.add(step)
            outs.append(self._jitted(part))
        out = outs[0] if len(outs) == 1 else jnp.concatenate(outs)
        return out[:n]

    # ---- torch ---------------------------------------------------------------------------
    def _torch_device(self):
        import torch

        if self.device is not None:
            return self.device
        return "cuda" if torch.cuda.is_available() else "cpu"

    def _torch_numpy(self, theta_np):
        out = self._torch_eval(to_torch(np.array(theta_np, copy=True)))
        return out.cpu().numpy()

    def _torch_eval(self, t):
        import torch

        dev = self._torch_device()
        n = t.shape[0]
        chunk = self.chunk_size(t)
        size = bucket_size(n, self.min_bucket, chunk)
        if size > n:
            t = torch.cat([t, t[:1].expand(size - n, *t.shape[1:])])
        t = t.to(device=dev, dtype=self.dtype or t.dtype)
        step = min(size, chunk)
        with torch.no_grad():
            outs = [self.fn(t[s : s + step]) for s in range(0, size, step)]
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        return out[:n]

    def _torch_call(self, theta, n):
        if not isinstance(theta, jax.Array | np.ndarray):
            raise TypeError("the torch backend takes a single array of particles")
        if _is_traced(theta):
            probe = self._torch_numpy(np.zeros((1,) + tuple(theta.shape[1:]), theta.dtype))
            shape = jax.ShapeDtypeStruct((n,) + probe.shape[1:], theta.dtype)
            return jax.pure_callback(
                lambda x: self._torch_numpy(x).astype(x.dtype),
                shape,
                theta,
                vmap_method="expand_dims",
            )
        out = self._torch_eval(to_torch(jnp.asarray(theta)))
        return to_jax(out.to(dtype=_torch_dtype_of(theta)))


def _torch_dtype_of(theta):
    import torch

    return {np.dtype("float32"): torch.float32, np.dtype("float64"): torch.float64}.get(
        np.dtype(theta.dtype), torch.float32
    )
