"""Conditional SMC as a model wrapper: slot 0 holds a reference trajectory.

Conditional SMC (Andrieu, Doucet & Holenstein 2010), the kernel of particle Gibbs, is plain
SMC with two changes, each a wrapper and neither a driver option:

* the resampler keeps ancestor 0 for slot 0 (:func:`probinfer.resampling.conditional`);
* the model writes the reference's state at step ``t`` into slot 0 after every draw
  (:func:`conditional_feynman_kac`, which wraps the model's callables).

The reference travels in the model's data (``ConditionalData``), so on the jitted paths it
is a traced argument: one compiled run serves every reference, and the run is vmappable
over references.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any, NamedTuple

import jax

from probinfer.resampling import conditional, resampler
from probinfer.smc.base import FeynmanKac

__all__ = ["ConditionalData", "conditional_feynman_kac", "conditional_smc_model", "pin_array"]


class ConditionalData(NamedTuple):
    """The data of a conditional model: the wrapped model's data and the reference."""

    model: Any
    reference: Any


def pin_array(t, values, reference, data):
    """Slot 0 set to ``reference[t]`` (array particles; the reference has a leading time
    axis)."""
    return jax.tree_util.tree_map(lambda v, r: v.at[0].set(r[t]), values, reference)


@lru_cache(maxsize=64)
def _conditional_fns(fns: tuple, pin: Callable) -> tuple:
    M0, M, logG, adapt, finished = fns

    def M0_c(key, n, d: ConditionalData):
        return pin(0, M0(key, n, d.model), d.reference, d.model)

    def M_c(key, t, x, d: ConditionalData):
        return pin(t, M(key, t, x, d.model), d.reference, d.model)

    def logG_c(t, prev, x, d: ConditionalData):
        return logG(t, prev, x, d.model)

    def adapt_c(t, x, lw, d: ConditionalData):
        return d._replace(model=adapt(t, x, lw, d.model))

    def finished_c(x, d: ConditionalData):
        return finished(x, d.model)

    return (
        M0_c,
        M_c,
        logG_c,
        None if adapt is None else adapt_c,
        None if finished is None else finished_c,
    )


def conditional_feynman_kac(
    fk: FeynmanKac, reference: Any, pin: Callable = pin_array
) -> FeynmanKac:
    """``fk`` with slot 0 pinned to ``reference`` after every draw.

    Run it with ``resample_fn=conditional(resampler("multinomial"))``
    (:func:`probinfer.resampling.conditional`) for the conditional SMC kernel. ``pin(t,
    values, reference, data) -> values`` writes the reference's state at step ``t`` into
    slot 0 (default :func:`pin_array`: array particles, reference with a leading time
    axis). The callables see the wrapped model's data; a ``summary`` given to the runner
    sees :class:`ConditionalData`.
    """
    M0, M, logG, adapt, finished = _conditional_fns(fk.fns, pin)
    data = ConditionalData(fk.data, reference)
    return FeynmanKac(M0, M, logG, fk.num_steps, data, adapt=adapt, finished=finished)


def conditional_smc_model(
    fk: FeynmanKac, reference: Any, *, pin: Callable = pin_array, scheme: str = "systematic"
) -> tuple[FeynmanKac, Callable]:
    """The model and the ``resample_fn`` of one conditional SMC sweep given ``reference``.

    The textbook kernel: slot 0 pinned to ``reference`` (:func:`conditional_feynman_kac`),
    slots ``1..N-1`` resampled multinomially from all ``N`` at every step
    (:func:`probinfer.resampling.conditional`). With ``reference=None``: ``fk`` itself and
    the ``scheme``'s resampler (the unconditional run that starts a chain). Both particle
    Gibbs samplers (:mod:`probinfer.smc.gibbs`, :mod:`probinfer.llm.gibbs`) run it.
    """
    if reference is None:
        return fk, resampler(scheme)
    return conditional_feynman_kac(fk, reference, pin), conditional(resampler("multinomial"))
