"""Tests for probinfer.distributions.answer.AnswerDistribution (exact masses by enumeration)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probinfer.distributions.answer import AnswerDistribution

ANSWERS = ["4", "5", "4", None, "5", "7", "4"]
WEIGHTS = [1.0, 2.0, 0.5, 0.5, 0.0, 3.0, 0.5]


def exact_masses(answers, weights):
    total = sum(weights)
    out = {}
    for a, w in zip(answers, weights):
        out[a] = out.get(a, 0.0) + w / total
    return out


def test_masses_summed_over_equal_answers_and_ordered():
    d = AnswerDistribution(ANSWERS, weights=WEIGHTS)
    exact = exact_masses(ANSWERS, WEIGHTS)
    assert d.answers == ("7", "4", "5", None)
    for a, p in d.as_dict().items():
        assert abs(p - exact[a]) < 1e-6
    np.testing.assert_allclose(d.probs, [exact[a] for a in d.answers], rtol=1e-6)
    np.testing.assert_allclose(d.logits, np.log([exact[a] for a in d.answers]), rtol=1e-6)
    assert abs(sum(d.as_dict().values()) - 1.0) < 1e-6
    assert d.mode == "7"
    top = d.top(2)
    assert [a for a, _ in top] == ["7", "4"]
    assert abs(top[1][1] - exact["4"]) < 1e-6


def test_log_weights_equal_weights_and_majority_default():
    with np.errstate(divide="ignore"):
        lw = np.log(np.asarray(WEIGHTS)) + 100.0  # unnormalised and large; one -inf
    a = AnswerDistribution(ANSWERS, lw)
    b = AnswerDistribution(ANSWERS, weights=WEIGHTS)
    assert a.answers == b.answers
    np.testing.assert_allclose(a.probs, b.probs, rtol=1e-6)
    c = AnswerDistribution(["b", "a", "b", "a", "c"])  # tie between b and a: b appears first
    assert c.answers == ("b", "a", "c")
    np.testing.assert_allclose(c.probs, [0.4, 0.4, 0.2], rtol=1e-6)


def test_zero_mass_answer_kept_last():
    d = AnswerDistribution(["x", "y"], weights=[0.0, 1.0])
    assert d.answers == ("y", "x")
    assert d.log_prob("x") == -np.inf
    assert d.as_dict()["x"] == 0.0


def test_log_prob_of_indices_and_answers():
    d = AnswerDistribution(ANSWERS, weights=WEIGHTS)
    exact = exact_masses(ANSWERS, WEIGHTS)
    np.testing.assert_allclose(d.log_prob("4"), math.log(exact["4"]), rtol=1e-6)
    np.testing.assert_allclose(d.log_prob(None), math.log(exact[None]), rtol=1e-6)
    lp = np.asarray(d.log_prob(["5", "unknown", None]))
    np.testing.assert_allclose(lp[[0, 2]], np.log([exact["5"], exact[None]]), rtol=1e-6)
    assert lp[1] == -np.inf
    idx = jnp.array([[0, 1], [3, 7]])
    lpi = d.log_prob(idx)
    assert lpi.shape == (2, 2)
    np.testing.assert_allclose(lpi[0], np.log([exact["7"], exact["4"]]), rtol=1e-6)
    assert lpi[1, 1] == -np.inf and d.log_prob(-1) == -np.inf


def test_decode_roundtrip():
    d = AnswerDistribution(ANSWERS, weights=WEIGHTS)
    assert d.decode(0) == "7" and d.decode(3) is None
    out = d.decode(jnp.array([[2, 0], [1, 3]]))
    assert out.shape == (2, 2) and out.tolist() == [["5", "7"], ["4", None]]
    for a in d.answers:
        assert d.decode(d.index(a)) == a
    with pytest.raises(ValueError, match="indices"):
        d.decode(4)


def test_sample_frequencies_match_probs():
    d = AnswerDistribution(ANSWERS, weights=WEIGHTS)
    n = 40_000
    s = np.asarray(d.sample(jax.random.key(0), (n,)))
    assert s.dtype == np.int32 and s.shape == (n,)
    p = np.asarray(d.probs, dtype=np.float64)
    freq = np.bincount(s, minlength=len(p)) / n
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / n))
    np.testing.assert_array_equal(
        d.sample(jax.random.key(5), (9,)), d.sample(jax.random.key(5), (9,))
    )


def test_entropy_exact():
    d = AnswerDistribution(ANSWERS, weights=WEIGHTS)
    p = np.array(list(exact_masses(ANSWERS, WEIGHTS).values()))
    p = p[p > 0]
    np.testing.assert_allclose(d.entropy(), -np.sum(p * np.log(p)), rtol=1e-5)
    assert float(AnswerDistribution(["a", "a"]).entropy()) == 0.0


def test_total_variation_over_union_of_supports():
    p = AnswerDistribution(["a", "b", "c"], weights=[0.5, 0.3, 0.2])
    q = AnswerDistribution(["b", "d", "a"], weights=[0.5, 0.25, 0.25])
    # |.5-.25| + |.3-.5| + |.2-0| + |0-.25| = 0.9, halved
    assert abs(p.total_variation(q) - 0.45) < 1e-6
    assert abs(q.total_variation(p) - 0.45) < 1e-6
    assert p.total_variation(p) == 0.0
    assert abs(p.total_variation(AnswerDistribution(["z"])) - 1.0) < 1e-6
    with pytest.raises(TypeError, match="other"):
        p.total_variation({"a": 1.0})


def test_from_dict():
    d = AnswerDistribution.from_dict({"x": 1.0, "y": 3.0})
    assert d.answers == ("y", "x")
    np.testing.assert_allclose(d.probs, [0.75, 0.25], rtol=1e-6)


def test_mean_and_variance_raise_not_implemented():
    d = AnswerDistribution(["a"])
    with pytest.raises(NotImplementedError, match="unordered"):
        _ = d.mean
    with pytest.raises(NotImplementedError, match="unordered"):
        _ = d.variance


def test_jit_and_pytree_keep_answers():
    d = AnswerDistribution(ANSWERS, weights=WEIGHTS)
    lp = jax.jit(lambda d: d.log_prob(jnp.arange(4)))(d)
    np.testing.assert_allclose(lp, d.logits, rtol=1e-6)
    leaves, treedef = jax.tree_util.tree_flatten(d)
    d2 = jax.tree_util.tree_unflatten(treedef, leaves)
    assert d2.answers == d.answers
    np.testing.assert_allclose(d2.probs, d.probs)
    s = jax.jit(lambda d, k: d.sample(k, (3,)))(d, jax.random.key(1))
    assert s.shape == (3,)
    assert d.enumerate_support().tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "answers, kwargs, exc, match",
    [
        ([], {}, ValueError, "answers"),
        (["a", "b"], {"weights": [1.0, -1.0]}, ValueError, "weights"),
        (["a", "b"], {"weights": [1.0, np.nan]}, ValueError, "weights"),
        (["a", "b"], {"weights": [0.0, 0.0]}, ValueError, "weights"),
        (["a", "b"], {"weights": [1.0]}, ValueError, "weights"),
        (["a", "b"], {"log_weights": [0.0, np.nan]}, ValueError, "log_weights"),
        (["a", "b"], {"log_weights": [-np.inf, -np.inf]}, ValueError, "log_weights"),
        (["a", "b"], {"log_weights": [0.0, 0.0], "weights": [1.0, 1.0]}, ValueError, "weights"),
        (["a", 3], {}, TypeError, r"answers\[1\]"),
        ("ab", {}, TypeError, "answers"),
    ],
)
def test_bad_input(answers, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        AnswerDistribution(answers, **kwargs)
