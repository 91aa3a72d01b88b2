"""A weighted particle set seen as a (discrete) distribution.

The output of an SMC run: atoms ``values[i]`` with normalised weights ``w_i``,
``P = sum_i w_i delta_{values[i]}``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp
from numpyro.distributions import Distribution, constraints

from probinfer.resampling import resample
from probinfer.weights import check_log_weights, ess, log_normalize

Array = jax.Array

__all__ = ["WeightedEmpirical"]


class WeightedEmpirical(Distribution):
    r"""Weighted empirical measure ``sum_i w_i delta_{x_i}`` of ``N`` particles.

    The numpyro-distribution view of :class:`probinfer.Particles` (array values), returned
    by :meth:`probinfer.Particles.to_distribution`: the weighted set itself is always a
    ``Particles``; this class adds ``sample``, ``log_prob``, ``cdf`` and ``icdf`` so that the
    set can stand wherever a numpyro distribution is expected.

    Parameters
    ----------
    values
        Particle values, shape ``(N, *event_shape)``.
    log_weights
        Unnormalised log weights, shape ``(N,)``; ``-inf`` marks a zero-weight particle.
        Validated with :func:`probinfer.weights.check_log_weights` when concrete (NaN,
        ``+inf`` or all ``-inf`` raise ``ValueError``) and normalised with
        :mod:`probinfer.weights`. ``None`` means equal weights.
    validate_args
        Passed to :class:`numpyro.distributions.Distribution`.

    Notes
    -----
    ``batch_shape`` is ``()``. The measure is discrete: :meth:`log_prob` is the log of the
    probability *mass* at a point (the total weight of the atoms equal to it), ``-inf``
    away from the atoms; it is not a density with respect to Lebesgue measure.
    :meth:`cdf` and :meth:`icdf` are defined for scalar particles (``event_shape`` ``()``
    or ``(1,)``). The distribution is a JAX pytree (fields ``values``, ``log_weights``).
    """

    # log weights may be -inf (zero weight), which numpyro's real constraints reject; they are
    # validated by probinfer.weights.check_log_weights instead.
    arg_constraints: dict = {}
    pytree_data_fields = ("values", "log_weights")

    def __init__(self, values, log_weights=None, *, validate_args: bool | None = None):
        try:
            values = jnp.asarray(values)
        except TypeError as err:
            raise TypeError(f"values must be an array, got {type(values).__name__}") from err
        if values.ndim < 1 or values.shape[0] == 0:
            raise ValueError(
                f"values must have shape (N, *event_shape) with N >= 1, got {values.shape}"
            )
        n = values.shape[0]
        if log_weights is None:
            log_weights = jnp.zeros(n, dtype=jnp.result_type(float))
        lw = check_log_weights(log_weights, "log_weights")
        if lw.shape[0] != n:
            raise ValueError(
                f"log_weights has {lw.shape[0]} entries but values has {n} particles (leading axis)"
            )
        if (
            not isinstance(values, jax.core.Tracer)
            and jnp.issubdtype(values.dtype, jnp.floating)
            and bool(jnp.any(jnp.isnan(values)))
        ):
            raise ValueError("values contain NaN")
        self.values = values
        self.log_weights = lw
        super().__init__(batch_shape=(), event_shape=values.shape[1:], validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.independent(constraints.real, len(self.event_shape))

    # ------------------------------------------------------------------ weights
    @property
    def num_particles(self) -> int:
        """Number of atoms ``N``."""
        return self.values.shape[0]

    @property
    def log_normalized_weights(self) -> Array:
        """``log w_i``, normalised to sum to one."""
        return log_normalize(self.log_weights)

    @property
    def normalized_weights(self) -> Array:
        """``w_i``, shape ``(N,)``, summing to one."""
        return jnp.exp(self.log_normalized_weights)

    @property
    def ess(self) -> Array:
        """Effective sample size ``1 / sum_i w_i^2`` (see :func:`probinfer.weights.ess`)."""
        return ess(self.log_weights)

    def _broadcast_weights(self) -> Array:
        return self.normalized_weights.reshape((-1,) + (1,) * len(self.event_shape))

    # ------------------------------------------------------------------ moments
    @property
    def mean(self) -> Array:
        """``sum_i w_i x_i``, shape ``event_shape``."""
        return jnp.sum(self._broadcast_weights() * self.values, axis=0)

    @property
    def variance(self) -> Array:
        """Elementwise ``sum_i w_i (x_i - mean)^2`` (the variance of the measure, no
        small-sample correction), shape ``event_shape``."""
        centred = self.values - self.mean
        return jnp.sum(self._broadcast_weights() * centred**2, axis=0)

    def expectation(self, f=None) -> Array:
        """``sum_i w_i f(x_i)``, exactly :meth:`probinfer.Particles.expectation`: ``f`` maps
        the batched values (leading particle axis) to arrays with the same leading axis
        (default: the identity, i.e. :meth:`mean`)."""
        from probinfer.particles import Particles

        return Particles(self.values, self.log_weights).expectation(f)

    # ------------------------------------------------------------------ sampling / mass
    def sample(self, key, sample_shape=()) -> Array:
        """Draws with replacement, atom ``i`` with probability ``w_i`` (multinomial
        resampling by :func:`probinfer.resampling.resample`, in random order)."""
        sample_shape = tuple(sample_shape)
        num = 1
        for s in sample_shape:
            num *= int(s)
        if num == 0:
            return jnp.zeros(sample_shape + self.event_shape, dtype=self.values.dtype)
        key_draw, key_perm = jax.random.split(key)
        idx = resample(key_draw, self.log_weights, num, scheme="multinomial")
        # resample returns sorted ancestors; permute so that the draws are exchangeable
        idx = jax.random.permutation(key_perm, idx)
        return self.values[idx].reshape(sample_shape + self.event_shape)

    def log_prob(self, value) -> Array:
        """Log probability mass ``log sum_{i : x_i = value} w_i`` (``-inf`` off the atoms).

        ``value`` has shape ``sample_shape + event_shape``; equality is exact.
        """
        x = jnp.asarray(value)
        k = len(self.event_shape)
        lead = x.shape[: x.ndim - k]
        xe = x.reshape(lead + (1,) + self.event_shape)
        equal = xe == self.values
        if k:
            equal = jnp.all(equal.reshape(equal.shape[: len(lead) + 1] + (-1,)), axis=-1)
        lw = jnp.where(equal, self.log_normalized_weights, -jnp.inf)
        return logsumexp(lw, axis=-1)

    # ------------------------------------------------------------------ 1-D cdf / icdf
    def _scalar_atoms(self, what: str) -> tuple[Array, Array]:
        if self.event_shape not in ((), (1,)):
            raise NotImplementedError(
                f"{what} is defined only for scalar particles (event_shape () or (1,)), "
                f"got event_shape {self.event_shape}"
            )
        v = self.values.reshape(-1)
        order = jnp.argsort(v)
        cum = jnp.cumsum(self.normalized_weights[order])
        return v[order], cum

    def cdf(self, value) -> Array:
        """Weighted ECDF ``F(x) = sum_{i : x_i <= x} w_i`` (right-continuous).

        Acts elementwise on ``value`` (of shape ``sample_shape + event_shape``).
        """
        v, cum = self._scalar_atoms("cdf")
        x = jnp.asarray(value)
        pos = jnp.searchsorted(v, x, side="right")
        out = jnp.where(pos > 0, cum[jnp.maximum(pos - 1, 0)], 0.0)
        return jnp.clip(out, 0.0, 1.0)

    def icdf(self, q) -> Array:
        """Weighted quantile: the smallest atom ``x_i`` with ``F(x_i) >= q``.

        ``q`` in ``[0, 1]`` elementwise; ``icdf(0)`` is the smallest atom of positive
        weight, ``icdf(1)`` the largest (robust to the float rounding of ``F`` below 1);
        ``q`` outside ``[0, 1]`` or NaN gives NaN. ``q`` is compared with the float
        cumulative weights with a tolerance of ``4 sqrt(N) eps`` (their rounding error), so
        that ``icdf(cdf(x_i)) == x_i`` for every atom of positive weight.
        """
        v, cum = self._scalar_atoms("icdf")
        u = jnp.asarray(q, dtype=cum.dtype)
        n = v.shape[0]
        first_positive = jnp.searchsorted(cum, 0.0, side="right")
        tol = 4.0 * jnp.sqrt(float(n)) * jnp.finfo(cum.dtype).eps
        inner = jnp.searchsorted(cum, u - tol, side="left")
        pos = jnp.where(u <= 0.0, first_positive, jnp.maximum(inner, first_positive))
        # the last atom of positive weight is where cum reaches its maximum
        last_positive = jnp.searchsorted(cum, cum[-1], side="left")
        pos = jnp.clip(pos, 0, jnp.minimum(last_positive, n - 1))
        out = v[pos].astype(jnp.result_type(v.dtype, float))
        return jnp.where((u < 0.0) | (u > 1.0) | jnp.isnan(u), jnp.nan, out)
