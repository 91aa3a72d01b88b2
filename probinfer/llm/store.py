"""The particle store of LLM generations: partial answers as reasoning steps and token ids.

An immutable store implementing ``take(indices)`` and ``__len__`` so that
:class:`~probinfer.Particles` and the SMC driver can resample it.

A particle is *token-exact*: its state is the sequence of token ids the language model
sampled (``step_tokens``), never text re-tokenized. The text of step ``s`` is what those
tokens decode to, up to and including the step delimiter; when the token that completed
the delimiter decodes to more text, that rest is the particle's ``carry``: it opens the
next step (the next step's text starts with it, and no token is re-encoded). Backends
that only see text (the tabular toy, a server without token-id prompts) leave
``step_tokens`` empty and ``carry`` as ``""``.

``lm_state`` is an opaque per-particle object of the language model (the key/value cache
rows of :class:`~probinfer.llm.hf.HFCausalLM`) with ``take(indices)``, where an index
``-1`` means "no state" (the backend then re-encodes that particle's tokens). Resampling
gathers it, so children continue from their parent's cache. ``prm_state`` is the same for
the reward model (:class:`~probinfer.llm.kv.PRMRows` of
:class:`~probinfer.llm.hf.HFRewardModel`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Trajectories"]


@dataclass(frozen=True)
class Trajectories:
    """Partial answers of ``N`` particles for one prompt.

    Attributes
    ----------
    prompt
        The prompt (shared by every particle).
    steps
        ``steps[i]`` is the tuple of reasoning steps (text) of particle ``i``.
    finished
        ``finished[i]``: the answer ended (a step contained the stop string, or the
        language model produced its end-of-sequence token).
    scores
        ``scores[i][s]``: the reward model's score of step ``s`` (``nan`` without a reward
        model).
    step_tokens
        ``step_tokens[i][s]``: the token ids sampled for step ``s`` of particle ``i``
        (including the token that completed the delimiter); ``None`` for text backends.
    carries
        ``carries[i][s]``: the text decoded after the end of step ``s`` from its last token
        (the start of step ``s + 1``); ``None`` means every carry is ``""``.
    lm_state
        The language model's per-particle state (``take(indices)`` with ``-1`` = none), or
        ``None``.
    prm_state
        The reward model's per-particle state (same contract), or ``None``.
    """

    prompt: str
    steps: tuple[tuple[str, ...], ...]
    finished: tuple[bool, ...]
    scores: tuple[tuple[float, ...], ...]
    step_tokens: tuple[tuple[tuple[int, ...], ...], ...] | None = None
    carries: tuple[tuple[str, ...], ...] | None = None
    lm_state: Any = None
    prm_state: Any = None

    @classmethod
    def empty(cls, prompt: str, n: int) -> Trajectories:
        """``n`` empty partial answers."""
        return cls(prompt, ((),) * n, (False,) * n, ((),) * n)

    def __len__(self) -> int:
        return len(self.steps)

    # ------------------------------------------------------------------ views
    def tokens(self, i: int) -> list[int] | None:
        """Every token id sampled for particle ``i`` (``None`` for text backends)."""
        if self.step_tokens is None:
            return None
        return [t for step in self.step_tokens[i] for t in step]

    def carry(self, i: int) -> str:
        """The text that opens particle ``i``'s next step (``""`` when none)."""
        if self.carries is None or not self.carries[i]:
            return ""
        return self.carries[i][-1]

    def partials(self) -> list[str]:
        """Each particle's generated text so far, carry included (the context a text
        backend continues)."""
        return ["".join(s) + self.carry(i) for i, s in enumerate(self.steps)]

    def texts(self) -> list[str]:
        """The generated text of each particle (steps joined)."""
        return ["".join(s) for s in self.steps]

    @property
    def live(self) -> np.ndarray:
        """Indices of the particles still being extended."""
        return np.flatnonzero(~np.asarray(self.finished, dtype=bool))

    # ------------------------------------------------------------------ gathers
    def take(self, indices) -> Trajectories:
        """The particles at ``indices`` (repeats allowed): the resampling gather. The
        language model state is gathered too, so each child gets its own copy of its
        parent's cache rows."""
        at = np.asarray(indices, dtype=np.int64).reshape(-1)
        idx = at.tolist()
        if idx == list(range(len(self))):
            return self  # the identity (a frozen store: nothing to copy)
        return Trajectories(
            self.prompt,
            tuple(self.steps[i] for i in idx),
            tuple(self.finished[i] for i in idx),
            tuple(self.scores[i] for i in idx),
            None if self.step_tokens is None else tuple(self.step_tokens[i] for i in idx),
            None if self.carries is None else tuple(self.carries[i] for i in idx),
            None if self.lm_state is None else self.lm_state.take(at),
            None if self.prm_state is None else self.prm_state.take(at),
        )

    def token_fields(self) -> tuple[tuple, tuple]:
        """``(step_tokens, carries)`` with empty entries filled in for text backends."""
        n = len(self)
        toks = self.step_tokens
        if toks is None:
            toks = tuple(((),) * len(s) for s in self.steps) if n else ()
        car = self.carries
        if car is None:
            car = tuple(("",) * len(s) for s in self.steps) if n else ()
        return toks, car

    def concat(self, other: Trajectories) -> Trajectories:
        """This store followed by ``other`` (same prompt; language model states dropped)."""
        if other.prompt != self.prompt:
            raise ValueError("cannot concatenate trajectories of different prompts")
        tokenized = self.step_tokens is not None or other.step_tokens is not None
        t1, c1 = self.token_fields()
        t2, c2 = other.token_fields()
        return Trajectories(
            self.prompt,
            self.steps + other.steps,
            self.finished + other.finished,
            self.scores + other.scores,
            t1 + t2 if tokenized else None,
            c1 + c2 if tokenized or self.carries is not None or other.carries is not None else None,
        )

    def prefix(self, i: int, t: int) -> Trajectories:
        """Particle ``i`` truncated to its first ``t`` steps, as a one-particle store
        (token ids and carry truncated with it; no language model state)."""
        steps = self.steps[i][:t]
        fin = self.finished[i] and len(steps) == len(self.steps[i])
        return Trajectories(
            self.prompt,
            (steps,),
            (fin,),
            (self.scores[i][:t],),
            None if self.step_tokens is None else (self.step_tokens[i][:t],),
            None if self.carries is None else (self.carries[i][:t],),
        )

    def replace(
        self,
        indices: Sequence[int],
        steps,
        finished,
        scores,
        step_tokens=None,
        carries=None,
        lm_state=None,
        prm_state=None,
    ) -> Trajectories:
        """A copy with the particles at ``indices`` replaced.

        ``step_tokens``/``carries`` (per replaced particle) are given by token-exact
        backends; ``lm_state`` and ``prm_state`` are the new states of *every* particle
        (``None``: none).
        """
        s, f, r = list(self.steps), list(self.finished), list(self.scores)
        for j, i in enumerate(indices):
            s[i], f[i], r[i] = steps[j], finished[j], scores[j]
        toks, car = self.step_tokens, self.carries
        if step_tokens is not None or toks is not None:
            toks = _replaced(self.token_fields()[0], step_tokens, indices, s, ())
        if carries is not None or car is not None:
            car = _replaced(self.token_fields()[1], carries, indices, s, "")
        return Trajectories(
            self.prompt, tuple(s), tuple(f), tuple(r), toks, car, lm_state, prm_state
        )

    def pin(self, i: int, other: Trajectories) -> Trajectories:
        """A copy with particle ``i`` replaced by the one particle of ``other`` (its token
        ids and carry included); particle ``i`` loses its language and reward model state
        rows."""
        if len(other) != 1:
            raise ValueError(f"other must hold one particle, got {len(other)}")
        toks, car = other.token_fields()
        tokenized = other.step_tokens is not None or self.step_tokens is not None
        idx = np.arange(len(self))
        idx[i] = -1
        state = None if self.lm_state is None else self.lm_state.take(idx)
        prm_state = None if self.prm_state is None else self.prm_state.take(idx)
        return self.replace(
            [i],
            other.steps,
            other.finished,
            other.scores,
            toks if tokenized else None,
            car if tokenized or other.carries is not None else None,
            state,
            prm_state,
        )

    def without_state(self) -> Trajectories:
        """The same particles without the model states (frees cache memory)."""
        if self.lm_state is None and self.prm_state is None:
            return self
        return Trajectories(
            self.prompt, self.steps, self.finished, self.scores, self.step_tokens, self.carries
        )

    def to_dict(self) -> dict[str, np.ndarray]:
        """Numeric summaries for ArviZ (the texts themselves are in the result)."""
        return {
            "num_steps": np.array([len(s) for s in self.steps], dtype=np.int32),
            "finished": np.asarray(self.finished, dtype=bool),
            "last_score": np.array([r[-1] if r else np.nan for r in self.scores]),
        }


def _replaced(per_step, new, indices, steps, fill) -> tuple:
    """``per_step`` (one tuple per particle, one entry per step) with the particles at
    ``indices`` given ``new`` entries, or, when ``new`` is ``None``, padded with ``fill``
    to their number of ``steps``."""
    out = list(per_step)
    for j, i in enumerate(indices):
        out[i] = new[j] if new is not None else out[i] + (fill,) * (len(steps[i]) - len(out[i]))
    return tuple(out)
