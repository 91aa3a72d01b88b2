"""An enumerable toy language model and reward, and the exact posterior they define.

:class:`TabularLM` proposes steps from a finite table (a Markov chain over steps), so every
answer up to ``max_steps`` can be enumerated and the target of
:class:`~probinfer.llm.LLMStateSpaceModel` computed exactly
(:func:`exact_posterior`): this is what the particle filter, particle Gibbs and parallel
tempering are checked against. No torch needed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from probinfer.distributions.answer import AnswerDistribution
from probinfer.llm.protocols import StepProposal
from probinfer.llm.store import Trajectories

__all__ = ["FunctionReward", "TabularLM", "exact_posterior"]


class TabularLM:
    """A language model whose next step depends only on the previous step.

    Parameters
    ----------
    table
        ``previous_step -> {next_step: probability}``; the key ``None`` gives the first
        step. Probabilities of each row must sum to one.
    """

    def __init__(self, table: Mapping[str | None, Mapping[str, float]]):
        self.table = {}
        for prev, row in table.items():
            steps = list(row)
            p = np.asarray([row[s] for s in steps], dtype=np.float64)
            if np.any(p < 0) or abs(p.sum() - 1) > 1e-9:
                raise ValueError(f"table[{prev!r}] must be probabilities summing to 1")
            self.table[prev] = (steps, p)

    def _row(self, partial_steps: Sequence[str]):
        prev = partial_steps[-1] if partial_steps else None
        if prev not in self.table:
            raise ValueError(f"no transition from step {prev!r}")
        return self.table[prev]

    def split(self, partial: str) -> list[str]:
        """Split a partial answer into the table's steps (greedy, longest first)."""
        vocab = sorted(
            {s for steps, _ in self.table.values() for s in steps}, key=len, reverse=True
        )
        out, i = [], 0
        while i < len(partial):
            for s in vocab:
                if partial.startswith(s, i):
                    out.append(s)
                    i += len(s)
                    break
            else:
                raise ValueError(f"cannot split {partial!r} into table steps")
        return out

    def propose(self, key, contexts, step_end, *, max_new_tokens, temperature=1.0):
        from probinfer._random import key_to_seed

        rng = np.random.default_rng(key_to_seed(key))
        steps = []
        partials = contexts.partials()
        for partial in partials:
            choices, p = self._row(self.split(partial))
            steps.append(choices[int(rng.choice(len(choices), p=p))])
        return StepProposal(
            steps,
            [False] * len(steps),
            tokens_generated=len(steps),
            tokens_encoded=sum(map(len, partials)),
        )

    def paths(self, max_steps: int, is_final: Callable[[str], bool]):
        """Every answer with its log probability: finished ones, and ones cut at
        ``max_steps``."""
        out = []

        def rec(steps, logp):
            if len(steps) == max_steps or (steps and is_final(steps[-1])):
                out.append((tuple(steps), logp))
                return
            choices, p = self._row(steps)
            for s, ps in zip(choices, p):
                if ps > 0:
                    rec(steps + [s], logp + np.log(ps))

        rec([], 0.0)
        return out


class FunctionReward:
    """A reward model from a Python function ``(prompt, steps) -> score in [0, 1]``."""

    def __init__(self, fn: Callable[[str, Sequence[str]], float]):
        if not callable(fn):
            raise TypeError("fn must be callable")
        self.fn = fn

    def score(self, prompts, partials) -> np.ndarray:
        return np.array([self.fn(p, tuple(s)) for p, s in zip(prompts, partials)], dtype=float)


def exact_posterior(model, prompt: str) -> tuple[AnswerDistribution, float]:
    """The exact answer posterior and log evidence of ``model`` (whose ``lm`` is a
    :class:`TabularLM`), by enumerating every answer up to ``model.max_steps``.

    Scores are computed with the model's own reward model and aggregation, so the result
    is the exact target of :func:`~probinfer.llm.particle_filter`.
    """
    from probinfer.llm.protocols import Usage

    lm = model.lm
    if not isinstance(lm, TabularLM):
        raise TypeError("exact_posterior needs a TabularLM")
    paths = lm.paths(model.max_steps, model.step_format.is_final)
    steps = tuple(s for s, _ in paths)
    logp = np.array([lp for _, lp in paths])
    finished = tuple(bool(s) and model.step_format.is_final(s[-1]) for s in steps)
    usage = Usage()
    scores = []
    for s in steps:
        prefixes = [s[: t + 1] for t in range(len(s))]
        sc = model._score(prompt, prefixes, usage)[0] if prefixes else np.zeros(0)
        scores.append(tuple(float(x) for x in sc))
    store = Trajectories(prompt, steps, finished, tuple(scores))
    lw = logp + model.total_log_potential(store)
    answers = model.answers(store)
    log_z = float(np.logaddexp.reduce(lw))
    return AnswerDistribution(answers, log_weights=lw), log_z
