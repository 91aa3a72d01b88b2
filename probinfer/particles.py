"""The weighted particle set shared by every particle algorithm."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from probinfer import weights as W
from probinfer.resampling import Scheme, resample

Array = jax.Array

__all__ = ["ParticleStore", "Particles", "take"]


@runtime_checkable
class ParticleStore(Protocol):
    """A non-array particle store (token sequences with KV caches, simulator states).

    It gathers particles along its leading axis with ``take`` (``indices`` is a 1-D
    integer numpy array; repeated indices copy a particle) and knows its size.
    """

    def take(self, indices: np.ndarray) -> ParticleStore: ...

    def __len__(self) -> int: ...


def _on_host(x) -> bool:
    """A concrete array whose data is in host memory (numpy, or a JAX array on the CPU).

    Eager operations on these run in numpy: a ``jnp`` operation on a new particle count
    compiles a new XLA program and keeps it, so memory would grow with every new ``N``.
    """
    if isinstance(x, np.ndarray):
        return True
    if isinstance(x, jax.core.Tracer) or not isinstance(x, jax.Array):
        return False
    return all(d.platform == "cpu" for d in x.devices())


def _take_leaf(leaf, indices):
    if isinstance(leaf, np.ndarray):
        return np.take(leaf, np.asarray(indices), axis=0)
    if isinstance(leaf, jax.Array):
        if _on_host(leaf) and not isinstance(indices, jax.core.Tracer):
            out = np.take(np.asarray(leaf), np.asarray(indices), axis=0)
            return jax.device_put(out, leaf.sharding)
        return jnp.take(leaf, jnp.asarray(indices), axis=0)
    if type(leaf).__module__.startswith("torch"):  # a torch.Tensor, without importing torch
        import torch

        idx = torch.from_numpy(np.array(indices, dtype=np.int64)).to(leaf.device)
        return leaf.index_select(0, idx)
    return jnp.take(jnp.asarray(leaf), jnp.asarray(indices), axis=0)


def _is_array(x) -> bool:
    return isinstance(x, np.ndarray | jax.Array) or type(x).__module__.startswith("torch")


def take(values: Any, indices: Array) -> Any:
    """Select particles ``indices`` along the leading axis of a particle store.

    ``values`` is a pytree of arrays (numpy, JAX or torch leaves, gathered along axis 0
    with their own library, so shapes and array types are kept) or a
    :class:`ParticleStore` (an object with ``take(indices)`` and ``__len__``, given numpy
    indices).
    """
    # ParticleStore's structural check without the runtime Protocol ``isinstance`` (slow,
    # and the eager SMC loop calls this every step)
    if not _is_array(values) and callable(getattr(values, "take", None)):
        if hasattr(values, "__len__"):
            return values.take(np.asarray(indices))
    return jax.tree_util.tree_map(lambda leaf: _take_leaf(leaf, indices), values)


def _num_in_store(values: Any) -> int | None:
    if hasattr(values, "__len__") and not isinstance(values, dict | list | tuple | jax.Array):
        return len(values)
    leaves = jax.tree_util.tree_leaves(values)
    if not leaves or not all(hasattr(leaf, "shape") for leaf in leaves):
        return None  # an opaque store: its size cannot be checked
    sizes = {leaf.shape[0] if leaf.ndim else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            "values must be a pytree whose leaves share a leading particle axis, "
            f"got leading sizes {sorted(map(str, sizes))}"
        )
    return sizes.pop()


def _host_expectation(w: np.ndarray, leaf, name: str) -> Array:
    """``sum_i w_i x_i`` over the positive weights ``w`` (float64), on the host."""
    x = W.real_array(leaf, name)
    keep = w > 0
    xs = x[keep].astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        value = np.tensordot(w[keep], xs, axes=(0, 0))
        value = np.clip(value, xs.min(axis=0), xs.max(axis=0))  # convex combination
    if np.any(np.isnan(value)):
        raise ValueError(
            f"{name} has NaN, or both +inf and -inf, among particles of positive weight: "
            "the expectation is undefined"
        )
    return W.to_output(value, W.out_dtype(x.dtype), name, "the expectation")


def _expectation(w: Array, leaf: Array) -> Array:
    """Traceable ``sum_i w_i x_i`` over positive weights (``0 * inf`` never enters)."""
    dtype = jnp.result_type(leaf.dtype, w.dtype)
    keep = (w > 0).reshape((-1,) + (1,) * (leaf.ndim - 1))
    return jnp.tensordot(w.astype(dtype), jnp.where(keep, leaf.astype(dtype), 0), axes=(0, 0))


@jax.tree_util.register_pytree_node_class
@dataclass(frozen=True)
class Particles:
    """An immutable weighted particle set.

    Parameters
    ----------
    values
        The particles: any pytree of arrays with a leading particle axis of size N,
        or a non-array store implementing ``take(indices)`` and ``__len__``.
    log_weights
        Unnormalised log weights, shape ``(N,)``; ``-inf`` marks a particle with
        zero weight. Defaults to zeros (equal weights). Host data is converted without
        compiling anything; a maximum beyond the float32 range (``1e39`` in float64)
        raises ``ValueError`` (shift the log weights by their maximum first).

    Notes
    -----
    ``Particles`` is a JAX pytree (``values`` and ``log_weights`` are its children),
    so it passes through ``jit``, ``vmap`` and ``lax.scan`` when ``values`` is an
    array pytree. Shape checks run only on concrete inputs.

    Called eagerly, the weight summaries (:attr:`ess`, :attr:`log_mean_weight`,
    :attr:`normalized_weights`), :meth:`expectation`, :meth:`take` and :meth:`resample`
    run on the host (numpy) for numpy leaves and JAX leaves on the CPU, and resampling
    itself at bucketed sizes, so a program handling many different particle counts
    compiles a bounded number of XLA programs. JAX leaves on an accelerator are gathered
    and reduced there (one small program per new ``N``).
    """

    values: Any
    log_weights: Array

    def __init__(self, values: Any, log_weights: Array | None = None):
        if log_weights is None:
            n = _num_in_store(values)
            if n is None:
                raise ValueError("log_weights is required when values holds no arrays")
            log_weights = np.zeros(n, np.float32)  # numpy: no program compiled per n
        lw = W.as_log_weights(log_weights)
        if not isinstance(lw, jax.core.Tracer) and not isinstance(values, jax.core.Tracer):
            if lw.ndim != 1:
                raise ValueError(f"log_weights must be 1-D, got shape {lw.shape}")
            n = _num_in_store(values)
            if n is not None and n != lw.shape[0]:
                raise ValueError(
                    f"values has {n} particles along its leading axis but log_weights "
                    f"has {lw.shape[0]}"
                )
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "log_weights", lw)

    # pytree protocol -------------------------------------------------------
    def tree_flatten(self):
        return (self.values, self.log_weights), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        object.__setattr__(obj, "values", children[0])
        object.__setattr__(obj, "log_weights", children[1])
        return obj

    # weights ---------------------------------------------------------------
    @property
    def num_particles(self) -> int:
        """N, the number of particles."""
        return self.log_weights.shape[0]

    def __len__(self) -> int:
        return self.num_particles

    @property
    def normalized_weights(self) -> Array:
        """Weights normalised to sum to one."""
        return W.normalize(self.log_weights)

    @property
    def ess(self) -> Array:
        """Effective sample size ``1 / sum w_i^2``, in ``[1, N]`` (``0`` when every weight is
        zero; see :func:`probinfer.weights.ess`)."""
        return W.ess(self.log_weights)

    @property
    def log_mean_weight(self) -> Array:
        """``log mean_i exp(log w_i)``: the evidence increment of the current weights."""
        return W.log_mean_weight(self.log_weights)

    # operations ------------------------------------------------------------
    def reweight(self, log_potential: Array) -> Particles:
        """Multiply the weights by ``exp(log_potential)`` (one value per particle)."""
        return Particles(self.values, self.log_weights + jnp.asarray(log_potential))

    def take(self, indices: Array) -> Particles:
        """The particles at ``indices`` (integers in ``[-N, N)``), keeping their log weights.

        Raises
        ------
        ValueError, TypeError
            If concrete ``indices`` are out of range or not integers.
        """
        if isinstance(indices, jax.core.Tracer):
            return Particles(take(self.values, indices), jnp.take(self.log_weights, indices))
        idx = np.asarray(indices)
        if idx.size == 0:
            idx = idx.astype(np.intp)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"indices must be integers, got dtype {idx.dtype}")
        n = self.num_particles
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise ValueError(f"indices must lie in [-{n}, {n}) for {n} particles")
        return Particles(take(self.values, idx), _take_leaf(self.log_weights, idx))

    def resample(
        self, key: Array, scheme: Scheme = "systematic", num: int | None = None
    ) -> Particles:
        """Resample to ``num`` equally weighted particles (default N) with ``scheme``.

        See :func:`probinfer.resample` for the schemes. The returned set has zero
        log weights; the evidence increment was ``self.log_mean_weight``.
        """
        idx = resample(key, self.log_weights, num=num, scheme=scheme)
        if isinstance(idx, jax.core.Tracer):
            return Particles(take(self.values, idx), jnp.zeros(idx.shape[0]))
        idx = np.asarray(idx)  # eager: numpy gathers, no program compiled per N
        return Particles(take(self.values, idx), np.zeros(idx.shape[0], np.float32))

    def expectation(self, f: Callable[[Any], Array] | None = None) -> Array:
        """Self-normalised estimate of ``E[f(x)]``, ``sum_i w_i f(x_i)``.

        Only particles of positive weight contribute: a zero-weight particle may hold any
        value (``inf``, NaN) without changing the result. The estimate lies between the
        smallest and largest contributing value (rounding is clipped to that range).

        Parameters
        ----------
        f
            Maps the batched ``values`` (leading particle axis) to an array, or pytree
            of arrays, with the same leading axis. Default: the identity.

        Raises
        ------
        ValueError
            If a leaf has no leading axis of N particles, or (concrete input) if the
            weights are invalid (see :func:`probinfer.weights.normalize`), if the estimate
            is undefined (NaN, or both ``+inf`` and ``-inf``, among positive-weight values)
            or beyond the range of the output dtype.
        TypeError
            If a leaf is not real-valued (concrete input).
        """
        fx = self.values if f is None else f(self.values)
        name = "values" if f is None else "f(values)"
        concrete = not isinstance(self.log_weights, jax.core.Tracer)
        n = self.num_particles
        w = W.host_normalize(self.log_weights) if concrete else self.normalized_weights

        def weighted(leaf):
            if np.ndim(leaf) == 0 or np.shape(leaf)[0] != n:
                raise ValueError(
                    f"f must return arrays with a leading axis of {n} particles, "
                    f"got shape {np.shape(leaf)}"
                )
            if concrete and (_on_host(leaf) or not isinstance(leaf, jax.Array)):
                return _host_expectation(w, leaf, name)
            return _expectation(jnp.asarray(w), jnp.asarray(leaf))

        return jax.tree_util.tree_map(weighted, fx)

    def to_distribution(self):
        """This particle set as a :class:`~probinfer.distributions.WeightedEmpirical`."""
        from probinfer.distributions import WeightedEmpirical

        return WeightedEmpirical(self.values, self.log_weights)

    def to_arviz(
        self,
        key: Array | None = None,
        *,
        scheme: Scheme = "systematic",
        num_draws: int | None = None,
        attrs: dict | None = None,
    ):
        """Export as :class:`arviz.InferenceData` with one chain of equally weighted draws.

        Parameters
        ----------
        key
            Key for the final resample. Required unless the weights are already equal.
        scheme
            Resampling scheme for the final resample.
        num_draws
            Number of draws (default N).
        attrs
            Extra attributes stored on the InferenceData.
        """
        from probinfer.inference_data import to_inference_data

        return to_inference_data([self], key=key, scheme=scheme, num_draws=num_draws, attrs=attrs)

    def __repr__(self) -> str:
        try:
            ess = f"{float(self.ess):.1f}"
        except Exception:  # traced
            ess = "?"
        return f"Particles(num_particles={self.num_particles}, ess={ess})"
