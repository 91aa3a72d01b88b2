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

_LAZY = {
    "beam_search": "probinfer.llm.baselines",
    "best_of_n": "probinfer.llm.baselines",
    "self_consistency": "probinfer.llm.baselines",
    "weighted_majority": "probinfer.llm.baselines",
    "particle_filter": "probinfer.llm.filtering",
    "sample_rollouts": "probinfer.llm.filtering",
    "parallel_tempering": "probinfer.llm.gibbs",
    "particle_gibbs": "probinfer.llm.gibbs",
    "swap_log_acceptance": "probinfer.llm.gibbs",
    "LanguageModel": "probinfer.llm.protocols",
    "RewardModel": "probinfer.llm.protocols",
    "StatefulRewardModel": "probinfer.llm.protocols",
    "StepFormat": "probinfer.llm.protocols",
    "StepProposal": "probinfer.llm.protocols",
    "Usage": "probinfer.llm.protocols",
    "LLMResult": "probinfer.llm.result",
    "LLMStateSpaceModel": "probinfer.llm.ssm",
    "Trajectories": "probinfer.llm.store",
    "ArithmeticTask": "probinfer.llm.task",
    "CharTokenizer": "probinfer.llm.task",
    "regex_extractor": "probinfer.llm.task",
    "VerifierReward": "probinfer.llm.verifier",
    "default_problems": "probinfer.llm.default",
    "HFCausalLM": "probinfer.llm.hf",
    "HFRewardModel": "probinfer.llm.hf",
    "load_default": "probinfer.llm.default",
    "OpenAICompatibleLM": "probinfer.llm.server",
    "OpenAICompatiblePRM": "probinfer.llm.server",
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
    "OpenAICompatibleLM",
    "OpenAICompatiblePRM",
    "RewardModel",
    "StatefulRewardModel",
    "StepFormat",
    "StepProposal",
    "Trajectories",
    "Usage",
    "VerifierReward",
    "beam_search",
    "best_of_n",
    "default_problems",
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


def __dir__():
    return sorted(set(globals()) | set(__all__))


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'probinfer.llm' has no attribute {name!r}")
