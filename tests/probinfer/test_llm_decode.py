"""The step decoder that every LM backend uses: which token ends the step, the carry past
it, the end of sequence, truncation; checked on hand-worked token streams."""

from __future__ import annotations

import pytest

from probinfer.llm import CharTokenizer, StepFormat
from probinfer.llm.decode import StepDecoder, step_proposal, step_text

FMT = StepFormat(";", "|")


class PieceTokenizer:
    """Tokens of several characters (``"3;4"`` crosses the delimiter), decoded by
    concatenation; id 0 is the end-of-sequence token."""

    pieces = ("</s>", "1", "2", "3;4", "+", "=", "|", ";")
    eos_token_id = 0
    pad_token_id = 0

    def decode(self, ids) -> str:
        return "".join(self.pieces[i] for i in ids if i != 0)


def _decoder(tok, carry="", history=(1,), **kw):
    return StepDecoder(tok, list(history), carry, FMT.step_end, **kw)


def test_the_token_that_completes_the_delimiter_ends_the_step_and_its_rest_is_the_carry():
    d = _decoder(PieceTokenizer())
    assert not d.push(2) and d.text() == "2"
    assert d.push(3)  # "3;4": the step ends inside the token
    assert (d.step, d.carry, d.tokens) == ("23;", "4", [2, 3])
    assert not d.ended and not d.truncated
    nxt = _decoder(PieceTokenizer(), carry=d.carry, history=(1, 2, 3))
    assert nxt.text() == "4" and not nxt.done
    assert nxt.push(6) and (nxt.step, nxt.carry) == ("4|", "")


def test_a_carry_holding_a_whole_step_ends_it_without_tokens():
    d = _decoder(CharTokenizer(), carry="12;3")
    assert d.done and (d.step, d.carry, d.tokens) == ("12;", "3", [])


def test_end_of_sequence_ends_the_answer_with_eos_text():
    d = _decoder(PieceTokenizer(), eos_token_id=0, eos_text="|")
    d.push(1)
    assert d.push(0)
    assert (d.step, d.ended, d.truncated, d.tokens) == ("1|", True, False, [1])
    empty = _decoder(PieceTokenizer(), eos_token_id=0, eos_text="|")
    assert empty.push(0) and empty.step == "" and empty.ended  # nothing to end


@pytest.mark.parametrize(
    ("reason", "ended", "truncated", "step"),
    [("length", False, True, "12"), ("end", True, False, "12|"), ("context", True, True, "12")],
)
def test_stop_reasons(reason, ended, truncated, step):
    d = _decoder(CharTokenizer("12;|"), eos_text="|")
    d.push(1)
    d.push(2)
    d.stop(reason)
    assert (d.step, d.ended, d.truncated) == (step, ended, truncated)
    d.stop("end")  # a finished step stays as it is
    assert d.step == step
    with pytest.raises(ValueError, match="reason"):
        _decoder(CharTokenizer()).stop("eos")


def test_text_backends_drop_the_text_past_the_step_end():
    d = StepDecoder(None, (), "", FMT.step_end)
    assert d.push_text("1+2=3;4+") and (d.step, d.carry) == ("1+2=3;", "")
    t = StepDecoder(None, (), "", FMT.step_end, eos_text="|")
    assert not t.push_text("7")
    t.stop("end")
    assert t.step == "7|" and t.ended


def test_step_text_decodes_in_context():
    """A tokenizer whose decoding depends on the previous token (a space before a token
    that follows a digit): the step is the text the whole sequence adds."""

    class Spacing:
        def decode(self, ids):
            return "".join((" " if i and ids[i - 1] == 1 else "") + "x" for i in range(len(ids)))

    assert step_text(Spacing(), [1], [2], "") == " x"
    assert step_text(Spacing(), [2], [2], "c") == "cx"


def test_step_proposal_reports_unfinished_decoders_as_truncated():
    done, cut = _decoder(CharTokenizer("1;")), _decoder(CharTokenizer("1;"))
    done.push(1)
    done.push(2)
    cut.push(1)
    p = step_proposal([done, cut], exact=True, tokens_generated=3, tokens_encoded=5)
    assert p.steps == ["1;", "1"] and p.truncated == [False, True]
    assert p.step_tokens == [(1, 2), (1,)] and p.carries == ["", ""]
    assert p.ended == [False, False] and (p.tokens_generated, p.tokens_encoded) == (3, 5)
    assert step_proposal([done], exact=False).step_tokens is None
