"""Posterior draws from any posterior of the shared interface, as one ``(B, L, d)`` array.

The posterior checks (:mod:`calibration.posterior_checks`) compare ``B`` true parameters with
``L`` posterior draws each. This module is the one place that turns what the rest of the
library returns into those draws:

* an array of draws, ``(B, L)`` or ``(B, L, d)``;
* a numpyro distribution with batch shape ``(B, ...)`` (a PFN's
  :class:`~probinfer.distributions.BarDistribution`, a
  :class:`~probinfer.distributions.GaussianMixture`, any ``numpyro`` distribution): ``L``
  draws are sampled with the key;
* a :class:`probinfer.Particles` with ``log_weights`` of shape ``(B, N)`` (a ``vmap`` of runs);
* a sequence of ``B`` per-problem posteriors, each one of: an array ``(L,)``/``(L, d)``, a
  distribution with batch shape ``()``, a :class:`~probinfer.Particles` (or a result with a
  ``.particles`` attribute; a result that also has ``.samples``, such as
  :func:`probinfer.smc.tempered_smc`'s, gives the constrained values of every site in
  ``samples``, as its ArviZ ``posterior`` group does, not its unconstrained particles), or
  an ArviZ ``InferenceData``/``DataTree`` (its ``posterior`` group, chains and draws pooled,
  variables flattened and concatenated in order).

Weighted particles are turned into ``L`` independent draws from their weighted empirical
distribution by multinomial resampling with the key; equally weighted particles are used as
they are unless ``num_draws`` asks for another number. All components of a parameter
(trailing batch dimensions of a distribution, event dimensions, the leaves of a particle
pytree) are flattened into the last axis ``d``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from probinfer.engine.core import bucket_size

from ._validation import as_float_array, check_positive_int

__all__ = ["DEFAULT_NUM_DRAWS", "as_theta", "posterior_draws"]

#: Draws taken from a distribution (or resampled from weighted particles) when
#: ``num_draws`` is not given.
DEFAULT_NUM_DRAWS = 100


def _is_distribution(obj) -> bool:
    from numpyro.distributions import Distribution

    return isinstance(obj, Distribution)


def _is_inference_data(obj) -> bool:
    return type(obj).__name__ in ("InferenceData", "DataTree")


def _particles_of(obj):
    """``obj`` as :class:`~probinfer.Particles` of constrained values, or ``None``.

    A result whose ``particles`` are unconstrained (tempered SMC: ``log sigma`` for a
    scale ``sigma``) carries the constrained draws in ``samples`` ``{site: (N, ...)}``;
    those are the draws of the parameters, and they keep the particles' weights.
    """
    from probinfer.particles import Particles

    if isinstance(obj, Particles):
        return obj
    inner = getattr(obj, "particles", None)
    if not isinstance(inner, Particles):
        return None
    samples = getattr(obj, "samples", None)
    if isinstance(samples, Mapping) and samples:
        return Particles(dict(samples), inner.log_weights)
    return inner


def _flat_leaves(values, lead: int) -> np.ndarray:
    """Concatenate the leaves of a pytree of arrays with ``lead`` leading axes into ``(..., d)``."""
    leaves = jax.tree_util.tree_leaves(values)
    if not leaves:
        raise TypeError("posterior particles hold no arrays")
    parts = []
    for leaf in leaves:
        arr = np.asarray(leaf, dtype=np.float64)
        parts.append(arr.reshape(arr.shape[:lead] + (-1,)))
    return np.concatenate(parts, axis=-1)


def _check_draws(draws: np.ndarray, where: str) -> np.ndarray:
    if draws.shape[-2] < 2:
        raise ValueError(f"{where} has {draws.shape[-2]} draws per problem; at least 2 are needed")
    if np.isnan(draws).any():
        raise ValueError(f"{where} contains NaN draws")
    return draws


def _resolve_num(num_draws, default: int) -> int:
    return default if num_draws is None else check_positive_int(num_draws, "num_draws", 2)


@partial(jax.jit, static_argnums=2)
def _resample_rows(key, log_weights, num: int):
    """``num`` multinomial ancestors per row of ``log_weights`` ``(R, N)``, one key per row."""
    from probinfer.resampling import resample

    keys = jax.random.split(key, log_weights.shape[0])
    return jax.vmap(lambda k, w: resample(k, w, num=num, scheme="multinomial"))(keys, log_weights)


def _particle_draws(key, particles, num_draws, batched: bool) -> np.ndarray:
    lw = jnp.asarray(particles.log_weights)
    values = particles.values
    if not batched:
        lw, values = lw[None], jax.tree_util.tree_map(lambda v: jnp.asarray(v)[None], values)
    flat = _flat_leaves(values, 2)  # (B, N, d)
    lw_np = np.asarray(lw, dtype=np.float64)
    equal = np.all(lw_np == lw_np[:, :1], axis=1) & np.isfinite(lw_np[:, 0])
    if num_draws is None and equal.all():
        return flat
    num = _resolve_num(num_draws, flat.shape[1])
    # rows padded to a bucketed count (uniform weights), so new numbers of problems reuse
    # a bounded set of compiled programs; the padding rows are dropped on the host
    rows = flat.shape[0]
    padded = np.zeros((bucket_size(rows, 16, per_octave=4), lw_np.shape[1]))
    padded[:rows] = lw_np
    idx = np.asarray(_resample_rows(key, jnp.asarray(padded, lw.dtype), num))[:rows]
    return np.take_along_axis(flat, idx[..., None], axis=1)


def _distribution_draws(key, dist, num_draws, batched: bool) -> np.ndarray:
    num = _resolve_num(num_draws, DEFAULT_NUM_DRAWS)
    draws = np.asarray(dist.sample(key, (num,)), dtype=np.float64)  # (L, *batch, *event)
    if not batched:
        if len(dist.batch_shape) != 0:
            raise ValueError(
                "posterior: each per-problem distribution must have batch shape (), got "
                f"{dist.batch_shape}; pass one batched distribution instead of a sequence"
            )
        return draws.reshape(num, -1)[None]
    if len(dist.batch_shape) == 0:
        raise ValueError(
            "posterior: a single distribution must have a leading batch axis of problems "
            "(batch shape (B, ...)); got batch shape ()"
        )
    draws = np.moveaxis(draws, 0, 1)  # (B, L, ...)
    return draws.reshape(draws.shape[0], num, -1)


def _inference_data_draws(idata, num_draws) -> np.ndarray:
    post = idata["posterior"]
    if hasattr(post, "to_dataset"):  # ArviZ 1.x DataTree node
        post = post.to_dataset()
    names = list(post.data_vars)
    if not names:
        raise ValueError("posterior: the InferenceData posterior group has no variables")
    parts = []
    for name in names:
        arr = np.asarray(post[name].values, dtype=np.float64)  # (chain, draw, ...)
        parts.append(arr.reshape(arr.shape[0] * arr.shape[1], -1))
    draws = np.concatenate(parts, axis=-1)
    if num_draws is not None and _resolve_num(num_draws, 0) != draws.shape[0]:
        raise ValueError(
            f"num_draws={num_draws} but the InferenceData holds {draws.shape[0]} draws; "
            "leave num_draws unset for stored draws"
        )
    return draws[None]


def _one_problem(key, post, num_draws, i: int) -> np.ndarray:
    where = f"posterior[{i}]"
    particles = _particles_of(post)
    if particles is not None:
        if np.ndim(particles.log_weights) != 1:
            raise ValueError(f"{where}: per-problem particles must have 1-D log_weights")
        return _particle_draws(key, particles, num_draws, batched=False)
    if _is_distribution(post):
        return _distribution_draws(key, post, num_draws, batched=False)
    if _is_inference_data(post):
        return _inference_data_draws(post, num_draws)
    arr = as_float_array(post, where, ndim=None)
    if arr.ndim not in (1, 2):
        raise ValueError(f"{where} must be draws of shape (L,) or (L, d), got {arr.shape}")
    return arr.reshape(arr.shape[0], -1)[None]


def posterior_draws(key, posterior: Any, num_draws: int | None = None) -> np.ndarray:
    """Draws of every problem's posterior as a float64 array of shape ``(B, L, d)``.

    Parameters
    ----------
    key
        ``jax.random`` key for sampling distributions and resampling weighted particles
        (one per problem, folded in from the problem's index).
    posterior
        Any form listed in the module docstring.
    num_draws
        ``L`` for distributions and weighted particles (default
        :data:`DEFAULT_NUM_DRAWS` for distributions, ``N`` for particles); stored draws
        (arrays, InferenceData) are used as they are.

    Raises
    ------
    ValueError
        Fewer than 2 draws, NaN draws, problems with different numbers of draws or of
        parameters, or a distribution without a batch axis.
    TypeError
        An object that is none of the accepted forms.
    """
    if _particles_of(posterior) is not None:
        particles = _particles_of(posterior)
        if np.ndim(particles.log_weights) != 2:
            raise ValueError(
                "posterior: a single Particles must be a batch of runs with log_weights of "
                "shape (B, N); pass a list with one Particles per problem otherwise"
            )
        return _check_draws(_particle_draws(key, particles, num_draws, True), "posterior")
    if _is_distribution(posterior):
        return _check_draws(_distribution_draws(key, posterior, num_draws, True), "posterior")
    if _is_inference_data(posterior):
        raise TypeError(
            "posterior: one InferenceData is one problem; pass a list with one per problem"
        )
    if isinstance(posterior, Sequence) and not isinstance(posterior, str | bytes):
        if len(posterior) == 0:
            raise ValueError("posterior must hold at least one problem")
        # one key per problem by folding in its index (no program compiled per count)
        per = [
            _one_problem(jax.random.fold_in(key, i), p, num_draws, i)
            for i, p in enumerate(posterior)
        ]
        shapes = {d.shape[1:] for d in per}
        if len(shapes) != 1:
            raise ValueError(
                "posterior: every problem needs the same number of draws and parameters, got "
                f"(L, d) shapes {sorted(shapes)}"
            )
        return _check_draws(np.concatenate(per, axis=0), "posterior")
    if isinstance(posterior, np.ndarray | jax.Array):
        arr = as_float_array(posterior, "posterior", ndim=None)
        if arr.ndim not in (2, 3):
            raise ValueError(
                f"posterior draws must have shape (B, L) or (B, L, d), got {arr.shape}"
            )
        return _check_draws(arr.reshape(arr.shape[0], arr.shape[1], -1), "posterior")
    raise TypeError(
        "posterior must be an array of draws (B, L[, d]), a batched numpyro distribution, "
        "batched Particles, or a sequence of per-problem posteriors; got "
        f"{type(posterior).__name__}"
    )


def as_theta(theta, num_problems: int, dim: int) -> np.ndarray:
    """The true parameters as ``(B, d)``, checked against the draws' ``B`` and ``d``."""
    arr = as_float_array(theta, "theta", ndim=None, allow_inf=False)
    if arr.ndim == 0 or arr.shape[0] != num_problems:
        raise ValueError(
            f"theta must have one row per problem ({num_problems}), got shape {arr.shape}"
        )
    arr = arr.reshape(num_problems, -1)
    if arr.shape[1] != dim:
        raise ValueError(
            f"theta has {arr.shape[1]} parameters per problem but the posterior draws have {dim}"
        )
    return arr
