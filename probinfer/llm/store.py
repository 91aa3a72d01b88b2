"""The particle store of LLM generations: partial answers as tuples of reasoning steps.

An immutable store implementing ``take(indices)`` and ``__len__`` so that
:class:`~probinfer.Particles` and the SMC driver can resample it. A later backend may add
KV caches to the store; ``take`` is where they would be gathered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
        ``steps[i]`` is the tuple of reasoning steps of particle ``i``.
    finished
        ``finished[i]``: the last step of particle ``i`` contained the stop string.
    scores
        ``scores[i][s]``: the reward model's score of step ``s`` (``nan`` without a reward
        model).
    """

    prompt: str
    steps: tuple[tuple[str, ...], ...]
    finished: tuple[bool, ...]
    scores: tuple[tuple[float, ...], ...]

    @classmethod
    def empty(cls, prompt: str, n: int) -> Trajectories:
        """``n`` empty partial answers."""
        return cls(prompt, ((),) * n, (False,) * n, ((),) * n)

    def __len__(self) -> int:
        return len(self.steps)

    def take(self, indices) -> Trajectories:
        idx = [int(i) for i in np.asarray(indices).reshape(-1)]
        return Trajectories(
            self.prompt,
            tuple(self.steps[i] for i in idx),
            tuple(self.finished[i] for i in idx),
            tuple(self.scores[i] for i in idx),
        )

    def concat(self, other: Trajectories) -> Trajectories:
        """This store followed by ``other`` (same prompt)."""
        if other.prompt != self.prompt:
            raise ValueError("cannot concatenate trajectories of different prompts")
        return Trajectories(
            self.prompt,
            self.steps + other.steps,
            self.finished + other.finished,
            self.scores + other.scores,
        )

    def prefix(self, i: int, t: int) -> Trajectories:
        """Particle ``i`` truncated to its first ``t`` steps, as a one-particle store."""
        steps = self.steps[i][:t]
        fin = self.finished[i] and len(steps) == len(self.steps[i])
        return Trajectories(self.prompt, (steps,), (fin,), (self.scores[i][:t],))

    def texts(self) -> list[str]:
        """The generated text of each particle (steps joined)."""
        return ["".join(s) for s in self.steps]

    @property
    def live(self) -> np.ndarray:
        """Indices of the particles still being extended."""
        return np.flatnonzero(~np.asarray(self.finished, dtype=bool))

    def replace(self, indices: Sequence[int], steps, finished, scores) -> Trajectories:
        """A copy with the particles at ``indices`` replaced."""
        s, f, r = list(self.steps), list(self.finished), list(self.scores)
        for j, i in enumerate(indices):
            s[i], f[i], r[i] = steps[j], finished[j], scores[j]
        return Trajectories(self.prompt, tuple(s), tuple(f), tuple(r))

    def to_dict(self) -> dict[str, np.ndarray]:
        """Numeric summaries for ArviZ (the texts themselves are in the result)."""
        return {
            "num_steps": np.array([len(s) for s in self.steps], dtype=np.int32),
            "finished": np.asarray(self.finished, dtype=bool),
            "last_score": np.array([r[-1] if r else np.nan for r in self.scores]),
        }
