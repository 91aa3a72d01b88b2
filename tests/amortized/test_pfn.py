"""PFN: a tiny network trained in-process beats the prior predictive; prediction, persistence."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from amortized import GPPrior, nll_vs_gp
from amortized.model import PFNConfig, PFNTransformer
from amortized.pfn import PFN
from amortized.train import TrainConfig, train_pfn
from probinfer.distributions.bar import BarDistribution

PRIOR = GPPrior(lengthscale=0.3, outputscale=1.0, noise=0.05)
TINY = PFNConfig(x_dim=1, d_model=32, n_heads=2, n_layers=2, d_ff=64, n_buckets=50)
TRAIN = TrainConfig(
    n_steps=300, batch_size=16, n_points=30, max_train=20, lr=3e-3, warmup_steps=20, seed=0
)


@pytest.fixture(scope="module")
def tiny_pfn():
    torch.set_num_threads(1)
    return train_pfn(PRIOR, TINY, TRAIN, progress=False)


def test_tiny_pfn_beats_prior_predictive(tiny_pfn):
    res = nll_vs_gp(tiny_pfn, PRIOR, n_datasets=100, n_train_values=(10, 20), n_test=20)
    for n, r in res["by_n_train"].items():
        # the exact GP lower-bounds the achievable NLL; the PFN must beat the prior predictive
        # by more than 5 standard errors of the paired difference (per-dataset)
        assert r["gp_nll"] < r["pfn_nll"] + 5 * r["gap_se"], n
        assert r["pfn_nll"] < r["prior_nll"] - 0.1, (n, r)


def test_predict_shapes_batched_single_and_empty(tiny_pfn):
    rng = np.random.default_rng(0)
    x, y = PRIOR.sample(jax.random.key(1), 4, 15)
    d = tiny_pfn.predict(x[:, :10], y[:, :10], x[:, 10:])
    assert isinstance(d, BarDistribution) and d.batch_shape == (4, 5)
    d1 = tiny_pfn.predict(x[0, :10, 0], y[0, :10], x[0, 10:, 0])  # 1-D inputs
    assert d1.batch_shape == (5,)
    np.testing.assert_allclose(d1.logits, d.logits[0], rtol=1e-5, atol=1e-5)
    d0 = tiny_pfn.predict(np.zeros((0, 1)), np.zeros(0), rng.uniform(size=(3, 1)))
    assert d0.batch_shape == (3,)
    assert np.all(np.isfinite(np.asarray(d0.mean)))


def test_queries_attend_only_to_context_and_context_is_a_set(tiny_pfn):
    x, y = PRIOR.sample(jax.random.key(2), 1, 20)
    xt, yt, xs = x[0, :12], y[0, :12], x[0, 12:]
    base = np.asarray(tiny_pfn.predict(xt, yt, xs).logits)
    # a query's prediction does not depend on the other queries
    alone = np.asarray(tiny_pfn.predict(xt, yt, xs[:1]).logits)
    np.testing.assert_allclose(alone[0], base[0], atol=1e-5)
    # permuting the context leaves the prediction unchanged (no positional encoding)
    perm = np.random.default_rng(0).permutation(12)
    permuted = np.asarray(tiny_pfn.predict(xt[perm], yt[perm], xs).logits)
    np.testing.assert_allclose(permuted, base, atol=1e-4)


def test_save_load_roundtrip(tiny_pfn, tmp_path):
    tiny_pfn.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["model"] == TINY.to_dict() and cfg["prior"]["class"] == "GPPrior"
    loaded = PFN.load(tmp_path / "m")
    x, y = PRIOR.sample(jax.random.key(3), 2, 9)
    a = tiny_pfn.predict(x[:, :5], y[:, :5], x[:, 5:]).logits
    b = loaded.predict(x[:, :5], y[:, :5], x[:, 5:]).logits
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="does not match"):
        PFN.load(tmp_path / "m", expected_config=PFNConfig(d_model=64, n_heads=2, n_buckets=50))
    # weights that do not fit the JSON config
    cfg["model"]["d_model"] = 64
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not match config"):
        PFN.load(tmp_path / "m")
    with pytest.raises(ValueError, match="config.json"):
        PFN.load(tmp_path / "missing")


def test_checkpoint_resume_equals_uninterrupted(tmp_path):
    torch.set_num_threads(1)
    cfg = PFNConfig(x_dim=1, d_model=16, n_heads=2, n_layers=1, d_ff=32, n_buckets=20)
    tc = TrainConfig(n_steps=30, batch_size=4, n_points=12, max_train=8, warmup_steps=5, seed=3)
    full = train_pfn(PRIOR, cfg, tc, progress=False)
    ck = tmp_path / "ck"
    part = train_pfn(PRIOR, cfg, tc, checkpoint_dir=ck, progress=False, max_seconds=0.0)
    assert part.meta["training"]["steps_done"] == 1
    assert (ck / "manifest.json").is_file() and (ck / "weights-000000001.safetensors").is_file()
    resumed = train_pfn(PRIOR, cfg, tc, checkpoint_dir=ck, progress=False)
    assert resumed.meta["training"]["steps_done"] == 30
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    np.testing.assert_array_equal(full.borders, resumed.borders)
    # a checkpoint from another configuration is refused
    with pytest.raises(ValueError, match="does not match"):
        train_pfn(
            PRIOR,
            PFNConfig(d_model=16, n_heads=2, n_layers=2, d_ff=32, n_buckets=20),
            tc,
            checkpoint_dir=ck,
            progress=False,
        )
    with pytest.raises(ValueError, match="train_config"):
        train_pfn(
            PRIOR,
            cfg,
            TrainConfig(n_steps=30, batch_size=4, n_points=12, max_train=8, warmup_steps=5, seed=4),
            checkpoint_dir=ck,
            progress=False,
        )
    # n_steps may be extended on resume
    longer = TrainConfig(n_steps=32, batch_size=4, n_points=12, max_train=8, warmup_steps=5, seed=3)
    assert (
        train_pfn(PRIOR, cfg, longer, checkpoint_dir=ck, progress=False).meta["training"][
            "steps_done"
        ]
        == 32
    )


def test_bad_prediction_input(tiny_pfn):
    x = np.random.default_rng(0).uniform(size=(5, 1))
    y = np.zeros(5)
    with pytest.raises(ValueError, match="x_train"):
        tiny_pfn.predict(x[:4], y, x)
    with pytest.raises(ValueError, match="y_train"):
        tiny_pfn.predict(x, np.where(np.arange(5) == 2, np.nan, 0.0), x)
    with pytest.raises(ValueError, match="x_test"):
        tiny_pfn.predict(x, y, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="x_test"):
        tiny_pfn.predict(x, y, np.zeros((0, 1)))
    with pytest.raises(TypeError, match="x_train"):
        tiny_pfn.predict("abc", y, x)


def test_bad_configs():
    with pytest.raises(ValueError, match="n_heads"):
        PFNConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="max_train"):
        TrainConfig(n_points=10, max_train=10)
    with pytest.raises(ValueError, match="x_dim"):
        train_pfn(GPPrior(x_dim=2), TINY, TRAIN, progress=False)
    with pytest.raises(TypeError, match="progres"):  # a misspelt run option
        train_pfn(PRIOR, TINY, TRAIN, progres=False)
    with pytest.raises(ValueError, match="borders"):
        PFN(PFNTransformer(TINY), np.linspace(0, 1, 10))


def test_unknown_pretrained_name_lists_available():
    import amortized

    with pytest.raises(ValueError, match="gp-1d"):
        amortized.load_pretrained("gp-2d")


def test_import_does_not_import_torch():
    code = "import sys, amortized, probinfer; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_training_leaves_the_global_torch_rng_alone_and_is_reproducible():
    torch.set_num_threads(1)
    cfg = PFNConfig(x_dim=1, d_model=16, n_heads=2, n_layers=1, d_ff=32, n_buckets=20)
    tc = TrainConfig(n_steps=3, batch_size=4, n_points=12, max_train=8, warmup_steps=1, seed=5,
                     n_border_datasets=50)  # fmt: skip
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = train_pfn(PRIOR, cfg, tc, progress=False)
    assert torch.equal(torch.rand(3), expected)  # the global generator was not touched
    b = train_pfn(PRIOR, cfg, tc, progress=False)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k


@pytest.mark.parametrize(
    "x_dim, x_shape, y_shape, message",
    [
        # a column y_train next to one dataset's x_train: the error named x_train
        (1, (5,), (5, 1), r"^y_train must have shape \(n,\) .* got \(5, 1\)"),
        (2, (5, 2), (5, 1), r"^y_train must have shape \(n,\) .* got \(5, 1\)"),
        # points that do not match: both arguments and their shapes, y_train first
        (1, (5, 1), (4,), r"^y_train has 4 points but x_train has 5 \(shapes \(4,\), \(5, 1\)\)"),
        (2, (3, 5, 2), (3, 4), r"^y_train has 4 points but x_train has 5"),
        (2, (2, 5, 2), (3, 5), r"^y_train has 3 datasets but x_train has 2"),
        (2, (3, 5, 2), (3, 3, 5), r"^y_train must have shape \(n,\) or \(B, n\), got \(3, 3, 5\)"),
        # a bad x_train is still x_train's fault
        (2, (5, 3), (5,), r"^x_train must have shape \(n, 2\) or \(B, n, 2\) \(x_dim = 2\)"),
        (1, (2, 5, 1, 1), (2, 5), r"^x_train must have shape"),
    ],
)
def test_shape_errors_name_the_argument_at_fault(x_dim, x_shape, y_shape, message):
    config = PFNConfig(x_dim=x_dim, d_model=8, n_heads=2, n_layers=1, d_ff=8, n_buckets=4)
    pfn = PFN(PFNTransformer(config), np.linspace(-1.0, 1.0, 5))
    x_test = np.zeros((3, x_dim) if len(x_shape) < 3 else (x_shape[0], 3, x_dim))
    with pytest.raises(ValueError, match=message):
        pfn.predict(np.zeros(x_shape), np.zeros(y_shape), x_test)
