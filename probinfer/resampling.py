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

from typing import Literal

import jax
import jax.numpy as jnp

from probinfer.weights import check_log_weights, normalize

Array = jax.Array
Scheme = Literal["systematic", "stratified", "residual", "multinomial"]
SCHEMES: tuple[str, ...] = ("systematic", "stratified", "residual", "multinomial")

__all__ = ["SCHEMES", "ancestors_from_counts", "offspring_counts", "resample"]


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


def ancestors_from_counts(cumulative_counts: Array, num: int) -> Array:
    """Ancestor indices from cumulative offspring counts.

    Parameters
    ----------
    cumulative_counts
        ``p_i`` = number of draws assigned to particles ``0..i`` (non-decreasing,
        integer, shape ``(N,)``). The last entry is treated as ``num`` whatever it is.
    num
        Number of ancestors ``M`` to return.

    Returns
    -------
    Array
        ``int32`` indices of shape ``(num,)``, sorted, each in ``[0, N-1]``.
    """
    p = jnp.clip(cumulative_counts.astype(jnp.int32), 0, num)
    p = p.at[-1].set(num)
    hist = jnp.zeros(num + 1, dtype=jnp.int32).at[p].add(1)
    return _cumsum(hist[:num]).astype(jnp.int32)


def _systematic_counts(key: Array, w: Array, num: int) -> Array:
    cum = _cumsum(w)
    u = jax.random.uniform(key, (), dtype=w.dtype)
    return jnp.ceil(num * cum - u)


def _stratified_counts(key: Array, w: Array, num: int) -> Array:
    # p(c) = #{j : (j + V_j)/M < c} = k + [V_k < cM - k], k = floor(cM).
    cum = _cumsum(w)
    v = jax.random.uniform(key, (num,), dtype=w.dtype)
    x = num * cum
    k = jnp.floor(x)
    k_idx = jnp.clip(k.astype(jnp.int32), 0, num - 1)
    extra = (v[k_idx] < x - k) & (k < num)
    return k + extra


def _residual_counts(key: Array, w: Array, num: int) -> Array:
    scaled = num * w
    det = jnp.floor(scaled)
    cum_det = _cumsum(det)
    rest = jnp.clip(num - cum_det[-1], 0, num)
    resid = scaled - det  # in [0, 1), sums to `rest` up to rounding
    total = jnp.sum(resid)
    safe_total = jnp.where(total > 0, total, 1.0)
    # Stratified draw of `rest` points from the residual weights, on a grid of
    # `num` strata of which only the first `rest` are used (static shapes).
    cum_r = _cumsum(resid) / safe_total * rest  # in [0, rest]
    v = jax.random.uniform(key, (num,), dtype=w.dtype)
    k = jnp.floor(cum_r)
    k_idx = jnp.clip(k.astype(jnp.int32), 0, num - 1)
    extra = (v[k_idx] < cum_r - k) & (k < rest)
    res_counts = jnp.minimum(k + extra, rest)
    return cum_det + jnp.where(total > 0, res_counts, 0.0)


def _multinomial_counts(key: Array, w: Array, num: int) -> Array:
    cum = _cumsum(w)
    e = jax.random.exponential(key, (num + 1,), dtype=w.dtype)
    spacings = jnp.cumsum(e)
    u = spacings[:num] / spacings[num]  # sorted iid U(0,1) order statistics
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
    num = n if num is None else num
    if isinstance(num, bool) or not isinstance(num, int | jnp.integer) or int(num) < 1:
        raise ValueError(f"num must be a positive integer, got {num!r}")
    return int(num)


def offspring_counts(
    key: Array, log_weights: Array, num: int | None = None, scheme: Scheme = "systematic"
) -> Array:
    """Number of offspring of each particle, ``int32`` of shape ``(N,)`` summing to ``num``."""
    idx = resample(key, log_weights, num=num, scheme=scheme)
    n = jnp.shape(log_weights)[0]
    return jnp.zeros(n, dtype=jnp.int32).at[idx].add(1)


def resample(
    key: Array, log_weights: Array, num: int | None = None, scheme: Scheme = "systematic"
) -> Array:
    """Draw ancestor indices in proportion to ``exp(log_weights)``.

    Parameters
    ----------
    key
        A ``jax.random`` key.
    log_weights
        Unnormalised log weights, shape ``(N,)``. ``-inf`` entries get no offspring.
    num
        Number of indices ``M`` to draw (default ``N``).
    scheme
        ``"systematic"`` (default; lowest variance in practice), ``"stratified"``,
        ``"residual"`` or ``"multinomial"``.

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
    """
    _check_scheme(scheme)
    lw = check_log_weights(log_weights)
    num = _check_num(num, lw.shape[0])
    return _resample(key, lw, num, scheme)


@jax.jit(static_argnums=(2, 3))
def _resample(key: Array, log_weights: Array, num: int, scheme: str) -> Array:
    w = normalize(log_weights.astype(jnp.float32))
    p = _COUNTS[scheme](key, w, num)
    # Everything still unassigned when the float32 cumulative weights end below 1
    # goes to the last particle of positive weight (never to a zero-weight one).
    n = w.shape[0]
    last_positive = n - 1 - jnp.argmax(w[::-1] > 0)
    p = jnp.where(jnp.arange(n) >= last_positive, num, p)
    return ancestors_from_counts(p, num)
