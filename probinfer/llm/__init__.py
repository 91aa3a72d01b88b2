"""LLM generation as a state-space model: particle-based inference-time scaling.

Puri et al. (2025) cast reasoning as a state-space model: the state is the partial answer,
the language model proposes the next step, and a process reward model's score is the
probability that the step is correct. Particle filtering, particle Gibbs and parallel
tempering then sample answers from the posterior given "every step is correct"; the
baselines (best-of-N, self-consistency, weighted majority voting, beam search) use the same
models and the same budget (full-rollout equivalents).

Torch and transformers are imported only by the backends that need them
(:class:`HFCausalLM`, :class:`HFRewardModel`, :func:`load_default`), on first use.
"""

from __future__ import annotations

import importlib

from probinfer.llm.baselines import (
    beam_search,
    best_of_n,
    self_consistency,
    weighted_majority,
)
from probinfer.llm.filtering import particle_filter, sample_rollouts
from probinfer.llm.gibbs import parallel_tempering, particle_gibbs, swap_log_acceptance
from probinfer.llm.protocols import LanguageModel, RewardModel, StepFormat, StepProposal, Usage
from probinfer.llm.result import LLMResult
from probinfer.llm.ssm import LLMStateSpaceModel
from probinfer.llm.store import Trajectories
from probinfer.llm.task import ArithmeticTask, CharTokenizer, regex_extractor
from probinfer.llm.verifier import VerifierReward

_LAZY = {
    "HFCausalLM": "probinfer.llm.hf",
    "HFRewardModel": "probinfer.llm.hf",
    "load_default": "probinfer.llm.default",
    "ALGORITHMS": "probinfer.llm.scale",
    "run_scaling": "probinfer.llm.scale",
}

__all__ = [
    "ALGORITHMS",
    "ArithmeticTask",
    "CharTokenizer",
    "HFCausalLM",
    "HFRewardModel",
    "LLMResult",
    "LLMStateSpaceModel",
    "LanguageModel",
    "RewardModel",
    "StepFormat",
    "StepProposal",
    "Trajectories",
    "Usage",
    "VerifierReward",
    "beam_search",
    "best_of_n",
    "load_default",
    "parallel_tempering",
    "particle_filter",
    "particle_gibbs",
    "regex_extractor",
    "run_scaling",
    "sample_rollouts",
    "self_consistency",
    "swap_log_acceptance",
    "weighted_majority",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'probinfer.llm' has no attribute {name!r}")
