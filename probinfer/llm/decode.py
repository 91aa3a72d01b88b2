"""One reasoning step from a stream of tokens: which token ends the step, the carry, the end.

Every language-model backend turns sampled tokens into steps the same way, whether it samples
them itself (:class:`~probinfer.llm.HFCausalLM`), reads them from a server's answer
(:class:`~probinfer.llm.OpenAICompatibleLM`) or serves them (the test server,
:mod:`probinfer.llm.testing`): a :class:`StepDecoder` per particle takes the tokens one at a
time and says when the step has ended. Keeping this in one place keeps the backends
token-exact alike: the step ends at the first token whose decoded text completes the step
end, the text decoded past it from that token is the carry that opens the next step, and an
end-of-sequence token ends the answer.

Nothing here imports torch: the decoder only decodes token ids with the tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from probinfer.llm.protocols import StepProposal

__all__ = ["StepDecoder", "step_proposal", "step_text"]

_WINDOW = 8
"""Tokens of history decoded with a step, so that context-dependent spacing decodes exactly."""


def step_text(tokenizer, history, step, carry: str, head: str | None = None) -> str:
    """``carry`` + the text the token ids ``step`` add after the token ids ``history``.

    The step is decoded in a short window of the history so that tokenizers with
    context-dependent spacing (SentencePiece, byte-level BPE) decode exactly what the
    whole sequence would. ``head``: the window's decoded text, when already known.
    """
    window = list(history[-_WINDOW:])
    if head is None:
        head = tokenizer.decode(window)
    full = tokenizer.decode(window + list(step))
    return carry + (full[len(head) :] if full.startswith(head) else tokenizer.decode(step))


class StepDecoder:
    """Decode the next step of one particle from the tokens it samples.

    Parameters
    ----------
    tokenizer
        Decodes token ids (``decode(ids) -> str``); ``None`` for text backends, which
        hand over the generated text with :meth:`push_text`.
    history
        The token ids before the step (prompt and previous steps); unused without a
        tokenizer.
    carry
        Text decoded past the previous step's end, which opens this step. A carry that
        already holds a whole step ends the step at once (no token needed).
    step_end
        ``text -> int | None``: the end index of the first step in ``text``
        (:meth:`~probinfer.llm.StepFormat.step_end`).
    eos_token_id
        The end-of-sequence token: it ends the answer and is not part of the step.
    eos_text
        Text that the model ending the answer stands for (e.g. the stop string), appended
        to a non-empty step it ends.

    Attributes
    ----------
    tokens
        The token ids of the step so far (the one that completed the step end included,
        the end-of-sequence token not).
    step
        The step's text once done (``None`` before).
    carry
        The text past the step end (``""`` until done, and for text backends).
    ended, truncated
        The model ended the answer; the step was cut without a step end.
    """

    __slots__ = (
        "_eos",
        "_eos_text",
        "_head",
        "_history",
        "_opening",
        "_raw",
        "_step_end",
        "_tokenizer",
        "carry",
        "ended",
        "step",
        "tokens",
        "truncated",
    )

    def __init__(
        self,
        tokenizer,
        history: Sequence[int],
        carry: str,
        step_end: Callable[[str], int | None],
        *,
        eos_token_id: int | None = None,
        eos_text: str | None = None,
    ):
        self._tokenizer, self._step_end = tokenizer, step_end
        self._eos, self._eos_text = eos_token_id, eos_text
        self._opening, self._raw = carry, ""
        self._history = list(history[-_WINDOW:]) if tokenizer is not None else []
        self._head = None  # the history window's text, decoded once on first use
        self.tokens: list[int] = []
        self.step: str | None = None
        self.carry = ""
        self.ended = self.truncated = False
        if carry:
            self._check(carry)

    @property
    def done(self) -> bool:
        """Whether the step has ended (no more tokens are taken)."""
        return self.step is not None

    def text(self) -> str:
        """The step's text so far: the carry it opened with and the decoded tokens."""
        if self._tokenizer is None:
            return self._opening + self._raw
        if not self.tokens:
            return self._opening
        if self._head is None:
            self._head = self._tokenizer.decode(self._history)
        return step_text(self._tokenizer, self._history, self.tokens, self._opening, self._head)

    def _check(self, text: str) -> bool:
        end = self._step_end(text)
        if end is not None and end > 0:
            self.step, self.carry = text[:end], text[end:]
            return True
        return False

    def push(self, token: int) -> bool:
        """Take the next sampled token; returns :attr:`done`.

        The end-of-sequence token ends the answer (:meth:`stop` with ``"end"``); any other
        token joins the step, which ends when its text completes the step end.
        """
        if self._eos is not None and token == self._eos:
            self.stop("end")
            return True
        self.tokens.append(token)
        return self._check(self.text())

    def push_text(self, text: str) -> bool:
        """Text backends: take generated text (no token ids); returns :attr:`done`. The text
        past the step end is dropped: text backends re-send the text of the steps."""
        self._raw += text
        if self._check(self.text()):
            self.carry = ""
            return True
        return False

    def stop(self, reason: str) -> None:
        """No more tokens for a step that has not ended, because of ``reason``:

        ``"length"``
            The token budget of the step ran out: the step is the text so far, truncated.
        ``"end"``
            The model ended the answer (end-of-sequence, or a server stopping without a step
            end): the text so far followed by ``eos_text``, or ``""`` when there is none.
        ``"context"``
            The model's context window is full: the text so far, truncated and ended.
        """
        if self.done:
            return
        text = self.text()
        if reason == "length":
            self.step, self.truncated = text, True
        elif reason == "end":
            self.step, self.ended = (text + (self._eos_text or "") if text else ""), True
        elif reason == "context":
            self.step, self.ended, self.truncated = text, True, True
        else:
            raise ValueError(f"reason must be 'length', 'end' or 'context', got {reason!r}")


def step_proposal(
    decoders: Sequence[StepDecoder],
    *,
    exact: bool,
    tokens_generated: int = 0,
    tokens_encoded: int = 0,
    state=None,
) -> StepProposal:
    """The :class:`~probinfer.llm.StepProposal` of finished decoders (one per context).

    ``exact``: token-exact backends report each step's token ids and carry; text backends
    report neither. A decoder not yet done counts as truncated (its budget ran out).
    """
    for d in decoders:
        d.stop("length")
    return StepProposal(
        [d.step for d in decoders],
        [d.truncated for d in decoders],
        tokens_generated=tokens_generated,
        tokens_encoded=tokens_encoded,
        step_tokens=[tuple(d.tokens) for d in decoders] if exact else None,
        carries=[d.carry for d in decoders] if exact else None,
        ended=[d.ended for d in decoders],
        state=state,
    )
