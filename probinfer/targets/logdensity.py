"""Targets from plain JAX log densities over a pytree (BlackJAX's convention).

A user with a hand-written density, or a model from another library (a benchmark suite,
TensorFlow Probability on JAX, distrax), writes functions of ONE position, a pytree of
arrays, and gets a :class:`~probinfer.targets.Target` that inference can use without
subclassing. The functions are vectorised over particles with :func:`jax.vmap` and run
compiled: eager calls go through one :func:`jax.jit` program per function and particle
count, and inside inference's compiled steps they are traced once per step program.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from probinfer.checks import check_num
from probinfer.targets.base import LatentSite, Target

Array = jax.Array

__all__ = ["LogDensityTarget", "from_logdensity"]


def _path_name(path, default: str) -> str:
    """A site name from a pytree key path: dict keys and attribute names joined by ``.``,
    sequence indices as ``_i``; a bare array is ``default``."""
    name = ""
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            part = str(entry.key)
        elif isinstance(entry, jax.tree_util.GetAttrKey):
            part = entry.name
        elif isinstance(entry, jax.tree_util.SequenceKey):
            name = f"{name or default}_{entry.idx}"
            continue
        else:  # flattened index of a custom node
            part = str(getattr(entry, "key", entry))
        name = f"{name}.{part}" if name else part
    return name or default


def _check_callable(name: str, fn, optional: bool = False) -> None:
    if fn is None and optional:
        return
    if not callable(fn):
        raise TypeError(f"{name} must be a callable, got {type(fn).__name__}")


class LogDensityTarget(Target):
    """Plain JAX functions of one position pytree as a batched :class:`Target`.

    See :func:`from_logdensity`. Targets built from the same functions are equal (and
    hash alike), so compiled inference code keyed on the target is reused by a new
    target of the same functions.
    """

    def __init__(
        self,
        log_prior: Callable,
        log_likelihood: Callable,
        sample_prior: Callable,
        *,
        constrain: Callable | None = None,
        log_likelihood_pointwise: Callable | None = None,
    ):
        _check_callable("log_prior", log_prior)
        _check_callable("log_likelihood", log_likelihood)
        _check_callable("sample_prior", sample_prior)
        _check_callable("constrain", constrain, optional=True)
        _check_callable("log_likelihood_pointwise", log_likelihood_pointwise, optional=True)
        try:
            example = jax.eval_shape(sample_prior, jax.random.key(0))
        except Exception as err:  # noqa: BLE001 - re-raised with the argument's name
            raise ValueError(
                "sample_prior must map one jax.random key to one position (a pytree of "
                f"arrays), e.g. {{'mu': jax.random.normal(key)}}: calling it failed with "
                f"{type(err).__name__}: {err}"
            ) from err
        leaves = jax.tree_util.tree_leaves_with_path(example)
        if not leaves:
            raise ValueError("sample_prior returned a position with no arrays")
        sites, offset = [], 0
        for path, leaf in leaves:
            if not jnp.issubdtype(leaf.dtype, jnp.floating):
                raise ValueError(
                    f"sample_prior: position leaf {_path_name(path, 'theta')!r} has dtype "
                    f"{leaf.dtype}; only real (floating-point) parameters are supported"
                )
            shape = tuple(leaf.shape)
            site = LatentSite(_path_name(path, "theta"), shape, shape, offset)
            sites.append(site)
            offset += site.size
        zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), example)
        _, unravel = ravel_pytree(zeros)
        for name, fn in (("log_prior", log_prior), ("log_likelihood", log_likelihood)):
            out = jax.eval_shape(fn, example)
            if getattr(out, "shape", None) != ():
                raise ValueError(
                    f"{name} must return a scalar for one position, got shape "
                    f"{getattr(out, 'shape', type(out).__name__)}"
                )
        num_obs = 0
        if log_likelihood_pointwise is not None:
            out = jax.eval_shape(log_likelihood_pointwise, example)
            num_obs = int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(out)))
            if num_obs == 0:
                raise ValueError("log_likelihood_pointwise returned no terms")
        Target.__init__(self, tuple(sites), num_obs, "jax")
        self._set(
            fn_log_prior=log_prior,
            fn_log_likelihood=log_likelihood,
            fn_sample_prior=sample_prior,
            fn_constrain=constrain,
            fn_pointwise=log_likelihood_pointwise,
            position_structure=jax.tree_util.tree_structure(example),
            _unravel=unravel,
            _key=(
                log_prior,
                log_likelihood,
                sample_prior,
                constrain,
                log_likelihood_pointwise,
                jax.tree_util.tree_structure(example),
                tuple((s.shape, leaf.dtype.str) for s, (_, leaf) in zip(sites, leaves)),
            ),
        )

    def __eq__(self, other) -> bool:
        return isinstance(other, LogDensityTarget) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    @property
    def has_pointwise(self) -> bool:
        """Whether pointwise log-likelihood terms were given (the ArviZ ``log_likelihood``
        group, ``az.loo``/``az.waic``)."""
        return self.fn_pointwise is not None

    # ---- one particle -------------------------------------------------------------------
    def position(self, u) -> object:
        """The position pytree of one flat unconstrained vector ``u (D,)``."""
        return self._unravel(u)

    def log_prior_one(self, u) -> Array:
        """``log_prior`` of one flat vector ``u (D,)``."""
        return jnp.asarray(self.fn_log_prior(self._unravel(u)))

    def log_likelihood_one(self, u) -> Array:
        """``log_likelihood`` of one flat vector ``u (D,)``."""
        return jnp.asarray(self.fn_log_likelihood(self._unravel(u)))

    def pointwise_one(self, u) -> Array:
        """The ``(M,)`` pointwise log-likelihood terms of one flat vector ``u (D,)``."""
        out = self.fn_pointwise(self._unravel(u))
        return jnp.concatenate([jnp.reshape(x, -1) for x in jax.tree_util.tree_leaves(out)])

    def sample_prior_one(self, key: Array) -> Array:
        """One prior draw as a flat vector ``(D,)``."""
        flat, _ = ravel_pytree(self.fn_sample_prior(key))
        return flat

    def constrain_one(self, u) -> dict[str, Array]:
        """``constrain`` of one flat vector, or its sites when no ``constrain`` was given."""
        if self.fn_constrain is None:
            return self.unflatten(u)
        out = self.fn_constrain(self._unravel(u))
        if not isinstance(out, dict):
            raise TypeError(
                f"constrain must return a dict of arrays {{name: value}}, got {type(out).__name__}"
            )
        return out

    # ---- batched ------------------------------------------------------------------------
    def log_prior(self, theta) -> Array:
        return _batched(self, "log_prior_one", self._check_theta(theta))

    def log_likelihood(self, theta, pointwise: bool = False) -> Array:
        theta = self._check_theta(theta)
        if not pointwise:
            return _batched(self, "log_likelihood_one", theta)
        if self.fn_pointwise is None:
            raise NotImplementedError(
                "this target has no pointwise log likelihood: pass log_likelihood_pointwise "
                "to from_logdensity (see has_pointwise)"
            )
        return _batched(self, "pointwise_one", theta)

    def sample_prior(self, key: Array, num: int) -> Array:
        num = check_num(num)
        return _batched(self, "sample_prior_one", jax.random.split(key, num))

    def constrain(self, theta) -> dict[str, Array]:
        return _batched(self, "constrain_one", self._check_theta(theta))


@partial(jax.jit, static_argnums=(0, 1))
def _batched(target: LogDensityTarget, method: str, x):
    """``vmap`` of a one-particle method, compiled once per (equal) target, method and
    shape; under a trace it enters the caller's program as one nested call."""
    return jax.vmap(getattr(target, method))(x)


def from_logdensity(
    log_prior: Callable,
    log_likelihood: Callable,
    sample_prior: Callable,
    *,
    constrain: Callable | None = None,
    log_likelihood_pointwise: Callable | None = None,
) -> LogDensityTarget:
    """A target from plain JAX functions of one position pytree (BlackJAX's convention).

    Inference sees the flat vector of the position's leaves (``jax.flatten_util``), batched
    over particles with ``jax.vmap``; every function must be traceable by JAX (``jit``,
    ``vmap``, ``grad``), so gradient kernels (HMC, NUTS) and the zero-variance evidence
    work. The functions see the data through their closure.

    Parameters
    ----------
    log_prior
        ``log_prior(position) -> scalar``: the log prior density of the position, the space
        inference moves in. For a constrained parameter, work on an unconstrained
        reparametrisation (``log_sigma``) and include the log-Jacobian here.
    log_likelihood
        ``log_likelihood(position) -> scalar``: ``log p(y | position)``.
    sample_prior
        ``sample_prior(key) -> position``: one exact draw from the prior, as the pytree that
        the densities take (a dict of arrays names the sites: ``{"mu": ..., "log_tau":
        ...}``).
    constrain
        Optional ``constrain(position) -> {name: array}``: the values reported in results
        and ArviZ (``sigma = exp(log_sigma)``, derived quantities). Default: the position's
        own leaves.
    log_likelihood_pointwise
        Optional ``log_likelihood_pointwise(position) -> array (M,)`` (or a pytree of
        arrays, flattened in order): one term per observation, summing to
        ``log_likelihood``. Without it the target has ``has_pointwise = False`` and results
        have no ArviZ ``log_likelihood`` group (``az.loo``/``az.waic`` need one).

    Returns
    -------
    LogDensityTarget

    Raises
    ------
    TypeError
        If a function argument is not callable.
    ValueError
        If ``sample_prior`` does not give a pytree of floating-point arrays, or a density
        does not return a scalar.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from jax.scipy.stats import norm
    >>> y = jnp.array([0.3, 1.2, 0.8])
    >>> target = from_logdensity(
    ...     lambda p: norm.logpdf(p["mu"], 0.0, 2.0),
    ...     lambda p: norm.logpdf(y, p["mu"], 1.0).sum(),
    ...     lambda key: {"mu": 2.0 * jax.random.normal(key)},
    ...     log_likelihood_pointwise=lambda p: norm.logpdf(y, p["mu"], 1.0),
    ... )
    >>> target.dim, target.num_observations
    (1, 3)
    """
    return LogDensityTarget(
        log_prior,
        log_likelihood,
        sample_prior,
        constrain=constrain,
        log_likelihood_pointwise=log_likelihood_pointwise,
    )
