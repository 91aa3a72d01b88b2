"""The result of every LLM inference algorithm: particles, weights, answers and usage."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from probinfer.distributions.answer import AnswerDistribution
from probinfer.llm.protocols import Usage
from probinfer.llm.store import Trajectories
from probinfer.particles import Particles
from probinfer.smc.result import SMCResult
from probinfer.weights import host_normalize

__all__ = ["SELECT", "LLMResult", "select_answer"]

SELECT = ("mass", "argmax")


def select_answer(answers, log_weights, select: str) -> str | None:
    """The selected final answer (numpy float64; no JAX call).

    ``"mass"``: the answer with the highest posterior mass (``None`` — unfinished — only
    when nothing else has mass; ties go to the first appearance); ``"argmax"``: the answer
    of the highest-weight particle.
    """
    if select not in SELECT:
        raise ValueError(f"select must be one of {SELECT}, got {select!r}")
    lw = np.asarray(log_weights, dtype=np.float64)
    if select == "argmax":
        return answers[int(np.argmax(lw))]
    alive = lw.size and np.max(lw) > -np.inf
    w = host_normalize(lw) if alive else np.zeros(lw.shape)
    mass: dict = {}
    for a, wi in zip(answers, w):
        mass[a] = mass.get(a, 0.0) + float(wi)
    ranked = sorted(mass.items(), key=lambda kv: -kv[1])  # stable: first appearance on ties
    for a, m in ranked:
        if a is not None and m > 0:
            return a
    return ranked[0][0] if ranked else None


@dataclass(frozen=True, kw_only=True, repr=False)  # the base's one-line repr
class LLMResult(SMCResult):
    """What an LLM inference algorithm returns (an :class:`~probinfer.smc.SMCResult`).

    Attributes
    ----------
    algorithm
        Its name (``"particle_filter"``, ``"best_of_n"``, ...).
    prompt
        The prompt.
    particles
        :class:`~probinfer.Particles` whose values are a
        :class:`~probinfer.llm.store.Trajectories` store, with the final log weights (a
        float64 numpy array: the host-side result of a host-side loop).
    answers
        The extracted answer of each particle (``None`` when unfinished).
    answer_distribution
        :class:`~probinfer.distributions.AnswerDistribution`, the posterior over final
        answers (weights summed over particles with the same answer).
    selected
        The chosen final answer.
    budget
        Full-rollout equivalents granted.
    usage
        :class:`~probinfer.llm.Usage` (tokens generated/encoded, LM and reward calls).
    ess, resampled, log_evidence_increments
        Per-step ESS after reweighting, resampling flags and evidence increments (empty
        for baselines).
    log_evidence
        Estimate of ``log Z`` (particle filter; ``None`` elsewhere).
    wall_time
        Seconds.
    info
        Algorithm-specific extras (reference trajectories, swap acceptance, ...).
    """

    algorithm: str
    prompt: str
    answers: tuple[str | None, ...]
    selected: str | None
    budget: int
    usage: Usage
    log_evidence: float | None = None
    log_evidence_increments: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ess: np.ndarray = field(default_factory=lambda: np.zeros(0))
    resampled: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    info: dict[str, Any] = field(default_factory=dict)

    @functools.cached_property
    def answer_distribution(self) -> AnswerDistribution:
        """The posterior over final answers (built on first access)."""
        lw = np.asarray(self.particles.log_weights, dtype=np.float64)
        return AnswerDistribution(list(self.answers), log_weights=lw)

    @property
    def trajectories(self) -> Trajectories:
        return self.particles.values

    @property
    def weights(self) -> np.ndarray:
        """Normalised particle weights (float64)."""
        return host_normalize(self.particles.log_weights)

    @property
    def texts(self) -> list[str]:
        """The generated text of each particle."""
        return self.trajectories.texts()

    def to_arviz(self, key=None, *, scheme: str = "systematic"):
        """One chain of equally weighted particles (number of steps, finished flag, last
        score, answer index into ``answer_distribution.answers``), ESS history in
        ``smc_steps``, log evidence, selected answer and usage in the attributes."""
        from probinfer.inference_data import to_inference_data

        dist = self.answer_distribution
        idx = np.array([dist.index(a) for a in self.answers], dtype=np.int32)
        values = dict(self.trajectories.to_dict(), answer_index=idx)
        attrs = {
            "algorithm": self.algorithm,
            "prompt": self.prompt,
            "budget": self.budget,
            "selected": "" if self.selected is None else self.selected,
            "answers": [("" if a is None else a) for a in dist.answers],
        }
        attrs.update({f"usage_{k}": v for k, v in self.usage.as_dict().items()})
        steps = None
        if len(self.ess):
            steps = {"ess": self.ess, "resampled": self.resampled}
        return to_inference_data(
            [Particles(values, self.particles.log_weights)],
            key=key,
            scheme=scheme,
            step_stats=steps,
            log_evidence=self.log_evidence,
            attrs=attrs,
        )


def build_result(
    algorithm,
    model,
    prompt,
    store,
    log_weights,
    budget,
    usage,
    start,
    *,
    select="mass",
    smc: SMCResult | None = None,
    info=None,
):
    """Assemble an :class:`LLMResult` from a final store and its log weights, with the
    history and the evidence of the SMC run ``smc`` when there is one."""
    import time

    lw = np.asarray(log_weights, dtype=np.float64)
    answers = model.answers(store)
    history = {}
    if smc is not None:
        history = {
            "ess": np.asarray(smc.ess),
            "resampled": np.asarray(smc.resampled),
            "log_evidence": smc.log_evidence,
            "log_evidence_increments": smc.log_evidence_increments,
        }
    return LLMResult(
        algorithm=algorithm,
        prompt=prompt,
        # the weights stay on the host: a device transfer here would cost as much as a step's
        # bookkeeping (a cold device call after the LM's work); shapes match by construction
        particles=Particles.tree_unflatten(None, (store, lw)),
        answers=tuple(answers),
        selected=select_answer(answers, lw, select),
        budget=budget,
        usage=usage,
        wall_time=time.perf_counter() - start,
        info=info or {},
        **history,
    )
