"""ArviZ export of tempered SMC: deterministic sites, log_likelihood for LOO, observed data,
independent runs as chains."""

from __future__ import annotations

import warnings

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from probinfer.inference_data import combine_chains, import_arviz
from probinfer.smc import tempered_smc
from probinfer.targets import from_numpyro

Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools(sigma, y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", 8):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    theta = numpyro.deterministic("theta", mu + tau * z)
    numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


@pytest.fixture(scope="module")
def runs():
    target = from_numpyro(eight_schools, SIGMA, Y)
    return [
        tempered_smc(jax.random.key(k), target, 256, num_mcmc_steps=3, progress=False)
        for k in range(2)
    ]


def test_groups_and_loo(runs):
    az = import_arviz()
    res = runs[0]
    idata = res.to_arviz()
    post = idata.posterior
    assert set(post.data_vars) >= {"mu", "tau", "z", "theta"}
    # the deterministic site is the function of the latents the model says
    np.testing.assert_allclose(
        post["theta"].values,
        post["mu"].values[..., None] + post["tau"].values[..., None] * post["z"].values,
        rtol=1e-5,
        atol=1e-5,
    )
    ll = idata.log_likelihood["obs"].values
    assert ll.shape == (1, 256, 8)
    # pointwise log likelihood is the Normal log density of each school's observation
    theta = post["theta"].values[0]
    exact = -0.5 * ((Y - theta) / SIGMA) ** 2 - np.log(SIGMA) - 0.5 * np.log(2 * np.pi)
    np.testing.assert_allclose(ll[0], exact, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(idata.observed_data["obs"].values, Y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pareto k warnings on 256 draws
        loo = az.loo(idata, pointwise=True)
    assert np.isfinite(loo.elpd_loo)


def test_independent_runs_combine_into_chains(runs):
    az = import_arviz()
    idata = combine_chains(runs)
    assert idata.posterior.sizes["chain"] == 2
    assert idata.log_likelihood["obs"].shape == (2, 256, 8)
    rhat = az.rhat(idata, var_names=["mu"])["mu"].values
    assert np.isfinite(rhat) and rhat < 1.1
    with pytest.raises(ValueError, match="at least one"):
        combine_chains([])
