r"""LLM generation as a state-space model, in Feynman-Kac form.

State ``x_t`` is the partial answer after ``t`` reasoning steps; the transition is the
language model proposing the next step; the observation ``o_t in {0, 1}`` has
``p(o_t = 1 | c, x_{<=t}) = r_t``, a process reward model's (aggregated) score (Puri et al.
2025). With potential function ``phi`` (``log r`` or ``logit r``) and temperature ``tau``,
the log potential of step ``t`` is ``phi(r_t) / tau`` and the particle filter targets

.. math::

    \pi(x) \propto p_{LM}(x \mid c) \prod_{t=1}^{|x|} \exp(\phi(r_t(x)) / \tau),

over complete answers ``x`` (``|x|`` steps, the last one containing the stop string) and
answers truncated at ``max_steps``. Finished particles are *absorbing*: the transition
leaves them unchanged and their log potential is 0, i.e. no observation is made after an
answer ends; they stay in the population with their weight and compete with unfinished
ones at every resampling. With ``telescoping=True`` the log potential is
``(phi(r_t) - phi(r_{t-1})) / tau`` instead, so the final target is
``p_LM(x) exp(phi(r_{|x|}) / tau)`` (only the final aggregated score counts; the
intermediate scores act as look-ahead twisting).

Aggregation of per-step scores into ``r_t``: ``"last"`` (score of step ``t``), ``"min"``,
``"product"``, or ``"model"`` (the reward model scores the whole partial answer as one
step, which scaled best in the paper).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from probinfer.checks import check_num
from probinfer.llm.protocols import (
    LanguageModel,
    RewardModel,
    StatefulRewardModel,
    StepFormat,
    Usage,
    check_rewards,
)
from probinfer.llm.store import Trajectories
from probinfer.llm.task import regex_extractor
from probinfer.smc.base import FeynmanKac

__all__ = ["AGGREGATIONS", "POTENTIALS", "LLMStateSpaceModel", "check_budget", "check_prompt"]

POTENTIALS = ("logit", "log")
AGGREGATIONS = ("model", "last", "min", "product")
_CLIP = 1e-6


def check_prompt(prompt) -> str:
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("prompt must be a non-empty string")
    return prompt


def check_budget(budget) -> int:
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer) or budget < 1:
        raise ValueError(
            f"budget must be an integer >= 1 (full-rollout equivalents), got {budget!r}"
        )
    return int(budget)


def _positive(name, v, allow_zero=False) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(v).__name__}") from None
    if not np.isfinite(f) or f < 0 or (f == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {v!r}")
    return f


@dataclass(frozen=True, eq=False)
class LLMStateSpaceModel:
    """The language model, the reward model and every setting of the state-space model.

    Parameters
    ----------
    lm
        A :class:`~probinfer.llm.LanguageModel`.
    reward
        A :class:`~probinfer.llm.RewardModel`, or ``None`` (then every potential is 1:
        only unweighted algorithms such as self-consistency make sense).
    step_format
        Step delimiter and stop condition.
    max_steps
        Guard: at most this many steps per answer (the number of SMC steps ``T``).
    max_tokens_per_step
        Guard: a step ends after this many tokens even without a delimiter.
    sampling_temperature
        Temperature of the language model's sampling (0 = greedy).
    potential
        ``"logit"`` (odds ``r / (1 - r)``, the paper's choice) or ``"log"`` (``r``).
    reward_temperature
        ``tau``: log potentials are divided by it (larger = flatter weights).
    aggregation
        ``"model"``, ``"last"``, ``"min"`` or ``"product"`` (see the module docstring).
    telescoping
        Use ratio potentials so that only the final aggregated score is targeted.
    answer_extractor
        ``text -> str | None``, the final answer of a generated text (default: the number
        before ``"|"``). Unfinished answers get ``None``.
    max_tokens
        Budget: a run stops after the step at which this many tokens have been generated
        for the problem (``None``: no cap). Particles still unfinished then have no answer.
    max_lm_calls
        Budget: a run stops after this many batched LM calls (``None``: no cap).
    """

    lm: LanguageModel
    reward: RewardModel | None = None
    step_format: StepFormat = StepFormat()
    max_steps: int = 16
    max_tokens_per_step: int = 32
    sampling_temperature: float = 1.0
    potential: str = "logit"
    reward_temperature: float = 1.0
    aggregation: str = "model"
    telescoping: bool = False
    answer_extractor: Callable[[str], str | None] | None = None
    max_tokens: int | None = None
    max_lm_calls: int | None = None

    def __post_init__(self):
        if not callable(getattr(self.lm, "propose", None)):
            raise TypeError("lm must implement LanguageModel.propose(...)")
        if self.reward is not None and not callable(getattr(self.reward, "score", None)):
            raise TypeError("reward must implement RewardModel.score(...) or be None")
        if not isinstance(self.step_format, StepFormat):
            raise TypeError("step_format must be a StepFormat")
        check_num(self.max_steps, "max_steps")
        check_num(self.max_tokens_per_step, "max_tokens_per_step")
        _positive("sampling_temperature", self.sampling_temperature, allow_zero=True)
        _positive("reward_temperature", self.reward_temperature)
        if self.potential not in POTENTIALS:
            raise ValueError(f"potential must be one of {POTENTIALS}, got {self.potential!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        for name in ("max_tokens", "max_lm_calls"):
            if getattr(self, name) is not None:
                check_num(getattr(self, name), name)
        if self.answer_extractor is not None and not callable(self.answer_extractor):
            raise TypeError("answer_extractor must be callable or None")
        if self.answer_extractor is None:
            object.__setattr__(self, "answer_extractor", regex_extractor())

    # ------------------------------------------------------------------ moves
    def extend(self, key, store: Trajectories, usage: Usage, which=None) -> Trajectories:
        """Propose the next step of every unfinished particle (one batched LM call) and
        score it (one batched reward call; identical partial answers are scored once, the
        reward model being a function of the partial answer). Finished particles are left
        unchanged.

        The proposal continues each particle's own token ids (token-exact backends): the
        new step is the text of the sampled tokens up to and including the delimiter, and
        the rest of the delimiter's token opens the next step. An end-of-sequence token
        right after a delimiter ends the answer without adding an empty step (no new
        score: the step's log potential is 0). Finished particles' language-model state
        is dropped.
        """
        fin = store.finished
        live = range(len(store)) if which is None else np.asarray(which, dtype=int).tolist()
        live = [i for i in live if not fin[i]]
        if not live:
            return store
        contexts = store.take(live)
        prop = self.lm.propose(
            key,
            contexts,
            self.step_format.step_end,
            max_new_tokens=self.max_tokens_per_step,
            temperature=self.sampling_temperature,
        )
        if len(prop.steps) != len(live):
            raise ValueError(f"lm returned {len(prop.steps)} steps for {len(live)} contexts")
        usage.lm_calls += 1
        usage.tokens_generated += int(prop.tokens_generated)
        usage.tokens_encoded += int(prop.tokens_encoded)
        usage.steps_truncated += int(sum(prop.truncated))
        ended = prop.ended or [False] * len(live)
        partials = contexts.partials()
        for j, s in enumerate(prop.steps):
            if not isinstance(s, str) or (s == "" and not ended[j]):
                raise ValueError(
                    f"lm returned an empty step for particle {live[j]} (context "
                    f"{(store.prompt + partials[j])!r}); a step must contain at least one character"
                )
        grew = [j for j, s in enumerate(prop.steps) if s]
        new_steps = [contexts.steps[j] + ((s,) if s else ()) for j, s in enumerate(prop.steps)]
        finished = [
            bool(e) or (bool(s) and self.step_format.is_final(s)) for s, e in zip(prop.steps, ended)
        ]
        scores = list(contexts.scores)
        prm_rows = None
        if grew:
            prev = None if contexts.prm_state is None else contexts.prm_state.take(grew)
            r, prm_rows = self._score(store.prompt, [new_steps[j] for j in grew], usage, prev)
            for j, rj in zip(grew, r):
                scores[j] = scores[j] + (float(rj),)
        step_tokens = carries = None
        if prop.step_tokens is not None or prop.carries is not None:
            toks_old, car_old = contexts.token_fields()
            got_toks = prop.step_tokens or [()] * len(live)
            # text history without token ids (a store built from text): stay text-only
            text_only = contexts.step_tokens is None and any(contexts.steps)
            got_car = prop.carries or [""] * len(live)
            grown = [bool(s) for s in prop.steps]
            if prop.step_tokens is not None and not text_only:
                step_tokens = [
                    toks_old[j] + ((tuple(got_toks[j]),) if grown[j] else ())
                    for j in range(len(live))
                ]
            carries = [car_old[j] + ((got_car[j],) if grown[j] else ()) for j in range(len(live))]
        state = prm_state = None
        if prop.state is not None or prm_rows is not None:
            # rows of the particles still running (finished ones drop theirs)
            pos, grew_pos = [-1] * len(store), [-1] * len(store)
            at = {j: g for g, j in enumerate(grew)}
            for j, i in enumerate(live):
                if not finished[j]:
                    pos[i] = j
                    grew_pos[i] = at.get(j, -1)
            state = None if prop.state is None else prop.state.take(pos)
            prm_state = None if prm_rows is None else prm_rows.take(grew_pos)
        return store.replace(
            live, new_steps, finished, scores, step_tokens, carries, state, prm_state
        )

    def _score(self, prompt: str, partials, usage: Usage, state=None):
        """Scores of the partial answers and the reward model's new state rows (one per
        partial answer; ``None`` for stateless reward models). ``state``: the rows of the
        partial answers' previous steps (reward models with ``score_with_state``)."""
        n = len(partials)
        if self.reward is None:
            return np.full(n, np.nan), None
        queries = [("".join(p),) for p in partials] if self.aggregation == "model" else partials
        # identical partial answers (children of one parent that sampled the same step) are
        # scored once: the reward model is a function of the partial answer
        first: dict = {}
        at = []  # the first occurrence of each unique partial answer
        for j, q in enumerate(queries):
            if first.setdefault(tuple(q), len(first)) == len(at):
                at.append(j)
        where = np.array([first[tuple(q)] for q in queries])
        unique = list(first)
        rows = None
        if isinstance(self.reward, StatefulRewardModel):
            if state is not None:
                state = state.take(at)
            r, rows, encoded = self.reward.score_with_state(prompt, unique, state)
            usage.reward_tokens_encoded += int(encoded)
            rows = None if rows is None else rows.take(where)
        else:
            r = self.reward.score([prompt] * len(unique), unique)
        r = check_rewards(r, len(unique))
        usage.reward_calls += 1
        usage.rewards_scored += n
        return r[where], rows

    def budget_spent(self, usage: Usage) -> bool:
        """Whether ``usage`` has reached ``max_tokens`` or ``max_lm_calls``."""
        return (self.max_tokens is not None and usage.tokens_generated >= self.max_tokens) or (
            self.max_lm_calls is not None and usage.lm_calls >= self.max_lm_calls
        )

    # ------------------------------------------------------------------ potentials
    def aggregate(self, scores: tuple[float, ...]) -> float:
        """The aggregated score ``r_t`` of one particle from its per-step scores."""
        if not scores:
            return 1.0
        if self.aggregation in ("model", "last"):
            return scores[-1]
        if self.aggregation == "min":
            return min(scores)
        return float(np.prod(scores))

    def phi(self, r) -> np.ndarray:
        """The log potential of an aggregated score (before the temperature)."""
        r = np.asarray(r, dtype=np.float64)
        if self.potential == "log" and r.size and r.min() > 0:  # no zero: no error-state context
            return np.log(r)
        with np.errstate(divide="ignore"):
            if self.potential == "log":
                return np.log(r)
            rc = np.clip(r, _CLIP, 1 - _CLIP)
            return np.log(rc) - np.log1p(-rc)

    def step_log_potential(self, store: Trajectories, t: int) -> np.ndarray:
        """``log G_t`` of each particle: nonzero only for particles whose step ``t`` exists
        (``t = 1..``; finished particles are absorbing and get 0 afterwards)."""
        if self.reward is None:
            return np.zeros(len(store))
        out = np.zeros(len(store))
        at = [i for i, sc in enumerate(store.scores) if len(sc) >= t]
        if at:  # one vectorised phi over the particles with a step t
            cur = self.phi([self.aggregate(store.scores[i][:t]) for i in at])
            if self.telescoping and t > 1:
                cur = cur - self.phi([self.aggregate(store.scores[i][: t - 1]) for i in at])
            out[at] = cur / self.reward_temperature
        return out

    def total_log_potential(self, store: Trajectories) -> np.ndarray:
        """``sum_t log G_t`` of each complete trajectory (the reward part of its target)."""
        return sum(
            (self.step_log_potential(store, t) for t in range(1, self.max_steps + 1)),
            np.zeros(len(store)),
        )

    # ------------------------------------------------------------------ Feynman-Kac
    def feynman_kac(self, prompt: str, usage: Usage, *, conditional: bool = False) -> FeynmanKac:
        """The Feynman-Kac model for the SMC driver's eager path (``run_smc(jit=False)``).

        ``M0`` proposes the first step of every particle, ``M`` extends every unfinished
        particle by one step (one batched LM call and one batched reward call), ``logG``
        reads the scores attached by the moves (numpy float64), and ``finished`` stops the
        run as soon as every particle has finished. ``usage`` is updated in place.

        With ``conditional=True`` slot 0 is never extended: conditional SMC
        (:func:`~probinfer.smc.conditional.conditional_smc_model` with ``pin=pin_prefix``) writes
        the reference's steps into it.
        """
        check_prompt(prompt)
        first = 1 if conditional else 0

        def M0(key, n, data):
            return self.extend(key, Trajectories.empty(prompt, n), usage, np.arange(first, n))

        def M(key, t, values, data):
            return self.extend(key, values, usage, np.arange(first, len(values)))

        def logG(t, prev, values, data):
            return self.step_log_potential(values, t + 1)

        def finished(values, data):
            return all(values.finished) or self.budget_spent(usage)

        return FeynmanKac(M0, M, logG, num_steps=self.max_steps, finished=finished)

    def answers(self, store: Trajectories) -> list[str | None]:
        """The extracted final answer of each particle (``None`` if unfinished)."""
        out = []
        for text, fin in zip(store.texts(), store.finished):
            a = self.answer_extractor(text) if fin else None
            if a is not None and not isinstance(a, str):
                raise TypeError(f"answer_extractor must return str or None, got {type(a).__name__}")
            out.append(a)
        return out


def pin_prefix(t, values, reference, data):
    """Slot 0 holds the first ``t + 1`` steps of ``reference`` (a one-particle
    :class:`~probinfer.llm.store.Trajectories`): conditional SMC's ``pin``."""
    return values.pin(0, reference.prefix(0, t + 1))
