"""The shipped Distribution Transformer ``dt-linear-2d`` against exact posteriors (fixed seeds).

Issue 12 asks, on priors unseen in training, for mean KL(exact || DT) <= 0.01 nats and weights
within 0.02, and for the sequential filter to be within 0.1 nats of the Kalman filter after 20
updates. The shipped model (natural-parameter decoder; phase 1, 17000 steps of the one-theta
NLL, 3219 s; phase 2, 2000 steps of the Rao-Blackwellised NLL with 31 exact-posterior draws,
lr 1e-3, 294 s; 3513 s on one CPU thread in all) measures with these seeds (500 problems,
2000 exact draws each) KL 0.0070 +- 0.0005 nats (median 0.0033) and a mean weight error
0.0084. On 2000 other problems with 10^4 draws each (benchmarks/results/dt_linear_2d_eval.json)
it is KL 0.0083 +- 0.0006, median 0.0034, 90% / 99% quantiles 0.017 / 0.074, weight error
0.0104: the 0.01 target is met (the phase-1 model alone: 0.0132 +- 0.0008 on the same
problems).
KL_BOUND is a regression guard 4 standard errors above the measured KL; WEIGHT_ERR_BOUND is
the issue's 0.02; the sequential check is the acceptance bound with 2 Monte-Carlo standard
errors (measured gap -0.000 +- 0.023 nats here, 0.032 +- 0.008 on 1000 sequences). The exact
posteriors come from :mod:`amortized.exact` (tested against quadrature and the Kalman filter in
test_dt_exact.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import amortized
from amortized.dt_evaluate import evaluate_linear, evaluate_sequential

# regression guards from the measured values (see the module docstring)
KL_BOUND = 0.0089  # measured 0.0070 + 4 x 0.00048
WEIGHT_ERR_BOUND = 0.02
SEQ_GAP_BOUND = 0.1  # issue 12's bound, allowing 2 Monte-Carlo standard errors


@pytest.fixture(scope="module")
def dt():
    torch.set_num_threads(1)
    return amortized.load_pretrained("dt-linear-2d")


def test_shipped_files_config_and_attributes(dt):
    here = Path(amortized.pretrained.__file__).parent
    assert (here / "dt_linear_2d.safetensors").stat().st_size < 3_000_000
    cfg = json.loads((here / "dt_linear_2d.json").read_text())
    assert cfg["format"] == "probinfer-dt" and cfg["task"]["class"] == "LinearGaussianTask"
    assert cfg["training"]["torch_threads"] == 1
    assert cfg["training"]["steps_done"] == cfg["training"]["n_steps"]
    assert dt.prior_family == "gaussian-mixture" and dt.noise_std == 0.5
    assert dt.n_range == (0, 16) and dt.x_max == 2.0 and dt.components == (1, 4)
    w, mu, cov = [1.0], [[0.0, 0.0]], [np.eye(2)]
    with pytest.warns(UserWarning, match=r"x_max=2\.0"):
        dt.posterior((w, mu, cov), np.full((3, 2), 3.0), np.zeros(3))
    with pytest.warns(UserWarning, match=r"n_range=\(0, 16\)"):
        dt.posterior((w, mu, cov), np.zeros((20, 2)), np.zeros(20))
    with pytest.raises(ValueError, match="weights must sum to one"):
        dt.posterior(([0.5, 0.6], [[0, 0], [1, 1]], [np.eye(2)] * 2), np.zeros((3, 2)), np.zeros(3))


def test_kl_and_weights_on_unseen_priors(dt):
    r = evaluate_linear(dt, n_problems=500, n_draws=2000, seed=0)
    print(r)
    assert r["kl"] <= KL_BOUND
    assert r["weight_abs_err"] <= WEIGHT_ERR_BOUND


def test_sequential_tracking_against_the_kalman_filter(dt):
    r = evaluate_sequential(dt, n_sequences=100, n_steps=20, seed=0)
    print(r)
    assert r["gap"] <= SEQ_GAP_BOUND + 2 * r["gap_se"]
