"""Model folders with a standard ``tokenizer.json`` (with or without ``tokenizer_config.json``)
load as well as the legacy ``char_tokenizer.json``: the same ids, the same PRM scores, and
token-exact steps from the language model."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from probinfer.llm import (  # noqa: E402
    CharTokenizer,
    LLMStateSpaceModel,
    StepFormat,
    VerifierReward,
    particle_filter,
)
from probinfer.llm.hf import HFCausalLM, HFRewardModel  # noqa: E402
from probinfer.llm.testing import tiny_llama  # noqa: E402
from probinfer.llm.tokenizers import HFTokenizer, load_tokenizer, never_sampled  # noqa: E402

pytestmark = pytest.mark.filterwarnings("error::FutureWarning", "error::DeprecationWarning")

CHARS = "0123456789+-=;|"
TOK = CharTokenizer(CHARS)
FORMATS = ("char", "tokenizer.json", "tokenizer.json+config")


def _fast(tok: CharTokenizer):
    """``tok``'s vocabulary as a fast tokenizer with the same ids (WordLevel, one
    character per pre-token, decoded by concatenation; ``<pad>`` is id 0)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<pad>": tok.pad_token_id} | {c: tok.encode(c)[0] for c in tok.chars}
    fast = Tokenizer(models.WordLevel(vocab))
    fast.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    fast.decoder = decoders.Fuse()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=fast, pad_token="<pad>")


def _save(model, folder, fmt: str) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    if fmt == "char":
        (folder / "char_tokenizer.json").write_text(json.dumps(TOK.to_dict()))
    elif fmt == "tokenizer.json":  # the bare file: pad and EOS come from config.json
        _fast(TOK).backend_tokenizer.save(str(folder / "tokenizer.json"))
    else:
        _fast(TOK).save_pretrained(folder)


SETTINGS = {
    "num_hidden_layers": 2,
    "max_position_embeddings": 64,
    "pad_token_id": 0,
    "bos_token_id": None,
    "eos_token_id": None,
    "initializer_range": 0.3,
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """An LM and a token-classification PRM, each saved with the three tokenizer files."""
    torch.manual_seed(0)
    models = {
        "lm": tiny_llama(transformers.LlamaForCausalLM, TOK.vocab_size, 32, (2, 2), **SETTINGS),
        "prm": tiny_llama(
            transformers.LlamaForTokenClassification, TOK.vocab_size, 32, (2, 2), num_labels=2,
            **SETTINGS,
        ),
    }  # fmt: skip
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, model in models.items():
        for fmt in FORMATS:
            folder = root / f"{name}-{fmt}"
            _save(model.eval(), folder, fmt)
            out[name, fmt] = folder
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_tokenizer_files_give_the_same_ids(folders, fmt):
    tok = load_tokenizer(folders["lm", fmt])
    assert isinstance(tok, CharTokenizer if fmt == "char" else HFTokenizer)
    text = CHARS + "12+3=15;15-4=11|"
    assert tok.encode(text) == TOK.encode(text)
    assert tok.decode(TOK.encode(text)) == text
    assert tok.pad_token_id == 0
    assert getattr(tok, "eos_token_id", None) is None
    with pytest.raises(ValueError):  # a character outside the vocabulary
        tok.encode("1+a")
    assert never_sampled(tok) == (0 if fmt == "char" else None)


def test_bare_tokenizer_json_takes_pad_and_eos_from_config(tmp_path):
    _fast(TOK).backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    stop = TOK.encode("|")[0]
    (tmp_path / "config.json").write_text(json.dumps({"pad_token_id": 0, "eos_token_id": [stop]}))
    tok = load_tokenizer(tmp_path)
    assert (tok.pad_token_id, tok.eos_token_id) == (0, stop)


def test_prm_scores_do_not_depend_on_the_tokenizer_file(folders):
    prompts = ["1+2=", "3+4-1="]
    partials = [("3;",), ("7;", "6|")]
    scores = [
        HFRewardModel.from_pretrained(folders["prm", fmt], device="cpu").score(prompts, partials)
        for fmt in FORMATS
    ]
    for s in scores[1:]:
        np.testing.assert_allclose(s, scores[0], rtol=1e-6, atol=1e-7)
    prm = HFRewardModel.from_pretrained(folders["prm", "tokenizer.json"], device="cpu")
    assert prm.kind == "token" and isinstance(prm.tokenizer, HFTokenizer)


def test_lm_from_tokenizer_json_is_token_exact(folders):
    """The same key gives the same particles from both ``tokenizer.json`` folders, and every
    step's token ids decode to its text (with the carry that the next step opens with)."""
    fmt = StepFormat(";", "|")
    results = []
    for f in FORMATS[1:]:
        lm = HFCausalLM.from_pretrained(folders["lm", f], device="cpu", eos_text="|")
        model = LLMStateSpaceModel(
            lm, VerifierReward(step_format=fmt), fmt, max_steps=4, max_tokens_per_step=8
        )
        results.append(particle_filter(jax.random.key(0), model, "1+2=", 4))
    a, b = results
    assert a.texts == b.texts
    assert a.trajectories.step_tokens == b.trajectories.step_tokens
    tok = load_tokenizer(folders["lm", "tokenizer.json"])
    for steps, ids in zip(a.trajectories.steps, a.trajectories.step_tokens):
        assert len(steps) == len(ids) > 0
        for step, step_ids in zip(steps, ids):
            assert tok.decode(step_ids) == step  # one character a token: no carry
