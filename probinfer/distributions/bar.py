"""Bar (Riemann) distribution with half-normal tails: the output of a prior-data fitted network.

A PFN predicts a categorical distribution over ``K`` buckets of the real line (Müller et al. 2022,
"Transformers Can Do Bayesian Inference"). :class:`BarDistribution` turns those ``K`` logits into a
continuous density with full support ("FullSupportBarDistribution" in the PFN code):

* the inner buckets ``1 .. K-2`` are uniform on ``[borders[i], borders[i+1])``;
* the mass ``p_0`` of the first bucket is a half-normal pointing *left* from ``borders[1]``;
* the mass ``p_{K-1}`` of the last bucket is a half-normal pointing *right* from ``borders[K-1]``.

Tail convention: the half-normal of an outer bucket of width ``w`` has scale ``s = w / z_{3/4}``
with ``z_{3/4} = Phi^{-1}(3/4) = 0.6744897...``, so that its median equals the bucket width,
``P(|Z| s <= w) = 1/2`` (the original bucket therefore still holds half of that bucket's mass).
The left tail density is ``p_0 * 2/s * phi((borders[1] - y)/s)`` for ``y < borders[1]`` and the
right tail density is ``p_{K-1} * 2/s * phi((y - borders[K-1])/s)`` for ``y >= borders[K-1]``.
``borders[0]`` and ``borders[K]`` only set the two widths.

The torch training loss of :mod:`amortized` computes exactly the same log density.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr, ndtri
from numpyro.distributions import constraints
from numpyro.distributions.distribution import Distribution

from probinfer.distributions._bucketing import (
    Rows,
    is_concrete,
    param_rows,
    to_device,
    value_rows,
)

__all__ = ["BarDistribution", "HALF_NORMAL_MEDIAN"]

#: Median of the standard half-normal, ``Phi^{-1}(3/4)``; tail scale = outer bucket width / this.
HALF_NORMAL_MEDIAN = 0.6744897501960817
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _check_borders(borders) -> jax.Array:
    b = to_device(borders)
    if not jnp.issubdtype(b.dtype, jnp.floating):
        b = b.astype(jnp.result_type(float))
    if b.ndim != 1:
        raise ValueError(f"borders must be 1-D of shape (K+1,), got shape {b.shape}")
    if b.shape[0] < 3:
        raise ValueError(f"borders must have at least 3 entries (K >= 2 buckets), got {b.shape[0]}")
    if is_concrete(b):
        bn = np.asarray(b)
        if not np.all(np.isfinite(bn)):
            raise ValueError("borders must be finite (no NaN or inf)")
        if not np.all(np.diff(bn) > 0):
            raise ValueError("borders must be strictly increasing")
    return b


def _check_logits(logits, n_buckets: int) -> jax.Array:
    lg = to_device(logits)
    if not jnp.issubdtype(lg.dtype, jnp.floating):
        lg = lg.astype(jnp.result_type(float))
    if lg.ndim < 1 or lg.shape[-1] != n_buckets:
        raise ValueError(
            f"logits must have shape batch + (K,) with K = len(borders) - 1 = {n_buckets}, "
            f"got shape {lg.shape}"
        )
    if is_concrete(lg) and lg.size:
        ln = np.asarray(lg)
        if np.any(np.isnan(ln)):
            raise ValueError("logits must not contain NaN")
        if np.any(ln == np.inf):
            raise ValueError(
                "logits must not contain +inf (use finite logits; -inf = empty bucket)"
            )
        if np.any(np.all(ln == -np.inf, axis=-1)):
            raise ValueError("logits must have at least one finite entry per distribution")
    return lg


class BarDistribution(Distribution):
    """Piecewise-uniform density on buckets with half-normal tails (full support).

    Parameters
    ----------
    borders : array, shape (K+1,)
        Strictly increasing finite bucket borders, shared by every batch member. ``K >= 2``.
    logits : array, shape batch + (K,)
        Unnormalised log probabilities of the buckets (softmax is applied). ``-inf`` marks an
        empty bucket; NaN, ``+inf`` and rows that are all ``-inf`` raise ``ValueError``.
    validate_args : bool, optional
        Passed on to :class:`numpyro.distributions.Distribution`.

    Notes
    -----
    See the module docstring for the exact tail convention: the first/last bucket's mass is a
    half-normal pointing outwards from ``borders[1]`` / ``borders[K-1]`` with scale
    ``width / Phi^{-1}(3/4)`` (median equal to the bucket width). ``cdf`` and ``icdf`` are exact
    inverses of each other; ``sample`` is inverse-cdf sampling. As in numpyro, ``icdf`` of a
    level outside ``[0, 1]`` (or NaN) is NaN, and ``cdf``/``log_prob`` of NaN are NaN.
    """

    arg_constraints: dict = {}
    support = constraints.real
    reparametrized_params: list = []
    pytree_data_fields = ("borders", "logits")

    def __init__(self, borders, logits, *, validate_args: bool | None = None):
        b = _check_borders(borders)
        lg = _check_logits(logits, b.shape[0] - 1)
        dtype = jnp.result_type(b.dtype, lg.dtype)
        self.borders = b.astype(dtype)
        self.logits = lg.astype(dtype)
        super().__init__(batch_shape=lg.shape[:-1], event_shape=(), validate_args=validate_args)

    # ------------------------------------------------------------------ derived quantities
    @property
    def n_buckets(self) -> int:
        """Number of buckets ``K``."""
        return self.logits.shape[-1]

    @property
    def log_probs(self) -> jax.Array:
        """Log bucket probabilities, shape batch + (K,)."""
        return jax.nn.log_softmax(self.logits, axis=-1)

    @property
    def probs(self) -> jax.Array:
        """Bucket probabilities, shape batch + (K,)."""
        return jax.nn.softmax(self.logits, axis=-1)

    @property
    def widths(self) -> jax.Array:
        """Bucket widths ``borders[1:] - borders[:-1]``, shape (K,)."""
        return jnp.diff(self.borders)

    @property
    def tail_scales(self) -> tuple[jax.Array, jax.Array]:
        """Scales ``(s_left, s_right)`` of the two half-normal tails."""
        w = self.widths
        return w[0] / HALF_NORMAL_MEDIAN, w[-1] / HALF_NORMAL_MEDIAN

    def _bucket_index(self, value: jax.Array) -> jax.Array:
        """Bucket of each value: 0 below borders[1], K-1 at or above borders[K-1]."""
        inner = self.borders[1:-1]
        return jnp.searchsorted(inner, value, side="right")

    # ------------------------------------------------------------------ evaluation
    def _bucketed(self, method: str, value) -> jax.Array:
        """``method(value)`` as one compiled call at bucketed shapes (module
        :mod:`probinfer.distributions._bucketing`): eagerly, a new batch or sample shape
        compiles nothing once its power-of-two bucket has been seen."""
        if not is_concrete(value, self.logits, self.borders):
            return getattr(self, method)(value)
        rows = Rows(np.shape(value), self.batch_shape)
        if rows.empty:
            return getattr(self, method)(value)
        logits = param_rows(self.logits, rows, 1)
        value = value_rows(value, rows, 0, self.logits.dtype)
        return rows.cut(_evaluate(np.asarray(self.borders), logits, value, method))

    def log_prob(self, value):
        """Log density at ``value`` (shape ``sample_shape + batch_shape``, broadcastable)."""
        return self._bucketed("_log_prob", value)

    def cdf(self, value):
        """Cumulative distribution function at ``value`` (broadcastable to the batch)."""
        return self._bucketed("_cdf", value)

    def icdf(self, q):
        """Quantile function at levels ``q`` (broadcastable to the batch; NaN outside
        ``[0, 1]``)."""
        return self._bucketed("_icdf", q)

    # ------------------------------------------------------------------ density
    def _log_prob(self, value):
        value = jnp.asarray(value, dtype=self.logits.dtype)
        b = self.borders
        k = self.n_buckets
        s_left, s_right = self.tail_scales
        logp = self.log_probs
        shape = jnp.broadcast_shapes(value.shape, self.batch_shape)
        value = jnp.broadcast_to(value, shape)
        logp = jnp.broadcast_to(logp, shape + (k,))
        idx = self._bucket_index(value)
        logp_idx = jnp.take_along_axis(logp, idx[..., None], axis=-1)[..., 0]
        log_w = jnp.log(self.widths)[idx]
        # half-normal log densities (finite everywhere, so gradients through the unused branch
        # of `where` stay finite)
        zl = (b[1] - value) / s_left
        zr = (value - b[-2]) / s_right
        log_left = math.log(2.0) - jnp.log(s_left) - _LOG_SQRT_2PI - 0.5 * zl**2
        log_right = math.log(2.0) - jnp.log(s_right) - _LOG_SQRT_2PI - 0.5 * zr**2
        log_shape = jnp.where(idx == 0, log_left, jnp.where(idx == k - 1, log_right, -log_w))
        return logp_idx + log_shape

    # ------------------------------------------------------------------ cdf / icdf
    def _cdf(self, value):
        value = jnp.asarray(value, dtype=self.logits.dtype)
        b = self.borders
        k = self.n_buckets
        s_left, s_right = self.tail_scales
        p = self.probs
        shape = jnp.broadcast_shapes(value.shape, self.batch_shape)
        value = jnp.broadcast_to(value, shape)
        p = jnp.broadcast_to(p, shape + (k,))
        cum = jnp.cumsum(p, axis=-1) - p  # mass strictly before each bucket
        idx = self._bucket_index(value)
        p_idx = jnp.take_along_axis(p, idx[..., None], axis=-1)[..., 0]
        c_idx = jnp.take_along_axis(cum, idx[..., None], axis=-1)[..., 0]
        frac = jnp.clip((value - b[idx]) / self.widths[idx], 0.0, 1.0)
        inner = c_idx + p_idx * frac
        left = p[..., 0] * 2.0 * ndtr(-(b[1] - value) / s_left)
        right = 1.0 - p[..., -1] * 2.0 * ndtr(-(value - b[-2]) / s_right)
        out = jnp.where(idx == 0, left, jnp.where(idx == k - 1, right, inner))
        return jnp.clip(out, 0.0, 1.0)  # float32 cumulative sums can overshoot 1 by an ulp

    def _icdf(self, q):
        q = jnp.asarray(q, dtype=self.logits.dtype)
        b = self.borders
        k = self.n_buckets
        s_left, s_right = self.tail_scales
        p = self.probs
        shape = jnp.broadcast_shapes(q.shape, self.batch_shape)
        q = jnp.broadcast_to(q, shape)
        p = jnp.broadcast_to(p, shape + (k,))
        cum_after = jnp.cumsum(p, axis=-1)
        cum_before = cum_after - p
        p0 = p[..., 0]
        plast = p[..., -1]
        # bucket j: cum_before[j] <= q < cum_after[j]; restrict the search to inner buckets
        inner_after = cum_after[..., :-1]  # (.., K-1): cumulative mass up to bucket j
        idx = jnp.sum(inner_after <= q[..., None], axis=-1)
        idx = jnp.clip(idx, 1, k - 2) if k > 2 else jnp.ones_like(idx)
        p_idx = jnp.take_along_axis(p, idx[..., None], axis=-1)[..., 0]
        c_idx = jnp.take_along_axis(cum_before, idx[..., None], axis=-1)[..., 0]
        safe_p = jnp.where(p_idx > 0, p_idx, 1.0)
        frac = jnp.clip((q - c_idx) / safe_p, 0.0, 1.0)
        inner = b[idx] + frac * self.widths[idx]
        safe_p0 = jnp.where(p0 > 0, p0, 1.0)
        safe_pl = jnp.where(plast > 0, plast, 1.0)
        ql = jnp.clip(q / (2.0 * safe_p0), 0.0, 0.5)
        qr = jnp.clip((1.0 - q) / (2.0 * safe_pl), 0.0, 0.5)
        left = b[1] + s_left * ndtri(ql)
        right = b[-2] - s_right * ndtri(qr)
        in_left = q < p0
        in_right = q >= 1.0 - plast
        if k == 2:
            out = jnp.where(in_left, left, right)
        else:
            out = jnp.where(in_left, left, jnp.where(in_right & ~in_left, right, inner))
        return jnp.where((q >= 0.0) & (q <= 1.0), out, jnp.nan)  # numpyro: NaN outside [0, 1]

    # ------------------------------------------------------------------ sampling
    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape
        dtype = self.logits.dtype
        tiny = jnp.finfo(dtype).tiny
        u = jax.random.uniform(key, shape, dtype=dtype, minval=tiny, maxval=1.0)
        return self.icdf(u)

    # ------------------------------------------------------------------ moments
    def _bucket_moments(self) -> tuple[jax.Array, jax.Array]:
        """Mean and variance of each bucket's component, shape (K,)."""
        b = self.borders
        w = self.widths
        s_left, s_right = self.tail_scales
        means = 0.5 * (b[:-1] + b[1:])
        vars_ = w**2 / 12.0
        hn_var = 1.0 - 2.0 / math.pi
        means = means.at[0].set(b[1] - s_left * _SQRT_2_OVER_PI)
        means = means.at[-1].set(b[-2] + s_right * _SQRT_2_OVER_PI)
        vars_ = vars_.at[0].set(s_left**2 * hn_var)
        vars_ = vars_.at[-1].set(s_right**2 * hn_var)
        return means, vars_

    def _statistic(self, method: str) -> jax.Array:
        """``method()``, a statistic of shape ``batch_shape``, in one compiled call per
        power-of-two bucket of the batch size (eagerly)."""
        if not is_concrete(self.logits, self.borders):
            return getattr(self, method)()
        rows = Rows(self.batch_shape, self.batch_shape)
        logits = param_rows(self.logits, rows, 1)
        return rows.cut(np.asarray(_statistic(np.asarray(self.borders), logits, method))[None])

    @property
    def mean(self):
        """Mean, shape ``batch_shape``."""
        return self._statistic("_mean")

    @property
    def variance(self):
        """Variance, shape ``batch_shape``."""
        return self._statistic("_variance")

    def entropy(self):
        """Differential entropy ``-E[log f(Y)]`` (closed form), shape ``batch_shape``."""
        return self._statistic("_entropy")

    def _mean(self):
        m, _ = self._bucket_moments()
        return jnp.sum(self.probs * m, axis=-1)

    def _variance(self):
        m, v = self._bucket_moments()
        p = self.probs
        mu = jnp.sum(p * m, axis=-1, keepdims=True)
        return jnp.sum(p * (v + (m - mu) ** 2), axis=-1)

    def _entropy(self):
        logp = self.log_probs
        p = jnp.exp(logp)
        s_left, s_right = self.tail_scales
        # entropy of each component: uniform log w, half-normal 0.5 log(pi e s^2 / 2)
        comp = jnp.log(self.widths)
        comp = comp.at[0].set(0.5 * jnp.log(math.pi * math.e * s_left**2 / 2.0))
        comp = comp.at[-1].set(0.5 * jnp.log(math.pi * math.e * s_right**2 / 2.0))
        plogp = jnp.where(p > 0, p * logp, 0.0)
        return -jnp.sum(plogp, axis=-1) + jnp.sum(p * comp, axis=-1)

    def __repr__(self) -> str:
        return f"BarDistribution(K={self.n_buckets}, batch_shape={self.batch_shape})"


@partial(jax.jit, static_argnames="method")
def _evaluate(borders, logits, value, method: str) -> jax.Array:
    """``BarDistribution(borders, logits).method(value)`` in one compiled call."""
    return getattr(BarDistribution(borders, logits), method)(value)


@partial(jax.jit, static_argnames="method")
def _statistic(borders, logits, method: str) -> jax.Array:
    """``BarDistribution(borders, logits).method()`` in one compiled call."""
    return getattr(BarDistribution(borders, logits), method)()
