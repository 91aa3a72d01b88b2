"""The bundled offline default: tiny arithmetic LM, learned PRM and verifier.

The assets under ``probinfer/llm/assets/`` (``lm/`` and ``prm/``: safetensors + JSON,
about 1 MB) are trained by ``scripts/train_llm_default.py``. The LM makes mistakes on
purpose (about one operation in five is wrong in its training data), so a single sample
is right only about a quarter of the time. The learned PRM ("learned") is a logistic
regression on the LM log-likelihood of the newest step, fitted to verifier labels ("every
step so far correct") of the LM's own samples: about 84% accurate, and blind to earlier
steps by construction. A second learned PRM ("token": the LM's transformer fine-tuned with
a token-classification head) is weaker (about 78%).
"""

from __future__ import annotations

from pathlib import Path

from probinfer.llm.protocols import StepFormat
from probinfer.llm.ssm import LLMStateSpaceModel
from probinfer.llm.task import ArithmeticTask
from probinfer.llm.verifier import VerifierReward

__all__ = ["ASSETS", "PRMS", "default_model_kwargs", "load_default"]

ASSETS = Path(__file__).resolve().parent / "assets"
PRMS = ("learned", "token", "verifier")


def default_model_kwargs() -> dict:
    """State-space model settings for the bundled task (guards sized to its answers)."""
    return {
        "step_format": StepFormat(";", "|"),
        "max_steps": 10,
        "max_tokens_per_step": 6,
        "potential": "logit",
        "aggregation": "model",
    }


def load_default(prm: str = "learned", *, device=None, **kwargs) -> LLMStateSpaceModel:
    """The bundled model as an :class:`~probinfer.llm.LLMStateSpaceModel`.

    Parameters
    ----------
    prm
        ``"learned"`` (the bundled likelihood-feature PRM, :class:`LikelihoodPRM`),
        ``"token"`` (the bundled fine-tuned token-classification PRM, weaker) or
        ``"verifier"`` (exact checking).
    device
        Torch device for the networks.
    **kwargs
        Overrides of :func:`default_model_kwargs` (``potential``, ``aggregation``,
        ``reward_temperature``, ...).
    """
    from probinfer.llm.hf import HFCausalLM, HFRewardModel

    if prm not in PRMS:
        raise ValueError(f"prm must be one of {PRMS}, got {prm!r}")
    settings = default_model_kwargs()
    settings.update(kwargs)
    lm = HFCausalLM.from_pretrained(ASSETS / "lm", device=device)
    if prm == "learned":
        from probinfer.llm.reward import LikelihoodPRM

        reward = LikelihoodPRM.from_pretrained(
            ASSETS / "prm_likelihood", lm, step_format=settings["step_format"]
        )
    elif prm == "token":
        reward = HFRewardModel.from_pretrained(ASSETS / "prm", device=device)
    else:
        reward = VerifierReward(step_format=settings["step_format"])
    return LLMStateSpaceModel(lm, reward, **settings)


def default_problems(n: int, seed: int = 2025) -> list[tuple[str, str]]:
    """``n`` held-out problems of the bundled task as ``(prompt, answer)`` pairs."""
    return [(p.prompt, p.answer) for p in ArithmeticTask().problems(n, seed=seed)]
