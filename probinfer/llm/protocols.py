"""What a language model and a reward model must provide, the step format and usage counters.

These protocols are the seam for backends: the local Hugging Face backend
(:mod:`probinfer.llm.hf`), the learned PRM (:mod:`probinfer.llm.reward`), the tabular toy
model used in the exactness tests (:mod:`probinfer.llm.toy`) and the server backends
(OpenAI-compatible vLLM/SGLang, :mod:`probinfer.llm.server`) all implement the same two
methods; a reward model that keeps state between steps also implements
:class:`StatefulRewardModel`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "LanguageModel",
    "RewardModel",
    "StatefulRewardModel",
    "StepFormat",
    "StepEnd",
    "StepProposal",
    "Usage",
    "check_rewards",
]


StepEnd = Callable[[str], int | None]
"""``text -> int | None``: the end index (exclusive) of the first step in ``text``, or
``None`` when the step has not ended (:meth:`StepFormat.step_end`)."""


@dataclass(frozen=True)
class StepFormat:
    """How generated text is split into reasoning steps and when an answer is finished.

    Parameters
    ----------
    delimiter
        A string that ends a step (included in the step), or a callable
        ``generated_text -> int | None`` returning the end index of the first step in
        ``generated_text`` (``None``: the step has not ended yet).
    stop
        A string that ends the whole answer (a step containing it is the final step), or a
        callable ``step_text -> bool``.
    """

    delimiter: str | Callable[[str], int | None] = ";"
    stop: str | Callable[[str], bool] = "|"

    def __post_init__(self):
        for name in ("delimiter", "stop"):
            v = getattr(self, name)
            if isinstance(v, str):
                if not v:
                    raise ValueError(f"{name} must be a non-empty string or a callable")
            elif not callable(v):
                raise TypeError(f"{name} must be a str or a callable, got {type(v).__name__}")

    def step_end(self, generated: str) -> int | None:
        """End index (exclusive) of the first step in ``generated``, or ``None``."""
        ends = []
        if callable(self.delimiter):
            e = self.delimiter(generated)
            if e is not None:
                ends.append(int(e))
        else:
            i = generated.find(self.delimiter)
            if i >= 0:
                ends.append(i + len(self.delimiter))
        if isinstance(self.stop, str):
            i = generated.find(self.stop)
            if i >= 0:
                ends.append(i + len(self.stop))
        return min(ends) if ends else None

    def split(self, text: str) -> list[str]:
        """Split a generated text into its steps (the last one may be unfinished)."""
        out = []
        while text:
            end = self.step_end(text)
            end = len(text) if end is None or end <= 0 else end
            out.append(text[:end])
            text = text[end:]
        return out

    def is_final(self, step: str) -> bool:
        """Whether ``step`` ends the answer."""
        return bool(self.stop(step)) if callable(self.stop) else self.stop in step


@dataclass(frozen=True)
class StepProposal:
    """What :meth:`LanguageModel.propose` returns for a batch of contexts.

    Attributes
    ----------
    steps
        The next step of each context: text up to and including the step end (the whole
        generation when ``max_new_tokens`` ran out first). ``""`` only together with
        ``ended``: the model ended the answer right after the previous step.
    truncated
        Per context: ``True`` when no step end was produced within ``max_new_tokens``.
    tokens_generated, tokens_encoded
        Tokens sampled, and context tokens encoded (prefill and fed tokens), over the
        whole batch.
    step_tokens
        Token-exact backends: the token ids sampled for each step (the token that
        completed the delimiter included); ``None`` for text backends.
    carries
        Token-exact backends: the text decoded past the step end from the step's last
        token, which opens the next step; ``None`` means ``""`` for every context.
    ended
        Per context: the model ended the answer (end-of-sequence token, or its context
        window is full); ``None`` means never.
    state
        The backend's new per-context state (e.g. key/value cache rows, ``take(indices)``
        with ``-1`` = none), or ``None``.
    """

    steps: list[str]
    truncated: list[bool]
    tokens_generated: int = 0
    tokens_encoded: int = 0
    step_tokens: list[tuple[int, ...]] | None = None
    carries: list[str] | None = None
    ended: list[bool] | None = None
    state: object | None = None


@runtime_checkable
class LanguageModel(Protocol):
    """A causal language model that proposes the next reasoning step of many contexts."""

    def propose(
        self, key, contexts, step_end: StepEnd, *, max_new_tokens: int, temperature: float = 1.0
    ) -> StepProposal:
        """Sample one step for each particle of ``contexts`` in one batch.

        ``contexts`` is a :class:`~probinfer.llm.store.Trajectories` (its prompt, each
        particle's steps, token ids, carry and backend state). ``step_end(text)`` tells
        where the step ``text`` ends (see :meth:`StepFormat.step_end`); randomness comes
        only from ``key``. Text backends continue ``contexts.prompt +
        contexts.partials()[i]``; token-exact backends continue the token ids.
        """
        ...


@runtime_checkable
class RewardModel(Protocol):
    """A process reward model: the score in ``[0, 1]`` of the last step of partial answers."""

    def score(self, prompts: Sequence[str], partials: Sequence[Sequence[str]]) -> np.ndarray:
        """``(n,)`` scores: ``p(step correct | prompt, previous steps)`` of each last step.

        Called once per SMC step for all live particles (batched).
        """
        ...


@runtime_checkable
class StatefulRewardModel(RewardModel, Protocol):
    """A reward model that carries state per partial answer from one step to the next.

    Scoring the partial answers of a particle filter step by step re-reads the same prefixes:
    a reward model that keeps, e.g., its key/value cache rows per particle encodes only the
    new tokens of each step (:class:`~probinfer.llm.HFRewardModel`). The filter calls
    :meth:`score_with_state` instead of :meth:`~RewardModel.score` when the reward model
    provides it (checked with ``isinstance``), hands each particle its parent's state after
    resampling (``state.take(indices)``), and counts the tokens encoded.
    """

    def score_with_state(
        self, prompt: str, partials: Sequence[Sequence[str]], state=None
    ) -> tuple[np.ndarray, object | None, int]:
        """Scores of ``prompt + steps`` for each partial answer, continuing ``state``.

        Parameters
        ----------
        prompt
            The prompt shared by every partial answer.
        partials
            Each partial answer as a sequence of steps.
        state
            The state of each partial answer's previous scoring (one entry per partial
            answer, supporting ``take(indices)``), or ``None`` (none yet).

        Returns
        -------
        scores, state, encoded
            ``(n,)`` scores as :meth:`~RewardModel.score`; the new state (one entry per
            partial answer; ``None`` when nothing is kept); the tokens encoded.
        """
        ...


def check_rewards(r, n: int, who: str = "reward model") -> np.ndarray:
    """Validate ``n`` rewards: finite numbers in ``[0, 1]`` (``ValueError`` otherwise)."""
    arr = np.asarray(r, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(
            f"{who} must return {n} scores (one per partial answer), got shape {arr.shape}"
        )
    if ((arr >= 0) & (arr <= 1)).all():  # one pass when valid (NaN fails both)
        return arr
    if np.any(np.isnan(arr)):
        raise ValueError(
            f"{who} returned NaN scores at indices {np.flatnonzero(np.isnan(arr)).tolist()}"
        )
    bad = (arr < 0) | (arr > 1)
    if np.any(bad):
        i = int(np.argmax(bad))
        raise ValueError(f"{who} scores must lie in [0, 1], got {arr[i]!r} at index {i}")
    return arr


@dataclass
class Usage:
    """Compute used by an algorithm (one run or a sum of runs).

    Attributes
    ----------
    tokens_generated
        Tokens sampled from the language model.
    tokens_encoded
        Context tokens encoded by the language model (prefill).
    lm_calls
        Batched calls to the language model.
    reward_calls
        Batched calls to the reward model.
    rewards_scored
        Partial answers scored.
    reward_tokens_encoded
        Tokens encoded by the reward model (backends that report it, e.g.
        :class:`~probinfer.llm.HFRewardModel`; 0 otherwise).
    steps_truncated
        Steps cut at ``max_tokens_per_step`` without a step end.
    """

    tokens_generated: int = 0
    tokens_encoded: int = 0
    lm_calls: int = 0
    reward_calls: int = 0
    rewards_scored: int = 0
    reward_tokens_encoded: int = 0
    steps_truncated: int = 0
    _extra: dict = field(default_factory=dict, repr=False)

    def add(self, other: Usage) -> Usage:
        """In-place sum with ``other``; returns ``self``."""
        for f in fields(self):
            if not f.name.startswith("_"):
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
