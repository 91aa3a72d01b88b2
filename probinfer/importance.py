"""Importance resampling from a proposal distribution.

An approximate posterior ``q`` (an amortized one, a variational fit) becomes a consistent one
when the unnormalised target density ``gamma(theta) = p(theta) p(y | theta)`` is known:
draw ``theta_m ~ q``, weight them by ``w_m = gamma(theta_m) / q(theta_m)`` and resample
(sampling-importance-resampling, Rubin 1988). The draws are then from the target as the
number of proposals grows, and the weights say how good ``q`` was: their effective sample
size (ESS) is ``M`` for a perfect proposal and ``1`` for a useless one. The mean weight
estimates the target's normaliser (the evidence ``p(y)`` when ``gamma`` is a prior times a
likelihood), unbiased on the natural scale.

Everything is batched over the proposal's ``batch_shape`` (one problem per batch entry).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from probinfer.checks import check_num
from probinfer.resampling import SCHEMES, resample
from probinfer.weights import reweight

Array = jax.Array

__all__ = ["ImportanceResult", "importance_resample"]


class ImportanceResult(NamedTuple):
    """Result of :func:`importance_resample`.

    Attributes
    ----------
    draws
        ``(num,) + batch_shape + event_shape``: equally weighted draws (resampled proposals).
    log_weights
        ``(num_proposals,) + batch_shape``: the proposals' normalised log weights.
    proposals
        ``(num_proposals,) + batch_shape + event_shape``: the proposals themselves.
    ess
        ``batch_shape``: effective sample size of the weights, in ``[1, num_proposals]``.
    log_evidence
        ``batch_shape``: log of the mean unnormalised weight, an estimate of the log
        normaliser of ``log_target`` (unbiased for the normaliser itself).
    """

    draws: Array
    log_weights: Array
    proposals: Array
    ess: Array
    log_evidence: Array


@jax.jit
def _log_prob_jit(proposal, theta):
    return proposal.log_prob(theta)


def _log_prob(proposal, theta) -> Array:
    """``proposal.log_prob(theta)``, compiled (fused) when the proposal is a pytree, as
    :mod:`probinfer.distributions` ones are; eager otherwise."""
    try:
        return _log_prob_jit(proposal, theta)
    except TypeError:  # not a pytree (not a valid jit argument)
        return proposal.log_prob(theta)


def importance_resample(
    key: Array,
    proposal,
    log_target: Callable[[Array], Array],
    num: int,
    num_proposals: int | None = None,
    *,
    scheme: str = "systematic",
) -> ImportanceResult:
    """Draws from ``exp(log_target)`` by importance resampling of ``proposal``'s draws.

    Parameters
    ----------
    key
        ``jax.random`` key of the proposals and of the resampling.
    proposal
        A distribution with ``sample(key, sample_shape)`` and ``log_prob`` (a
        :mod:`probinfer.distributions` one, e.g. a Distribution Transformer's posterior),
        with any ``batch_shape``.
    log_target
        The unnormalised log target density: maps ``(M,) + batch_shape + event_shape`` to
        ``(M,) + batch_shape``. ``-inf`` marks points outside the target's support.
    num
        Draws to return (per batch entry).
    num_proposals
        Proposals drawn (per batch entry; default ``10 * num``). The draws are exact as it
        grows; check :attr:`ImportanceResult.ess`.
    scheme
        Resampling scheme (:data:`probinfer.resampling.SCHEMES`).

    Returns
    -------
    ImportanceResult

    Raises
    ------
    ValueError
        If ``num``/``num_proposals`` is not a positive integer, ``scheme`` is unknown,
        ``log_target`` returns the wrong shape or NaN, or every proposal of a batch entry
        has zero target density.
    """
    num = check_num(num, "num")
    m = check_num(10 * num if num_proposals is None else num_proposals, "num_proposals")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    batch = tuple(proposal.batch_shape)
    k_draw, k_res = jax.random.split(key)
    theta = proposal.sample(k_draw, (m,))
    log_t = jnp.asarray(log_target(theta))
    if log_t.shape != (m,) + batch:
        raise ValueError(
            f"log_target must return shape {(m,) + batch} (proposals x batch), got {log_t.shape}"
        )
    if bool(jnp.any(jnp.isnan(log_t))):
        raise ValueError("log_target returned NaN; return -inf outside the target's support")
    log_w = log_t - _log_prob(proposal, theta)
    log_w = jnp.where(jnp.isnan(log_w), -jnp.inf, log_w)  # -inf - (-inf): no mass
    if not bool(jnp.all(jnp.isfinite(jnp.max(log_w, axis=0)))):
        raise ValueError(
            "every proposal of some batch entry has zero target density: the proposal "
            "does not cover the target"
        )
    # the weights against uniform ones: the increment is the log mean weight
    uniform = jnp.full(log_w.shape, -jnp.log(m), log_w.dtype)
    norm_log_w, log_evidence, ess = reweight(uniform, log_w)
    nb = math.prod(batch)
    flat_w = norm_log_w.reshape(m, nb)
    flat_theta = theta.reshape((m, nb) + theta.shape[1 + len(batch) :])
    keys = jax.random.split(k_res, nb)
    idx = jax.vmap(lambda k, lw: resample(k, lw, num, scheme), in_axes=(0, 1))(keys, flat_w)
    draws = jax.vmap(lambda th, i: th[i], in_axes=(1, 0), out_axes=1)(flat_theta, idx)
    draws = draws.reshape((num,) + batch + theta.shape[1 + len(batch) :])
    return ImportanceResult(draws, norm_log_w, theta, ess, log_evidence)
