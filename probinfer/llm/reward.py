"""A learned process reward model on language-model likelihood features.

:class:`LikelihoodPRM` scores a partial answer by logistic regression on features of its
*newest step* under a causal LM: the step's log-probability and its number of tokens. The
coefficients are fitted (``scripts/train_llm_default.py``) on the bundled LM's own samples
labelled by the verifier ("every step so far correct"). It is imperfect by construction:
it only looks at the newest step, so a prefix whose earlier step was wrong can still score
high, and an outcome score computed this way is easy to hack. Per-token log-probabilities
of the whole batch come from one forward pass through the batched likelihood engine.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from probinfer.llm.protocols import StepFormat

__all__ = ["FEATURES", "LikelihoodPRM"]

FEATURES = ("step_log_prob", "step_num_tokens")


class LikelihoodPRM:
    """``sigmoid(coef . features(newest step) + intercept)``.

    Parameters
    ----------
    lm
        An :class:`~probinfer.llm.HFCausalLM` (its model and tokenizer are used).
    coef, intercept
        Logistic-regression coefficients for :data:`FEATURES`.
    step_format
        Used to re-split a partial answer passed as one string (``"model"`` aggregation).
    """

    def __init__(self, lm, coef, intercept: float, *, step_format: StepFormat | None = None):
        import torch

        from probinfer.engine import LikelihoodEngine

        self.lm = lm
        self.coef = np.asarray(coef, dtype=np.float64)
        if self.coef.shape != (len(FEATURES),):
            raise ValueError(f"coef must have {len(FEATURES)} entries, got {self.coef.shape}")
        self.intercept = float(intercept)
        self.step_format = step_format or StepFormat()
        pad = lm.pad_token_id
        model = lm.model

        def token_log_probs(ids):
            mask = (ids != pad).long()
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
            return torch.cat([torch.zeros_like(lp[:, :1]), lp], 1) * mask

        self.engine = LikelihoodEngine(
            token_log_probs,
            backend="torch",
            min_bucket=8,
            device=str(lm.device),
            dtype=torch.long,
        )

    @classmethod
    def from_pretrained(
        cls, path, lm=None, *, device=None, step_format: StepFormat | None = None
    ) -> LikelihoodPRM:
        """Load ``prm.json`` (coefficients and the LM directory, relative to ``path``)."""
        from probinfer.llm.hf import HFCausalLM

        p = Path(path)
        cfg_path = p / "prm.json"
        if not cfg_path.exists():
            raise ValueError(f"path must be a directory with prm.json, got {path!r}")
        cfg = json.loads(cfg_path.read_text())
        if lm is None:
            lm = HFCausalLM.from_pretrained((p / cfg["lm"]).resolve(), device=device)
        return cls(lm, cfg["coef"], cfg["intercept"], step_format=step_format)

    def features(self, prompts, partials) -> np.ndarray:
        """``(n, 2)``: log-probability and token count of each partial answer's newest step."""
        tok = self.lm.tokenizer
        rows, spans = [], []
        for prompt, steps in zip(prompts, partials):
            steps = self.step_format.split("".join(steps))
            head = tok.encode(prompt + "".join(steps[:-1]))
            last = tok.encode(steps[-1]) if steps else []
            rows.append(head + last)
            spans.append((len(head), len(head) + len(last)))
        if not rows:
            return np.zeros((0, len(FEATURES)))
        width = max(map(len, rows))
        ids = np.full((len(rows), width), self.lm.pad_token_id, dtype=np.int32)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
        lp = np.asarray(self.engine(ids), dtype=np.float64)
        return np.array([[lp[i, a:b].sum(), b - a] for i, (a, b) in enumerate(spans)])

    def score(self, prompts, partials) -> np.ndarray:
        z = self.features(prompts, partials) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-z))
