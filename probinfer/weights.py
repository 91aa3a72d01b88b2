"""Log-weight arithmetic shared by every weighted-particle algorithm.

All functions take unnormalised log weights with a leading particle axis and are
safe to call under ``jax.jit`` (the validating function :func:`check_log_weights`
only validates concrete arrays; traced arrays pass through).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

Array = jax.Array

__all__ = [
    "check_log_weights",
    "ess",
    "log_mean_weight",
    "log_normalize",
    "normalize",
    "should_resample",
]


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_log_weights(log_weights, name: str = "log_weights") -> Array:
    """Validate a vector of log weights and return it as a 1-D JAX array.

    Raises
    ------
    ValueError
        If the array is not 1-D and non-empty, contains NaN or ``+inf``, or if every
        entry is ``-inf`` (the weights cannot be normalised). Traced values (inside
        ``jit``) are only checked for shape.
    """
    lw = jnp.asarray(log_weights)
    if lw.ndim != 1 or lw.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {lw.shape}")
    if not jnp.issubdtype(lw.dtype, jnp.floating):
        lw = lw.astype(jnp.float32)
    if _is_concrete(lw):
        # numpy, not jnp: inside a jit trace jnp would stage these checks.
        check_log_weights_numpy(np.asarray(lw), name)
    return lw


def check_log_weights_numpy(log_weights, name: str = "log_weights") -> np.ndarray:
    """:func:`check_log_weights` for concrete weights, entirely on the host.

    Eager entry points called with many different particle counts use it: a ``jnp`` call on
    a new shape compiles a new program, a numpy check does not. Returns a float array.
    """
    a = np.asarray(log_weights)
    if a.ndim != 1 or a.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {a.shape}")
    if a.dtype.kind != "f":
        a = a.astype(np.float32)
    if a.max() < np.inf and np.isfinite(a).any():  # one pass when valid (NaN fails both)
        return a
    if np.any(np.isnan(a)):
        raise ValueError(f"{name} contains NaN at index {int(np.argmax(np.isnan(a)))}")
    if np.any(a == np.inf):
        raise ValueError(f"{name} contains +inf; weights must be finite or -inf")
    if np.all(a == -np.inf):
        raise ValueError(f"{name} are all -inf: every particle has zero weight")
    return a


def _no_nan(log_weights, name: str = "log_weights") -> Array:
    """The weights as an array; a concrete NaN raises ``ValueError`` (traced values pass)."""
    lw = jnp.asarray(log_weights)
    if _is_concrete(lw):
        a = np.asarray(lw)
        if np.any(np.isnan(a)):
            raise ValueError(f"{name} contains NaN at index {int(np.argmax(np.isnan(a)))}")
    return lw


def _shifted(log_weights: Array) -> tuple[Array, Array]:
    """``(lw - max lw, max lw)``: exact shifts keep float32 weights accurate."""
    lw = jnp.asarray(log_weights)
    m = jnp.max(lw, axis=0)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    return lw - m, m


def log_normalize(log_weights: Array) -> Array:
    """Normalised log weights, ``log w_i - logsumexp(log w)``."""
    z, _ = _shifted(_no_nan(log_weights))
    return z - jnp.log(jnp.sum(jnp.exp(z), axis=0))


def normalize(log_weights: Array) -> Array:
    """Normalised weights ``w_i = exp(log w_i) / sum_j exp(log w_j)``.

    Computed as ``e_i / sum(e)`` with ``e = exp(lw - max lw)`` so that the weights sum
    to one to within float rounding even for log weights of large magnitude.
    """
    z, _ = _shifted(_no_nan(log_weights))
    e = jnp.exp(z)
    return e / jnp.sum(e, axis=0)


def ess(log_weights: Array) -> Array:
    """Effective sample size ``1 / sum_i w_i^2`` of normalised weights, in ``[1, N]``.

    Computed as ``exp(2 logsumexp(lw) - logsumexp(2 lw))`` so that it is stable for
    log weights of any magnitude. Every weight zero (all ``-inf``) gives ``0``; a NaN
    raises ``ValueError`` (on concrete input).
    """
    lw = _no_nan(log_weights)
    dead = jnp.all(lw == -jnp.inf, axis=0)
    safe = jnp.where(dead, 0.0, lw)
    log_ess = 2.0 * logsumexp(safe, axis=0) - logsumexp(2.0 * safe, axis=0)
    return jnp.where(dead, 0.0, jnp.exp(log_ess))


def log_mean_weight(log_weights: Array) -> Array:
    """``log((1/N) sum_i exp(log w_i))``: the SMC evidence increment of a weighting step
    (``-inf`` when every weight is zero; NaN raises ``ValueError`` on concrete input)."""
    lw = _no_nan(log_weights)
    return logsumexp(lw, axis=0) - jnp.log(lw.shape[0])


def should_resample(log_weights: Array, threshold: float = 0.5) -> Array:
    """ESS trigger: resample when ``ESS < threshold * N``.

    ``threshold >= 1`` resamples at every step (the ESS of uniform weights equals N
    only up to rounding, so it is treated as "always"); ``threshold <= 0`` never
    resamples. Returns a boolean scalar array (usable under ``jit``). NaN weights raise
    ``ValueError`` (concrete input); all ``-inf`` has ESS 0, so it triggers resampling,
    which then raises (nothing can be resampled).
    """
    lw = _no_nan(log_weights)
    n = lw.shape[0]
    always = jnp.asarray(threshold) >= 1.0
    return jnp.logical_or(always, ess(lw) < threshold * n)
