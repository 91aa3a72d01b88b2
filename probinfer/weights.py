"""Log-weight arithmetic shared by every weighted-particle algorithm.

All functions take unnormalised log weights with a leading particle axis and are
safe to call under ``jax.jit`` and ``jax.vmap``. Concrete (non-traced) weights are
checked and computed on the host, in float64 NumPy: a ``jnp`` call on a new particle
count compiles a new XLA program and keeps it, so an eager program passing many
different ``N`` would grow without bound. Traced weights use the same formulas in
``jnp`` and are not checked (a traced value cannot raise).

Degenerate inputs (concrete)
----------------------------
* NaN or ``+inf`` log weights, an empty particle axis, a 0-d array or a non-real dtype
  raise ``ValueError``/``TypeError`` naming ``log_weights``.
* Every weight zero (all ``-inf``): :func:`ess` is ``0``, :func:`log_mean_weight` is
  ``-inf``, :func:`should_resample` is ``True`` for ``threshold > 0`` (and resampling then
  raises); :func:`normalize`, :func:`log_normalize` and :func:`check_log_weights` raise
  (there is no distribution to normalise).
* Log weights finite in float64 but beyond float32's range (``1e39``) are exact for every
  shift-invariant result (:func:`ess`, :func:`normalize`, :func:`log_normalize`,
  :func:`should_resample`, :func:`probinfer.resample`); a result that itself does not fit
  the output dtype (:func:`log_mean_weight` of such weights, :func:`check_log_weights`,
  which returns the weights) raises ``ValueError``.
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
    "reweight",
    "should_resample",
]


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def real_array(x, name: str) -> np.ndarray:
    """``np.asarray(x)``, which must have a bool, integer or floating dtype."""
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as exc:  # ragged lists, unconvertible objects
        raise TypeError(f"{name} must be an array of real numbers: {exc}") from exc
    if not (a.dtype == bool or jnp.issubdtype(a.dtype, np.integer)
            or jnp.issubdtype(a.dtype, np.floating)):  # fmt: skip
        raise TypeError(f"{name} must be an array of real numbers, got dtype {a.dtype}")
    return a


def as_log_weights(log_weights, name: str = "log_weights") -> Array:
    """Log weights as a JAX array, without compiling anything (``jnp.asarray`` of a NumPy
    array compiles a program per shape; ``jax.device_put`` does not) and without checks
    beyond those of the cast: host data must be real (``TypeError``) and its largest value
    must fit the JAX dtype (``ValueError``: ``[1e39, 0]`` would become ``[inf, 0]``; entries
    far below a representable maximum become ``-inf``, their weight, zero, is kept).
    JAX arrays, traced or not, pass unchanged."""
    if isinstance(log_weights, jax.Array):
        return log_weights
    a = real_array(log_weights, name)
    with np.errstate(over="ignore"):
        out = a.astype(out_dtype(a.dtype)) if a.dtype.kind == "f" else a
    if out.size and np.isinf(np.max(out)) and np.isfinite(np.max(a)):
        raise ValueError(
            f"{name} has entries beyond the range of {out.dtype} (largest "
            f"{float(np.max(a)):.3g}): subtract their maximum first"
        )
    return jax.device_put(out)


def out_dtype(dtype) -> np.dtype:
    """The dtype a result computed from an array of ``dtype`` is returned in: float32 for
    float32 input, else JAX's default float (float32 unless ``jax_enable_x64``)."""
    if np.dtype(dtype) == np.float32:
        return np.dtype(np.float32)
    return np.dtype(jax.dtypes.canonicalize_dtype(np.float64))


def to_output(value, dtype, name: str, what: str) -> Array:
    """``value`` (a host float array) as a JAX array of ``dtype``; ``ValueError`` naming
    ``name`` if a finite entry overflows ``dtype`` (a float64 result beyond float32's range)."""
    value = np.asarray(value)
    with np.errstate(over="ignore"):
        out = value.astype(dtype)
    if np.any(np.isinf(out) & np.isfinite(value)):
        raise ValueError(
            f"{what} of {name} is {float(np.max(np.abs(value))):.3g}, beyond the range of "
            f"{dtype} (use smaller values, e.g. log weights shifted by their maximum)"
        )
    return jax.device_put(out)


def host_log_weights(log_weights, name: str = "log_weights", ndim: int | None = None):
    """Concrete log weights checked on the host, as a float64 (or wider) NumPy array.

    Checks a real dtype (``TypeError``), at least one dimension (exactly ``ndim`` when
    given), a non-empty leading particle axis, no NaN and no ``+inf`` (``ValueError``).
    ``-inf`` (zero weight) is allowed, also everywhere.
    """
    a = real_array(log_weights, name)
    if a.ndim == 0 or (ndim is not None and a.ndim != ndim) or a.shape[0] == 0:
        want = f"a non-empty {ndim}-D array" if ndim else "a non-empty array of at least 1-D"
        raise ValueError(f"{name} must be {want} (leading particle axis), got shape {a.shape}")
    if a.dtype.kind != "f" or a.dtype.itemsize < 8:
        a = a.astype(np.float64)
    if not a.max() < np.inf:  # one pass when valid (NaN fails it too)
        if np.any(np.isnan(a)):
            raise ValueError(f"{name} contains NaN at index {np.argwhere(np.isnan(a))[0]}")
        raise ValueError(f"{name} contains +inf; log weights must be finite or -inf")
    return a


def check_log_weights(log_weights, name: str = "log_weights") -> Array:
    """Validate a vector of log weights and return it as a 1-D JAX array.

    Raises
    ------
    ValueError
        If the array is not 1-D and non-empty, contains NaN or ``+inf``, if every entry is
        ``-inf`` (the weights cannot be normalised), or if finite entries overflow the
        float32 range of the returned array. Traced values (inside ``jit``) are only checked
        for shape.
    TypeError
        If the dtype is not real (complex, strings, objects).
    """
    if not _is_concrete(log_weights):
        lw = jnp.asarray(log_weights)
        if lw.ndim != 1 or lw.shape[0] == 0:
            raise ValueError(f"{name} must be a non-empty 1-D array, got shape {lw.shape}")
        return lw if jnp.issubdtype(lw.dtype, jnp.floating) else lw.astype(jnp.float32)
    a = check_log_weights_numpy(log_weights, name)
    if isinstance(log_weights, jax.Array) and jnp.issubdtype(log_weights.dtype, jnp.floating):
        return log_weights  # already a JAX float array: no copy
    return as_log_weights(a, name)


def check_log_weights_numpy(log_weights, name: str = "log_weights") -> np.ndarray:
    """:func:`check_log_weights` for concrete weights, entirely on the host.

    Eager entry points called with many different particle counts use it: a ``jnp`` call on
    a new shape compiles a new program (even ``jnp.asarray`` of a NumPy array), a numpy
    check does not. Returns a float array (the
    input's floating dtype, float32 for integer or boolean input), without range checks.
    """
    a = real_array(log_weights, name)
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


def _host_shifted(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(exp(a - max a), max a, dead)`` along axis 0; ``dead``: every weight zero."""
    m = a.max(axis=0)
    dead = m == -np.inf
    m = np.where(dead, 0.0, m)
    with np.errstate(over="ignore"):  # -1e308 - 1e308: -inf, a zero weight
        return np.exp(a - m), m, dead


def _host(log_weights) -> tuple[np.ndarray, np.dtype]:
    """Checked concrete ``log_weights`` (float64) and the dtype of results computed from them."""
    a = real_array(log_weights, "log_weights")
    return host_log_weights(a), out_dtype(a.dtype)


def host_normalize(log_weights, name: str = "log_weights") -> np.ndarray:
    """:func:`normalize` of concrete weights on the host, in float64."""
    a = host_log_weights(log_weights, name)
    e, _, dead = _host_shifted(a)
    if np.any(dead):
        raise ValueError(f"{name} are all -inf: every particle has zero weight")
    return e / e.sum(axis=0)


def _shifted(log_weights: Array) -> tuple[Array, Array]:
    """``(lw - max lw, max lw)``: exact shifts keep float32 weights accurate."""
    lw = jnp.asarray(log_weights)
    m = jnp.max(lw, axis=0)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    return lw - m, m


def log_normalize(log_weights: Array) -> Array:
    """Normalised log weights, ``log w_i - logsumexp(log w)``.

    Raises ``ValueError`` on concrete input that is invalid (see the module docstring)
    or all ``-inf``.
    """
    if _is_concrete(log_weights):
        a, dtype = _host(log_weights)
        e, m, dead = _host_shifted(a)
        if np.any(dead):
            raise ValueError("log_weights are all -inf: every particle has zero weight")
        with np.errstate(over="ignore"):  # far below the maximum: -inf, a zero weight
            return jax.device_put((a - m - np.log(e.sum(axis=0))).astype(dtype))
    z, _ = _shifted(log_weights)
    return z - jnp.log(jnp.sum(jnp.exp(z), axis=0))


def normalize(log_weights: Array) -> Array:
    """Normalised weights ``w_i = exp(log w_i) / sum_j exp(log w_j)``.

    Computed as ``e_i / sum(e)`` with ``e = exp(lw - max lw)`` so that the weights sum
    to one to within float rounding even for log weights of large magnitude. Raises
    ``ValueError`` on concrete input that is invalid (see the module docstring) or all
    ``-inf``.
    """
    if _is_concrete(log_weights):
        a, dtype = _host(log_weights)
        return jax.device_put(host_normalize(a).astype(dtype))
    z, _ = _shifted(log_weights)
    e = jnp.exp(z)
    return e / jnp.sum(e, axis=0)


def _host_ess(a: np.ndarray) -> np.ndarray:
    e, _, dead = _host_shifted(a)
    s1, s2 = e.sum(axis=0), np.square(e).sum(axis=0)  # s2 >= 1 (the maximum's term) unless dead
    return np.where(dead, 0.0, np.clip(s1 * s1 / np.where(dead, 1.0, s2), 1.0, a.shape[0]))


def ess(log_weights: Array) -> Array:
    """Effective sample size ``1 / sum_i w_i^2`` of normalised weights, in ``[1, N]``.

    Stable for log weights of any magnitude. Every weight zero (all ``-inf``) gives
    ``0``; NaN, ``+inf`` or an empty particle axis raise ``ValueError`` (concrete input).
    """
    if _is_concrete(log_weights):
        a, dtype = _host(log_weights)
        return jax.device_put(_host_ess(a).astype(dtype))
    lw = jnp.asarray(log_weights)
    dead = jnp.all(lw == -jnp.inf, axis=0)
    safe = jnp.where(dead, 0.0, lw)
    log_ess = 2.0 * logsumexp(safe, axis=0) - logsumexp(2.0 * safe, axis=0)
    return jnp.where(dead, 0.0, jnp.exp(log_ess))


def log_mean_weight(log_weights: Array) -> Array:
    """``log((1/N) sum_i exp(log w_i))``: the SMC evidence increment of a weighting step.

    ``-inf`` when every weight is zero. On concrete input, NaN, ``+inf`` or an empty
    particle axis raise ``ValueError``, and so does a result beyond the output dtype's range.
    """
    if _is_concrete(log_weights):
        a, dtype = _host(log_weights)
        e, m, dead = _host_shifted(a)
        with np.errstate(divide="ignore"):
            value = np.where(dead, -np.inf, m + np.log(e.sum(axis=0)) - np.log(a.shape[0]))
        return to_output(value, dtype, "log_weights", "the log mean weight")
    lw = jnp.asarray(log_weights)
    return logsumexp(lw, axis=0) - jnp.log(lw.shape[0])


def reweight(log_weights, log_potentials):
    """Multiply weights by potentials: ``(log W', log sum_i W_i G_i, ESS')`` in one pass.

    The update every weighted-particle algorithm makes (an SMC step's reweighting, an
    importance sampler's weights against uniform ones): ``u_i = log W_i + log G_i`` along
    the leading axis, its log-sum-exp (with normalised ``log_weights``, the evidence
    increment ``log sum_i W_i G_i``: a sum of terms of order one, never a difference of two
    large log sums), the normalised ``u`` and the ESS of the new weights. NumPy inputs are
    computed on the host in float64 (eager loops; no compilation per particle count),
    anything else in ``jnp`` (traceable). No checks: when every ``u_i`` is ``-inf`` the
    increment is ``-inf``, the ESS is 0 and ``u`` is returned unnormalised.
    """
    host = isinstance(log_weights, np.ndarray) and isinstance(log_potentials, np.ndarray)
    xp = np if host else jnp
    u = log_weights + log_potentials
    m = u.max(axis=0)
    if host and np.all(np.isfinite(m)):  # the common case, without an error-state context
        e = np.exp(u - m)
        s1, s2 = e.sum(axis=0), (e * e).sum(axis=0)
        inc = m + np.log(s1)
        return u - inc, inc, s1 * s1 / s2
    m = xp.where(xp.isfinite(m), m, 0.0)
    e = xp.exp(u - m)
    s1, s2 = xp.sum(e, axis=0), xp.sum(e * e, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        inc = m + xp.log(s1)
        alive = s1 > 0
        new = xp.where(alive, u - xp.where(alive, inc, 0.0), u)
        ess_ = xp.where(alive, s1 * s1 / xp.where(alive, s2, 1.0), 0.0)
    return new, inc, ess_


def _check_threshold(threshold) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, int | float | np.number):
        if not (isinstance(threshold, np.ndarray | jax.Array) and np.ndim(threshold) == 0):
            raise TypeError(f"threshold must be a real number, got {type(threshold).__name__}")
    try:
        value = float(threshold)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"threshold must be a real number, got {threshold!r}") from exc
    if np.isnan(value):
        raise ValueError("threshold must be a number (ESS fraction), got NaN")
    return value


def should_resample(log_weights: Array, threshold: float = 0.5) -> Array:
    """ESS trigger: resample when ``ESS < threshold * N``.

    ``threshold >= 1`` resamples at every step (the ESS of uniform weights equals N
    only up to rounding, so it is treated as "always"); ``threshold <= 0`` never
    resamples. Returns a boolean scalar array (usable under ``jit``). On concrete input,
    invalid weights (NaN, ``+inf``, empty) or a NaN/non-real ``threshold`` raise; all
    ``-inf`` has ESS 0, so it triggers resampling, which then raises (nothing can be
    resampled).
    """
    if _is_concrete(threshold):
        threshold = _check_threshold(threshold)
    if _is_concrete(log_weights):
        a, _ = _host(log_weights)
        n, value = a.shape[0], _host_ess(a)
        if _is_concrete(threshold):
            return jax.device_put(np.asarray((threshold >= 1.0) | (value < threshold * n)))
    else:
        n, value = jnp.shape(log_weights)[0], ess(log_weights)
    always = jnp.asarray(threshold) >= 1.0
    return jnp.logical_or(always, value < threshold * n)
