"""The bundled learned PRM ("learned"): a whole-prefix token classifier shipped as assets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from probinfer.llm import ArithmeticTask, HFRewardModel  # noqa: E402

ASSETS = Path(__file__).resolve().parents[2] / "probinfer" / "llm" / "assets"

# Pairwise ranking accuracy of the bundled PRM (correct prefix scored above a wrong one,
# pairs from `_pairs` below), measured on 2 x 2000 pairs from seeds 11 and 12: 0.832 and
# 0.849. With N_PAIRS pairs the observed rate has standard error
# sqrt(PAIR_RATE (1 - PAIR_RATE) / N_PAIRS) (~0.04); the test allows 4.5 of them.
PAIR_RATE = 0.84
N_PAIRS = 80


@pytest.fixture(scope="module")
def prm():
    torch.set_num_threads(1)
    return HFRewardModel.from_pretrained(ASSETS / "prm", device="cpu")


def _pairs(n: int, seed: int):
    """``(prompt, correct prefix, wrong prefix)``: the wrong prefix equals the correct one
    except that one step is off by 1..3 and, half of the time, the later steps carry the
    error forward consistently (only the whole prefix shows that it is wrong)."""
    rng = np.random.default_rng(seed)
    task = ArithmeticTask()
    out = []
    for prob in task.problems(n, seed=seed):
        vals = list(prob.running_values)
        depth = int(rng.integers(1, len(vals) + 1))  # number of steps shown
        bad = int(rng.integers(0, depth))  # the step made wrong
        delta = int(rng.choice([-3, -2, -1, 1, 2, 3]))
        wrong = list(vals)
        if rng.random() < 0.5:
            wrong[bad:] = [v + delta for v in vals[bad:]]  # error propagated
        else:
            wrong[bad] += delta

        ends = [";"] * (len(vals) - 1) + ["|"]
        good_text, bad_text = (
            "".join(f"{x}{e}" for x, e in zip(v[:depth], ends[:depth])) for v in (vals, wrong)
        )
        out.append((prob.prompt, good_text, bad_text))
    return out


def test_bundled_prm_is_small_and_documented():
    files = [f for f in (ASSETS / "prm").iterdir() if f.is_file()]
    assert {f.name for f in files} >= {"config.json", "model.safetensors", "training.json"}
    assert sum(f.stat().st_size for f in files) < 2**20
    meta = json.loads((ASSETS / "prm" / "training.json").read_text())
    # informative but imperfect on purpose
    assert 0.8 < meta["validation_accuracy"] < 0.99
    assert "command" in meta and meta["seconds"] > 0


def test_scores_are_probabilities_and_batched_equals_one_by_one(prm):
    cases = _pairs(12, seed=1)
    prompts = [p for p, _, _ in cases for _ in range(2)]
    partials = [(s,) for _, good, bad in cases for s in (good, bad)]
    batch = prm.score(prompts, partials)
    assert batch.shape == (len(prompts),)
    assert np.all((batch >= 0) & (batch <= 1))
    single = np.array([prm.score([p], [s])[0] for p, s in zip(prompts, partials)])
    np.testing.assert_allclose(batch, single, atol=1e-5)
    # a partial answer passed as its steps scores the same as passed as one string
    steps = ("3;", "8;", "4|")
    np.testing.assert_allclose(prm.score(["3+5-4="], [steps]), prm.score(["3+5-4="], [("3;8;4|",)]))


def test_correct_prefix_scores_higher_than_wrong_one(prm):
    fixed = [
        ("3+5-4+2-1=", "3;8;", "3;9;"),
        ("9-1+2-3+4=", "9;8;10;", "9;7;9;"),  # error carried forward consistently
        ("9-1+2-3+4=", "9;8;10;7;11|", "9;7;9;6;10|"),  # same, to the end
        ("7+5+8-6+2=", "7;12;20;", "7;12;21;"),
        ("7+5+8-6+2=", "7;12;20;14;", "7;12;20;13;"),
    ]
    for prompt, good, bad in fixed:
        r_good, r_bad = prm.score([prompt, prompt], [(good,), (bad,)])
        assert r_good > r_bad, (prompt, good, r_good, bad, r_bad)
    cases = _pairs(N_PAIRS, seed=2)
    r = prm.score([p for p, _, _ in cases for _ in range(2)], [(s,) for c in cases for s in c[1:]])
    rate = np.mean(r[0::2] > r[1::2])
    bound = PAIR_RATE - 4.5 * np.sqrt(PAIR_RATE * (1 - PAIR_RATE) / N_PAIRS)
    assert rate >= bound, (rate, bound)


def test_bad_input_raises(prm):
    with pytest.raises(ValueError, match="vocabulary"):
        prm.score(["3+5="], [("x;",)])
    with pytest.raises(ValueError, match="same length"):
        prm.score(["3+5=", "3+5="], [("3;",)])
    from probinfer.llm.hf import context_limit

    with pytest.raises(ValueError, match="context window"):
        prm.score(["3+5="], [("1;" * (context_limit(prm.model.config) // 2),)])
    with pytest.raises(ValueError, match="path"):
        HFRewardModel.from_pretrained(ASSETS / "missing")
