"""Task (b) of issue 12: the shipped ``dt-invgamma`` against the exact Inverse-Gamma posterior.

``sigma^2 ~ IG(a, b)``, ``y_i ~ N(0, sigma^2)``; the DT is given the 5-component
Gaussian-mixture fit of the prior in ``z = log sigma^2`` and returns a mixture in ``z``. The
exact posterior ``IG(a + n/2, b + sum(y^2)/2)`` is scipy's ``invgamma`` here (independent of
the code under test), and ``KL(exact || DT)`` is estimated in ``sigma^2`` from exact draws,
with the DT's density carried to ``sigma^2`` through the Jacobian of the log transform
(``DistributionTransformer.constrained_log_prob``). The issue asks for KL <= 0.001 (the paper
reports 4e-4). The shipped model (parameters drawn from the true IG prior, recentred at the
prior mean in log sigma^2 by ``DTConfig(recentre="log-scale")``, trained with 31
exact-posterior draws per problem; 662 s) measures 1.27e-4 +- 0.52e-4 here (40 problems); on
2000 other problems (benchmarks/results/dt_invgamma_eval.json) 4.1e-4 +- 2.3e-4, median
0.9e-4, 99% quantile 2.0e-3: the target is met. KL_BOUND is the measured value plus 4
standard errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import gammaincinv

import amortized
from amortized.exact import inverse_gamma_log_gmm
from probinfer.distributions import GaussianMixture

KL_BOUND = 3.4e-4  # measured 1.27e-4 + 4 x 0.52e-4 (module docstring)


@pytest.fixture(scope="module")
def dt():
    torch.set_num_threads(1)
    return amortized.load_pretrained("dt-invgamma")


def test_shipped_files_and_task(dt):
    assert dt.config.transforms == ("log",) and dt.config.param_dim == 1
    assert dt.config.recentre == "log-scale"
    assert dt.n_components == 5 and dt.n_range == (1, 20)
    assert dt.meta["training"]["torch_threads"] == 1


def test_kl_to_the_exact_inverse_gamma_posterior(dt):
    rng = np.random.default_rng(20261201)
    n_problems, n_draws = 40, 4000
    a = rng.uniform(*dt.a_range, size=n_problems)
    b = np.exp(rng.uniform(*np.log(dt.median_range), size=n_problems)) * gammaincinv(a, 0.5)
    fits = inverse_gamma_log_gmm(a, b, 5)  # the priors the DT is given (one vectorised fit)
    kls = []
    for i in range(n_problems):
        y = np.sqrt(stats.invgamma(a[i], scale=b[i]).rvs(random_state=rng)) * rng.standard_normal(
            rng.integers(dt.n_range[0], dt.n_range[1] + 1)
        )
        exact = stats.invgamma(a[i] + y.size / 2, scale=b[i] + 0.5 * np.sum(y**2))
        post = dt.posterior(GaussianMixture.univariate(*(f[i] for f in fits)), None, y)
        s2 = exact.rvs(size=n_draws, random_state=rng)
        log_q = dt.constrained_log_prob(post, s2[:, None].astype(np.float32))
        kls.append(np.mean(exact.logpdf(s2) - np.asarray(log_q, dtype=np.float64)))
    kl, se = np.mean(kls), np.std(kls, ddof=1) / np.sqrt(n_problems)
    print(f"KL(exact || DT) = {kl:.2e} +- {se:.1e} over {n_problems} problems")
    assert kl <= KL_BOUND
