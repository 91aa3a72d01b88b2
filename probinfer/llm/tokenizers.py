"""Tokenizers of the language-model backends: loading one from a model folder, and the small
interface the backends use (``encode`` without special tokens, ``decode``, the padding and
end-of-sequence ids).

A model folder holds either a standard ``transformers`` tokenizer (``tokenizer.json``, with
or without ``tokenizer_config.json``), wrapped in :class:`HFTokenizer`, or the legacy
``char_tokenizer.json`` of a :class:`~probinfer.llm.CharTokenizer`. Everything loads from
local paths: nothing is downloaded. ``transformers`` is imported only when a standard
tokenizer loads.
"""

from __future__ import annotations

import json
from pathlib import Path

from probinfer.llm.task import CharTokenizer

__all__ = ["HFTokenizer", "load_tokenizer", "never_sampled"]


class HFTokenizer:
    """Adapter giving a ``transformers`` tokenizer the small interface used here
    (``encode`` without special tokens, ``decode`` without clean-up, pad and EOS ids).

    A tokenizer without a padding token pads with its end-of-sequence token (or id 0).
    """

    def __init__(self, tok):
        self.tok = tok
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.pad_token_id = 0 if pad is None else int(pad)
        self.eos_token_id = tok.eos_token_id

    def __len__(self) -> int:
        return len(self.tok)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens; ``ValueError`` when the tokenizer
        cannot encode it (e.g. a character outside a vocabulary without an unknown token,
        which ``tokenizers`` raises as a bare ``Exception``), as :class:`CharTokenizer`."""
        try:
            return list(self.tok(text, add_special_tokens=False)["input_ids"])
        except ValueError:
            raise
        except Exception as err:  # noqa: BLE001 (tokenizers' errors are bare Exceptions)
            raise ValueError(f"text {text[:40]!r} cannot be tokenized: {err}") from None

    def decode(self, ids) -> str:
        return self.tok.decode(
            list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False
        )


def never_sampled(tokenizer) -> int | None:
    """The token id a sampler must never draw with ``tokenizer``, or ``None``.

    A :class:`~probinfer.llm.CharTokenizer`'s padding id is not a character: the bundled
    models are never trained to predict it, and sampling it would decode to nothing. Other
    tokenizers' tokens are all drawn with the model's probabilities, as a serving engine
    (vLLM) draws them, so that the local and served backends sample the same law.
    """
    return int(tokenizer.pad_token_id) if isinstance(tokenizer, CharTokenizer) else None


def _special_tokens_from_config(tok, folder: Path) -> None:
    """Set the padding and end-of-sequence tokens of a bare ``tokenizer.json`` from the
    model's ``config.json`` ids (``pad_token_id``, ``eos_token_id``), when it names them."""
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    for name in ("pad", "eos"):
        i = cfg.get(f"{name}_token_id")
        if isinstance(i, list):  # several EOS ids: the first
            i = i[0] if i else None
        if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(tok):
            setattr(tok, f"{name}_token", tok.convert_ids_to_tokens(i))


def load_tokenizer(path) -> CharTokenizer | HFTokenizer:
    """The tokenizer stored in the folder ``path``.

    ``char_tokenizer.json``: a :class:`~probinfer.llm.CharTokenizer` (the legacy format of
    the bundled models). Otherwise a ``transformers`` tokenizer (``local_files_only=True``):
    a ``tokenizer.json`` alone loads as a ``PreTrainedTokenizerFast`` with its padding and
    end-of-sequence tokens from ``config.json``; with ``tokenizer_config.json`` (or the
    files of another tokenizer class) through ``AutoTokenizer``.
    """
    path = Path(path)
    char = path / "char_tokenizer.json"
    if char.exists():
        return CharTokenizer.from_dict(json.loads(char.read_text()))
    if (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
        _special_tokens_from_config(tok, path)
        return HFTokenizer(tok)
    from transformers import AutoTokenizer

    return HFTokenizer(AutoTokenizer.from_pretrained(path, local_files_only=True))
