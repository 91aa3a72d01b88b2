"""Distribution Transformer: structure (prior in = prior out when untrained, invariances, masks),
API (shapes, bad input, range warnings, transforms), persistence and the shared training loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

from amortized.dt import DistributionTransformer, gmm_prior
from amortized.dt_model import DTConfig, DTNetwork
from amortized.dt_tasks import InverseGammaVarianceTask, LinearGaussianTask
from amortized.dt_train import train_dt
from amortized.loop import OptimConfig, param_groups, train_loop
from probinfer.distributions import GaussianMixture

W = np.array([0.5, 0.3, 0.2])
MU = np.array([[-1.5, 0.5], [1.0, 1.0], [0.5, -2.0]])
COV = np.array([[[0.6, 0.2], [0.2, 0.5]], [[0.3, -0.1], [-0.1, 0.8]], [[1.0, 0.0], [0.0, 0.4]]])
TASK = LinearGaussianTask()


def _dt(m: int = 1, seed: int = 0, perturb: bool = False, **cfg) -> DistributionTransformer:
    torch.manual_seed(seed)
    net = DTNetwork(DTConfig(d_model=32, n_layers=2, d_ff=64, components_per_prior=m, **cfg))
    if perturb:  # a network whose output depends on everything (the zero layers made random)
        with torch.no_grad():
            for name, p in net.named_parameters():
                if p.abs().sum() == 0 and "bias" not in name:
                    p.normal_(0, 0.1)
    return DistributionTransformer(net.eval(), TASK)


def _data(seed=0, n=6, b=None):
    rng = np.random.default_rng(seed)
    shape = (n,) if b is None else (b, n)
    return rng.uniform(-2, 2, size=shape + (2,)), rng.standard_normal(shape)


@pytest.mark.parametrize("m,decoder", [(1, "relative"), (2, "relative"), (2, "natural")])
def test_untrained_model_returns_the_prior_exactly(m, decoder):
    dt = _dt(m, decoder=decoder)
    x, y = _data()
    prior = gmm_prior(W, MU, COV)
    post = dt.posterior(prior, x, y)
    assert post.num_components == 3 * m and post.batch_shape == ()
    np.testing.assert_array_equal(np.asarray(post.means), np.repeat(np.asarray(prior.means), m, 0))
    np.testing.assert_array_equal(
        np.asarray(post.scale_trils), np.repeat(np.asarray(prior.scale_trils), m, 0)
    )
    np.testing.assert_allclose(np.asarray(post.weights), np.repeat(W, m) / m, rtol=1e-6)
    pts = np.random.default_rng(1).normal(size=(50, 2))
    np.testing.assert_allclose(post.log_prob(pts), prior.log_prob(pts), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("decoder", ["relative", "natural"])
def test_order_of_data_is_irrelevant_and_components_are_equivariant(decoder):
    dt = _dt(perturb=True, decoder=decoder)
    x, y = _data(n=7)
    prior = gmm_prior(W, MU, COV)
    p0 = dt.posterior(prior, x, y)
    perm = np.random.default_rng(2).permutation(7)
    p1 = dt.posterior(prior, x[perm], y[perm])
    np.testing.assert_allclose(np.asarray(p1.means), np.asarray(p0.means), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(p1.logits), np.asarray(p0.logits), rtol=1e-4, atol=1e-5)
    cperm = np.array([2, 0, 1])
    p2 = dt.posterior(gmm_prior(W[cperm], MU[cperm], COV[cperm]), x, y)
    np.testing.assert_allclose(
        np.asarray(p2.means), np.asarray(p0.means)[cperm], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(p2.logits), np.asarray(p0.logits)[cperm], rtol=1e-4, atol=1e-5
    )
    assert not np.allclose(np.asarray(p0.means), MU, atol=1e-3)  # the data did move it


def test_batched_ragged_masks_equal_single_calls():
    dt = _dt(perturb=True)
    x, y = _data(b=3, n=5)
    mask = np.array([[True] * 5, [True, True, False, False, False], [False] * 5])
    prior = GaussianMixture(np.stack([MU] * 3), np.stack([COV] * 3), weights=np.stack([W] * 3))
    post = dt.posterior(prior, x, y, mask=mask)
    assert post.batch_shape == (3,)
    single = gmm_prior(W, MU, COV)
    for i, n in enumerate(mask.sum(1)):
        p = dt.posterior(single, x[i, :n], y[i, :n])
        np.testing.assert_allclose(np.asarray(post.means[i]), np.asarray(p.means), atol=1e-5)
        np.testing.assert_allclose(np.asarray(post.logits[i]), np.asarray(p.logits), atol=1e-5)
    # jax input, tuple prior
    import jax.numpy as jnp

    p = dt.posterior((W, MU, COV), jnp.asarray(x[0]), jnp.asarray(y[0]))
    np.testing.assert_allclose(np.asarray(p.means), np.asarray(post.means[0]), atol=1e-5)


def test_bad_input_names_the_argument():
    dt = _dt()
    x, y = _data()
    bad_cov = COV.copy()
    bad_cov[1] = [[1.0, 2.0], [2.0, 1.0]]  # symmetric, not positive definite
    with pytest.raises(ValueError, match="covariances"):
        dt.posterior((W, MU, bad_cov), x, y)
    with pytest.raises(ValueError, match="weights must sum to one"):
        dt.posterior((np.array([0.5, 0.3, 0.3]), MU, COV), x, y)
    with pytest.raises(ValueError, match="dimension"):
        dt.posterior(GaussianMixture(np.zeros((1, 3)), np.eye(3)[None], weights=[1.0]), x, y)
    with pytest.raises(ValueError, match="x must have"):
        dt.posterior((W, MU, COV), x[:, :1], y)
    with pytest.raises(ValueError, match="x must have"):
        dt.posterior((W, MU, COV), x[:4], y)
    y_nan = y.copy()
    y_nan[2] = np.nan
    with pytest.raises(ValueError, match="y must be finite"):
        dt.posterior((W, MU, COV), x, y_nan)
    x_nan = x.copy()
    x_nan[0, 1] = np.nan
    with pytest.raises(ValueError, match="x must be finite"):
        dt.posterior((W, MU, COV), x_nan, y)
    with pytest.raises(ValueError, match="mask"):
        dt.posterior((W, MU, COV), x, y, mask=np.ones(3, bool))
    with pytest.raises(TypeError, match="prior"):
        dt.posterior("prior", x, y)


def test_out_of_range_inputs_warn_naming_the_range():
    dt = _dt()
    x, y = _data()
    prior = gmm_prior(W, MU, COV)
    with pytest.warns(UserWarning, match=r"x_max=2\.0"):
        dt.posterior(prior, 2 * x, y)
    xl, yl = _data(n=TASK.n_range[1] + 1)
    with pytest.warns(UserWarning, match=r"n_range=\(0, 16\)"):
        dt.posterior(prior, xl, yl)
    with pytest.warns(UserWarning, match=r"scale_range=\(0\.3, 2\.0\)"):
        dt.posterior(gmm_prior(W, MU, COV * 25), x, y)
    with pytest.warns(UserWarning, match=r"mean_max=3\.0"):
        dt.posterior(gmm_prior(W, MU * 3, COV), x, y)
    with pytest.warns(UserWarning, match=r"components=\(1, 4\)"):
        dt.posterior(gmm_prior(np.full(5, 0.2), np.zeros((5, 2)), np.stack([np.eye(2)] * 5)), x, y)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dt.posterior(prior, x, y)  # in range: silent


def test_task_is_exposed_as_attributes_and_survives_save_load(tmp_path):
    dt = _dt(perturb=True)
    assert dt.noise_std == 0.5 and dt.n_range == (0, 16) and dt.x_max == 2.0
    assert dt.scale_range == (0.3, 2.0) and dt.prior_family == "gaussian-mixture"
    dt.meta["note"] = "roundtrip"
    dt.save(tmp_path, name="m")
    cfg = json.loads((tmp_path / "m.json").read_text())
    assert cfg["format"] == "probinfer-dt" and cfg["task"]["noise_std"] == 0.5
    back = DistributionTransformer.load(tmp_path, name="m")
    assert back.config == dt.config and back.task == dt.task and back.meta["note"] == "roundtrip"
    x, y = _data()
    p0, p1 = dt.posterior((W, MU, COV), x, y), back.posterior((W, MU, COV), x, y)
    np.testing.assert_array_equal(np.asarray(p0.means), np.asarray(p1.means))
    with pytest.raises(ValueError, match="contain"):
        DistributionTransformer.load(tmp_path, name="missing")
    same = DistributionTransformer.load(tmp_path, expected_config=dt.config, name="m")
    assert same.task == dt.task
    with pytest.raises(ValueError, match="expected config"):
        DistributionTransformer.load(tmp_path, expected_config=DTConfig(d_model=8), name="m")
    with pytest.raises(AttributeError):
        _ = dt.no_such_attribute


def test_log_transform_density_has_the_jacobian():
    # one component N(mu, s^2) on z = log theta is a log-normal on theta
    net = DTNetwork(
        DTConfig(
            param_dim=1, source_dims=(1,), d_model=16, n_layers=1, d_ff=16, transforms=("log",)
        )
    )
    dt = DistributionTransformer(net, InverseGammaVarianceTask())
    with pytest.warns(UserWarning, match="n_range"):  # the task was trained with n >= 1
        post = dt.posterior(GaussianMixture.univariate([1.0], [0.3], [0.7]), None, np.zeros(0))
    theta = np.array([[0.2], [1.0], [3.5]])
    np.testing.assert_allclose(
        dt.constrained_log_prob(post, theta),
        stats.lognorm(s=0.7, scale=np.exp(0.3)).logpdf(theta[:, 0]),
        rtol=1e-5,
    )
    np.testing.assert_allclose(dt.constrain([[np.log(2.0)]]), [[2.0]])
    with pytest.raises(ValueError, match="positive"):
        dt.constrained_log_prob(post, -theta)


def test_several_sources_and_an_empty_data_set():
    torch.manual_seed(0)
    net = DTNetwork(DTConfig(source_dims=(3, 1), d_model=16, n_layers=1, d_ff=16)).eval()
    lg = torch.log(torch.tensor(W, dtype=torch.float32))[None]
    mu = torch.tensor(MU, dtype=torch.float32)[None]
    tril = torch.linalg.cholesky(torch.tensor(COV, dtype=torch.float32))[None]
    cm = torch.ones(1, 3, dtype=torch.bool)
    src = [
        (torch.randn(1, 4, 3), torch.ones(1, 4, dtype=torch.bool)),
        (torch.randn(1, 0, 1), torch.ones(1, 0, dtype=torch.bool)),
    ]
    out = net(lg, mu, tril, cm, src)
    assert out[0].shape == (1, 3) and out[1].shape == (1, 3, 2) and out[2].shape == (1, 3, 2, 2)
    with pytest.raises(ValueError, match="2 data sources"):
        net(lg, mu, tril, cm, src[:1])


def test_shared_loop_resume_equals_uninterrupted(tmp_path):
    cfg = DTConfig(d_model=16, n_layers=1, d_ff=16)
    opt = OptimConfig(n_steps=6, lr=3e-3, warmup_steps=2)
    full = train_dt(TASK, cfg, opt, batch_size=8, seed=5, progress=False)
    ck = tmp_path / "ck"
    part = train_dt(
        TASK, cfg, opt, batch_size=8, seed=5, checkpoint_dir=ck, progress=False, max_seconds=0.0
    )
    assert part.meta["training"]["steps_done"] == 1
    resumed = train_dt(TASK, cfg, opt, batch_size=8, seed=5, checkpoint_dir=ck, progress=False)
    assert resumed.meta["training"]["steps_done"] == 6
    for a, b in zip(full.network.parameters(), resumed.network.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="does not match this run"):
        train_dt(TASK, cfg, opt, batch_size=8, seed=6, checkpoint_dir=ck, progress=False)
    with pytest.raises(ValueError, match="param_dim"):
        train_dt(InverseGammaVarianceTask(), cfg, opt, progress=False)


def test_no_decay_patterns_exempt_parameters_from_weight_decay():
    # zero gradient on the weight: AdamW only decays it, w <- w (1 - lr wd) per step
    def run(no_decay):
        torch.manual_seed(0)
        lin = torch.nn.Linear(1, 1)
        w0 = lin.weight.detach().clone()
        opt = OptimConfig(n_steps=3, lr=0.1, warmup_steps=0, weight_decay=0.5, no_decay=no_decay)
        train_loop(
            lin,
            lambda m, _: 0 * m.weight.sum() + (m.bias - 1).pow(2).sum(),
            lambda step: None,
            opt,
            record={},
            progress=False,
        )
        return w0, lin.weight.detach()

    w0, w = run(())
    lrs = [0.1 * 0.5 * (1 + np.cos(np.pi * t / 3)) for t in range(3)]
    torch.testing.assert_close(w, w0 * float(np.prod([1 - lr * 0.5 for lr in lrs])))
    w0, w = run(("weight",))
    torch.testing.assert_close(w, w0, rtol=0, atol=0)
    net = DTNetwork(DTConfig(d_model=16, n_layers=1, d_ff=16, decoder="natural"))
    groups = param_groups(net, OptimConfig(no_decay=("site_heads.*", "*.bias")))
    exempt = {id(p) for p in groups[1]["params"]}
    assert groups[1]["weight_decay"] == 0.0
    for name, p in net.named_parameters():
        assert (id(p) in exempt) == (name.startswith("site_heads.") or name.endswith(".bias"))
    with pytest.raises(ValueError, match="no_decay patterns"):
        param_groups(net, OptimConfig(no_decay=("nothing.*",)))


def test_batch_ramp_is_recorded_and_resumes_exactly(tmp_path):
    cfg = DTConfig(d_model=16, n_layers=1, d_ff=16, decoder="natural")
    opt = OptimConfig(n_steps=6, lr=3e-3, warmup_steps=2, no_decay=("site_heads.*",))
    kw = dict(batch_size=8, batch_ramp=((2, 16), (4, 32)), seed=5, progress=False)
    full = train_dt(TASK, cfg, opt, **kw)
    assert full.meta["training"]["batch_ramp"] == [[2, 16], [4, 32]]
    ck = tmp_path / "ck"
    part = train_dt(TASK, cfg, opt, checkpoint_dir=ck, max_seconds=0.0, **kw)
    assert part.meta["training"]["steps_done"] == 1
    resumed = train_dt(TASK, cfg, opt, checkpoint_dir=ck, **kw)
    for a, b in zip(full.network.parameters(), resumed.network.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="batch_ramp"):
        train_dt(TASK, cfg, opt, batch_size=8, batch_ramp=((4, 16), (2, 32)), progress=False)


def test_task_draws_are_reproducible_and_follow_the_prior():
    import jax

    a = TASK.sample(jax.random.key(3), 64)
    b = TASK.sample(jax.random.key(3), 64)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    k = a.comp_mask.sum(1)
    assert k.min() >= 1 and k.max() <= 4
    np.testing.assert_allclose(np.exp(a.logits).sum(1, where=a.comp_mask), 1.0, rtol=1e-5)
    n = a.data_mask.sum(1)
    assert n.min() >= 0 and n.max() <= 16
    assert np.all(a.tokens[~a.data_mask] == 0)


def test_zero_weight_components_are_padding():
    dt = _dt(perturb=True)
    x, y = _data(n=5)
    full = dt.posterior(gmm_prior(W[:2] / W[:2].sum(), MU[:2], COV[:2]), x, y)
    w_pad = np.array([W[0], W[1], 0.0]) / W[:2].sum()
    padded = dt.posterior(gmm_prior(w_pad, MU, COV), x, y)
    np.testing.assert_allclose(np.asarray(padded.weights)[:2], np.asarray(full.weights), atol=1e-5)
    assert float(padded.weights[2]) == 0.0
    np.testing.assert_allclose(np.asarray(padded.means)[:2], np.asarray(full.means), atol=1e-5)
    pts = np.random.default_rng(3).normal(size=(20, 2))
    np.testing.assert_allclose(padded.log_prob(pts), full.log_prob(pts), rtol=1e-5, atol=1e-5)


def test_log_scale_recentring_is_exactly_equivariant_and_starts_at_the_prior():
    torch.manual_seed(0)
    cfg = DTConfig(
        param_dim=1, source_dims=(1,), d_model=16, n_layers=1, d_ff=16, recentre="log-scale"
    )
    net = DTNetwork(cfg)
    task = InverseGammaVarianceTask()
    prior = GaussianMixture.univariate([0.3, 0.7], [-0.5, 0.4], [0.6, 0.3])
    y = np.random.default_rng(0).standard_normal(7)
    untrained = DistributionTransformer(net.eval(), task).posterior(prior, None, y)
    np.testing.assert_allclose(np.asarray(untrained.means), np.asarray(prior.means), atol=1e-6)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.abs().sum() == 0 and "bias" not in name:
                p.normal_(0, 0.1)
    dt = DistributionTransformer(net.eval(), task)
    base = dt.posterior(prior, None, y)
    c = 1.7  # prior shifted by c in z = log sigma^2, data scaled by exp(c / 2)
    moved = dt.posterior(
        GaussianMixture.univariate([0.3, 0.7], [-0.5 + c, 0.4 + c], [0.6, 0.3]),
        None,
        y * np.exp(c / 2),
    )
    np.testing.assert_allclose(np.asarray(moved.means), np.asarray(base.means) + c, atol=1e-5)
    np.testing.assert_allclose(np.asarray(moved.weights), np.asarray(base.weights), atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(moved.scale_trils), np.asarray(base.scale_trils), atol=1e-5
    )
    with pytest.raises(ValueError, match="recentre"):
        DTConfig(param_dim=2, recentre="log-scale")
    with pytest.raises(ValueError, match="recentre"):
        DTConfig(recentre="shift")


def test_prior_correlation_beyond_the_training_range_warns_naming_the_range():
    """Issue 22, item 15: a prior component with correlation 0.9 (trained up to
    max_corr = 0.7; KL 0.013 there) gave no warning. Zero-weight padding is ignored."""
    import warnings

    dt = _dt()
    x, y = _data()
    corr = [[[1.0, 0.9], [0.9, 1.0]]]
    with pytest.warns(UserWarning, match=r"correlations up to \|0\.9\| .*max_corr=0\.7"):
        dt.posterior(gmm_prior([1.0], [[0.0, 0.0]], corr), x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dt.posterior(gmm_prior([1.0], [[0.0, 0.0]], [[[1.0, -0.69], [-0.69, 1.0]]]), x, y)
        padded = GaussianMixture(
            np.zeros((2, 2)), np.array([np.eye(2), corr[0]]), weights=np.array([1.0, 0.0])
        )
        dt.posterior(padded, x, y)


def test_posterior_at_new_batch_sizes_compiles_nothing(xla_compiles):
    """Issue 22, item 10: every new batch size compiled the posterior mixture's
    construction (+2.8 GB of programs after 165 sizes)."""
    dt = _dt()
    with xla_compiles() as compiled:
        for b in (3, 5, 11):
            prior = gmm_prior(np.full((b, 3), 1 / 3), np.broadcast_to(MU, (b, 3, 2)), COV)
            x, y = _data(b=b)
            assert dt.posterior(prior, x, y).batch_shape == (b,)
    assert compiled == []
