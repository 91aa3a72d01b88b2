"""The reward model's key/value cache carried through resampling: same scores as a plain
forward of the whole text, each PRM token encoded once, and the same particle filter result
for the same key with and without reuse."""

from __future__ import annotations

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from probinfer.llm import (  # noqa: E402
    CharTokenizer,
    default_problems,
    load_default,
    particle_filter,
)
from probinfer.llm.hf import HFRewardModel  # noqa: E402
from probinfer.llm.testing import bpe_tokenizer, tiny_llama  # noqa: E402

pytestmark = pytest.mark.filterwarnings("error::FutureWarning", "error::DeprecationWarning")

TOK = CharTokenizer("0123456789+-=;|#")


def _gpt2(cls, **kw):
    torch.manual_seed(3)
    cfg = transformers.GPT2Config(
        vocab_size=TOK.vocab_size,
        n_embd=16,
        n_layer=2,
        n_head=2,
        n_positions=64,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
    )
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cls(cfg).eval()


def _bpe_prm():
    """A Llama token classifier (transformers' forward path) with a byte-level BPE whose
    merges cross the delimiter, so a longer text can re-tokenize the previous tail."""
    rng = np.random.default_rng(0)
    corpus = [";".join(str(int(x)) for x in rng.integers(0, 40, size=3)) + "|" for _ in range(300)]
    tok = bpe_tokenizer(corpus, 48, special_tokens=("<pad>",))
    torch.manual_seed(0)
    model = tiny_llama(
        transformers.LlamaForTokenClassification, tok.tok.vocab_size, 16, (2, 1),
        num_hidden_layers=2, max_position_embeddings=96, num_labels=2, pad_token_id=0,
    )  # fmt: skip
    return HFRewardModel(model, tok, kind="token", device="cpu")


def _prms():
    gpt_token = _gpt2(transformers.GPT2ForTokenClassification, num_labels=2)
    gpt_causal = _gpt2(transformers.GPT2LMHeadModel)
    return {
        "gpt2-token-separator": HFRewardModel(
            gpt_token, TOK, kind="token", step_separator="#", device="cpu"
        ),
        "gpt2-token-last": HFRewardModel(gpt_token, TOK, kind="token", device="cpu"),
        "gpt2-causal": HFRewardModel(gpt_causal, TOK, kind="causal", step_separator="#"),
        "llama-bpe": _bpe_prm(),
    }


@pytest.mark.parametrize(
    "name", ["gpt2-token-separator", "gpt2-token-last", "gpt2-causal", "llama-bpe"]
)
@pytest.mark.parametrize("joined", [False, True])
def test_cached_scores_equal_whole_text_scores(name, joined):
    """Three particles grow step by step; between steps they are resampled (children take
    their parent's rows, one particle loses its row). Every cached score equals the score of
    a plain forward pass over the whole text, and fewer tokens are encoded. ``joined``:
    the partial answer is passed as one string ("model" aggregation), so a separator or a
    BPE merge moves and the cached tail must be dropped."""
    prm = _prms()[name]
    prompt = "3+5-4="
    steps = [["3;", "8;", "12;", "4|"], ["7;", "1;", "3;", "9|"], ["2;", "25;", "5;", "1|"]]
    parents = [None, [0, 0, 2], [1, 2, 2], [2, 0, 1]]
    parts = [[] for _ in range(3)]
    state = None
    total_cached = total_plain = 0
    for t in range(4):
        if parents[t] is not None:
            parts = [list(parts[p]) for p in parents[t]]
            idx = list(parents[t])
            if t == 2:
                idx[0] = -1  # a particle without a row (re-encoded in full)
            state = state.take(idx)
        for i in range(3):
            parts[i].append(steps[(i + t) % 3][t])
        queries = [("".join(p),) if joined else tuple(p) for p in parts]
        got, state, encoded = prm.score_with_state(prompt, queries, state)
        want = prm.score([prompt] * 3, queries)
        np.testing.assert_allclose(got, want, atol=2e-6)
        total_cached += encoded
        total_plain += sum(len(r) for r in prm._rows([prompt] * 3, queries))
        assert len(state) == 3
    assert total_cached < 0.6 * total_plain


def test_sequence_kind_and_kv_cache_false_do_not_keep_rows():
    model = _gpt2(transformers.GPT2ForSequenceClassification, num_labels=1)
    prm = HFRewardModel(model, TOK, kind="sequence", device="cpu")
    r, state, encoded = prm.score_with_state("1+2=", [("1;",), ("3|",)])
    assert state is None and encoded == 2 * 6
    np.testing.assert_allclose(r, prm.score(["1+2="] * 2, [("1;",), ("3|",)]))


def test_particle_filter_identical_with_and_without_prm_reuse(monkeypatch):
    """The bundled LM with a token-classifier PRM (the kind whose rows are kept): same
    particles, answers and selection for the same key with and without PRM cache reuse
    (weights equal up to float rounding); tokens through the PRM's forward counted: with
    reuse at most N prompts + generated tokens."""
    import dataclasses

    prm = _prms()["gpt2-token-last"]
    model = dataclasses.replace(load_default("verifier", device="cpu"), reward=prm)
    assert prm.reuses_cache
    counted = {"tokens": 0}
    inner = prm.model.forward

    def counting(*a, input_ids=None, attention_mask=None, **k):
        counted["tokens"] += int(attention_mask[:, -input_ids.shape[1] :].sum())
        return inner(*a, input_ids=input_ids, attention_mask=attention_mask, **k)

    monkeypatch.setattr(prm.model, "forward", counting)
    n = 8
    for i, (prompt, _) in enumerate(default_problems(4, seed=11)):
        key = jax.random.key(40 + i)
        out = {}
        for reuse in (True, False):
            prm.kv_cache = reuse
            counted["tokens"] = 0
            try:
                out[reuse] = particle_filter(key, model, prompt, n)
            finally:
                prm.kv_cache = True
            assert counted["tokens"] == out[reuse].usage.reward_tokens_encoded
        a, b = out[True], out[False]
        assert a.texts == b.texts
        assert a.trajectories.step_tokens == b.trajectories.step_tokens
        assert a.selected == b.selected
        np.testing.assert_allclose(
            np.asarray(a.particles.log_weights), np.asarray(b.particles.log_weights), atol=1e-4
        )
        bound = n * len(prm.tokenizer.encode(prompt)) + a.usage.tokens_generated
        assert a.usage.reward_tokens_encoded <= bound
        assert a.usage.reward_tokens_encoded < 0.5 * b.usage.reward_tokens_encoded
