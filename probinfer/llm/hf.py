"""Local Hugging Face ``transformers`` backends: a causal LM and a learned PRM.

:class:`HFCausalLM` samples the next reasoning step of all live particles in one batched
forward pass per token: contexts are left-padded, attention masks and position ids skip
the padding, the key/value cache is reused across the tokens of a step, and sampling uses a
``torch.Generator`` seeded from the ``jax.random`` key (same key, same result).

:class:`HFRewardModel` scores partial answers with a sequence classifier (one logit,
``p = sigmoid(logit)``) through the batched likelihood engine (torch backend: chunked,
bucketed, no-grad, CUDA when present).

Everything loads from local paths (``local_files_only=True``): nothing is downloaded.
Torch and transformers are imported inside the functions, never at module import.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from probinfer.llm.protocols import StepProposal
from probinfer.llm.ssm import key_to_seed
from probinfer.llm.task import CharTokenizer

__all__ = ["HFCausalLM", "HFRewardModel", "load_tokenizer"]


class _HFTokenizer:
    """Adapter giving a ``transformers`` tokenizer the small interface used here."""

    def __init__(self, tok):
        self.tok = tok
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.pad_token_id = 0 if pad is None else int(pad)
        self.eos_token_id = tok.eos_token_id

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)


def load_tokenizer(path):
    """The tokenizer stored at ``path``: a :class:`CharTokenizer` (``char_tokenizer.json``)
    or a ``transformers`` tokenizer (loaded with ``local_files_only=True``)."""
    path = Path(path)
    char = path / "char_tokenizer.json"
    if char.exists():
        return CharTokenizer.from_dict(json.loads(char.read_text()))
    from transformers import AutoTokenizer

    return _HFTokenizer(AutoTokenizer.from_pretrained(path, local_files_only=True))


def _check_dir(path, what: str) -> Path:
    p = Path(path)
    if not (p / "config.json").exists():
        raise ValueError(f"{what} must be a local model directory with config.json, got {path!r}")
    return p


def _device(device):
    import torch

    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class HFCausalLM:
    """A local causal language model proposing reasoning steps in batches.

    Parameters
    ----------
    model
        A ``transformers`` causal LM (``AutoModelForCausalLM``), in eval mode.
    tokenizer
        A :class:`~probinfer.llm.CharTokenizer` or a tokenizer from :func:`load_tokenizer`.
    device
        Torch device (default: CUDA when available, else CPU).
    eos_text
        Text that an end-of-sequence token stands for (e.g. the stop string, so that a model
        ending its answer with EOS finishes the particle); ``None`` ends the step only.
    """

    def __init__(self, model, tokenizer, *, device=None, eos_text: str | None = None):
        self.device = _device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.eos_token_id = getattr(tokenizer, "eos_token_id", None)
        self.eos_text = eos_text
        # a character tokenizer's padding id is not a real token: never sample it
        self._mask_pad = isinstance(tokenizer, CharTokenizer)

    @classmethod
    def from_pretrained(cls, path, *, device=None, eos_text: str | None = None) -> HFCausalLM:
        """Load a model directory (safetensors + config) from disk; no network access."""
        from transformers import AutoModelForCausalLM

        p = _check_dir(path, "path")
        model = AutoModelForCausalLM.from_pretrained(p, local_files_only=True)
        return cls(model, load_tokenizer(p), device=device, eos_text=eos_text)

    def propose(
        self,
        key,
        prompts: Sequence[str],
        partials: Sequence[str],
        step_end: Callable[[str], int | None],
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
    ) -> StepProposal:
        import torch

        tok = self.tokenizer
        ctx = [tok.encode(p + q) for p, q in zip(prompts, partials)]
        b = len(ctx)
        if b == 0:
            return StepProposal([], [])
        width = max(map(len, ctx))
        ids = torch.full((b, width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for i, row in enumerate(ctx):
            if row:
                ids[i, width - len(row) :] = torch.tensor(row)
                mask[i, width - len(row) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        ids, mask, pos = ids.to(self.device), mask.to(self.device), pos.to(self.device)
        gen = torch.Generator(device="cpu").manual_seed(key_to_seed(key))
        tokens: list[list[int]] = [[] for _ in range(b)]
        steps: list[str | None] = [None] * b
        cur_ids, cur_pos, past, produced = ids, pos, None, 0
        with torch.no_grad():
            for _ in range(int(max_new_tokens)):
                out = self.model(
                    input_ids=cur_ids,
                    attention_mask=mask,
                    position_ids=cur_pos,
                    past_key_values=past,
                    use_cache=True,
                )
                past = out.past_key_values
                logits = out.logits[:, -1, :].float().cpu()
                if self._mask_pad:
                    logits[:, self.pad_token_id] = -torch.inf
                if temperature == 0:
                    nxt = logits.argmax(-1)
                else:
                    probs = torch.softmax(logits / temperature, dim=-1)
                    nxt = torch.multinomial(probs, 1, generator=gen)[:, 0]
                for i in range(b):
                    if steps[i] is not None:
                        continue
                    t = int(nxt[i])
                    produced += 1
                    if self.eos_token_id is not None and t == self.eos_token_id:
                        steps[i] = tok.decode(tokens[i]) + (self.eos_text or "")
                        continue
                    tokens[i].append(t)
                    text = tok.decode(tokens[i])
                    end = step_end(text)
                    if end is not None:
                        steps[i] = text[:end]
                if all(s is not None for s in steps):
                    break
                cur_ids = nxt[:, None].to(self.device)
                cur_pos = cur_pos[:, -1:] + 1
                mask = torch.cat(
                    [mask, torch.ones((b, 1), dtype=mask.dtype, device=self.device)], 1
                )
        truncated = [s is None for s in steps]
        final = [tok.decode(tokens[i]) if s is None else s for i, s in enumerate(steps)]
        return StepProposal(
            final,
            truncated,
            tokens_generated=produced,
            tokens_encoded=int(sum(map(len, ctx))),
        )


class HFRewardModel:
    """A learned process reward model with one logit: a sequence classifier, or a token
    classifier read at the last token of the partial answer (the usual PRM layout: one
    score per step, at the step's last token).

    ``score`` concatenates prompt and steps, right-pads the batch and evaluates
    ``sigmoid(logit)`` at the last real token through
    :class:`~probinfer.engine.LikelihoodEngine` (torch backend).

    Parameters
    ----------
    model
        A ``transformers`` sequence- or token-classification model with ``num_labels = 1``.
    tokenizer
        As for :class:`HFCausalLM`.
    device
        Torch device.
    """

    def __init__(self, model, tokenizer, *, device=None):
        import torch

        from probinfer.engine import LikelihoodEngine

        self.device = _device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.pad_token_id = int(tokenizer.pad_token_id)
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = self.pad_token_id
        pad = self.pad_token_id

        def prob(ids):
            mask = (ids != pad).long()
            logits = self.model(input_ids=ids, attention_mask=mask).logits
            if logits.ndim == 3:  # token head: the score at the last real token (right padding)
                last = (mask.sum(-1) - 1).clamp(min=0)
                logits = logits[torch.arange(ids.shape[0], device=ids.device), last]
            return torch.sigmoid(logits[:, 0].float())

        self.engine = LikelihoodEngine(
            prob, backend="torch", min_bucket=8, device=str(self.device), dtype=torch.long
        )

    @classmethod
    def from_pretrained(cls, path, *, device=None) -> HFRewardModel:
        import transformers

        p = _check_dir(path, "path")
        arch = json.loads((p / "config.json").read_text()).get("architectures") or []
        token = any(a.endswith("ForTokenClassification") for a in arch)
        auto = (
            transformers.AutoModelForTokenClassification
            if token
            else transformers.AutoModelForSequenceClassification
        )
        model = auto.from_pretrained(p, local_files_only=True)
        return cls(model, load_tokenizer(p), device=device)

    def score(self, prompts, partials) -> np.ndarray:
        """``sigmoid(logit)`` of each ``prompt + "".join(steps)``, shape ``(n,)``.

        Raises ``ValueError`` when ``prompts`` and ``partials`` differ in length, a text
        has a character outside the tokenizer's vocabulary, or is longer than the model's
        context window.
        """
        if len(prompts) != len(partials):
            raise ValueError(
                f"prompts and partials must have the same length, got {len(prompts)} "
                f"and {len(partials)}"
            )
        rows = [self.tokenizer.encode(p + "".join(s)) for p, s in zip(prompts, partials)]
        if not rows:
            return np.zeros(0)
        width = max(map(len, rows))
        limit = getattr(self.model.config, "n_positions", None) or getattr(
            self.model.config, "max_position_embeddings", None
        )
        if limit is not None and width > limit:
            raise ValueError(
                f"partials: a prompt + partial answer has {width} tokens, more than the "
                f"reward model's context window of {limit}"
            )
        ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int32)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
        return np.asarray(self.engine(ids), dtype=np.float64)
