"""Bucketed shapes for the compiled methods of the batched distributions.

A distribution method called eagerly on a new batch or sample shape compiles a new XLA
program, and every compiled program stays in memory: a long-lived process that evaluates
many sizes grows without bound. The methods therefore lay their inputs out on the host as
``(ns, nb)`` rows (sample points by batch members), pad both axes to powers of two
(:func:`probinfer.engine.bucket_size`) by repeating the first row (valid parameters, so the
padding is finite and is simply dropped: the package's one bucketing rule,
:mod:`probinfer.engine.core`), run the compiled method at the padded shape and
cut the result back on the host. Inside a trace the shapes are the caller's.

Host arrays cross to the device with ``jax.device_put``
(:func:`probinfer.engine.core.to_device`): ``jnp.asarray`` of a numpy array compiles a staging
program per new shape.
"""

from __future__ import annotations

import jax
import numpy as np

from probinfer.engine.core import bucket_size, pad_rows, to_device

__all__ = ["Rows", "is_concrete", "pad_rows", "param_rows", "to_device", "value_rows"]


def is_concrete(*xs) -> bool:
    """Whether none of ``xs`` is a JAX tracer (so shapes may be padded on the host)."""
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


class Rows:
    """The ``(ns, nb)`` layout of a value ``sample_shape + batch_shape + event_shape``.

    Attributes
    ----------
    shape
        ``sample_shape + batch_shape`` of the result (the broadcast of the value's leading
        shape with the distribution's batch shape).
    batch
        The batch part of ``shape``.
    ns, nb
        Number of sample points and of batch members; ``padded`` their bucketed sizes.
    """

    def __init__(self, value_shape: tuple, batch_shape: tuple, event_ndim: int = 0):
        lead = tuple(value_shape[: len(value_shape) - event_ndim])
        self.shape = tuple(np.broadcast_shapes(lead, tuple(batch_shape)))
        nsd = len(self.shape) - len(batch_shape)
        self.batch = self.shape[nsd:]
        self.ns = int(np.prod(self.shape[:nsd], dtype=np.int64))
        self.nb = int(np.prod(self.batch, dtype=np.int64))
        self.padded = (bucket_size(self.ns, 1), bucket_size(self.nb, 1))

    @property
    def empty(self) -> bool:
        return self.ns == 0 or self.nb == 0

    def cut(self, result) -> jax.Array:
        """The ``(ns_pad, nb_pad, ...)`` result of a padded call, unpadded and reshaped to
        ``shape + ...``, back on the device (cut on the host: a device slice compiles)."""
        r = np.asarray(result)[: self.ns, : self.nb]
        return jax.device_put(r.reshape(self.shape + r.shape[2:]))


def value_rows(value, rows: Rows, event_ndim: int = 0, dtype=None) -> np.ndarray:
    """``value`` broadcast to ``rows.shape + event`` and laid out padded as
    ``(ns_pad, nb_pad) + event`` (host)."""
    v = np.asarray(value, dtype)
    event = v.shape[v.ndim - event_ndim :]
    v = np.broadcast_to(v, rows.shape + event).reshape((rows.ns, rows.nb) + event)
    return pad_rows(pad_rows(v, rows.padded[0], 0), rows.padded[1], 1)


def param_rows(param, rows: Rows, event_ndim: int) -> np.ndarray:
    """A parameter ``batch_shape + event`` broadcast to ``rows.batch`` and laid out padded
    as ``(nb_pad,) + event`` (host)."""
    p = np.asarray(param)
    event = p.shape[p.ndim - event_ndim :]
    p = np.broadcast_to(p, rows.batch + event).reshape((rows.nb,) + event)
    return pad_rows(p, rows.padded[1])
