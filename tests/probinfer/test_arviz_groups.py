"""ArviZ export of tempered SMC: deterministic sites, log_likelihood for LOO, observed data,
sample_stats, posterior predictive draws, dims after the model's plates, independent runs
(``num_chains=``) as chains."""

from __future__ import annotations

import warnings

import jax
import matplotlib
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from probinfer.inference_data import combine_chains, import_arviz
from probinfer.smc import tempered_smc
from probinfer.targets import from_numpyro

matplotlib.use("Agg")

Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools(sigma, y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", 8):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    theta = numpyro.deterministic("theta", mu + tau * z)
    numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


SETTINGS = dict(num_mcmc_steps=3, progress=False)


@pytest.fixture(scope="module")
def target():
    return from_numpyro(eight_schools, SIGMA, Y)


@pytest.fixture(scope="module")
def runs(target):
    return tempered_smc(
        jax.random.key(0), target, 256, num_chains=2, posterior_predictive=True, **SETTINGS
    )


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


def test_sample_stats_predictive_and_plate_dims(runs, target):
    az = import_arviz()
    res = runs[0]
    idata = res.to_arviz(coords={"school": [f"s{i}" for i in range(8)]})
    # dims after the model's plates (z sits in the "school" plate; theta and obs do not)
    assert idata.posterior["z"].dims == ("chain", "draw", "school")
    assert list(idata.posterior["school"].values) == [f"s{i}" for i in range(8)]
    assert idata.posterior["theta"].dims == ("chain", "draw", "theta_dim_0")
    assert idata.log_likelihood["obs"].dims == ("chain", "draw", "obs_dim_0")
    assert res.to_arviz(dims={"z": ["team"]}).posterior["z"].dims == ("chain", "draw", "team")
    # sample_stats: lp and the total log likelihood of each draw, as the target computes them
    theta = np.asarray(res.particles.values)
    log_prior = np.asarray(target.log_prior(theta))
    log_lik = np.asarray(target.log_likelihood(theta))
    stats = idata.sample_stats
    np.testing.assert_allclose(stats["log_likelihood"].values[0], log_lik, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(stats["lp"].values[0], log_prior + log_lik, rtol=1e-4, atol=1e-3)
    # posterior predictive: obs_rep | theta ~ N(theta, sigma) exactly, so the standardised
    # residuals have mean 0 and variance 1 within 5 standard errors
    rep = idata.posterior_predictive["obs"].values[0]
    assert idata.posterior_predictive["obs"].dims == ("chain", "draw", "obs_dim_0")
    z = (rep - idata.posterior["theta"].values[0]) / SIGMA
    assert abs(z.mean()) < 5 / np.sqrt(z.size)
    assert abs(z.var() - 1.0) < 5 * np.sqrt(2 / z.size)
    axes = az.plot_ppc(idata, num_pp_samples=50, random_seed=0)
    assert np.size(axes) >= 1
    import matplotlib.pyplot as plt

    plt.close("all")


def test_posterior_predictive_leaves_the_run_unchanged(runs, target):
    # chain 0 is the run of the first split key; without the predictive draws it is the
    # same run, bit for bit
    alone = tempered_smc(jax.random.split(jax.random.key(0), 2)[0], target, 256, **SETTINGS)
    assert alone.posterior_predictive is None
    assert alone.log_evidence == runs[0].log_evidence
    for name, value in alone.samples.items():
        np.testing.assert_array_equal(value, runs[0].samples[name])


def test_independent_runs_combine_into_chains(runs):
    az = import_arviz()
    idata = combine_chains(runs)
    assert runs.to_arviz().posterior["mu"].equals(idata.posterior["mu"])
    assert idata.posterior.sizes["chain"] == 2
    assert idata.posterior_predictive["obs"].shape == (2, 256, 8)
    assert idata.log_likelihood["obs"].shape == (2, 256, 8)
    rhat = az.rhat(idata, var_names=["mu"])["mu"].values
    assert np.isfinite(rhat) and rhat < 1.1
    with pytest.raises(ValueError, match="at least one"):
        combine_chains([])
