"""The bundled offline default: tiny arithmetic LM, learned PRM and verifier.

The assets under ``probinfer/llm/assets/`` (``lm/`` and ``prm/``: safetensors + JSON with a
character-level ``tokenizer.json``, about 1.4 MB) are trained by
``scripts/train_llm_default.py``. Both are standard Hugging Face architectures, so a serving
engine serves them as they are (vLLM, its CPU build included: ``make test-vllm``): the LM a
``LlamaForCausalLM`` (hidden size 64, 2 heads of size 32, 3 layers), the PRM a
``LlamaForSequenceClassification``. The LM makes mistakes on purpose (about one operation in
five is wrong in its training data), so a single sample is right only about 40% of the time.

The learned PRM (``"learned"``, ``assets/prm/``) scores the *whole* partial answer (prompt
and every step so far; the paper's "model" aggregation): the LM's transformer, frozen, with
two new blocks and a one-logit sequence-classification head read at the last token, trained
on the LM's own samples labelled by the verifier ("every step so far correct"). It is
informative but imperfect (91% held-out step accuracy, in ``assets/prm/training.json``), so
reward hacking by greedy selection shows. ``"likelihood"`` is a weaker learned PRM that only
sees the newest step's LM log-likelihood (:class:`~probinfer.llm.reward.LikelihoodPRM`).
"""

from __future__ import annotations

from pathlib import Path

from probinfer.llm.protocols import StepFormat
from probinfer.llm.ssm import LLMStateSpaceModel
from probinfer.llm.task import ArithmeticTask
from probinfer.llm.verifier import VerifierReward

__all__ = ["ASSETS", "PRMS", "bundled_reward", "default_model_kwargs", "load_default"]

ASSETS = Path(__file__).resolve().parent / "assets"
PRMS = ("learned", "likelihood", "verifier")


def default_model_kwargs() -> dict:
    """State-space model settings for the bundled task (guards sized to its answers)."""
    return {
        "step_format": StepFormat(";", "|"),
        "max_steps": 10,
        "max_tokens_per_step": 6,
        # log r rather than the paper's logit r: with "model" aggregation the potential of
        # every step multiplies in, and the odds of a confident PRM let its false positives
        # dominate at large budgets; measured on held-out tuning problems (seed 7) with the
        # previously bundled GPT-2 PRM, PF accuracy at budgets 8/16/32 was 68/68/75% (log) vs
        # 67/60/68% (logit); the README's logit row is the current models' test figure
        "potential": "log",
        "aggregation": "model",
    }


def bundled_reward(prm: str, lm, *, step_format: StepFormat, device=None):
    """The bundled reward model called ``prm`` (one of :data:`PRMS`).

    Parameters
    ----------
    prm
        ``"learned"`` (whole-prefix fine-tuned PRM, :class:`~probinfer.llm.HFRewardModel`),
        ``"likelihood"`` (newest-step likelihood features,
        :class:`~probinfer.llm.reward.LikelihoodPRM`) or ``"verifier"`` (exact checking).
    lm
        The bundled :class:`~probinfer.llm.HFCausalLM` (used by ``"likelihood"``).
    step_format
        How partial answers are split into steps.
    device
        Torch device for the networks.
    """
    if prm not in PRMS:
        raise ValueError(f"prm must be one of {PRMS}, got {prm!r}")
    if prm == "learned":
        from probinfer.llm.hf import HFRewardModel

        return HFRewardModel.from_pretrained(ASSETS / "prm", device=device)
    if prm == "likelihood":
        from probinfer.llm.reward import LikelihoodPRM

        return LikelihoodPRM.from_pretrained(ASSETS / "prm_likelihood", lm, step_format=step_format)
    return VerifierReward(step_format=step_format)


def load_default(prm: str = "learned", *, device=None, **kwargs) -> LLMStateSpaceModel:
    """The bundled model as an :class:`~probinfer.llm.LLMStateSpaceModel`.

    Parameters
    ----------
    prm
        Which bundled reward model (:func:`bundled_reward`): ``"learned"``,
        ``"likelihood"`` or ``"verifier"``.
    device
        Torch device for the networks.
    **kwargs
        Overrides of :func:`default_model_kwargs` (``potential``, ``aggregation``,
        ``reward_temperature``, ...).
    """
    from probinfer.llm.hf import HFCausalLM

    if prm not in PRMS:
        raise ValueError(f"prm must be one of {PRMS}, got {prm!r}")
    settings = default_model_kwargs()
    settings.update(kwargs)
    lm = HFCausalLM.from_pretrained(ASSETS / "lm", device=device)
    reward = bundled_reward(prm, lm, step_format=settings["step_format"], device=device)
    return LLMStateSpaceModel(lm, reward, **settings)


def default_problems(n: int, seed: int = 2025) -> list[tuple[str, str]]:
    """``n`` held-out problems of the bundled task as ``(prompt, answer)`` pairs."""
    return [(p.prompt, p.answer) for p in ArithmeticTask().problems(n, seed=seed)]
