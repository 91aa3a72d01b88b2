"""The LLM state-space model on an enumerable toy model: exactness of the particle filter,
particle Gibbs and parallel tempering against the enumerated posterior, and bad input."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from probinfer.llm import (
    LLMStateSpaceModel,
    StepFormat,
    StepProposal,
    beam_search,
    best_of_n,
    parallel_tempering,
    particle_filter,
    particle_gibbs,
    self_consistency,
    swap_log_acceptance,
    weighted_majority,
)
from probinfer.llm.gibbs import conditional_smc
from probinfer.llm.protocols import Usage
from probinfer.llm.toy import FunctionReward, TabularLM, exact_posterior

TABLE = {
    None: {"a;": 0.4, "b;": 0.3, "a|": 0.2, "b|": 0.1},
    "a;": {"a;": 0.3, "b;": 0.3, "a|": 0.2, "b|": 0.2},
    "b;": {"a;": 0.2, "b;": 0.2, "a|": 0.3, "b|": 0.3},
}


def _reward(prompt, steps):
    text = "".join(steps)
    return min(0.95, 0.15 + 0.25 * text.count("a"))


def _model(**kw):
    kw.setdefault("max_steps", 4)
    return LLMStateSpaceModel(
        TabularLM(TABLE),
        FunctionReward(_reward),
        StepFormat(";", "|"),
        answer_extractor=lambda text: str(text.count("a")),
        **kw,
    )


def _enumerate(potential="logit", aggregation="model", telescoping=False, max_steps=4):
    """The exact answer posterior and log evidence, written here from ``TABLE`` and
    ``_reward`` alone (not through the model's potentials or ``exact_posterior``): every
    step sequence up to ``max_steps`` (stopping at a step ending in "|"), its LM
    probability, the reward of each prefix, the aggregated score ``a_t`` (last / running
    min / running product), ``phi(a) = logit a`` or ``log a``, and the target
    ``p_LM(x) prod_t exp(phi(a_t))`` (telescoping: ``p_LM(x) exp(phi(a_|x|))``). Unfinished
    sequences have answer ``None``.

    Returns ``({answer: probability}, log Z)``.
    """
    phi = {"logit": lambda a: np.log(a) - np.log1p(-a), "log": np.log}[potential]
    combine = {"model": lambda r: r[-1], "last": lambda r: r[-1], "min": min}
    combine["product"] = lambda r: float(np.prod(r))
    weights: dict = {}

    def visit(steps, prob):
        finished = bool(steps) and steps[-1].endswith("|")
        if finished or len(steps) == max_steps:
            rewards = [_reward("q", steps[: t + 1]) for t in range(len(steps))]
            scores = [combine[aggregation](rewards[: t + 1]) for t in range(len(steps))]
            log_g = phi(scores[-1]) if telescoping else sum(phi(a) for a in scores)
            answer = str("".join(steps).count("a")) if finished else None
            weights[answer] = weights.get(answer, 0.0) + prob * np.exp(log_g)
            return
        for step, p_step in TABLE[steps[-1] if steps else None].items():
            visit(steps + [step], prob * p_step)

    visit([], 1.0)
    z = sum(weights.values())
    return {a: w / z for a, w in weights.items()}, float(np.log(z))


def _probs(dist, support):
    d = dist if isinstance(dist, dict) else dist.as_dict()
    return np.array([d.get(a, 0.0) for a in support])


def _chain_se(chain, support, p, num_batches: int = 20) -> np.ndarray:
    """Monte-Carlo standard error of the answer frequencies of an autocorrelated chain,
    measured on the chain by batch means (``num_batches`` consecutive batches), never below
    the iid value ``sqrt(p (1 - p) / len)``."""
    hits = np.array([[a == s for s in support] for a in chain], dtype=np.float64)
    size = len(chain) // num_batches
    means = hits[: size * num_batches].reshape(num_batches, size, len(support)).mean(axis=1)
    batch_se = means.std(axis=0, ddof=1) / np.sqrt(num_batches)
    return np.maximum(batch_se, np.sqrt(p * (1 - p) / len(chain)))


def _check_chain(chain, exact) -> tuple[list, np.ndarray, np.ndarray]:
    """Assert the answer frequencies of ``chain`` are within 5 batch-means standard errors
    of the ``exact`` posterior; return the support, its probabilities and the SE."""
    support = list(exact)
    freq = np.array([np.mean([a == s for a in chain]) for s in support])
    p = _probs(exact, support)
    se = _chain_se(chain, support, p)
    assert np.all(np.abs(freq - p) < 5 * se), (freq, p, se)
    return support, p, se


def _total_variation(p: dict, q: dict) -> float:
    return 0.5 * sum(abs(p.get(a, 0.0) - q.get(a, 0.0)) for a in set(p) | set(q))


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"potential": "log", "aggregation": "min"},
        {"aggregation": "product", "telescoping": True},
        {"potential": "log", "aggregation": "last", "max_steps": 3},
    ],
)
def test_toy_exact_posterior_matches_the_enumeration_in_this_test(kw):
    """``exact_posterior`` (the package's enumeration, through the model's potentials)
    equals the enumeration written above from the table and the reward function."""
    exact, log_z = exact_posterior(_model(**kw), "q")
    ours, our_log_z = _enumerate(**kw)
    support = sorted(set(exact.answers) | set(ours), key=str)
    # AnswerDistribution keeps float32 probabilities: agreement to their resolution
    np.testing.assert_allclose(_probs(exact, support), _probs(ours, support), rtol=1e-6)
    assert log_z == pytest.approx(our_log_z, abs=1e-12)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"potential": "log", "aggregation": "min"},
        {"aggregation": "product", "telescoping": True},
    ],
)
def test_particle_filter_answer_posterior_matches_enumeration(kw):
    model = _model(**kw)
    exact, _ = _enumerate(**kw)
    support = list(exact)
    p = _probs(exact, support)
    runs = 16
    est = np.stack(
        [
            _probs(particle_filter(k, model, "q", 150).answer_distribution, support)
            for k in jax.random.split(jax.random.key(0), runs)
        ]
    )
    mean, se = est.mean(0), est.std(0, ddof=1) / np.sqrt(runs)
    # bias of the self-normalised estimate is O(1/N), below 1/N here; se ~ 0.01
    assert np.all(np.abs(mean - p) <= 5 * se + 1.0 / 150), (mean, p, se)


def test_particle_filter_total_variation_shrinks_with_n():
    model = _model()
    exact, _ = _enumerate()
    tv = {}
    for n in (16, 512):
        keys = jax.random.split(jax.random.key(n), 8)
        tv[n] = np.mean(
            [
                _total_variation(
                    particle_filter(k, model, "q", n).answer_distribution.as_dict(), exact
                )
                for k in keys
            ]
        )
    # TV ~ c / sqrt(N): 32x more particles should give well under half the distance
    assert tv[512] < 0.5 * tv[16], tv
    assert tv[512] < 0.08, tv


@pytest.mark.parametrize("ess_threshold", [1.0, 0.5])
def test_particle_filter_evidence_is_unbiased(ess_threshold):
    model = _model()
    _, log_z = _enumerate()
    runs = 100
    z = np.array(
        [
            np.exp(particle_filter(k, model, "q", 8, ess_threshold=ess_threshold).log_evidence)
            for k in jax.random.split(jax.random.key(1), runs)
        ]
    )
    se = z.std(ddof=1) / np.sqrt(runs)
    assert abs(z.mean() - np.exp(log_z)) < 5 * se, (z.mean(), np.exp(log_z), se)


def test_single_sample_is_importance_weighted_lm_sample():
    model = _model()
    _, log_z = _enumerate()
    z = np.array(
        [
            np.exp(particle_filter(k, model, "q", 1).log_evidence)
            for k in jax.random.split(jax.random.key(2), 400)
        ]
    )
    se = z.std(ddof=1) / np.sqrt(len(z))
    assert abs(z.mean() - np.exp(log_z)) < 5 * se


def test_finished_particles_are_absorbing_and_usage_is_counted():
    model = _model(max_steps=6)
    res = particle_filter(jax.random.key(3), model, "q", 64)
    store = res.trajectories
    for steps, fin in zip(store.steps, store.finished):
        ends = [i for i, s in enumerate(steps) if s.endswith("|")]
        assert ends == ([len(steps) - 1] if fin else [])  # nothing after the stop
    assert res.usage.lm_calls >= 1 and res.usage.reward_calls == res.usage.lm_calls
    assert res.usage.tokens_generated == res.usage.rewards_scored
    # the driver stops at the first step after which every particle has finished
    k = res.ess.shape[0]
    assert 1 <= k <= 6 and res.usage.lm_calls == k
    assert all(store.finished) or k == 6
    assert res.selected in res.answer_distribution.answers
    again = particle_filter(jax.random.key(3), model, "q", 64)
    assert again.texts == res.texts  # same key, same result


def test_particle_gibbs_keeps_reference_and_targets_posterior():
    model = _model()
    usage = Usage()
    store, lw, ref = conditional_smc(jax.random.key(4), model, "q", 4, None, usage)
    for k in jax.random.split(jax.random.key(5), 20):
        store, lw, new = conditional_smc(k, model, "q", 4, ref, usage)
        assert store.steps[0] == ref.steps[0] and store.scores[0] == ref.scores[0]
        ref = new
    exact, _ = _enumerate()
    res = particle_gibbs(jax.random.key(6), model, "q", 4 * 300, num_particles=4)
    # autocorrelated chain: 5 standard errors measured by batch means (measured effective
    # size 0.22-0.77 of the 300 iterations across the answers; the old assumption was 1/4)
    support, p, se = _check_chain(res.info["reference_answers"], exact)
    pooled = _probs(res.answer_distribution, support)
    assert np.all(np.abs(pooled - p) < 5 * se), (pooled, p, se)


def test_swap_acceptance_rule():
    assert swap_log_acceptance(1.0, 0.5, -3.0, -1.0) == 0.0  # better state to the cold chain
    assert swap_log_acceptance(1.0, 0.5, -1.0, -3.0) == pytest.approx(-1.0)
    assert swap_log_acceptance(1.0, 1.0, -1.0, -9.0) == 0.0
    assert swap_log_acceptance(1.0, 0.5, 0.0, -np.inf) == -np.inf


def test_parallel_tempering_cold_chain_targets_posterior():
    model = _model()
    exact, _ = _enumerate()
    res = parallel_tempering(jax.random.key(7), model, "q", 2 * 4 * 200, betas=(1.0, 0.3))
    acc = res.info["swap_acceptance"]
    assert 0.0 < acc[0] < 1.0
    # 5 standard errors measured by batch means (measured effective size 0.19-0.71 of the
    # 200 iterations across the answers; the old assumption was 1/4)
    _check_chain(res.info["reference_answers"], exact)


def test_baselines_run_with_budget_semantics():
    model = _model()
    key = jax.random.key(8)
    bon = best_of_n(key, model, "q", 8)
    assert len(bon.trajectories) == 8 and np.isclose(bon.weights.max(), 1.0)
    assert bon.selected == bon.answers[int(np.argmax(bon.info["scores"]))]
    sc = self_consistency(key, model, "q", 8)
    assert sc.usage.reward_calls == 0 and sc.selected == sc.answer_distribution.mode
    wm = weighted_majority(key, model, "q", 8)
    assert np.allclose(wm.weights, wm.info["scores"] / wm.info["scores"].sum())
    bs = beam_search(key, model, "q", 8)
    assert bs.info["width"] == 2 and bs.selected is not None


class _EmptyLM:
    def propose(self, key, contexts, step_end, *, max_new_tokens, temperature=1.0):
        return StepProposal([""] * len(contexts), [False] * len(contexts))


class _NeverEndsLM:
    """Never produces a delimiter: each step is max_new_tokens characters, truncated."""

    def propose(self, key, contexts, step_end, *, max_new_tokens, temperature=1.0):
        s = "x" * max_new_tokens
        assert step_end(s) is None
        return StepProposal([s] * len(contexts), [True] * len(contexts), len(contexts) * len(s))


def test_bad_input():
    model = _model()
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="prompt"):
        particle_filter(key, model, "  ", 4)
    with pytest.raises(ValueError, match="budget"):
        particle_filter(key, model, "q", 0)
    with pytest.raises(ValueError, match="budget"):
        beam_search(key, model, "q", 0)
    bad = dataclasses.replace(model, reward=FunctionReward(lambda p, s: 1.5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        particle_filter(key, bad, "q", 4)
    nan = dataclasses.replace(model, reward=FunctionReward(lambda p, s: float("nan")))
    with pytest.raises(ValueError, match="NaN"):
        particle_filter(key, nan, "q", 4)
    with pytest.raises(ValueError, match="empty step"):
        particle_filter(key, dataclasses.replace(model, lm=_EmptyLM()), "q", 4)
    with pytest.raises(ValueError, match="potential"):
        _model(potential="odds")
    with pytest.raises(ValueError, match="aggregation"):
        _model(aggregation="mean")
    with pytest.raises(ValueError, match="max_steps"):
        _model(max_steps=0)


def test_delimiter_never_produced_is_guarded():
    model = LLMStateSpaceModel(
        _NeverEndsLM(), FunctionReward(lambda p, s: 0.5), max_steps=3, max_tokens_per_step=5
    )
    res = particle_filter(jax.random.key(0), model, "q", 4)
    assert all(len(s) == 3 for s in res.trajectories.steps)  # max-steps guard
    assert res.usage.steps_truncated == 12  # max-tokens guard hit at every step
    assert res.answers == (None,) * 4 and res.selected is None


def test_to_arviz():
    res = particle_filter(jax.random.key(9), _model(), "q", 16)
    idata = res.to_arviz(jax.random.key(1))
    post = idata["posterior"]
    assert post["answer_index"].shape == (1, 16)
    assert idata["posterior"].attrs["algorithm"] == "particle_filter"


def test_budget_caps_stop_the_run():
    model = _model(max_steps=6, max_lm_calls=2)
    res = particle_filter(jax.random.key(8), model, "q", 16)
    assert res.usage.lm_calls == 2 and res.ess.shape == (2,)
    capped = _model(max_steps=6, max_tokens=20)
    res = particle_filter(jax.random.key(8), capped, "q", 16)
    assert res.usage.tokens_generated >= 20 and res.usage.lm_calls == 2  # 16 + 16 steps
    single = particle_filter(jax.random.key(8), model, "q", 1)
    assert single.usage.lm_calls <= 2
    with pytest.raises(ValueError, match="max_tokens"):
        _model(max_tokens=0)
