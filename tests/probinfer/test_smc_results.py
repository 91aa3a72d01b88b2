"""SMC result classes: one-line reprs, the weighted summary table (against numpy), and
independent runs as chains (``num_chains=``: bitwise equal to separate runs, ArviZ
``r_hat`` without warnings, a pooled posterior mean checked against the conjugate answer)."""

from __future__ import annotations

import pickle
import warnings

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from probinfer import Particles, from_logdensity
from probinfer.inference_data import import_arviz
from probinfer.lgssm import LinearGaussianSSM
from probinfer.smc import SMCChains, SMCResult, particle_filter, tempered_smc
from probinfer.targets import from_numpyro

az = import_arviz()

SSM = LinearGaussianSSM(A=0.9, Q=1.0, C=1.0, R=1.0, m0=0.0, P0=1.0)
_, YS = SSM.simulate(jax.random.key(0), 100)
YS = np.asarray(YS)

# Normal mean with known noise: mu ~ N(0, S0^2), y_i ~ N(mu, 1)
S0 = 2.0
Y_CONJ = np.asarray(0.7 + jax.random.normal(jax.random.key(11), (20,)), np.float32)


def normal_mean(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, S0))
    with numpyro.plate("obs", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def _exact_posterior():
    prec = 1.0 / S0**2 + Y_CONJ.size
    return float(np.sum(Y_CONJ, dtype=np.float64) / prec), float(np.sqrt(1.0 / prec))


TEMPERING = dict(num_mcmc_steps=3, progress=False)


@pytest.fixture(scope="module")
def chains():
    target = from_numpyro(normal_mean, Y_CONJ)
    return target, tempered_smc(jax.random.key(4), target, 512, num_chains=4, **TEMPERING)


def test_repr_is_one_short_line():
    res = particle_filter(jax.random.key(1), SSM, YS, 10_000)
    text = repr(res)
    assert len(text) < 300 and "\n" not in text
    assert text.startswith("ParticleFilterResult(num_particles=10000, num_steps=100, ")
    assert f"log_evidence={res.log_evidence:.2f}" in text
    # the final ESS is that of the final weights, 1 / sum w^2
    w = np.exp(np.asarray(res.particles.log_weights, np.float64))
    w /= w.sum()
    assert f"final_ess={1.0 / np.sum(w * w):.1f}" in text
    # every subclass, the LLM result included, keeps the one-line repr
    from probinfer.llm.result import LLMResult

    assert LLMResult.__repr__ is SMCResult.__repr__


def test_tempered_and_chains_reprs(chains):
    _, res = chains
    assert len(repr(res[0])) < 300 and repr(res[0]).startswith("TemperedSMCResult(")
    text = repr(res)
    assert len(text) < 300 and text.startswith("SMCChains(num_chains=4, TemperedSMCResult, ")
    assert f"log_evidence={np.mean(res.log_evidence):.2f}" in text


def _weighted_particles():
    """Particles whose weights are integer counts, so the weighted statistics are those of
    the sample with each particle repeated ``count`` times (float32, as particles hold
    them: the weights are the counts to float32 rounding)."""
    rng = np.random.default_rng(0)
    n = 301
    counts = rng.integers(1, 6, size=n)
    values = {
        "mu": rng.normal(size=n).astype(np.float32),
        "beta": rng.gamma(2.0, size=(n, 2, 3)).astype(np.float32),
    }
    return Particles(values, np.log(counts.astype(np.float64))), values, counts


def test_summary_is_the_weighted_statistics_of_the_repeated_sample():
    p, values, counts = _weighted_particles()
    total = counts.sum()
    # no quantile level falls on a cumulative count (where the weights' float32 rounding
    # could pick the neighbour)
    assert all(abs(q * total - round(q * total)) > 0.01 for q in (0.03, 0.97))
    res = SMCResult(
        particles=p,
        log_evidence=-3.0,
        log_evidence_increments=np.zeros(2),
        ess=np.ones(2),
        resampled=np.zeros(2, bool),
    )
    table = res.summary()
    assert list(table.columns) == ["mean", "sd", "eti_3%", "eti_97%", "ess"]
    assert list(table.index[:3]) == ["mu", "beta[0, 0]", "beta[0, 1]"]
    for name, x in values.items():
        rep = np.repeat(x.reshape(x.shape[0], -1).astype(np.float64), counts, axis=0)
        rows = [name] if x.ndim == 1 else [f"beta[{i}, {j}]" for i in range(2) for j in range(3)]
        got = table.loc[rows]
        np.testing.assert_allclose(got["mean"], rep.mean(0), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(got["sd"], rep.std(0), rtol=1e-6)
        q = np.quantile(rep, [0.03, 0.97], axis=0, method="inverted_cdf")
        np.testing.assert_array_equal(got["eti_3%"], q[0])
        np.testing.assert_array_equal(got["eti_97%"], q[1])
    np.testing.assert_allclose(table["ess"], total**2 / np.sum(counts**2), rtol=1e-6)
    # another interval probability names its columns after the tails, as ArviZ does
    assert list(res.summary(prob=0.9).columns[2:4]) == ["eti_5%", "eti_95%"]
    with pytest.raises(ValueError, match="prob"):
        res.summary(prob=1.0)
    # the row names are ArviZ's (the variables' order aside)
    idata = res.to_arviz(jax.random.key(0))
    assert sorted(az.summary(idata, kind="stats").index) == sorted(table.index)


def test_num_chains_are_the_runs_of_the_split_keys(chains):
    target, res = chains
    assert isinstance(res, SMCChains) and res.num_chains == 4
    keys = jax.random.split(jax.random.key(4), 4)
    for c in (0, 3):
        one = tempered_smc(keys[c], target, 512, **TEMPERING)
        assert one.log_evidence == res.log_evidence[c]  # bitwise
        np.testing.assert_array_equal(one.samples["mu"], res[c].samples["mu"])
    assert pickle.loads(pickle.dumps(res)).log_evidence.tolist() == res.log_evidence.tolist()


def test_chains_to_arviz_rhat_without_warnings_and_conjugate_mean(chains):
    _, res = chains
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        idata = res.to_arviz(jax.random.key(0))
        rhat = float(az.rhat(idata)["mu"])
        ess_bulk = float(az.ess(idata)["mu"])
    assert idata.posterior["mu"].shape == (4, 512)
    assert np.isfinite(rhat) and rhat < 1.05
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "obs")  # named after the plate
    # pooled weighted table over the chains: the statistics of all draws together
    table = res.summary()
    pooled = np.concatenate([np.asarray(r.samples["mu"], np.float64) for r in res])
    assert table.loc["mu", "mean"] == pytest.approx(pooled.mean(), rel=1e-12)
    assert table.loc["mu", "sd"] == pytest.approx(pooled.std(), rel=1e-10)
    assert table.loc["mu", "ess"] == pytest.approx(4 * 512)
    assert table.loc["mu", "r_hat"] == pytest.approx(rhat)
    # the exact posterior mean, within 5 Monte Carlo standard errors (ArviZ's bulk ESS of
    # the chains, which counts resampling's duplicates and the chains' disagreement)
    mean, sd = _exact_posterior()
    assert abs(table.loc["mu", "mean"] - mean) < 5 * sd / np.sqrt(ess_bulk)
    assert table.loc["mu", "sd"] == pytest.approx(sd, rel=0.15)


def test_particle_filter_chains():
    res = particle_filter(jax.random.key(2), SSM, YS[:30], 256, num_chains=3)
    keys = jax.random.split(jax.random.key(2), 3)
    singles = [particle_filter(k, SSM, YS[:30], 256).log_evidence for k in keys]
    np.testing.assert_array_equal(res.log_evidence, singles)  # bitwise
    idata = res.to_arviz(jax.random.key(1))  # weighted particles: resampled per chain
    assert idata.posterior["x"].shape[:2] == (3, 256)
    assert idata.posterior.attrs["log_evidence"] == pytest.approx(singles)
    assert len(repr(res)) < 300


@pytest.mark.parametrize(
    ("value", "error"), [(0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError)]
)
def test_num_chains_is_validated(value, error):
    with pytest.raises(error, match="num_chains"):
        particle_filter(jax.random.key(0), SSM, YS[:5], 16, num_chains=value)
    target = from_numpyro(normal_mean, Y_CONJ)
    with pytest.raises(error, match="num_chains"):
        tempered_smc(jax.random.key(0), target, 16, num_chains=value)


def test_posterior_predictive_argument_is_validated():
    target = from_numpyro(normal_mean, Y_CONJ)
    with pytest.raises(TypeError, match="posterior_predictive"):
        tempered_smc(jax.random.key(0), target, 16, posterior_predictive="yes")
    plain = from_logdensity(
        lambda p: -0.5 * p["mu"] ** 2,
        lambda p: -0.5 * (p["mu"] - 1.0) ** 2,
        lambda k: {"mu": jax.random.normal(k)},
    )
    with pytest.raises(ValueError, match="posterior_predictive"):
        tempered_smc(jax.random.key(0), plain, 16, posterior_predictive=True)


def test_smc_chains_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        SMCChains([])
    with pytest.raises(TypeError, match="SMCResult"):
        SMCChains([1.0])
