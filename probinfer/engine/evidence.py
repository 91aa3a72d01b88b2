"""Log-evidence bookkeeping in float64.

Particle weights live in float32 on the device; the running log evidence is a sum of
many increments and is accumulated in float64 on the host so that long runs (thousands
of steps, LLM runs) do not lose precision.
"""

from __future__ import annotations

import numpy as np

__all__ = ["EvidenceAccumulator", "log_increment64"]


def log_increment64(log_weights, log_potentials) -> float:
    """``log sum_i W_i G_i`` in float64, for unnormalised ``log_weights`` (normalised here).

    ``-inf`` when every product is zero.
    """
    lw = np.asarray(log_weights, dtype=np.float64)
    lg = np.asarray(log_potentials, dtype=np.float64)
    if lw.shape != lg.shape or lw.ndim != 1:
        raise ValueError(
            f"log_weights and log_potentials must be 1-D of equal length, got {lw.shape}, "
            f"{lg.shape}"
        )
    with np.errstate(invalid="ignore"):
        return float(np.logaddexp.reduce(lw + lg) - np.logaddexp.reduce(lw))


class EvidenceAccumulator:
    """Running ``log Z = sum_t log sum_i W_{t-1}^i G_t^i`` in float64."""

    def __init__(self):
        self.increments: list[float] = []

    def add(self, log_weights, log_potentials) -> float:
        """Record the increment of one reweighting and return it."""
        inc = log_increment64(log_weights, log_potentials)
        self.increments.append(inc)
        return inc

    def add_increment(self, increment) -> None:
        """Record an increment computed elsewhere (converted to float64)."""
        self.increments.append(float(np.float64(increment)))

    @property
    def log_evidence(self) -> float:
        return float(np.sum(np.asarray(self.increments, dtype=np.float64)))
