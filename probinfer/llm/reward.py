"""A learned process reward model on language-model likelihood features.

:class:`LikelihoodPRM` scores a partial answer by logistic regression on features of its
*newest step* under a causal LM: the step's log-probability and its number of tokens. The
coefficients are fitted (``scripts/train_llm_default.py``) on the bundled LM's own samples
labelled by the verifier ("every step so far correct"). It is imperfect by construction:
it only looks at the newest step, so a prefix whose earlier step was wrong can still score
high, and an outcome score computed this way is easy to hack. Per-token log-probabilities
of the whole batch come from no-grad torch forward passes over chunks of right-padded rows
(padded to the longest row of the chunk only; nothing goes through JAX).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from probinfer.checks import check_num
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
    batch_size
        Partial answers per forward pass.
    """

    def __init__(
        self,
        lm,
        coef,
        intercept: float,
        *,
        step_format: StepFormat | None = None,
        batch_size: int = 64,
    ):
        self.lm = lm
        self.coef = np.asarray(coef, dtype=np.float64)
        if self.coef.shape != (len(FEATURES),):
            raise ValueError(f"coef must have {len(FEATURES)} entries, got {self.coef.shape}")
        self.intercept = float(intercept)
        self.step_format = step_format or StepFormat()
        check_num(batch_size, "batch_size")
        self.batch_size = batch_size

    def _token_log_probs(self, rows, spans) -> np.ndarray:
        """Sum of the log-probabilities of the tokens ``rows[i][a:b]`` for each span."""
        import torch

        out = np.zeros(len(rows))
        pad = self.lm.pad_token_id
        with torch.no_grad():
            for c in range(0, len(rows), self.batch_size):
                chunk = rows[c : c + self.batch_size]
                w = max(map(len, chunk))
                ids = torch.full((len(chunk), w), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), w), dtype=torch.long)
                for i, r in enumerate(chunk):
                    ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
                    mask[i, : len(r)] = 1
                ids, mask = ids.to(self.lm.device), mask.to(self.lm.device)
                logits = self.lm.model(input_ids=ids, attention_mask=mask).logits.float()
                lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
                lp = torch.cat([torch.zeros_like(lp[:, :1]), lp], 1).cpu().numpy()
                for i in range(len(chunk)):
                    a, b = spans[c + i]
                    out[c + i] = lp[i, a:b].sum(dtype=np.float64)
        return out

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
        lp = self._token_log_probs(rows, spans)
        return np.array([[lp[i], b - a] for i, (a, b) in enumerate(spans)])

    def score(self, prompts, partials) -> np.ndarray:
        z = self.features(prompts, partials) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-z))
