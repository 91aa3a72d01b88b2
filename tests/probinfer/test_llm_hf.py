"""Hugging Face backends (tiny in-process models) and the bundled offline default."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from probinfer.llm import (  # noqa: E402
    ArithmeticTask,
    CharTokenizer,
    LLMStateSpaceModel,
    StepFormat,
    VerifierReward,
    particle_filter,
)
from probinfer.llm.hf import HFCausalLM, HFRewardModel  # noqa: E402

ASSETS = Path(__file__).resolve().parents[2] / "probinfer" / "llm" / "assets"


def _config(**kw):
    from transformers import GPT2Config

    tok = CharTokenizer()
    return GPT2Config(
        vocab_size=tok.vocab_size,
        n_embd=16,
        n_layer=1,
        n_head=2,
        n_positions=64,
        pad_token_id=0,
        **kw,
    )


@pytest.fixture(scope="module")
def tiny_lm():
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(_config())
    return HFCausalLM(model, CharTokenizer(), device="cpu")


@pytest.fixture(scope="module", params=["sequence", "token"])
def tiny_prm(request):
    torch.manual_seed(1)
    cls = {
        "sequence": transformers.GPT2ForSequenceClassification,
        "token": transformers.GPT2ForTokenClassification,
    }[request.param]
    return HFRewardModel(cls(_config(num_labels=1)), CharTokenizer(), device="cpu")


CONTEXTS = [("3+5=", ""), ("1+2-3+4=", "1;"), ("9-9=", "9;0;"), ("2+2+2+2+2=", "")]
PROMPT = "1+2-3+4="
PARTIALS = ["", "1;", "1;3;", "1;3;0;"]


def _store(prompt, partials):
    from probinfer.llm import Trajectories

    n = len(partials)
    steps = tuple(tuple(StepFormat(";", "|").split(q)) for q in partials)
    return Trajectories(prompt, steps, (False,) * n, tuple(((),) * len(s) for s in steps))


def test_batched_greedy_generation_matches_one_by_one(tiny_lm):
    """Left padding, attention masks and position ids make a batch equal to single calls."""
    fmt = StepFormat(";", "|")
    key = jax.random.key(0)
    batch = tiny_lm.propose(
        key, _store(PROMPT, PARTIALS), fmt.step_end, max_new_tokens=5, temperature=0
    )
    for i, q in enumerate(PARTIALS):
        one = tiny_lm.propose(
            key, _store(PROMPT, [q]), fmt.step_end, max_new_tokens=5, temperature=0
        )
        assert one.steps[0] == batch.steps[i]
        assert one.truncated[0] == batch.truncated[i]
    # a text-only history is encoded once, then every sampled token but the last is fed
    fed = batch.tokens_generated - len(PARTIALS)
    assert batch.tokens_encoded == sum(len(PROMPT) + len(q) for q in PARTIALS) + fed
    assert 0 < batch.tokens_generated <= 5 * len(PARTIALS)


def test_sampling_is_keyed_and_guarded(tiny_lm):
    fmt = StepFormat(";", "|")
    a = tiny_lm.propose(jax.random.key(3), _store(PROMPT, PARTIALS), fmt.step_end, max_new_tokens=4)
    b = tiny_lm.propose(jax.random.key(3), _store(PROMPT, PARTIALS), fmt.step_end, max_new_tokens=4)
    assert a.steps == b.steps
    for s, t in zip(a.steps, a.truncated):
        assert 1 <= len(s) <= 4 and "\x00" not in s
        assert t == (fmt.step_end(s) is None)


def test_learned_prm_scores_are_probabilities_and_padding_invariant(tiny_prm):
    prompts = [p for p, _ in CONTEXTS]
    partials = [(q,) if q else ("1;",) for _, q in CONTEXTS]
    batch = tiny_prm.score(prompts, partials)
    assert batch.shape == (4,) and np.all((batch > 0) & (batch < 1))
    single = np.array([tiny_prm.score([p], [s])[0] for p, s in zip(prompts, partials)])
    np.testing.assert_allclose(batch, single, rtol=1e-5, atol=1e-6)


def test_hf_particle_filter_end_to_end(tiny_lm, tiny_prm):
    model = LLMStateSpaceModel(tiny_lm, tiny_prm, max_steps=3, max_tokens_per_step=4)
    res = particle_filter(jax.random.key(0), model, "3+5=", 4)
    assert len(res.trajectories) == 4 and res.ess.shape == (3,)
    assert res.usage.lm_calls >= 1 and res.usage.reward_calls == res.usage.lm_calls
    assert np.isfinite(res.log_evidence)


def test_sample_tokens_is_exact_and_matches_torch_multinomial():
    """The exponential-race sampler: (a) its draws follow softmax(logits / T) with the
    padding id never drawn (chi-square against the probabilities computed here), (b) it
    draws what ``torch.multinomial`` draws with the same generator, call after call."""
    from scipy import stats

    from probinfer.llm.hf import sample_tokens

    logits = torch.tensor([[0.0, 1.0, -0.5, 2.0, 0.3], [3.0, -1.0, 0.0, 0.0, -2.0]])
    temperature, pad, reps = 0.7, 2, 4000
    gen, noise = torch.Generator().manual_seed(0), None
    counts = np.zeros((2, 5))
    for _ in range(reps):
        got, noise = sample_tokens(logits.clone(), temperature, gen, pad, noise)
        counts[[0, 1], got] += 1
    z = logits.double().numpy() / temperature
    z[:, pad] = -np.inf
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert counts[:, pad].sum() == 0
    for row in range(2):
        keep = p[row] > 0
        assert stats.chisquare(counts[row, keep], reps * p[row, keep]).pvalue > 1e-3
    g1, g2, noise = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3), None
    for _ in range(200):
        x = torch.randn(6, 11)
        got, noise = sample_tokens(x, 1.0, g1, None, noise)
        want = torch.multinomial(torch.softmax(x, -1), 1, generator=g2)[:, 0].tolist()
        assert got == want
    assert sample_tokens(logits.clone(), 0, gen, pad)[0] == [3, 0]


def test_one_lm_forward_pass_per_sampled_position(tiny_lm, monkeypatch):
    """A prefill samples the first new token from its own logits, so every sampling
    iteration costs exactly one forward pass: for text histories, for a fresh prompt (the
    shared prefill) and for cached rows through a whole particle filter (the last context
    token is never fed a second time)."""
    import probinfer.llm.hf as hf

    calls = {"forward": 0, "draw": 0}
    forward, draw = hf.forward_cached, hf.sample_tokens

    def counting_forward(model, *a, **k):
        calls["forward"] += model is tiny_lm.model  # the LM's passes, not the PRM's
        return forward(model, *a, **k)

    def counting_draw(*a, **k):
        calls["draw"] += 1
        return draw(*a, **k)

    monkeypatch.setattr(hf, "forward_cached", counting_forward)
    monkeypatch.setattr(hf, "sample_tokens", counting_draw)
    fmt = StepFormat(";", "|")
    for store in (_store(PROMPT, PARTIALS), _store("2+2+2+2+2=", [""] * 3)):
        calls.update(forward=0, draw=0)
        tiny_lm.propose(jax.random.key(1), store, fmt.step_end, max_new_tokens=5)
        assert calls["draw"] >= 1 and calls["forward"] == calls["draw"]
    calls.update(forward=0, draw=0)
    model = LLMStateSpaceModel(tiny_lm, VerifierReward(), max_steps=4, max_tokens_per_step=4)
    res = particle_filter(jax.random.key(2), model, "9-1+3=", 6)
    assert res.usage.lm_calls >= 2 and calls["forward"] == calls["draw"]


def test_bundled_assets_are_small_and_load_offline():
    total = sum(f.stat().st_size for f in ASSETS.rglob("*") if f.is_file())
    assert total < 2 * 2**20, total
    for sub in ("lm", "prm"):
        assert (ASSETS / sub / "model.safetensors").exists()
        assert (ASSETS / sub / "config.json").exists()
    from probinfer.llm import load_default

    model = load_default("learned")
    task = ArithmeticTask()
    prob = task.problems(1, seed=5)[0]
    res = particle_filter(jax.random.key(0), model, prob.prompt, 4)
    assert all(isinstance(t, str) for t in res.texts)
    r = model.reward.score([prob.prompt, prob.prompt], [(prob.solution,), ("0;0;0|",)])
    assert np.all((r >= 0) & (r <= 1))


def test_verifier_reward():
    v = VerifierReward(epsilon=0.1)
    r = v.score(["3+5-4="] * 4, [("3;",), ("3;8;",), ("3;9;",), ("3;8;4|",)])
    np.testing.assert_allclose(r, [0.9, 0.9, 0.1, 0.9])
    assert v.score(["3+5-4="], [("3;8;4;",)])[0] == pytest.approx(0.1)  # no stop at the end
    assert v.score(["3+5-4="], [("3;--8;",)])[0] == pytest.approx(0.1)  # malformed number
    with pytest.raises(ValueError, match="epsilon"):
        VerifierReward(epsilon=0.7)


def test_import_does_not_load_torch():
    code = (
        "import sys, probinfer, probinfer.llm, probinfer.cli; probinfer.cli.build_parser(); "
        "from probinfer.llm import particle_filter, LLMStateSpaceModel; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_model_path():
    with pytest.raises(ValueError, match="path"):
        HFCausalLM.from_pretrained("/nonexistent/model")


def test_particle_filter_beats_single_sample_on_bundled_task_with_verifier():
    """PF at budget 8 at least doubles single-sample accuracy (bundled LM, exact verifier).

    Expected about 25% vs 95% on 40 problems: the difference 0.95 - 2 x 0.25 = 0.45 is about
    3 binomial standard errors of ``acc_pf - 2 acc_single`` (~0.14), so the one-sided check
    ``acc_pf > 2 acc_single`` has a margin of several standard errors of each accuracy.
    """
    from probinfer.llm import load_default
    from probinfer.llm.default import default_problems

    torch.set_num_threads(1)
    model = load_default("verifier")
    probs = default_problems(40, seed=7)
    single, pf = [], []
    for i, (prompt, answer) in enumerate(probs):
        key = jax.random.key(i)
        single.append(particle_filter(key, model, prompt, 1).selected == answer)
        pf.append(particle_filter(key, model, prompt, 8).selected == answer)
    assert np.mean(pf) > 2 * np.mean(single), (np.mean(pf), np.mean(single))


def test_probinfer_scale_cli_writes_table_json_png(tmp_path, capsys):
    import json

    from probinfer.cli import main

    out = tmp_path / "scale.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # so that --threads 1 has something to change
    rc = main(
        [
            "scale",
            "--threads",
            "1",
            "--num-problems",
            "3",
            "--budgets",
            "1,2",
            "--algorithms",
            "particle_filter,best_of_n",
            "--prm",
            "verifier",
            "--output",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    assert torch.get_num_threads() == 1  # --threads applied
    torch.set_num_threads(threads)
    report = json.loads(out.read_text())
    assert [r["budget"] for r in report["results"]["particle_filter"]] == [1, 2]
    assert out.with_suffix(".png").stat().st_size > 0
    assert "particle_filter" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["scale", "--budgets", "0"])


def test_likelihood_prm_features_and_scores():
    """The bundled likelihood PRM: features are the newest step's LM log-probability and
    token count (checked against a direct forward pass), batched = one by one, scores in
    (0, 1)."""
    from probinfer.llm import load_default

    model = load_default("likelihood")
    prm, lm = model.reward, model.lm
    prompts = ["3+5-4=", "3+5-4=", "9-1="]
    partials = [("3;", "8;"), ("3;8;4|",), ("9;", "8|")]
    feats = prm.features(prompts, partials)
    for i, (p, s) in enumerate(zip(prompts, partials)):
        steps = model.step_format.split("".join(s))
        head = lm.tokenizer.encode(p + "".join(steps[:-1]))
        ids = torch.tensor([head + lm.tokenizer.encode(steps[-1])])
        with torch.no_grad():
            lp = torch.log_softmax(lm.model(input_ids=ids).logits[0].float(), -1)
        direct = sum(float(lp[j - 1, ids[0, j]]) for j in range(len(head), ids.shape[1]))
        assert feats[i, 0] == pytest.approx(direct, abs=1e-4)
        assert feats[i, 1] == ids.shape[1] - len(head)
        np.testing.assert_allclose(prm.features([p], [s])[0], feats[i], atol=1e-4)
    r = prm.score(prompts, partials)
    assert np.all((r > 0) & (r < 1))
