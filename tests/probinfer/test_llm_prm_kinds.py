"""Local Hugging Face PRMs of the three kinds (sequence classifier, token classifier with a
step separator, causal LM with good/bad tokens at a step tag), on tiny randomly
initialised models saved to a temporary directory (no downloads). Each score is checked
against a direct forward pass of the unpadded text built by hand."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from probinfer.llm import CharTokenizer  # noqa: E402
from probinfer.llm.hf import PRM_KINDS, HFRewardModel  # noqa: E402

pytestmark = pytest.mark.filterwarnings("error::FutureWarning", "error::DeprecationWarning")

TOK = CharTokenizer("0123456789+-=;|#")
PROMPTS = ["3+5-4=", "9-1=", "2+2="]
PARTIALS = [("3;", "8;", "4|"), ("9;",), ("2;", "5|")]


def _save(tmp_path, name, cls, **kw):
    cfg = transformers.GPT2Config(
        vocab_size=TOK.vocab_size, n_embd=16, n_layer=1, n_head=2, n_positions=64, pad_token_id=0
    )
    for k, v in kw.items():
        setattr(cfg, k, v)
    torch.manual_seed(len(name))
    model = cls(cfg)
    path = tmp_path / name
    model.save_pretrained(path)
    (path / "char_tokenizer.json").write_text(json.dumps(TOK.to_dict()))
    return path, model.eval()


def _direct(model, ids, read):
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids])).logits[0].float()
    return read(out)


def test_sequence_classifier_two_labels(tmp_path):
    path, model = _save(tmp_path, "seq", transformers.GPT2ForSequenceClassification, num_labels=2)
    prm = HFRewardModel.from_pretrained(path, device="cpu")
    assert prm.kind == "sequence"
    got = prm.score(PROMPTS, PARTIALS)
    for g, p, s in zip(got, PROMPTS, PARTIALS):
        want = _direct(model, TOK.encode(p + "".join(s)), lambda z: torch.softmax(z, -1)[1])
        assert g == pytest.approx(float(want), abs=1e-5)


def test_token_classifier_with_step_separator(tmp_path):
    """Qwen2.5-Math-PRM convention: a separator after every step, P(positive) at the last."""
    path, model = _save(tmp_path, "token", transformers.GPT2ForTokenClassification, num_labels=2)
    prm = HFRewardModel.from_pretrained(path, step_separator="#", device="cpu")
    assert prm.kind == "token"
    got = prm.score(PROMPTS, PARTIALS)
    for g, p, s in zip(got, PROMPTS, PARTIALS):
        ids = TOK.encode(p + "".join(x + "#" for x in s))
        want = _direct(model, ids, lambda z: torch.softmax(z[-1], -1)[1])
        assert g == pytest.approx(float(want), abs=1e-5)


def test_causal_lm_good_bad_tokens_at_step_tag(tmp_path):
    """Math-Shepherd convention: P(good) / (P(good) + P(bad)) at the last step tag."""
    path, model = _save(tmp_path, "causal", transformers.GPT2LMHeadModel)
    prm = HFRewardModel.from_pretrained(
        path, step_separator="#", good_token="+", bad_token="-", device="cpu"
    )
    assert prm.kind == "causal"
    good, bad = TOK.encode("+")[0], TOK.encode("-")[0]
    got = prm.score(PROMPTS, PARTIALS)
    for g, p, s in zip(got, PROMPTS, PARTIALS):
        ids = TOK.encode(p + "".join(x + "#" for x in s))
        want = _direct(model, ids, lambda z: torch.softmax(z[-1, [good, bad]], -1)[0])
        assert g == pytest.approx(float(want), abs=1e-5)
    with pytest.raises(ValueError, match="step_separator"):
        HFRewardModel.from_pretrained(path, device="cpu")


def test_unknown_kind_lists_the_kinds(tmp_path):
    path, _ = _save(tmp_path, "seq1", transformers.GPT2ForSequenceClassification, num_labels=1)
    with pytest.raises(ValueError, match="sequence.*token.*causal"):
        HFRewardModel.from_pretrained(path, kind="regression")
    base, _ = _save(tmp_path, "base", transformers.GPT2Model)
    with pytest.raises(ValueError, match="kind must be one of"):
        HFRewardModel.from_pretrained(base)
    assert PRM_KINDS == ("sequence", "token", "causal")
