"""Token-exact particles and the key/value cache carried through resampling, on a tiny
randomly initialised Llama-architecture model with a byte-level BPE tokenizer trained here
(its merges cross the step delimiter, e.g. ``";1"`` and ``"2|"``)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from probinfer.llm import LLMStateSpaceModel, StepFormat, particle_filter  # noqa: E402
from probinfer.llm.hf import HFCausalLM  # noqa: E402
from probinfer.llm.testing import bpe_tokenizer, tiny_llama  # noqa: E402
from probinfer.llm.toy import FunctionReward  # noqa: E402

pytestmark = pytest.mark.filterwarnings("error::FutureWarning", "error::DeprecationWarning")

PROMPT = "1;2;3="
MAX_STEPS = 4


def _answer(text: str) -> str:
    """The answer category of a finished text: how many steps ended with a delimiter."""
    return str(text.count(";"))


def _bpe_tokenizer():
    rng = np.random.default_rng(0)
    corpus = []
    for _ in range(400):
        k = int(rng.integers(1, 5))
        corpus.append(";".join(str(int(x)) for x in rng.integers(0, 40, size=k)) + "|")
    return bpe_tokenizer(corpus, 48)  # no regex split: merges may cross the delimiter


@pytest.fixture(scope="module")
def bpe_lm():
    torch.set_num_threads(1)
    tok = _bpe_tokenizer()
    vocab = tok.tok.get_vocab()
    crossing = [t for t in vocab if (";" in t or "|" in t) and len(t) > 1]
    assert crossing, "the BPE merges must cross the delimiter for this test to mean anything"
    torch.manual_seed(0)
    model = tiny_llama(
        transformers.LlamaForCausalLM, len(vocab), 32, (4, 2), num_hidden_layers=2,
        max_position_embeddings=96, initializer_range=0.3,  # context-dependent next-token laws
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
    )  # fmt: skip
    return HFCausalLM(model, tok, device="cpu")


def _model(lm, reward=None, **kw):
    return LLMStateSpaceModel(
        lm,
        reward,
        StepFormat(";", "|"),
        max_steps=MAX_STEPS,
        max_tokens_per_step=40,
        answer_extractor=_answer,
        **kw,
    )


def _lm_answer(lm: HFCausalLM, gen: torch.Generator) -> str | None:
    """Ancestral sampling straight from the model (no cache, no step logic of the code
    under test): sample tokens until the stop, EOS, or ``MAX_STEPS`` delimiters."""
    tok = lm.tokenizer
    prompt = tok.encode(PROMPT)
    out: list[int] = []
    while True:
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([prompt + out])).logits[0, -1]
        t = int(torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=gen))
        if t == tok.eos_token_id:
            return _answer(tok.decode(out))
        out.append(t)
        text = tok.decode(out)
        head = text.split("|")[0]
        if head.count(";") >= MAX_STEPS:
            return None
        if "|" in text:
            return _answer(head + "|")
        assert len(prompt) + len(out) < 90


def test_answer_distribution_equals_the_lm_own(bpe_lm):
    """With every potential 1, a particle of the filter (multinomial resampling at every
    step, so children continue from gathered cache rows) is an exact draw from the LM's
    own answer distribution. Two-sample chi-square test of homogeneity, at the level of a
    4.5-sigma deviation (p = 7e-6)."""
    from scipy import stats

    lm = bpe_lm
    model = _model(lm)
    gen = torch.Generator().manual_seed(123)
    n_runs = 250
    ref = [_lm_answer(lm, gen) for _ in range(n_runs)]
    pf = []
    for r in range(n_runs):
        res = particle_filter(
            jax.random.key(r), model, PROMPT, 4, ess_threshold=1.0, scheme="multinomial"
        )
        assert res.usage.steps_truncated == 0
        pf.append(res.answers[0])
        store = res.trajectories
        for i in range(len(store)):
            assert all(store.steps[i]), "no empty step"
            toks = store.tokens(i)
            # token-exact: the steps and the carry are exactly what the sampled ids decode to
            assert lm.tokenizer.decode(toks) == "".join(store.steps[i]) + store.carry(i)
    cats = sorted({str(a) for a in ref + pf})
    table = np.array([[sum(str(a) == c for a in xs) for c in cats] for xs in (ref, pf)])
    table = table[:, table.sum(0) > 0]
    chi2, p, dof, _ = stats.chi2_contingency(table)
    assert p > 7e-6, (cats, table.tolist(), chi2, p)
    # the test has power: the answer law is far from uniform over its categories
    assert stats.chisquare(table[0]).pvalue < 1e-3


def _count_forward_tokens(lm):
    counted = {"tokens": 0}
    forward = lm.model.forward

    def counting(*args, **kwargs):
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        counted["tokens"] += int(mask[:, -ids.shape[1] :].sum())
        return forward(*args, **kwargs)

    return counted, counting


def test_kv_cache_encodes_each_token_once_and_changes_nothing(bpe_lm, monkeypatch):
    """Tokens encoded through the model's forward: prompt once + generated tokens; the
    result for the same key is identical with and without reuse."""
    lm = bpe_lm
    reward = FunctionReward(lambda p, s: 0.2 + 0.6 * ("1" in "".join(s)))
    model = _model(lm, reward)
    prompt_len = len(lm.tokenizer.encode(PROMPT))
    for k in range(3):
        key = jax.random.key(100 + k)
        counted, counting = _count_forward_tokens(lm)
        monkeypatch.setattr(lm.model, "forward", counting)
        lm._prompt_rows = None
        with_cache = particle_filter(key, model, PROMPT, 6, scheme="multinomial")
        monkeypatch.undo()
        u = with_cache.usage
        assert counted["tokens"] == u.tokens_encoded
        assert u.tokens_encoded <= prompt_len + u.tokens_generated
        lm.kv_cache = False
        try:
            counted, counting = _count_forward_tokens(lm)
            monkeypatch.setattr(lm.model, "forward", counting)
            plain = particle_filter(key, model, PROMPT, 6, scheme="multinomial")
            monkeypatch.undo()
        finally:
            lm.kv_cache = True
        assert counted["tokens"] == plain.usage.tokens_encoded
        assert plain.usage.tokens_encoded > u.tokens_encoded
        assert plain.texts == with_cache.texts
        assert plain.trajectories.step_tokens == with_cache.trajectories.step_tokens
        np.testing.assert_array_equal(
            np.asarray(plain.particles.log_weights), np.asarray(with_cache.particles.log_weights)
        )
        assert plain.selected == with_cache.selected


def test_reward_sees_text_up_to_the_delimiter(bpe_lm):
    """The PRM scores each step's text up to and including the delimiter; the rest of the
    delimiter's token opens the next step."""
    seen = []

    def reward(prompt, steps):
        seen.append(tuple(steps))
        return 0.5

    model = _model(bpe_lm, FunctionReward(reward))
    carried = 0
    for k in range(4):
        res = particle_filter(jax.random.key(k), model, PROMPT, 8)
        for i in range(len(res.trajectories)):
            carried += sum(bool(c) for c in res.trajectories.carries[i])
    assert carried > 0  # some delimiter tokens decoded to more text than the delimiter
    for steps in seen:
        text = "".join(steps)
        assert text.endswith((";", "|")) or "</s>" not in text
        for s in steps[:-1]:
            assert s.endswith(";")


def test_prompt_longer_than_the_context(bpe_lm):
    model = _model(bpe_lm)
    with pytest.raises(ValueError, match="context limit is 96"):
        particle_filter(jax.random.key(0), model, "1;" * 200 + "=", 2)


class _ScriptedLM(torch.nn.Module):
    """A deterministic causal LM through transformers' cache API: the next token is
    ``script[last real token]`` with probability 1 (keys/values hold the token ids)."""

    def __init__(self, vocab_size: int, script: dict[int, int]):
        super().__init__()
        self.config = transformers.LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=8,
            intermediate_size=8,
            num_hidden_layers=1,
            num_attention_heads=1,
            max_position_embeddings=64,
        )
        self.script = script

    def forward(self, input_ids, attention_mask, position_ids, cache, use_cache):
        from types import SimpleNamespace

        x = input_ids.float()[:, None, :, None]
        keys, _ = cache.update(x, x, 0)
        ids = keys[:, 0, :, 0].long()
        b, n = ids.shape
        last = (attention_mask * torch.arange(1, n + 1)).argmax(-1)
        logits = torch.full((b, 1, self.config.vocab_size), -1e9)
        for i in range(b):
            logits[i, 0, self.script.get(int(ids[i, last[i]]), 0)] = 0.0  # prefill: unused
        return SimpleNamespace(logits=logits)


def test_delimiter_inside_a_token_and_eos_after_a_delimiter():
    """``"0;1"`` ends step 1 at ``";"`` and its ``"1"`` opens step 2; ``"12;"`` is step 2;
    the EOS right after it ends the answer without an empty step."""
    tok = _bpe_tokenizer()
    v = tok.tok.get_vocab()
    prompt_last = tok.encode(PROMPT)[-1]
    script = {prompt_last: v["0;1"], v["0;1"]: v["2"], v["2"]: v[";"], v[";"]: tok.eos_token_id}
    lm = HFCausalLM(_ScriptedLM(len(v), script), tok, device="cpu")
    seen = []

    def reward(prompt, steps):
        seen.append(tuple(steps))
        return 0.5

    model = _model(lm, FunctionReward(reward))
    res = particle_filter(jax.random.key(0), model, PROMPT, 2)
    store = res.trajectories
    assert store.steps == (("0;", "12;"),) * 2
    assert store.carries == (("1", ""),) * 2
    assert store.step_tokens == (((v["0;1"],), (v["2"], v[";"])),) * 2
    assert store.finished == (True, True) and res.answers == ("2", "2")
    assert set(seen) == {("0;",), ("0;12;",)}  # "model" aggregation: the whole prefix
    assert res.usage.lm_calls == 3 and res.usage.rewards_scored == 4


def test_conditional_smc_keeps_the_cache_and_changes_nothing(bpe_lm, monkeypatch):
    """Particle Gibbs sweeps on the driver's conditional SMC: the reference stays in slot
    0, only children of the reference are prefilled again (their tokens, once), and the
    sweep for the same key is identical with and without the cache."""
    from probinfer.llm.gibbs import conditional_smc
    from probinfer.llm.protocols import Usage

    lm = bpe_lm
    reward = FunctionReward(lambda p, s: 0.2 + 0.6 * ("1" in "".join(s)))
    model = _model(lm, reward)
    prompt_len = len(lm.tokenizer.encode(PROMPT))
    _, _, ref = conditional_smc(jax.random.key(7), model, PROMPT, 4, None, Usage())
    ref_tokens = len(ref.tokens(0))
    for k in range(2):
        key = jax.random.key(200 + k)
        outs = []
        for kv in (True, False):
            lm.kv_cache, lm._prompt_rows = kv, None
            usage = Usage()
            counted, counting = _count_forward_tokens(lm)
            monkeypatch.setattr(lm.model, "forward", counting)
            try:
                store, lw, new = conditional_smc(key, model, PROMPT, 4, ref, usage)
            finally:
                monkeypatch.undo()
                lm.kv_cache = True
            assert counted["tokens"] == usage.tokens_encoded
            assert store.steps[0] == ref.steps[0] and store.step_tokens[0] == ref.step_tokens[0]
            outs.append((store, lw, new, usage))
        (s1, lw1, n1, u1), (s2, lw2, n2, u2) = outs
        assert s1.steps == s2.steps and s1.step_tokens == s2.step_tokens
        np.testing.assert_array_equal(lw1, lw2)
        assert n1.steps == n2.steps
        # at most: the prompt, every generated token, and each child of the reference's
        # prefix once per step (3 free slots, at most MAX_STEPS - 1 resampling steps)
        bound = prompt_len + u1.tokens_generated + 3 * (MAX_STEPS - 1) * (prompt_len + ref_tokens)
        assert u1.tokens_encoded <= bound
        assert u1.tokens_encoded < u2.tokens_encoded


def test_server_token_ids_are_checked_against_the_bpe_vocabulary():
    """A served model's sampled ids must lie in the tokenizer's vocabulary (added tokens
    included): an id the tokenizer cannot decode would vanish from the step silently."""
    from probinfer.llm.server import ServerError, _choice_token_ids, _vocab_size

    tok = _bpe_tokenizer()
    n = len(tok.tok)  # the trained merges plus <pad> and </s>
    assert _vocab_size(tok) == n and tok.decode([n]) == ""  # decoding drops it
    assert _choice_token_ids("u", {"token_ids": [0, n - 1]}, n) == [0, n - 1]
    for bad in ([n], [-1]):
        with pytest.raises(ServerError, match=r"^u: .*outside the tokenizer's vocabulary"):
            _choice_token_ids("u", {"token_ids": bad}, n)
