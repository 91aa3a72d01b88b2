"""What every SMC run returns: :class:`SMCResult`, the base of the algorithms' results."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from probinfer.particles import Particles

Array = jax.Array

__all__ = ["SMCResult"]


@dataclass(frozen=True, kw_only=True)
class SMCResult:
    """What every SMC run returns (the base of the algorithms' results).

    Attributes
    ----------
    particles
        Final weighted particles (values: whatever the transitions return).
    log_evidence
        ``log Z``, the compensated sum of the increments
        (:func:`~probinfer.smc.base.log_evidence_of`).
    log_evidence_increments
        ``(T,)`` float64 increments ``log sum_i W_{t-1}^i G_t^i``.
    ess
        ``(T,)`` ESS after each reweighting.
    resampled
        ``(T,)`` whether resampling happened before the move at step ``t``.
    ancestors
        ``(T, N)`` ancestor indices (row ``t`` maps particles at ``t`` to ``t - 1``), or
        ``None`` when not kept.
    summaries
        Per-step summaries (leading axis ``T``), or ``None``.
    wall_time
        Seconds for the run (including compilation on the first jitted call).
    """

    particles: Particles
    log_evidence: float
    log_evidence_increments: np.ndarray
    ess: np.ndarray
    resampled: np.ndarray
    ancestors: np.ndarray | None = None
    summaries: Any = None
    wall_time: float = 0.0

    @property
    def num_steps(self) -> int:
        """Number of SMC steps run (``T``)."""
        return int(np.shape(self.log_evidence_increments)[0])

    # What the subclasses extend ------------------------------------------------------
    def _arviz_particles(self) -> Particles:
        """The weighted draws exported to the ``posterior`` group."""
        return self.particles

    def _step_stats(self) -> dict[str, np.ndarray]:
        return {
            "ess": np.asarray(self.ess),
            "resampled": np.asarray(self.resampled),
            "log_evidence_increment": np.asarray(self.log_evidence_increments),
        }

    def _attrs(self) -> dict:
        return {"wall_time": float(self.wall_time)}

    def _arviz_groups(self) -> dict:
        """Extra ArviZ groups (``log_likelihood``, ``observed_data``, ...)."""
        return {}

    def to_arviz(
        self,
        key: Array | None = None,
        *,
        scheme: str = "systematic",
        attrs: dict | None = None,
    ):
        """ArviZ ``InferenceData``: the final particles as one chain of equally weighted
        draws (resampled with ``key`` when weighted), per-step history in ``smc_steps``,
        ``log_evidence`` in the attributes. Combine independent runs with
        :func:`probinfer.inference_data.combine_chains`."""
        from probinfer.inference_data import combine_chains

        return combine_chains([self], key=key, scheme=scheme, attrs=attrs)
