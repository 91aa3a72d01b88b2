"""The programmatic verifier of the bundled arithmetic task, as a reward model."""

from __future__ import annotations

import numpy as np

from probinfer.llm.protocols import StepFormat
from probinfer.llm.task import ArithmeticTask

__all__ = ["VerifierReward"]


class VerifierReward:
    """Process reward from exact checking: ``1 - epsilon`` if every step so far is correct,
    else ``epsilon``.

    Parameters
    ----------
    epsilon
        Score of a wrong prefix, in ``[0, 0.5)``. A small positive value keeps every
        particle's weight positive (with ``epsilon = 0`` and the ``"log"`` potential, a run
        in which every particle errs has no valid particle left).
    step_format
        How partial answers are split into steps (the ``"model"`` aggregation passes the
        whole partial answer as one string; it is re-split here).
    """

    def __init__(self, epsilon: float = 0.05, step_format: StepFormat | None = None):
        if not 0.0 <= float(epsilon) < 0.5:
            raise ValueError(f"epsilon must be in [0, 0.5), got {epsilon!r}")
        self.epsilon = float(epsilon)
        self.step_format = step_format or StepFormat()

    def score(self, prompts, partials) -> np.ndarray:
        out = np.empty(len(prompts))
        for i, (p, steps) in enumerate(zip(prompts, partials)):
            ok = ArithmeticTask.step_correct(p, self.step_format.split("".join(steps)))
            out[i] = 1.0 - self.epsilon if (ok and ok[-1]) else self.epsilon
        return out
