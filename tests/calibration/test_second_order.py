"""Second-order calibration (Johnson et al. 2024) against a task with a known p(y | x).

The synthetic task: an observed group ``x`` in ``0..G-1`` and a hidden variable ``z`` in
``0..Z-1`` (uniform, never observed); the true aleatoric distribution of an example is the
table row ``T[x, z]``, with zeros (answers impossible for some hidden states). A model that sees
only ``x`` has the exact best predictions (computed here by enumeration, independently of the
code under test)

* ``p_hat(y | x) = mean_z T[x, z, y]``,
* ``p_same(y | x) = mean_z T[x, z, y]^2 / p_hat(y | x)`` (the pair joint of two draws),
* ``E[(p_hat - p)^2 | x, y] = Var_z T[x, z, y]`` and ``P(p(y | x) = 0 | x) = mean_z 1{T = 0}``.

A :class:`PairClassifier` trained on sampled triples must then recover these quantities
(against the true per-example ``p = T[x, z]``), and a never-cheating one must become valid
after the robust rescaling.
"""

from __future__ import annotations

import numpy as np
import pytest

from calibration import second_order as so

G, Z, K = 6, 3, 4


def _table(seed: int = 0) -> np.ndarray:
    """``T[x, z, :]``: Dirichlet rows on random supports of 2-3 of the K classes."""
    rng = np.random.default_rng(seed)
    t = np.zeros((G, Z, K))
    for x in range(G):
        for z in range(Z):
            support = rng.choice(K, size=int(rng.integers(2, 4)), replace=False)
            t[x, z, support] = rng.dirichlet(np.ones(len(support)))
    return t


def _exact(t: np.ndarray):
    p_hat = t.mean(axis=1)
    second = (t**2).mean(axis=1)
    p_same = np.where(p_hat > 0, second / np.where(p_hat > 0, p_hat, 1.0), 0.0)
    return p_hat, p_same, t.var(axis=1), (t == 0).mean(axis=1)


def _sample(rng, t: np.ndarray, n: int, pairs: int = 2):
    """``x``, ``z`` and ``pairs`` independent responses ``y ~ T[x, z]`` per example."""
    x = rng.integers(G, size=n)
    z = rng.integers(Z, size=n)
    cdf = np.cumsum(t[x, z], axis=1)
    u = rng.uniform(size=(pairs, n, 1))
    ys = np.minimum((u > cdf[None]).sum(axis=2), K - 1)
    return x, z, ys


def test_exact_pair_predictions_give_the_true_second_order_quantities():
    t = _table()
    p_hat, p_same, var, p_zero = _exact(t)
    # V_cheat is exactly the epistemic variance Var_z p(y | x, z)
    np.testing.assert_allclose(so.cheat_variance(p_hat, p_same), var, atol=1e-15)
    # hallucination bound, per (x, y): P(p(y | x) = 0) <= 1 - C_cheat
    c = so.cheat_corrected_confidence(p_hat, p_same)
    assert np.all(p_zero <= 1 - c + 1e-12)
    assert np.any(p_zero > 0) and np.any(1 - c > 0.2)  # the task has impossible answers
    # Chebyshev, exactly over the hidden states: P_z(|p_hat - p| > sqrt(V / beta)) <= beta
    for beta in (0.05, 0.1, 0.3):
        lo, hi = so.chebyshev_interval(p_hat, var, beta=beta)
        half = np.sqrt(var / beta)
        miss = (np.abs(t - p_hat[:, None]) > half[:, None]).mean(axis=1)
        assert np.all(miss <= beta + 1e-12)
        np.testing.assert_allclose(lo, np.clip(p_hat - half, 0, 1))
        np.testing.assert_allclose(hi, np.clip(p_hat + half, 0, 1))
        # the filter keeps exactly the answers whose impossibility bound is below beta
        keep = so.hallucination_filter(p_hat, p_same, beta=beta)
        np.testing.assert_array_equal(keep, 1 - c < beta)
        assert np.all(p_zero[keep] < beta)


def test_paired_squared_error_is_unbiased_by_enumeration():
    """sum_{y1, y2} p(y1) p(y2) U(y1, y2) = (p_hat - p)^2 exactly."""
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(K))
    p_hat = rng.dirichlet(np.ones(K))[None]
    expect = np.zeros(K)
    for y1 in range(K):
        for y2 in range(K):
            expect += p[y1] * p[y2] * so.paired_squared_error(p_hat, [y1], [y2])[0]
    np.testing.assert_allclose(expect, (p_hat[0] - p) ** 2, atol=1e-15)
    # the U-statistic over M = 3 responses, by enumeration of the 64 response triples
    expect = np.zeros(K)
    for ys in np.ndindex(K, K, K):
        expect += np.prod(p[list(ys)]) * so.squared_error_estimate(p_hat, [ys])[0]
    np.testing.assert_allclose(expect, (p_hat[0] - p) ** 2, atol=1e-15)
    # M = 2 is the paired estimator
    y = rng.integers(K, size=(50, 2))
    q = rng.dirichlet(np.ones(K), size=50)
    np.testing.assert_allclose(
        so.squared_error_estimate(q, y), so.paired_squared_error(q, y[:, 0], y[:, 1]), atol=1e-15
    )


def _miss_rate(p_hat, p_true, variance, beta):
    """Chebyshev miss rate (``p`` outside the interval) over all (example, class) entries,
    and weighted by ``p_hat`` (over the answers the model gives)."""
    lo, hi = so.chebyshev_interval(p_hat, variance, beta=beta)
    miss = (p_true < lo) | (p_true > hi)
    return miss.mean(), (miss * p_hat).sum(axis=1).mean()


def test_robust_rescaling_makes_a_never_cheating_model_valid():
    """A model whose pair head ignores y1 reports V_cheat = 0 and misses almost always; the
    rescaling fitted on held-out pairs restores the Chebyshev guarantee and matches the mean
    squared error within Monte-Carlo error."""
    t = _table()
    p_hat_g, _, var_g, _ = _exact(t)
    rng = np.random.default_rng(2)
    x, z, (y1, y2) = _sample(rng, t, 20000)
    p_hat = p_hat_g[x]
    v0 = so.cheat_variance(p_hat, p_hat)  # never cheats: p_same = p_hat
    assert np.all(v0 == 0)
    beta = 0.1
    xt, zt, _ = _sample(rng, t, 20000)
    p_true, p_test = t[xt, zt], p_hat_g[xt]
    assert _miss_rate(p_test, p_true, np.zeros_like(p_test), beta)[0] > 0.5
    resc = so.VarianceRescaling.fit(p_hat, v0, y1, y2)
    assert resc.slope >= 0 and resc.intercept > 0
    u = so.paired_squared_error(p_hat, y1, y2)
    se = u.mean(axis=1).std(ddof=1) / np.sqrt(len(u))
    err = (p_test - p_true) ** 2
    # V_robust = mean U, which estimates the mean squared error without bias
    assert abs(resc.intercept - err.mean()) <= 4 * se + 4 * err.mean(1).std() / np.sqrt(len(err))
    v = resc.transform(np.zeros_like(p_test))
    for rate in _miss_rate(p_test, p_true, v, beta):
        assert rate <= beta
    # an under-cheating model (V reported 3x too small) is rescaled by about 3
    under = so.VarianceRescaling.fit(p_hat, var_g[x] / 3, y1, y2)
    assert abs(under.slope - 3) < 0.5
    assert np.mean(under.transform(var_g[xt] / 3)) == pytest.approx(err.mean(), rel=0.1)


# --------------------------------------------------------------- a trained PairClassifier
def _one_hot(x):
    import torch

    return torch.eye(G)[torch.as_tensor(x)]


def _train(x, y1, y2, *, cheat: bool = True, seed: int = 0):
    import jax
    import torch

    from calibration.second_order import PairClassifier, fit_pair_classifier

    torch.manual_seed(seed)
    model = PairClassifier(torch.nn.Identity(), K, G, hidden=32, label_dim=8)
    if not cheat:  # the pair head never sees y1: it can only learn p(y2 | x)
        model.label_embedding.weight.data.zero_()
        model.label_embedding.weight.requires_grad_(False)
    history = fit_pair_classifier(
        model, _one_hot(x), y1, y2, key=jax.random.key(seed), epochs=30, batch_size=2000, lr=3e-2
    )
    assert history[-1] < history[0]
    return model


@pytest.fixture(scope="module")
def task():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    t = _table()
    rng = np.random.default_rng(3)
    x, _, (y1, y2) = _sample(rng, t, 20000)
    xt, zt, (yt1, yt2) = _sample(rng, t, 20000)
    return t, (x, y1, y2), (xt, t[xt, zt], yt1, yt2)


def test_trained_pair_head_recovers_the_epistemic_variance(task):
    t, (x, y1, y2), (xt, p_true, _, _) = task
    model = _train(x, y1, y2)
    p, p_same = model.predict_pair(_one_hot(xt))
    assert p.shape == p_same.shape == (len(xt), K) and p.dtype == np.float64
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(p, _exact(t)[0][xt], atol=0.05)
    v = so.cheat_variance(p, p_same)
    err = (p - p_true) ** 2
    # mean V_cheat within 10% of the true E[(p_hat - p)^2] (whose MC error is ~0.5%)
    se = err.mean(axis=1).std(ddof=1) / np.sqrt(len(err))
    assert se < 0.01 * err.mean()
    assert abs(v.mean() / err.mean() - 1) <= 0.10, (v.mean(), err.mean())
    # Chebyshev miss rate <= beta, over all classes and over the model's answers
    for beta in (0.05, 0.1, 0.2):
        for rate in _miss_rate(p, p_true, v, beta):
            assert rate <= beta
    # hallucination bound: P(p(y | x) = 0) <= 1 - E[C_cheat] for y ~ p_hat(. | x)
    c = so.cheat_corrected_confidence(p, p_same)
    impossible = (p * (p_true == 0)).sum(axis=1)
    bound = (p * (1 - c)).sum(axis=1)
    assert impossible.mean() + 4 * impossible.std(ddof=1) / np.sqrt(len(xt)) <= bound.mean()
    # among kept answers the hallucination rate is below beta
    beta = 0.3
    keep = so.hallucination_filter(p, p_same, beta=beta)
    assert 0 < keep.mean() < 1
    kept_rate = (p * keep * (p_true == 0)).sum() / (p * keep).sum()
    assert kept_rate <= beta


def test_never_cheating_model_is_valid_after_rescaling(task):
    _, (x, y1, y2), (xt, p_true, yt1, yt2) = task
    model = _train(x, y1, y2, cheat=False, seed=1)
    p, p_same = model.predict_pair(_one_hot(xt))
    v = so.cheat_variance(p, p_same)
    err = (p - p_true) ** 2
    assert v.mean() < 0.05 * err.mean()  # blind to its own error
    beta = 0.1
    assert _miss_rate(p, p_true, v, beta)[0] > 0.5
    # fit the rescaling on one half of the held-out pairs, check on the other
    half = len(xt) // 2
    resc = so.VarianceRescaling.fit(p[:half], v[:half], yt1[:half], yt2[:half])
    v_robust = resc.transform(v[half:])
    for rate in _miss_rate(p[half:], p_true[half:], v_robust, beta):
        assert rate <= beta
    e = err[half:].mean(axis=1)
    assert abs(v_robust.mean() - e.mean()) <= 0.1 * e.mean()


# ------------------------------------------------------------------- scikit-learn estimator
class _TablePairModel:
    """The exact pair model of the synthetic task: ``X[:, 0]`` is the group."""

    def __init__(self, t):
        self.p_hat, self.p_same = _exact(t)[:2]

    def predict_pair(self, X):
        g = np.asarray(X)[:, 0].astype(int)
        return self.p_hat[g], self.p_same[g]


def test_estimator_matches_the_functions_and_follows_the_contract():
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    t = _table()
    model = _TablePairModel(t)
    rng = np.random.default_rng(5)
    x, z, (y1, y2) = _sample(rng, t, 4000)
    X, Y = x[:, None].astype(float), np.stack([y1, y2], axis=1)
    est = so.SecondOrderCalibrator(model, beta=0.2)
    with pytest.raises(NotFittedError):
        est.predict_interval(X)
    assert est.fit(X, Y) is est
    c = clone(est)  # the prefit pair model is deep-copied, the fitted state dropped
    assert c.get_params()["beta"] == 0.2 and not hasattr(c, "rescaling_")
    np.testing.assert_array_equal(c.pair_model.p_hat, model.p_hat)
    p, p_same = model.predict_pair(X)
    resc = so.VarianceRescaling.fit(p, so.cheat_variance(p, p_same), y1, y2)
    assert (est.rescaling_.intercept, est.rescaling_.slope) == (resc.intercept, resc.slope)
    np.testing.assert_array_equal(est.classes_, np.arange(K))
    v_robust = resc.transform(so.cheat_variance(p, p_same))
    np.testing.assert_allclose(est.predict_variance(X), v_robust)
    lo, hi = so.chebyshev_interval(p, est.predict_variance(X), beta=0.2)
    np.testing.assert_allclose(est.predict_interval(X), np.stack([lo, hi], -1))
    np.testing.assert_array_equal(est.predict_keep(X), so.hallucination_filter(p, p_same, 0.2))
    np.testing.assert_allclose(est.predict_confidence(X), so.cheat_corrected_confidence(p, p_same))
    np.testing.assert_array_equal(est.predict(X), p.argmax(1))
    # precomputed outputs give the same answers as X
    same = so.SecondOrderCalibrator(beta=0.2).fit(y=Y, p=p, p_same=p_same)
    np.testing.assert_allclose(same.predict_interval(p=p, p_same=p_same), est.predict_interval(X))
    # the exact pair model is well specified: the rescaling is close to the identity
    assert abs(resc.slope - 1) < 0.2 and resc.intercept < 0.1 * so.cheat_variance(p, p_same).mean()
    # rescale=False reports V_cheat itself
    raw = so.SecondOrderCalibrator(model, rescale=False).fit(X, Y)
    np.testing.assert_allclose(raw.predict_variance(X), so.cheat_variance(p, p_same))
    # a Pipeline final step; set_params is honoured
    pipe = make_pipeline(FunctionTransformer(), so.SecondOrderCalibrator(model)).fit(X, Y)
    np.testing.assert_allclose(pipe.predict_proba(X), p)
    assert pipe.set_params(secondordercalibrator__beta=0.3)[-1].beta == 0.3
    # bad parameters and inputs are reported at fit time, naming the argument
    with pytest.raises(ValueError, match="beta"):
        so.SecondOrderCalibrator(model, beta=0).fit(X, Y)
    with pytest.raises(TypeError, match="rescale"):
        so.SecondOrderCalibrator(model, rescale="yes").fit(X, Y)
    with pytest.raises(ValueError, match=r"y must have shape \(n, 2\)"):
        so.SecondOrderCalibrator(model).fit(X, y1)
    with pytest.raises(ValueError, match="length"):
        so.SecondOrderCalibrator(model).fit(X[:-1], Y)
    with pytest.raises(ValueError, match="pair_model"):
        so.SecondOrderCalibrator().fit(X, Y)
    with pytest.raises(TypeError, match="predict_pair"):
        so.SecondOrderCalibrator(object()).fit(X, Y)
    with pytest.raises(ValueError, match="p_same"):
        so.SecondOrderCalibrator().fit(y=Y, p=p)
    with pytest.raises(ValueError, match="classes"):
        est.predict_proba(p=p[:, :2] / p[:, :2].sum(1, keepdims=True), p_same=p_same[:, :2])


def test_bad_input_names_the_argument():
    p = np.array([[0.5, 0.5], [0.2, 0.8]])
    with pytest.raises(ValueError, match="p_same"):
        so.cheat_variance(p, p[:1])
    with pytest.raises(ValueError, match="p_same"):
        so.cheat_corrected_confidence(p, np.array([[np.nan, 0.5], [0.2, 0.8]]))
    with pytest.raises(ValueError, match="p "):
        so.cheat_variance(p + 0.6, p)
    with pytest.raises(ValueError, match="beta"):
        so.chebyshev_interval(p, p * 0.01, beta=1.5)
    with pytest.raises(ValueError, match="variance"):
        so.chebyshev_interval(p, -p, beta=0.1)
    with pytest.raises(ValueError, match="variance"):
        so.chebyshev_interval(p, p[:1], beta=0.1)
    with pytest.raises(ValueError, match="length"):
        so.paired_squared_error(p, [0, 1], [0])
    with pytest.raises(ValueError, match="y2"):
        so.paired_squared_error(p, [0, 1], [0, 2])
    with pytest.raises(ValueError, match="y1"):
        so.paired_squared_error(p, [0, np.nan], [0, 1])
    with pytest.raises(ValueError, match="responses"):
        so.squared_error_estimate(p, [[0], [1]])
    with pytest.raises(ValueError, match="responses"):
        so.squared_error_estimate(p, [[0, 3], [1, 1]])
    with pytest.raises(ValueError, match="v_cheat"):
        so.VarianceRescaling.fit(p, p[:1], [0, 1], [1, 0])
    with pytest.raises(ValueError, match="at least 2"):
        so.VarianceRescaling.fit(p[:1], p[:1], [0], [1])


def test_pair_classifier_bad_input_names_the_argument():
    torch = pytest.importorskip("torch")
    import jax

    from calibration.second_order import PairClassifier, fit_pair_classifier

    with pytest.raises(TypeError, match="encoder"):
        PairClassifier(lambda x: x, K, G)
    with pytest.raises(ValueError, match="num_classes"):
        PairClassifier(torch.nn.Identity(), 1, G)
    model = PairClassifier(torch.nn.Identity(), K, G)
    x, key = torch.zeros(3, G), jax.random.key(0)
    with pytest.raises(ValueError, match="y1"):
        fit_pair_classifier(model, x, [0.5, 1.0, 2.0], [0, 1, 2], key=key)
    with pytest.raises(ValueError, match="y2"):
        fit_pair_classifier(model, x, [0, 1, 2], [0, 1, K], key=key)
    with pytest.raises(ValueError, match="length"):
        fit_pair_classifier(model, x, [0, 1], [0, 1], key=key)
    with pytest.raises(ValueError, match="epochs"):
        fit_pair_classifier(model, x, [0, 1, 2], [0, 1, 2], key=key, epochs=0)
    with pytest.raises(TypeError, match="model"):
        fit_pair_classifier(torch.nn.Linear(2, 2), x, [0, 1, 2], [0, 1, 2], key=key)
    # same key, same initial parameters: the same run
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        m = PairClassifier(torch.nn.Identity(), K, G)
        y = np.arange(12) % K
        fit_pair_classifier(m, torch.eye(G)[np.arange(12) % G], y, y[::-1], key=key, epochs=2)
        runs.append(m.predict_pair(torch.eye(G)))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
