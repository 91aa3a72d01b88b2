"""Resampling: ancestor indices from log weights.

Every scheme is written as one merge of sorted uniforms against the cumulative
weights. For each particle ``i`` we compute ``p_i``, the number of the ``M`` sorted
uniforms lying below the cumulative weight ``C_i``; the ancestor of uniform ``j`` is
then ``#{i : p_i <= j}``, obtained with one scatter-add and one cumulative sum. The
count ``p_{N-1}`` is set to ``M`` by construction, so an index ``>= N`` is impossible
even when the float32 cumulative weights end below 1 (a rounding failure that makes
``searchsorted``-based resamplers return ``N``), and the remainder is given to the
last particle of positive weight, so zero-weight particles are never selected.

* systematic: ``u_j = (j + U) / M``; ``p_i = ceil(M C_i - U)`` in closed form, O(N).
* stratified: ``u_j = (j + U_j) / M``; ``p_i`` in closed form from the one stratum
  ``C_i`` falls in, O(N).
* residual: ``floor(M w_i)`` copies deterministically, the remainder drawn by
  stratified sampling of the residual weights (the lower-variance "residual-stratified"
  variant), O(N).
* multinomial: ``M`` sorted iid uniforms from normalised exponential spacings (O(N),
  no sort), merged with a sort-based merge of the two sorted sequences.

All four are unbiased: ``E[#offspring_i] = M w_i``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from probinfer.checks import check_num
from probinfer.weights import check_log_weights, check_log_weights_numpy, normalize

Array = jax.Array
Scheme = Literal["systematic", "stratified", "residual", "multinomial"]
SCHEMES: tuple[str, ...] = ("systematic", "stratified", "residual", "multinomial")

__all__ = [
    "SCHEMES",
    "ancestors_from_counts",
    "conditional",
    "offspring_counts",
    "resample",
    "resampler",
]


def _cumsum(x: Array, block: int = 256) -> Array:
    """Inclusive cumulative sum along axis 0, two-level blocked.

    XLA's CPU cumsum is an associative scan making ``log2(N)`` passes over the
    array; summing within blocks of ``block`` then adding block offsets makes about
    ``log2(block)`` passes, which is what makes the O(N) merge fast on CPU.
    """
    n = x.shape[0]
    if n <= block:
        return jnp.cumsum(x)
    nb = -(-n // block)
    rows = jnp.pad(x, (0, nb * block - n)).reshape(nb, block)
    within = jnp.cumsum(rows, axis=1)
    totals = within[:, -1]
    offsets = jnp.cumsum(totals) - totals
    return (within + offsets[:, None]).reshape(-1)[:n]


def ancestors_from_counts(cumulative_counts: Array, num: int, num_valid=None) -> Array:
    """Ancestor indices from cumulative offspring counts.

    Parameters
    ----------
    cumulative_counts
        ``p_i`` = number of draws assigned to particles ``0..i`` (non-decreasing,
        integer, shape ``(N,)``). The last entry is treated as ``num_valid`` whatever it is.
    num
        Number of ancestors returned (a static shape).
    num_valid
        Number of draws ``M <= num`` (may be traced; default ``num``). Entries ``M..num-1``
        of the result are 0 (padding for bucketed shapes).

    Returns
    -------
    Array
        ``int32`` indices of shape ``(num,)``; the first ``M`` are sorted, each in
        ``[0, N-1]``.
    """
    m = num if num_valid is None else num_valid
    p = jnp.clip(cumulative_counts.astype(jnp.int32), 0, m)
    p = p.at[-1].set(m)
    hist = jnp.zeros(num + 1, dtype=jnp.int32).at[p].add(1)
    anc = _cumsum(hist[:num]).astype(jnp.int32)
    if num_valid is None:
        return anc
    return jnp.where(jnp.arange(num) < m, anc, 0)


# Each ``_counts(draws, w, num, m)`` takes the draws of :func:`_resample` at the static size
# ``num``, uses ``m`` (possibly traced, <= num) of them and returns the cumulative counts
# ``p_i`` of the module docstring.
def _systematic_counts(u, w, num: int, m):
    cum = _cumsum(w)
    return jnp.ceil(m * cum - u)


def _stratified_counts(v, w, num: int, m):
    # p(c) = #{j : (j + V_j)/M < c} = k + [V_k < cM - k], k = floor(cM).
    cum = _cumsum(w)
    x = m * cum
    k = jnp.floor(x)
    k_idx = jnp.clip(k.astype(jnp.int32), 0, m - 1)
    extra = (v[k_idx] < x - k) & (k < m)
    return k + extra


def _residual_counts(v, w, num: int, m):
    scaled = m * w
    det = jnp.floor(scaled)
    cum_det = _cumsum(det)
    rest = jnp.clip(m - cum_det[-1], 0, m)
    resid = scaled - det  # in [0, 1), sums to `rest` up to rounding
    total = jnp.sum(resid)
    safe_total = jnp.where(total > 0, total, 1.0)
    # Stratified draw of `rest` points from the residual weights, on a grid of
    # `num` strata of which only the first `rest` are used (static shapes).
    cum_r = _cumsum(resid) / safe_total * rest  # in [0, rest]
    k = jnp.floor(cum_r)
    k_idx = jnp.clip(k.astype(jnp.int32), 0, num - 1)
    extra = (v[k_idx] < cum_r - k) & (k < rest)
    res_counts = jnp.minimum(k + extra, rest)
    return cum_det + jnp.where(total > 0, res_counts, 0.0)


def _multinomial_counts(e, w, num: int, m):
    cum = _cumsum(w)
    spacings = jnp.cumsum(jnp.where(jnp.arange(num + 1) <= m, e, 0.0))
    # sorted iid U(0,1) order statistics in the first m slots, +inf (never counted) after
    u = jnp.where(jnp.arange(num) < m, spacings[:num] / spacings[m], jnp.inf)
    return jnp.searchsorted(u, cum, side="left", method="sort")


_COUNTS = {
    "systematic": _systematic_counts,
    "stratified": _stratified_counts,
    "residual": _residual_counts,
    "multinomial": _multinomial_counts,
}


def _check_scheme(scheme: str) -> None:
    if scheme not in _COUNTS:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")


def _check_num(num, n: int) -> int:
    return check_num(n if num is None else num, "num")


def offspring_counts(
    key: Array, log_weights: Array, num: int | None = None, scheme: Scheme = "systematic"
) -> Array:
    """Number of offspring of each particle, ``int32`` of shape ``(N,)`` summing to ``num``."""
    idx = resample(key, log_weights, num=num, scheme=scheme)
    n = np.shape(log_weights)[0]  # np: also for lists, and tracers have a shape
    if isinstance(idx, jax.core.Tracer):
        return jnp.zeros(n, dtype=jnp.int32).at[idx].add(1)
    return jax.device_put(np.bincount(np.asarray(idx), minlength=n).astype(np.int32))


def resample(
    key: Array,
    log_weights: Array,
    num: int | None = None,
    scheme: Scheme = "systematic",
    *,
    num_valid=None,
) -> Array:
    """Draw ancestor indices in proportion to ``exp(log_weights)``.

    Parameters
    ----------
    key
        A ``jax.random`` key (the uniforms of the scheme are drawn from it).
    log_weights
        Unnormalised log weights, shape ``(N,)``. ``-inf`` entries get no offspring.
    num
        Number of indices ``M`` to draw (default ``N``).
    scheme
        ``"systematic"`` (default; lowest variance in practice), ``"stratified"``,
        ``"residual"`` or ``"multinomial"``.
    num_valid
        Under a trace only (bucketed particle counts): draw this many (traced, ``<= num``)
        indices into the ``num`` static slots; the remaining slots are 0.

    Returns
    -------
    Array
        Sorted ``int32`` ancestor indices of shape ``(M,)``, every one in ``[0, N-1]``.
        Each scheme is unbiased: the expected number of copies of particle ``i`` is
        ``M w_i``.

    Raises
    ------
    ValueError
        If ``log_weights`` contains NaN or ``+inf``, or every entry is ``-inf``
        (checked when the array is concrete), if ``num < 1`` or ``scheme`` is unknown.
    TypeError
        If ``log_weights`` is not an array of real numbers (concrete input).

    Notes
    -----
    Called eagerly, ``N`` and ``M`` are padded to powers of two (at least 16,
    :func:`probinfer.engine.bucket_size`) with zero-weight particles and unused draws, so a
    program resampling many different particle counts compiles a bounded number of
    executables and its memory stays flat; the check, the padding and the cut run on the
    host (a ``jnp`` op on a new shape would compile a new program). Systematic resampling
    gives the same indices as without padding; the other schemes draw their uniforms at the
    padded size (same distribution, other values). Under ``jit`` the shapes are the
    caller's. Concrete log weights are shifted by their maximum in their own precision
    before the cast to float32, so float64 values beyond float32's range (``[1e39, 0]``)
    resample correctly (always index 0 there).
    """
    _check_scheme(scheme)
    if isinstance(log_weights, jax.core.Tracer) or isinstance(key, jax.core.Tracer):
        lw = check_log_weights(log_weights)
        num = _check_num(num, lw.shape[0])
        return _resample(key, lw, num, scheme, num if num_valid is None else num_valid)
    return jax.device_put(_resample_concrete(key, log_weights, num, scheme))


def _resample_concrete(key: Array, log_weights, num: int | None, scheme: str) -> np.ndarray:
    """:func:`resample` of concrete log weights, as host indices (the eager SMC driver
    reads them on the host: no round trip through the device)."""
    from probinfer.engine.core import bucket_size

    a = check_log_weights_numpy(log_weights)
    n = a.shape[0]
    num = _check_num(num, n)
    n_pad, num_pad = bucket_size(n, 16), bucket_size(num, 16)
    # Shift by the (finite) maximum in the input's precision, then cast: float64 log weights
    # beyond float32's range (1e39) keep their meaning (far below the maximum: -inf, weight 0).
    padded = np.full(n_pad, -np.inf, np.float32)
    with np.errstate(over="ignore"):
        padded[:n] = a - a.max()
    return np.asarray(_resample(key, padded, num_pad, scheme, np.int32(num)))[:num]


@jax.jit(static_argnums=(2, 3))
def _resample(key: Array, log_weights: Array, num: int, scheme: str, num_valid) -> Array:
    """``num`` (static) ancestor slots of which the first ``num_valid`` (traced) are drawn
    (the compiled body of :func:`resample`)."""
    w = normalize(log_weights.astype(jnp.float32))
    m = jnp.asarray(num_valid, jnp.int32)
    if scheme == "systematic":
        draws = jax.random.uniform(key, (), dtype=jnp.float32)
    elif scheme == "multinomial":
        draws = jax.random.exponential(key, (num + 1,), dtype=jnp.float32)
    else:
        draws = jax.random.uniform(key, (num,), dtype=jnp.float32)
    p = _COUNTS[scheme](draws, w, num, m)
    # Everything still unassigned when the float32 cumulative weights end below 1
    # goes to the last particle of positive weight (never to a zero-weight one).
    n = w.shape[0]
    last_positive = n - 1 - jnp.argmax(w[::-1] > 0)
    p = jnp.where(jnp.arange(n) >= last_positive, m, p)
    return ancestors_from_counts(p, num, m)


@cache
def resampler(scheme: Scheme = "systematic") -> Callable:
    """:func:`resample` with ``scheme`` fixed: the SMC driver's ``resample_fn(key,
    log_weights, num, num_valid=None)``. Concrete log weights give host (numpy) indices,
    traced ones traced indices. Cached, so equal schemes give the same (hashable) function
    and compiled runs are reused."""
    _check_scheme(scheme)

    def resample_fn(key, log_weights, num, num_valid=None):
        if isinstance(log_weights, jax.core.Tracer) or isinstance(key, jax.core.Tracer):
            return resample(key, log_weights, num, scheme, num_valid=num_valid)
        return _resample_concrete(key, log_weights, num, scheme)

    return resample_fn


@cache
def conditional(resample_fn: Callable) -> Callable:
    """The resampler of conditional SMC (Andrieu, Doucet & Holenstein 2010): slot 0 keeps
    ancestor 0 (the reference trajectory is never resampled away) and slots ``1..num-1``
    draw their ancestors from all particles with ``resample_fn`` (multinomial in the
    textbook kernel: ``conditional(resampler("multinomial"))``)."""

    def conditional_fn(key, log_weights, num, num_valid=None):
        nv = None if num_valid is None else num_valid - 1
        rest = resample_fn(key, log_weights, num - 1, nv)
        if isinstance(rest, jax.core.Tracer):
            return jnp.concatenate([jnp.zeros(1, jnp.int32), rest])
        return np.concatenate([np.zeros(1, np.int32), np.asarray(rest)])

    return conditional_fn
