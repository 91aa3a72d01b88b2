"""ArviZ conventions from targets: dims named after NumPyro and Pyro plates (with
overrides), posterior predictive draws (checked against their exact conditional
distribution), observed data for Pyro, sample_stats, and az.plot_ppc / az.loo on the
result."""

from __future__ import annotations

import warnings

import jax
import matplotlib
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from probinfer import Particles, to_inference_data
from probinfer.inference_data import sample_stats_group, site_dims
from probinfer.targets import from_numpyro, from_pyro

matplotlib.use("Agg")

Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0], np.float32)
SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0], np.float32)
SCHOOLS = [f"s{i}" for i in range(8)]
EXPECTED = {"mu": [], "tau": [], "theta": ["school"], "y": ["school"]}


def schools(sigma, y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", 8):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def pyro_schools(sigma, y):
    import pyro
    import pyro.distributions as pdist

    mu = pyro.sample("mu", pdist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", pdist.HalfCauchy(5.0))
    with pyro.plate("school", 8, dim=-1):
        theta = pyro.sample("theta", pdist.Normal(mu, tau))
        pyro.sample("y", pdist.Normal(theta, sigma), obs=y)


def _check_predictive(target, key):
    """``y_rep | theta ~ N(theta, sigma)`` exactly: standardised residuals have mean 0 and
    variance 1 within 5 standard errors."""
    theta = target.sample_prior(jax.random.key(5), 2000)
    draws = target.constrain(theta)
    target.log_likelihood(theta)  # a Pyro target then knows that the model broadcasts
    rep = target.posterior_predictive(key, draws)
    assert set(rep) == {"y"} and rep["y"].shape == (2000, 8)
    z = (rep["y"] - np.asarray(draws["theta"])) / SIGMA
    n = z.size
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.var() - 1.0) < 5 * np.sqrt(2 / n)
    return theta, draws, rep


def _idata(target, theta, draws, rep):
    num = rep["y"].shape[0]
    pointwise = np.asarray(target.log_likelihood(theta, pointwise=True))
    lp = np.asarray(target.log_prior(theta))
    return to_inference_data(
        [Particles({k: np.asarray(v) for k, v in draws.items()}, np.zeros(num))],
        groups={
            "log_likelihood": {"y": pointwise[None]},
            "posterior_predictive": {"y": rep["y"][None]},
            "observed_data": target.observed_data(),
            "sample_stats": sample_stats_group(lp[None], pointwise.sum(-1)[None]),
        },
        dims=target.dims(),
        coords={"school": SCHOOLS},
    )


def _check_idata(idata):
    import arviz as az

    assert idata.posterior["theta"].dims == ("chain", "draw", "school")
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "school")
    assert idata.posterior_predictive["y"].dims == ("chain", "draw", "school")
    assert idata.observed_data["y"].dims == ("school",)
    assert list(idata.posterior["school"].values) == SCHOOLS
    assert list(idata.observed_data["school"].values) == SCHOOLS
    assert set(idata.sample_stats.data_vars) == {"lp", "log_likelihood"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pareto k on prior draws
        assert np.isfinite(az.loo(idata).elpd_loo)
    axes = az.plot_ppc(idata, num_pp_samples=50, random_seed=0)
    assert np.size(axes) >= 1
    import matplotlib.pyplot as plt

    plt.close("all")


def test_numpyro_dims_predictive_and_arviz_functions():
    t = from_numpyro(schools, SIGMA, Y)
    assert t.dims() == EXPECTED
    _check_idata(_idata(t, *_check_predictive(t, jax.random.key(0))))


def test_pyro_dims_observed_data_predictive_and_arviz_functions():
    torch = pytest.importorskip("torch")
    t = from_pyro(pyro_schools, torch.tensor(SIGMA), torch.tensor(Y))
    assert t.dims() == EXPECTED
    np.testing.assert_array_equal(t.observed_data()["y"], Y)
    _check_idata(_idata(t, *_check_predictive(t, jax.random.key(0))))


def test_site_dims_rules():
    # batch dims after the plates at their positions; event dims unnamed unless given
    assert site_dims("x", 2, {-1: "obs"}, event_ndim=1) == ["obs", "x_dim_1"]
    assert site_dims("x", 3, {-2: "a", -1: "b"}, event_ndim=1) == ["a", "b", "x_dim_2"]
    assert site_dims("x", 2, {-2: "a"}, event_ndim=0) == ["a", "x_dim_1"]
    assert site_dims("x", 2, {}, event_ndim=None) == ["x_dim_0", "x_dim_1"]
    assert site_dims("x", 2, {-1: "n"}, event_dims=["k"]) == ["n", "k"]
    # deterministic sites (no event_ndim): the batch shape ends where the plates end
    assert site_dims("d", 2, {-1: "n"}) == ["n", "d_dim_1"]


def test_dims_override_and_mismatch():
    draws = {"theta": np.zeros((10, 8))}
    idata = to_inference_data([Particles(draws, np.zeros(10))], dims={"theta": ["team"]})
    assert idata.posterior["theta"].dims == ("chain", "draw", "team")
    with pytest.raises(ValueError, match="dims"):
        to_inference_data([Particles(draws, np.zeros(10))], dims={"theta": ["a", "b"]})


def test_sample_stats_group():
    lp, ll = np.array([[-1.0, -2.0]]), np.array([[-3.0, -4.0]])
    out = sample_stats_group(lp, ll)
    np.testing.assert_array_equal(out["lp"], lp + ll)
    np.testing.assert_array_equal(out["log_likelihood"], ll)
    with pytest.raises(ValueError, match="log_density"):
        sample_stats_group()
    with pytest.raises(ValueError, match="shape"):
        sample_stats_group(lp, ll[:, :1])
