"""The reward model's key/value cache carried through resampling, and the lean GPT-2
forward pass: same scores as a plain forward of the whole text, each PRM token encoded
once, and the same particle filter result for the same key with and without reuse."""

from __future__ import annotations

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from probinfer.llm import (  # noqa: E402
    CharTokenizer,
    default_problems,
    lean,
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


def _transformers_forward(model, first, then):
    """transformers' own forward with a ``DynamicCache``: ``first`` (ids, mask, positions)
    encoded, then the logits of ``then`` after it, and the cache."""
    from transformers import DynamicCache

    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        ids, mask, pos = first
        model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
        ids, mask, pos = then
        want = model(
            input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True
        ).logits
    return want, cache


@pytest.mark.parametrize(
    "cls", [transformers.GPT2LMHeadModel, transformers.GPT2ForTokenClassification]
)
def test_lean_forward_equals_transformers(cls):
    """Padded rows, masked cached positions, a two-token block: same outputs and keys and
    values as transformers' forward with a DynamicCache."""
    model = _gpt2(cls)
    assert lean.supports(model)
    b, length = 3, 7
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, TOK.vocab_size, (b, length), generator=g)
    mask = torch.ones(b, length, dtype=torch.long)
    mask[0, :3] = 0  # left padding
    mask[1, 2:4] = 0  # positions dropped in the middle
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    new = torch.randint(1, TOK.vocab_size, (b, 2), generator=g)
    full = torch.cat([mask, torch.ones(b, 2, dtype=torch.long)], 1)
    new_pos = pos[:, -1:] + 1 + torch.arange(2)
    want, cache = _transformers_forward(model, (ids, mask, pos), (new, full, new_pos))
    with torch.no_grad():
        _, layers = lean.lean_forward(model, ids, mask, pos, ())
        got, layers2 = lean.lean_forward(model, new, full, new_pos, layers)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)
    real = full.bool().numpy()  # masked positions are never attended: their values are free
    for (k, v), layer in zip(layers2, cache.layers):
        for x, y in ((k, layer.keys), (v, layer.values)):  # (b, heads, L, d)
            x, y = x.transpose(1, 2).numpy()[real], y.transpose(1, 2).numpy()[real]
            np.testing.assert_allclose(x, y, atol=1e-5)
    assert not lean.supports(_gpt2(cls, scale_attn_by_inverse_layer_idx=True))


@pytest.mark.parametrize(
    "cls", [transformers.GPT2LMHeadModel, transformers.GPT2ForTokenClassification]
)
@pytest.mark.parametrize("last", [True, False])
def test_lean_decoding_step_equals_transformers_bit_for_bit_with_the_general_path(cls, last):
    """One new token per row (the decoding fast path), with a padding query, left padding
    and masked cached positions: transformers' outputs, and bit for bit the outputs, keys
    and values of the general path (so sampling is unchanged by the fast path)."""
    model = _gpt2(cls)
    b, length = 4, 6
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, TOK.vocab_size, (b, length), generator=g)
    mask = torch.ones(b, length, dtype=torch.long)
    mask[0, :2] = 0
    mask[2, 3] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    new = torch.randint(1, TOK.vocab_size, (b, 1), generator=g)
    full = torch.cat([mask, torch.ones(b, 1, dtype=torch.long)], 1)
    full[3, -1] = 0  # row 3 is padding at this step (a finished particle)
    new_pos = pos[:, -1:] + 1
    want, cache = _transformers_forward(model, (ids, mask, pos), (new, full, new_pos))
    with torch.no_grad():
        _, layers = lean.lean_forward(model, ids, mask, pos, ())
        got, got_layers = lean.lean_forward(model, new, full, new_pos, layers, last=last)
        ref, ref_layers = lean._forward(model, new, full, new_pos, layers, last)
    assert got.shape == ref.shape == ((b, want.shape[-1]) if last else want.shape)
    assert torch.equal(got, ref)
    for (k, v), (rk, rv) in zip(got_layers, ref_layers):
        assert torch.equal(k, rk) and torch.equal(v, rv)
    np.testing.assert_allclose(got.reshape(b, -1)[:3], want.reshape(b, -1)[:3], atol=1e-5)


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
    """The bundled LM and learned PRM: same particles, answers and selection for the same
    key with and without PRM cache reuse (weights equal up to float rounding); tokens
    through the PRM's forward counted: with reuse at most N prompts + generated tokens."""
    model = load_default("learned", device="cpu")
    prm = model.reward
    assert prm.reuses_cache and lean.supports(prm.model)
    counted = {"tokens": 0}
    inner = lean.lean_forward

    def counting(m, ids, mask, *a, **k):
        if m is prm.model:
            counted["tokens"] += int(mask[:, -ids.shape[1] :].sum())
        return inner(m, ids, mask, *a, **k)

    monkeypatch.setattr(lean, "lean_forward", counting)
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
