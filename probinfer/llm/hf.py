"""Local Hugging Face ``transformers`` backends: a causal LM and a learned PRM.

:class:`HFCausalLM` samples the next reasoning step of all live particles in one batched
forward pass per token: contexts are left-padded, attention masks and position ids skip
the padding, the key/value cache is reused across the tokens of a step, and sampling uses a
``torch.Generator`` seeded from the ``jax.random`` key (same key, same result).

:class:`HFRewardModel` scores partial answers with a local PRM of one of three kinds
(sequence classifier, token classifier with a step separator as in Qwen2.5-Math-PRM, causal
LM reading good/bad tokens at a step tag as in Math-Shepherd), in batched no-grad torch
forward passes (no padding beyond the longest row of a chunk, CUDA when present).

Everything loads from local paths (``local_files_only=True``): nothing is downloaded.
Torch and transformers are imported inside the functions, never at module import.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from probinfer._random import key_to_seed
from probinfer.checks import check_num
from probinfer.llm.decode import StepDecoder, step_proposal
from probinfer.llm.protocols import StepEnd, StepProposal
from probinfer.llm.tokenizers import HFTokenizer, load_tokenizer, never_sampled

__all__ = ["HFCausalLM", "HFRewardModel", "HFTokenizer", "context_limit", "load_tokenizer"]


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


def context_limit(config) -> int | None:
    """The model's context window in tokens (``max_position_embeddings`` or
    ``n_positions``), or ``None`` when the config has none."""
    for name in ("max_position_embeddings", "n_positions"):
        v = getattr(config, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _cache(config, layers):
    """A fresh :class:`~transformers.DynamicCache` holding ``layers`` (``(keys, values)``
    per layer; empty: no cache yet). The forward pass appends to the cache object with new
    tensors, so the stored ``layers`` are never mutated."""
    from transformers import DynamicCache

    if layers:
        return DynamicCache(ddp_cache_data=layers, config=config)
    return DynamicCache(config=config)


def forward_cached(model, ids, mask, position, layers, *, last: bool = False):
    """``model``'s output on ``ids`` after the cached ``layers`` (``(keys, values)`` per
    layer) and the new layers; ``mask`` covers the cached and new positions. transformers'
    forward with a fresh cache object (the stored layers are never mutated)."""
    cache = _cache(model.config, layers)
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=position, cache=cache, use_cache=True
    )
    logits = out.logits[:, -1] if last else out.logits
    return logits, tuple((layer.keys, layer.values) for layer in cache.layers)


def sample_tokens(logits, temperature: float, gen, pad: int | None = None, noise=None):
    """One token per row from ``softmax(logits / temperature)`` (``argmax`` at temperature
    0), drawn with the torch generator ``gen``; returns ``(tokens, noise)``.

    The draw is the exponential race: ``argmax_i p_i / E_i`` with ``E_i ~ Exp(1)`` i.i.d. is
    ``i`` with probability ``p_i`` (``E_i / p_i ~ Exp(p_i)``, and the smallest of independent
    exponentials is the ``i``-th with probability proportional to its rate). It is the
    computation ``torch.multinomial(probs, 1, generator=gen)`` makes for one sample per row,
    so the tokens and the generator's stream are the same as that call's (a test checks
    this), at a fraction of its cost: the noise is drawn into the reused buffer ``noise``
    and the division and the argmax run on the host. ``pad``: a token id never drawn
    (its logit is set to ``-inf`` in place).
    """
    import torch

    if logits.dtype != torch.float32:
        logits = logits.float()
    if logits.device.type != "cpu":
        logits = logits.cpu()
    if pad is not None:
        logits[:, pad] = -torch.inf
    if temperature == 0:
        return logits.argmax(-1).tolist(), noise
    probs = torch.softmax(logits if temperature == 1 else logits / temperature, dim=-1)
    if noise is None or noise.shape != probs.shape:
        noise = torch.empty_like(probs)
    noise.exponential_(generator=gen)
    return (probs.numpy() / noise.numpy()).argmax(-1).tolist(), noise


class HFCausalLM:
    """A local causal language model proposing token-exact reasoning steps in batches.

    Each particle's state is the token ids it sampled. A step ends at the first token whose
    decoded text completes the delimiter (or the stop); the text decoded past the delimiter
    from that token opens the next step, and the next step continues from the token ids,
    never from re-tokenized text. The target of the particle filter is then exactly the
    LM's distribution over token sequences reweighted by the potentials.

    With ``kv_cache=True`` (default) the prompt is prefilled once per problem and shared,
    each particle keeps its key/value cache rows between steps
    (:class:`~probinfer.llm.kv.KVRows`, attached to the store), children of a resampled
    particle continue from copies of their parent's rows, and finished particles drop
    theirs: every token is encoded once. ``kv_cache=False`` re-encodes prompt and token ids
    at every step (same tokens, same result for the same key).

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
    kv_cache
        Carry each particle's key/value cache between steps and through resampling.
    """

    def __init__(
        self, model, tokenizer, *, device=None, eos_text: str | None = None, kv_cache: bool = True
    ):
        self.device = _device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.eos_token_id = getattr(tokenizer, "eos_token_id", None)
        self.eos_text = eos_text
        self.kv_cache = bool(kv_cache)
        self.context_limit = context_limit(model.config)
        self._never = never_sampled(tokenizer)  # a token id never drawn (or None)
        self._prompt_rows = None  # (prompt ids, one-row KVRows): the last prompt's prefill

    @classmethod
    def from_pretrained(
        cls, path, *, device=None, eos_text: str | None = None, kv_cache: bool = True
    ) -> HFCausalLM:
        """Load a model directory (safetensors + config) from disk; no network access."""
        from transformers import AutoModelForCausalLM

        p = _check_dir(path, "path")
        model = AutoModelForCausalLM.from_pretrained(p, local_files_only=True)
        return cls(model, load_tokenizer(p), device=device, eos_text=eos_text, kv_cache=kv_cache)

    # ------------------------------------------------------------------ encoding
    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of ``prompt``; ``ValueError`` when it does not leave room for one
        generated token in the context window."""
        ids = self.tokenizer.encode(prompt)
        if not ids:
            raise ValueError("prompt must encode to at least one token")
        limit = self.context_limit
        if limit is not None and len(ids) >= limit:
            raise ValueError(
                f"prompt has {len(ids)} tokens but the language model's context limit is "
                f"{limit} tokens (config max_position_embeddings/n_positions); shorten the "
                "prompt or use a model with a longer context"
            )
        return ids

    def _forward(self, ids, mask, position, layers):
        """One forward pass on top of cached ``layers``; returns the last logits and the
        new layers (:func:`forward_cached`)."""
        return forward_cached(self.model, ids, mask, position, layers, last=True)

    def _prefill(self, seqs, *, logits: bool = False):
        """Encode the sequences (a left-padded batch).

        Without ``logits``, every token but the last, which is each row's pending token
        (fed by the next forward pass). With ``logits``, every token, and the next-token
        logits of each row are returned too: the first token is sampled from them, without
        the extra forward pass a pending token would cost (the rows' last token then counts
        as fed once that sample is drawn). Returns ``(KVRows, tokens encoded, logits)``
        (``logits`` ``None`` without the option).
        """
        import torch

        from probinfer.llm.kv import KVRows

        b, cut = len(seqs), 0 if logits else 1
        width = max(len(q) - cut for q in seqs)
        ids = torch.full((b, width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for i, q in enumerate(seqs):
            if len(q) > cut:
                ids[i, width - len(q) + cut :] = torch.tensor(q[: len(q) - cut])
                mask[i, width - len(q) + cut :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        layers, out = (), None
        if width:
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            out, layers = self._forward(ids, mask, pos, ())
        position = torch.tensor([len(q) - 1 for q in seqs], dtype=torch.long, device=self.device)
        pending = torch.tensor([q[-1] for q in seqs], dtype=torch.long, device=self.device)
        rows = KVRows(layers, mask, position, pending, np.arange(b))
        return rows, sum(len(q) - cut for q in seqs), out if logits else None

    def _start(self, contexts, prompt_ids):
        """``(rows, tokens encoded, logits)``: the cache rows to continue from, the tokens
        encoded to build them and, when a prefill encoded every token, each row's
        next-token logits (:meth:`_prefill`), else ``None``."""
        b = len(contexts)
        state = contexts.lm_state
        if self.kv_cache and state is not None and len(state) == b:
            state = state.gathered()
            if state.complete:
                return state, 0, None
            missing = np.flatnonzero(state.row_of < 0)
            if contexts.step_tokens is not None and missing.size < b and state.layers:
                rows, encoded, _ = self._prefill(
                    [prompt_ids + contexts.tokens(int(i)) for i in missing]
                )
                if rows.layers:  # prefill only the particles without rows (pending kept)
                    return state.fill(rows, missing), encoded, None
        fresh = contexts.step_tokens is None and not any(contexts.steps)
        if self.kv_cache and fresh and not any(contexts.partials()):
            encoded = 0
            if self._prompt_rows is None or self._prompt_rows[0] != tuple(prompt_ids):
                rows, encoded, logits = self._prefill([prompt_ids], logits=True)
                self._prompt_rows = (tuple(prompt_ids), rows, logits)
            _, rows, logits = self._prompt_rows
            at = np.zeros(b, dtype=np.int64)
            return rows.take(at).gathered(), encoded, logits.repeat(b, 1)  # a copy per run
        if contexts.step_tokens is None:  # text history without token ids
            seqs = [self.tokenizer.encode(contexts.prompt + q) for q in contexts.partials()]
        else:
            seqs = [prompt_ids + contexts.tokens(i) for i in range(b)]
        return self._prefill(seqs, logits=True)

    # ------------------------------------------------------------------ sampling
    def _decoders(self, contexts, step_end, prompt_ids) -> list[StepDecoder]:
        """One :class:`~probinfer.llm.decode.StepDecoder` per particle, continuing its token
        ids (or, for a text history without token ids, the encoded text)."""
        if contexts.step_tokens is not None:
            histories = [prompt_ids + (contexts.tokens(i) or []) for i in range(len(contexts))]
        else:
            histories = [self.tokenizer.encode(contexts.prompt + q) for q in contexts.partials()]
        return [
            StepDecoder(
                self.tokenizer,
                h,
                contexts.carry(i),
                step_end,
                eos_token_id=self.eos_token_id,
                eos_text=self.eos_text,
            )
            for i, h in enumerate(histories)
        ]

    def propose(
        self, key, contexts, step_end: StepEnd, *, max_new_tokens: int, temperature: float = 1.0
    ) -> StepProposal:
        import torch

        b = len(contexts)
        if b == 0:
            return StepProposal([], [])
        prompt_ids = self.encode_prompt(contexts.prompt)
        rows, encoded, ready = self._start(contexts, prompt_ids)
        fed = None if ready is None else [False] * b  # rows that sampled from `ready`
        decoders = self._decoders(contexts, step_end, prompt_ids)
        layers, mask = rows.layers, rows.mask
        # positions and pending tokens live on the host (one tensor per forward pass)
        position, pending = rows.position.tolist(), rows.pending.tolist()
        gen = torch.Generator(device="cpu").manual_seed(key_to_seed(key))
        noise = None  # the sampler's reused buffer
        limit, pad = self.context_limit, self.pad_token_id
        produced = 0
        with torch.no_grad():
            for _ in range(int(max_new_tokens)):
                if limit is not None:  # a full context window ends the answer
                    for i, d in enumerate(decoders):
                        if not d.done and position[i] >= limit:
                            d.stop("context")
                active = [not d.done for d in decoders]
                if not any(active):
                    break
                if ready is not None:  # the prefill encoded the pending tokens already
                    logits, ready, fed = ready, None, active
                else:
                    # ids, positions and the new mask column of every row in one tensor
                    new = torch.tensor(
                        [(p if a else pad, q, a) for p, q, a in zip(pending, position, active)],
                        dtype=torch.long,
                        device=self.device,
                    )
                    mask = torch.cat([mask, new[:, 2:]], 1)
                    logits, layers = self._forward(new[:, :1], mask, new[:, 1:2], layers)
                    encoded += sum(active)
                nxt, noise = sample_tokens(logits, temperature, gen, self._never, noise)
                for i, d in enumerate(decoders):
                    if active[i]:
                        position[i] += 1
                        produced += 1
                        d.push(nxt[i])
                        if not d.ended:
                            pending[i] = nxt[i]
        state = self._rows_after(layers, mask, position, pending, fed) if self.kv_cache else None
        return step_proposal(
            decoders, exact=True, tokens_generated=produced, tokens_encoded=encoded, state=state
        )

    def _rows_after(self, layers, mask, position, pending, fed):
        """The particles' cache rows after a step (:class:`~probinfer.llm.kv.KVRows`)."""
        import torch

        from probinfer.llm.kv import KVRows

        dev = self.device
        position = torch.tensor(position, dtype=torch.long, device=dev)
        pending = torch.tensor(pending, dtype=torch.long, device=dev)
        state = KVRows(layers, mask, position, pending, np.arange(len(position)))
        if fed is not None and not all(fed):
            # a row that sampled nothing from the prefill's logits holds its last token
            # already: without a pending token to feed, it has no row (re-encoded if used)
            state = state.take([i if f else -1 for i, f in enumerate(fed)])
        return state


PRM_KINDS = ("sequence", "token", "causal")


def _detect_kind(architectures) -> str | None:
    """The PRM kind from architecture (class) names (``None`` when not recognisable)."""
    for arch in architectures or []:
        if arch.endswith("ForSequenceClassification"):
            return "sequence"
        if arch.endswith(("ForTokenClassification", "ForProcessRewardModel")):
            return "token"
        if arch.endswith(("ForCausalLM", "LMHeadModel")):
            return "causal"
    return None


def check_kind(kind) -> str:
    """Validate a PRM kind (``ValueError`` listing :data:`PRM_KINDS`)."""
    if kind not in PRM_KINDS:
        raise ValueError(f"kind must be one of {PRM_KINDS}, got {kind!r}")
    return kind


class HFRewardModel:
    """A local Hugging Face process reward model, in one of three conventions (``kind``):

    ``"sequence"``
        A sequence classifier scoring ``prompt + steps``: ``sigmoid(logit)`` with one label,
        ``P(label 1)`` with two.
    ``"token"``
        A token classifier read at a step position: with ``step_separator`` (the
        Qwen2.5-Math-PRM convention, e.g. ``"<extra_0>"``) the separator is inserted after
        every step and the score is ``P(positive label)`` at the last one; without, the score
        is read at the last token (the bundled PRM).
    ``"causal"``
        A causal LM reading good/bad token probabilities at a step tag (Math-Shepherd:
        ``step_separator="ки"``, ``good_token="+"``, ``bad_token="-"``): the score is
        ``P(good) / (P(good) + P(bad))`` at the last tag.

    ``score`` runs one no-grad batched forward per chunk of ``batch_size`` partial answers
    (right-padded to the longest in the chunk, no other padding), in torch only.

    Parameters
    ----------
    model
        The ``transformers`` model (``kind`` decides how its output is read).
    tokenizer
        As for :class:`HFCausalLM`.
    kind
        One of :data:`PRM_KINDS`; ``None`` detects it from ``model.config.architectures``.
    step_separator
        Text inserted after each step (``"token"``/``"causal"``), or ``None``.
    good_token, bad_token
        ``"causal"``: the tokens whose probabilities give the score.
    positive_label
        Index of the "correct" class when the head has two or more labels.
    device
        Torch device.
    batch_size
        Partial answers per forward pass (without cache reuse).
    kv_cache
        With :meth:`score_with_state` (what the particle filter calls), keep each
        particle's key/value rows between steps (``"token"`` and ``"causal"`` kinds, whose
        attention is causal) so that a step encodes only the token ids past the longest
        common prefix with the particle's previous ones; the scores equal those without
        reuse up to floating-point rounding.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        kind: str | None = None,
        step_separator: str | None = None,
        good_token: str = "+",
        bad_token: str = "-",
        positive_label: int = 1,
        device=None,
        batch_size: int = 64,
        kv_cache: bool = True,
    ):
        if kind is None:
            names = list(getattr(model.config, "architectures", None) or [])
            kind = _detect_kind(names + [type(model).__name__])
        if kind is None:
            raise ValueError(
                f"kind must be one of {PRM_KINDS}: it cannot be detected from the model's "
                f"architectures {getattr(model.config, 'architectures', None)!r}"
            )
        self.kind = check_kind(kind)
        if kind == "causal" and step_separator is None:
            raise ValueError("step_separator is needed for kind='causal' (e.g. 'ки')")
        check_num(batch_size, "batch_size")
        self.device = _device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.step_separator = step_separator
        self.positive_label = int(positive_label)
        self.batch_size = batch_size
        self.kv_cache = bool(kv_cache)
        self.pad_token_id = int(tokenizer.pad_token_id)
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = self.pad_token_id
        self.context_limit = context_limit(model.config)
        self._sep_ids = tokenizer.encode(step_separator) if step_separator else []
        if step_separator is not None and not self._sep_ids:
            raise ValueError(f"step_separator {step_separator!r} encodes to no token")
        self._good_bad = None
        if kind == "causal":
            ids = [tokenizer.encode(t) for t in (good_token, bad_token)]
            if any(len(i) != 1 for i in ids):
                raise ValueError(
                    f"good_token and bad_token must each be one token, got {good_token!r} -> "
                    f"{ids[0]} and {bad_token!r} -> {ids[1]}"
                )
            self._good_bad = (ids[0][0], ids[1][0])

    @classmethod
    def from_pretrained(cls, path, *, kind: str | None = None, **options) -> HFRewardModel:
        """Load a local PRM directory; ``kind=None`` detects it from ``config.json``
        (``ValueError`` listing the kinds when it cannot). ``options``: the constructor's
        other keyword arguments (``step_separator``, ``device``, ...). No network access."""
        import transformers

        p = _check_dir(path, "path")
        if kind is not None:
            check_kind(kind)
        else:
            cfg = json.loads((p / "config.json").read_text())
            kind = _detect_kind(cfg.get("architectures"))
            if kind is None:
                raise ValueError(
                    f"kind must be one of {PRM_KINDS}: cannot detect it from the architectures "
                    f"{cfg.get('architectures')!r} in {p / 'config.json'}"
                )
        auto = {
            "sequence": transformers.AutoModelForSequenceClassification,
            "token": transformers.AutoModelForTokenClassification,
            "causal": transformers.AutoModelForCausalLM,
        }[kind]
        model = auto.from_pretrained(p, local_files_only=True)
        return cls(model, load_tokenizer(p), kind=kind, **options)

    def _ids(self, prompt: str, steps) -> list[int]:
        tok = self.tokenizer
        if not self._sep_ids:
            return tok.encode(prompt + "".join(steps))
        ids = tok.encode(prompt)
        for s in steps:
            ids += tok.encode(s) + self._sep_ids
        return ids

    def _probability(self, logits, at):
        """The score from the logits at the read positions ``at`` (one per row)."""
        import torch

        rows = torch.arange(logits.shape[0], device=logits.device)
        if logits.ndim == 3:
            logits = logits[rows, at]
        logits = logits.float()
        if self.kind == "causal":
            good, bad = self._good_bad
            return torch.softmax(logits[:, [good, bad]], -1)[:, 0]
        if logits.shape[-1] == 1:
            return torch.sigmoid(logits[:, 0])
        return torch.softmax(logits, -1)[:, self.positive_label]

    def _rows(self, prompts, partials) -> list[list[int]]:
        """The token ids of each ``prompt + steps`` (``ValueError`` past the context)."""
        if len(prompts) != len(partials):
            raise ValueError(
                f"prompts and partials must have the same length, got {len(prompts)} "
                f"and {len(partials)}"
            )
        rows = [self._ids(p, s) for p, s in zip(prompts, partials)]
        limit = self.context_limit
        width = max(map(len, rows), default=0)
        if limit is not None and width > limit:
            raise ValueError(
                f"partials: a prompt + partial answer has {width} tokens, more than the "
                f"reward model's context window limit of {limit}"
            )
        return rows

    def score(self, prompts, partials) -> np.ndarray:
        """The score in ``[0, 1]`` of the last step of each ``prompt + steps``, shape ``(n,)``.

        Raises ``ValueError`` when ``prompts`` and ``partials`` differ in length, a text
        has a character outside the tokenizer's vocabulary, or is longer than the model's
        context window.
        """
        return self._score_rows(self._rows(prompts, partials))

    def _score_rows(self, rows) -> np.ndarray:
        import torch

        if not rows:
            return np.zeros(0)
        out = np.empty(len(rows))
        with torch.no_grad():
            for a in range(0, len(rows), self.batch_size):
                chunk = rows[a : a + self.batch_size]
                w = max(map(len, chunk))
                ids = torch.full((len(chunk), w), self.pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), w), dtype=torch.long)
                for i, r in enumerate(chunk):
                    ids[i, : len(r)] = torch.tensor(r)
                    mask[i, : len(r)] = 1
                ids, mask = ids.to(self.device), mask.to(self.device)
                logits = self.model(input_ids=ids, attention_mask=mask).logits
                at = mask.sum(-1) - 1  # the last token: the step's separator when there is one
                out[a : a + len(chunk)] = self._probability(logits, at).cpu().numpy()
        return out.astype(np.float64)

    @property
    def reuses_cache(self) -> bool:
        """Whether :meth:`score_with_state` keeps cache rows (``kv_cache`` and a kind with
        causal attention read per token: ``"token"`` or ``"causal"``)."""
        return self.kv_cache and self.kind in ("token", "causal")

    def score_with_state(self, prompt: str, partials, state=None):
        """Scores of ``prompt + steps`` for each partial answer, continuing cache rows
        (:class:`~probinfer.llm.StatefulRewardModel`).

        ``state`` is :class:`~probinfer.llm.kv.PRMRows` with one entry per partial answer
        (e.g. each particle's parent's rows, gathered at resampling) or ``None``; returns
        ``(scores, rows, tokens encoded)``, the rows ``None`` without reuse
        (:attr:`reuses_cache`). A row keeps the cached tokens of its longest common prefix
        with the new token ids and encodes only the rest.
        """
        import torch

        from probinfer.llm.kv import KVRows, PRMRows

        rows = self._rows([prompt] * len(partials), partials)
        n = len(rows)
        if not self.reuses_cache or n == 0:
            return self._score_rows(rows), None, sum(map(len, rows))
        keep = np.zeros(n, dtype=np.int64)  # cached prefix kept by each row
        layers, mask = (), None
        if state is not None and len(state) == n and state.kv.layers:
            for i, old in enumerate(state.ids):
                if old is not None:
                    c = 0
                    for a, b in zip(old, rows[i]):
                        if a != b:
                            break
                        c += 1
                    keep[i] = min(c, len(rows[i]) - 1)  # the last token is always encoded
            if keep.any():
                layers, mask = state.dense()
                cut = np.flatnonzero(keep < np.array([len(o or ()) for o in state.ids]))
                if cut.size:  # drop cached tokens past the common prefix (mask them)
                    mask = mask.clone()
                    for i in cut:
                        real = torch.nonzero(mask[i])[:, 0]
                        mask[i, real[int(keep[i]) :]] = 0
        keep = keep.tolist()
        new = [len(r) - k for r, k in zip(rows, keep)]
        w = max(new)
        # the new tokens of every row (right-padded), their mask and their positions, built
        # on the host as one tensor; padding positions are clamped into the position table
        top = (self.context_limit or 2**62) - 1
        pad = self.pad_token_id
        grid = torch.tensor(
            [
                [r[k:] + [pad] * (w - m) for r, k, m in zip(rows, keep, new)],
                [[1] * m + [0] * (w - m) for m in new],
                [[min(k + j, top) for j in range(w)] for k in keep],
            ],
            dtype=torch.long,
            device=self.device,
        )
        ids, block, pos = grid[0], grid[1], grid[2]
        full = block if mask is None else torch.cat([mask, block], 1)
        with torch.no_grad():
            logits, layers = forward_cached(self.model, ids, full, pos, layers)
            at = torch.tensor([m - 1 for m in new], device=self.device)
            scores = self._probability(logits, at).cpu().numpy().astype(np.float64)
        kv = KVRows(
            layers,
            full,
            torch.tensor([len(r) for r in rows], device=self.device),
            at,
            np.arange(n),
        )
        return scores, PRMRows(kv, tuple(tuple(r) for r in rows)), int(sum(new))
