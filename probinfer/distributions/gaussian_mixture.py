"""Finite mixture of multivariate normal distributions with full covariances.

The posterior family of the Distribution Transformer and a flexible predictive family for
calibration. Parameters are stored as normalised component ``logits``, component ``means``
and lower Cholesky factors ``scale_trils`` so that densities are evaluated by triangular
solves (no explicit inverses).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.linalg import solve_triangular
from jax.scipy.special import logsumexp, ndtr, ndtri
from numpyro.distributions import Distribution, constraints

from probinfer.distributions._bucketing import (
    Rows,
    is_concrete,
    pad_rows,
    param_rows,
    to_device,
    value_rows,
)
from probinfer.engine.core import bucket_size

Array = jax.Array

__all__ = ["GaussianMixture"]

_LOG_2PI = float(np.log(2.0 * np.pi))
_BISECTION_STEPS = 80


def _as_float(x, name: str) -> Array | np.ndarray:
    """``x`` as a floating array: JAX arrays and tracers stay on the device, anything else
    becomes a numpy array of JAX's default precision (converted on the host: ``jnp.asarray``
    of a numpy array compiles a program per new shape)."""
    if isinstance(x, jax.Array):
        arr = x
    else:
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"{name} must be array-like of numbers, got {type(x).__name__}"
            ) from err
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be array-like of numbers, got {type(x).__name__}")
        arr = arr.astype(jax.dtypes.canonicalize_dtype(arr.dtype), copy=False)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    return arr


def _mixture_logits(weights, logits) -> tuple[Array, bool]:
    """The validated ``weights`` (and ``True``) or ``logits`` (and ``False``), exactly one of
    them given; :func:`_parameters` normalises them."""
    if (weights is None) == (logits is None):
        raise ValueError("exactly one of `weights` or `logits` must be given")
    if weights is not None:
        w = _as_float(weights, "weights")
        if w.ndim < 1 or w.shape[-1] == 0:
            raise ValueError(f"weights must have shape batch + (K,) with K >= 1, got {w.shape}")
        if is_concrete(w):  # numpy: a jnp check compiles a program per new shape
            a = np.asarray(w)
            if np.isnan(a).any():
                raise ValueError("weights contain NaN")
            if (a < 0).any() or np.isinf(a).any():
                raise ValueError("weights must be finite and non-negative")
            if (a.sum(axis=-1) <= 0).any():
                raise ValueError("weights must have a positive sum in every batch element")
        return w, True
    else:
        lg = _as_float(logits, "logits")
        if lg.ndim < 1 or lg.shape[-1] == 0:
            raise ValueError(f"logits must have shape batch + (K,) with K >= 1, got {lg.shape}")
        if is_concrete(lg):
            a = np.asarray(lg)
            if np.isnan(a).any() or (a == np.inf).any():
                raise ValueError("logits must not contain NaN or +inf")
            if (a == -np.inf).all(axis=-1).any():
                raise ValueError("logits are all -inf in some batch element")
    return lg, False


def _scale_trils(means: Array, covariances, scale_trils) -> tuple[Array, bool]:
    """The validated ``covariances`` (and ``True``) or ``scale_trils`` (and ``False``),
    exactly one of them given; :func:`_parameters` factorises covariances."""
    if (covariances is None) == (scale_trils is None):
        raise ValueError("exactly one of `covariances` or `scale_trils` must be given")
    name = "covariances" if covariances is not None else "scale_trils"
    mat = _as_float(covariances if covariances is not None else scale_trils, name)
    d = means.shape[-1]
    if mat.ndim < 3 or mat.shape[-2:] != (d, d):
        raise ValueError(
            f"{name} must have shape batch + (K, D, D) with D = {d} (from `means`), got {mat.shape}"
        )
    if mat.shape[-3] != means.shape[-2]:
        raise ValueError(f"{name} has {mat.shape[-3]} components but `means` has {means.shape[-2]}")
    if covariances is not None:
        concrete = is_concrete(mat)
        if concrete:
            a = np.asarray(mat)
            if not np.isfinite(a).all():
                raise ValueError("covariances must be finite")
            asym = np.abs(a - np.swapaxes(a, -1, -2)).max()
            if float(asym) > 1e-5 * max(float(np.abs(a).max()), 1.0):
                raise ValueError("covariances must be symmetric")
        return mat, True
    if is_concrete(mat):
        a = np.asarray(mat)
        if not np.isfinite(a).all():
            raise ValueError("scale_trils must be finite")
        if (np.triu(a, k=1) != 0).any():
            raise ValueError("scale_trils must be lower triangular")
        if (np.diagonal(a, axis1=-2, axis2=-1) <= 0).any():
            raise ValueError("scale_trils must have a positive diagonal")
    return mat, False


@partial(jax.jit, static_argnums=(3, 4, 5))
def _parameters(w, means, mat, from_weights: bool, from_covariances: bool, batch_shape):
    """Normalised logits, means and Cholesky factors broadcast to ``batch_shape``, in one
    compiled call (inside a trace; concrete inputs take :func:`_host_parameters`)."""
    lg = jnp.log(w) if from_weights else w
    lg = lg - logsumexp(lg, axis=-1, keepdims=True)
    tril = jnp.linalg.cholesky(0.5 * (mat + jnp.swapaxes(mat, -1, -2))) if from_covariances else mat
    k, d = means.shape[-2:]
    dtype = jnp.result_type(lg.dtype, means.dtype, tril.dtype)
    return (
        jnp.broadcast_to(lg, batch_shape + (k,)).astype(dtype),
        jnp.broadcast_to(means, batch_shape + (k, d)).astype(dtype),
        jnp.broadcast_to(tril, batch_shape + (k, d, d)).astype(dtype),
    )


def _host_parameters(w, means, mat, from_weights: bool, from_covariances: bool, batch_shape):
    """:func:`_parameters` of concrete inputs, computed with numpy (a compiled call would
    compile, and keep, one program per new batch shape)."""
    w, means, mat = (np.asarray(a) for a in (w, means, mat))
    with np.errstate(divide="ignore"):
        lg = np.log(w) if from_weights else w
    top = np.max(lg, axis=-1, keepdims=True)  # finite: every row has a positive weight
    lg = lg - (top + np.log(np.sum(np.exp(lg - top), axis=-1, keepdims=True)))
    tril = mat
    if from_covariances:
        try:
            tril = np.linalg.cholesky(0.5 * (mat + np.swapaxes(mat, -1, -2)))
        except np.linalg.LinAlgError as err:
            raise ValueError("covariances must be symmetric positive definite") from err
    k, d = means.shape[-2:]
    dtype = jnp.result_type(lg.dtype, means.dtype, tril.dtype)
    return tuple(
        to_device(np.broadcast_to(a, batch_shape + shape).astype(dtype))
        for a, shape in ((lg, (k,)), (means, (k, d)), (tril, (k, d, d)))
    )


class GaussianMixture(Distribution):
    r"""Mixture of ``K`` multivariate normals with full covariances.

    .. math:: p(x) = \sum_{k=1}^K w_k \, \mathcal N(x \mid \mu_k, \Sigma_k)

    Parameters
    ----------
    means
        Component means, shape ``batch + (K, D)``.
    covariances, scale_trils
        Exactly one: component covariances ``batch + (K, D, D)`` (symmetric positive definite;
        factorised by Cholesky) or their lower Cholesky factors (positive diagonal).
    weights, logits
        Exactly one: non-negative mixture weights (normalised here) or unnormalised log
        weights, shape ``batch + (K,)``.
    validate_args
        numpyro's flag (``None``: its global default), kept for its checks of values. The
        parameters are checked here instead of by numpyro's constructor: the checks that
        raise ``ValueError`` (shapes, negative/NaN weights, non-PSD covariances) always run
        on concrete arrays, on the host; inside ``jit`` only shapes are checked.

    Notes
    -----
    ``batch_shape`` is the broadcast of the leading shapes of the three parameters and
    ``event_shape`` is ``(D,)``. One-dimensional mixtures (``D == 1``) also have
    :meth:`cdf` and :meth:`icdf`, which act elementwise on values of shape ``(..., 1)``.
    The distribution is a JAX pytree (fields ``logits``, ``means``, ``scale_trils``), so it
    can be passed through and returned from ``jit``/``vmap``.
    """

    # logits may be -inf (zero-weight components), which constraints.real_vector rejects
    arg_constraints = {
        "means": constraints.independent(constraints.real, 2),
        "scale_trils": constraints.independent(constraints.lower_cholesky, 1),
    }
    support = constraints.real_vector
    reparametrized_params = ["means", "scale_trils"]
    pytree_data_fields = ("logits", "means", "scale_trils")

    def __init__(
        self,
        means,
        covariances=None,
        *,
        scale_trils=None,
        weights=None,
        logits=None,
        validate_args: bool | None = None,
    ):
        means = _as_float(means, "means")
        if means.ndim < 2 or means.shape[-2] == 0 or means.shape[-1] == 0:
            raise ValueError(
                f"means must have shape batch + (K, D) with K, D >= 1, got {means.shape}"
            )
        lg, from_weights = _mixture_logits(weights, logits)
        if lg.shape[-1] != means.shape[-2]:
            wname = "weights" if weights is not None else "logits"
            raise ValueError(
                f"{wname} has {lg.shape[-1]} components but `means` has {means.shape[-2]}"
            )
        mat, from_covariances = _scale_trils(means, covariances, scale_trils)
        try:
            batch_shape = jnp.broadcast_shapes(lg.shape[:-1], means.shape[:-2], mat.shape[:-3])
        except ValueError as err:
            raise ValueError(
                "batch shapes of weights/logits "
                f"{lg.shape[:-1]}, means {means.shape[:-2]} and covariances {mat.shape[:-3]} "
                "do not broadcast"
            ) from err
        fn = _host_parameters if is_concrete(lg, means, mat) else _parameters
        self.logits, self.means, self.scale_trils = fn(
            lg, means, mat, from_weights, from_covariances, tuple(batch_shape)
        )
        if from_covariances and is_concrete(self.scale_trils):
            t = np.asarray(self.scale_trils)
            if not np.isfinite(t).all() or (np.diagonal(t, axis1=-2, axis2=-1) <= 0).any():
                raise ValueError("covariances must be symmetric positive definite")
        d = means.shape[-1]
        # numpyro's constructor-time check of arg_constraints repeats the checks above (which
        # always run on concrete inputs, on the host) and would compile an eager program per
        # operation and new shape; the flag keeps its meaning for everything else
        super().__init__(batch_shape=batch_shape, event_shape=(d,), validate_args=False)
        if validate_args is not None:
            self._validate_args = validate_args
        else:  # numpyro's global default
            del self._validate_args

    # ------------------------------------------------------------------ constructors
    @classmethod
    def univariate(cls, weights, locs, scales, *, validate_args: bool | None = None):
        """One-dimensional mixture ``sum_k w_k N(loc_k, scale_k^2)``.

        Parameters
        ----------
        weights, locs, scales
            Arrays of shape ``batch + (K,)``; ``scales`` are standard deviations (> 0).

        Returns
        -------
        GaussianMixture
            With ``event_shape == (1,)``.
        """
        locs = _as_float(locs, "locs")
        scales = _as_float(scales, "scales")
        if locs.ndim < 1:
            raise ValueError(f"locs must have shape batch + (K,), got {locs.shape}")
        if scales.ndim < 1:
            raise ValueError(f"scales must have shape batch + (K,), got {scales.shape}")
        if scales.shape[-1] != locs.shape[-1]:
            raise ValueError(
                f"scales has {scales.shape[-1]} components but locs has {locs.shape[-1]}"
            )
        if is_concrete(scales):
            a = np.asarray(scales)
            if not (np.all(a > 0) and np.all(np.isfinite(a))):
                raise ValueError("scales must be finite and positive")
        return cls(
            locs[..., None],
            scale_trils=scales[..., None, None],
            weights=weights,
            validate_args=validate_args,
        )

    # ------------------------------------------------------------------ basic properties
    @property
    def num_components(self) -> int:
        """Number of mixture components ``K``."""
        return self.logits.shape[-1]

    def _statistic(self, fn) -> Array:
        """``fn(logits, means, scale_trils)``, a statistic with the batch shape leading, in
        one compiled call per power-of-two bucket of the batch size (eagerly)."""
        params = (self.logits, self.means, self.scale_trils)
        if not is_concrete(*params):
            return fn(*params)
        rows = Rows(self.batch_shape, self.batch_shape)
        padded = tuple(param_rows(a, rows, n) for a, n in zip(params, (1, 2, 3)))
        return rows.cut(np.asarray(_apply(fn, *padded))[None])

    @property
    def weights(self) -> Array:
        """Normalised mixture weights, shape ``batch + (K,)``."""
        return self._statistic(_weights)

    @property
    def covariances(self) -> Array:
        """Component covariances ``L L^T``, shape ``batch + (K, D, D)``."""
        return self._statistic(_covariances)

    @property
    def mean(self) -> Array:
        """Mixture mean ``sum_k w_k mu_k``, shape ``batch + (D,)``."""
        return self._statistic(_mean)

    @property
    def covariance_matrix(self) -> Array:
        """Mixture covariance ``sum_k w_k (Sigma_k + mu_k mu_k^T) - mu mu^T``."""
        return self._statistic(_covariance_matrix)

    @property
    def variance(self) -> Array:
        """Diagonal of :attr:`covariance_matrix`, shape ``batch + (D,)``."""
        return self._statistic(_variance)

    # ------------------------------------------------------------------ sampling / density
    def sample(self, key, sample_shape=()) -> Array:
        """Draw ``sample_shape + batch_shape + (D,)`` samples (component, then normal) in one
        compiled call; eagerly, the number of draws and the batch are padded to powers of two
        (the draws of the real points are those of the unpadded call)."""
        shape = tuple(sample_shape) + self.batch_shape
        k, d = self.means.shape[-2:]
        nb = int(np.prod(self.batch_shape, dtype=np.int64))
        num = int(np.prod(shape, dtype=np.int64))
        params = (self.logits, self.means, self.scale_trils)
        if not is_concrete(key, *params) or num == 0:
            flat = tuple(a.reshape((nb,) + a.shape[len(self.batch_shape) :]) for a in params)
            rows = np.arange(num, dtype=np.int32) % nb
            return _sample_rows(key, *flat, rows).reshape(shape + (d,))
        size = bucket_size(nb, 1)
        flat = tuple(
            pad_rows(np.asarray(a).reshape((nb,) + a.shape[len(self.batch_shape) :]), size)
            for a in params
        )
        rows = np.arange(bucket_size(num, 1), dtype=np.int32) % nb
        out = np.asarray(_sample_rows(key, *flat, rows))[:num]
        return to_device(out.reshape(shape + (d,)))

    def _params_rows(self, value) -> tuple[Rows, tuple, np.ndarray]:
        """The bucketed host layout (:mod:`probinfer.distributions._bucketing`) of the
        parameters and of ``value`` (``sample_shape + batch_shape + (D,)``)."""
        rows = Rows(np.shape(value), self.batch_shape, event_ndim=1)
        params = tuple(
            param_rows(a, rows, n)
            for a, n in ((self.logits, 1), (self.means, 2), (self.scale_trils, 3))
        )
        return rows, params, value_rows(value, rows, 1, self.means.dtype)

    def _evaluate(self, fn, value) -> Array:
        """``fn(logits, means, scale_trils, value)``, bucketed when called eagerly."""
        params = (self.logits, self.means, self.scale_trils)
        if not is_concrete(value, *params) or Rows(np.shape(value), self.batch_shape, 1).empty:
            return fn(*params, jnp.asarray(value))
        rows, padded, v = self._params_rows(value)
        return rows.cut(fn(*padded, v))

    def component_log_probs(self, value) -> Array:
        """Log densities ``log N(x | mu_k, Sigma_k)`` of every component (weights excluded).

        Parameters
        ----------
        value
            Points of shape ``sample_shape + batch_shape + (D,)`` (broadcastable).

        Returns
        -------
        Array
            Shape ``sample_shape + batch_shape + (K,)``.
        """
        return self._evaluate(_component_log_probs, value)

    def responsibilities(self, value) -> Array:
        """Posterior component probabilities ``p(k | x)``, shape ``... + (K,)``."""
        joint = self.logits + self.component_log_probs(value)
        return jnp.exp(joint - logsumexp(joint, axis=-1, keepdims=True))

    def log_prob(self, value) -> Array:
        """``log sum_k w_k N(x | mu_k, Sigma_k)`` by logsumexp over components, in one
        compiled call (per power-of-two bucket of the sample and batch sizes, eagerly)."""
        return self._evaluate(_log_prob, value)

    # ------------------------------------------------------------------ marginals
    def marginal(self, dims: int | Sequence[int]) -> GaussianMixture:
        """Mixture marginal over the coordinates ``dims`` (same weights).

        Marginals of a Gaussian mixture are Gaussian mixtures of the marginal components.
        """
        d = self.event_shape[0]
        idx = np.atleast_1d(np.asarray(dims))
        if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"dims must be a non-empty sequence of ints, got {dims!r}")
        if np.any(idx < -d) or np.any(idx >= d):
            raise ValueError(f"dims must lie in [-{d}, {d}), got {dims!r}")
        idx = idx % d
        if len(set(idx.tolist())) != idx.size:
            raise ValueError(f"dims must not repeat, got {dims!r}")
        cov = self.covariances[..., idx[:, None], idx[None, :]]
        return GaussianMixture(
            self.means[..., idx],
            cov,
            logits=self.logits,
            validate_args=self._validate_args,
        )

    # ------------------------------------------------------------------ 1-D cdf / icdf
    def _require_univariate(self, what: str) -> None:
        if self.event_shape != (1,):
            raise NotImplementedError(
                f"{what} is defined only for one-dimensional mixtures (D == 1); this mixture "
                f"has event_shape {self.event_shape}. Use marginal([i]) first."
            )

    def cdf(self, value) -> Array:
        """Mixture cdf ``sum_k w_k Phi((x - mu_k) / s_k)`` for ``D == 1``.

        Acts elementwise: ``value`` of shape ``sample_shape + batch_shape + (1,)`` gives a
        result of the same shape.
        """
        self._require_univariate("cdf")
        return self._evaluate(_cdf, _with_event_axis(value))

    def icdf(self, q) -> Array:
        """Quantile function for ``D == 1`` (elementwise on ``(..., 1)``-shaped ``q``).

        The root of ``F(x) = q`` is bracketed exactly by ``[min_k, max_k] (mu_k + s_k
        Phi^{-1}(q))`` (the mixture cdf lies between the smallest and largest component
        cdfs) and found by vectorised bisection run to float resolution, so
        ``cdf(icdf(q)) == q`` up to the rounding of the cdf. ``icdf(0) = -inf`` and
        ``icdf(1) = +inf``.
        """
        self._require_univariate("icdf")
        return self._evaluate(_icdf, _with_event_axis(q))


def _with_event_axis(value):
    """A scalar as shape ``(1,)`` (``cdf``/``icdf`` act on ``(..., 1)``-shaped values)."""
    if np.ndim(value) != 0:
        return value
    return value[None] if isinstance(value, jax.Array) else np.reshape(value, (1,))


# The methods run as one compiled call (eagerly, every operation would compile on its own for
# each new shape; inside jit these calls inline).
@jax.jit
def _sample_rows(key, logits, means, scale_trils, rows) -> Array:
    """One draw for each batch member ``rows[i]``: ``(len(rows), D)``. The random numbers of
    point ``i`` do not depend on ``len(rows)``, so padded calls draw the same points."""
    key_k, key_z = jax.random.split(key)
    comp = jax.random.categorical(key_k, logits[rows], axis=-1)
    mu = means[rows, comp]
    tril = scale_trils[rows, comp]
    z = jax.random.normal(key_z, mu.shape, dtype=means.dtype)
    return mu + jnp.einsum("...ij,...j->...i", tril, z)


@jax.jit
def _cdf(logits, means, scale_trils, x) -> Array:
    locs, scales = means[..., 0], scale_trils[..., 0, 0]
    return jnp.sum(jnp.exp(logits) * ndtr((x - locs) / scales), axis=-1, keepdims=True)


@jax.jit
def _icdf(logits, means, scale_trils, q) -> Array:
    locs, scales = means[..., 0], scale_trils[..., 0, 0]
    u = q.astype(means.dtype)
    zq = ndtri(jnp.clip(u, 0.0, 1.0))
    cand = locs + scales * zq  # (..., K) by broadcasting the trailing event axis
    lo = jnp.min(cand, axis=-1, keepdims=True)
    hi = jnp.max(cand, axis=-1, keepdims=True)
    finite = jnp.isfinite(lo) & jnp.isfinite(hi)
    lo0 = jnp.where(finite, lo, 0.0)
    hi0 = jnp.where(finite, hi, 0.0)

    def step(_, bounds):
        a, b = bounds
        mid = 0.5 * (a + b)
        below = _cdf(logits, means, scale_trils, mid) < u
        return jnp.where(below, mid, a), jnp.where(below, b, mid)

    a, b = lax.fori_loop(0, _BISECTION_STEPS, step, (lo0, hi0))
    root = 0.5 * (a + b)
    out = jnp.where(finite, root, jnp.where(u <= 0.0, -jnp.inf, jnp.inf))
    return jnp.where((u < 0.0) | (u > 1.0) | jnp.isnan(u), jnp.nan, out)


@jax.jit
def _component_log_probs(logits, means, scale_trils, x) -> Array:
    del logits
    diff = x[..., None, :] - means
    # one triangular inverse per component, then a matrix product per point (a solve per
    # point is many tiny sequential solves: several times slower for many points)
    eye = jnp.eye(scale_trils.shape[-1], dtype=scale_trils.dtype)
    inv = solve_triangular(scale_trils, jnp.broadcast_to(eye, scale_trils.shape), lower=True)
    z = jnp.einsum("...ij,...j->...i", inv, diff)
    half_logdet = jnp.sum(jnp.log(jnp.diagonal(scale_trils, axis1=-2, axis2=-1)), -1)
    d = means.shape[-1]
    return -0.5 * jnp.sum(z**2, axis=-1) - half_logdet - 0.5 * d * _LOG_2PI


@jax.jit
def _log_prob(logits, means, scale_trils, x) -> Array:
    return logsumexp(logits + _component_log_probs(logits, means, scale_trils, x), axis=-1)


# batch statistics of the parameters (logits, means, scale_trils)
def _weights(logits, means, scale_trils) -> Array:
    return jnp.exp(logits)


def _covariances(logits, means, scale_trils) -> Array:
    return scale_trils @ jnp.swapaxes(scale_trils, -1, -2)


def _mean(logits, means, scale_trils) -> Array:
    return jnp.sum(jnp.exp(logits)[..., None] * means, axis=-2)


def _covariance_matrix(logits, means, scale_trils) -> Array:
    w = jnp.exp(logits)[..., None, None]
    centred = means - _mean(logits, means, scale_trils)[..., None, :]
    outer = centred[..., :, None] * centred[..., None, :]
    return jnp.sum(w * (_covariances(logits, means, scale_trils) + outer), axis=-3)


def _variance(logits, means, scale_trils) -> Array:
    w = jnp.exp(logits)[..., None]
    comp_var = jnp.sum(scale_trils**2, axis=-1)
    centred = means - _mean(logits, means, scale_trils)[..., None, :]
    return jnp.sum(w * (comp_var + centred**2), axis=-2)


@partial(jax.jit, static_argnums=0)
def _apply(fn, *params) -> Array:
    return fn(*params)
