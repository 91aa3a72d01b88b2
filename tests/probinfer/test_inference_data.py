import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probinfer import Particles
from probinfer.inference_data import STEPS_GROUP, import_arviz, to_inference_data

az = import_arviz()


def _runs(chains=3, n=400):
    runs = []
    for c in range(chains):
        k1, k2 = jax.random.split(jax.random.key(c))
        values = {"mu": jax.random.normal(k1, (n,)), "beta": jax.random.normal(k2, (n, 2))}
        runs.append(Particles(values, -0.5 * values["mu"] ** 2))
    return runs


def test_summary_ess_and_netcdf_round_trip(tmp_path):
    runs = _runs()
    idata = to_inference_data(
        runs,
        key=jax.random.key(9),
        step_stats={"ess": np.ones((3, 5)), "resampled": np.zeros((3, 5), bool)},
        log_evidence=[-1.0, -1.1, -0.9],
        attrs={"model": "toy"},
    )
    post = idata.posterior
    assert post["mu"].shape == (3, 400) and post["beta"].shape == (3, 400, 2)
    summary = az.summary(idata)
    assert {"mu", "beta[0]", "beta[1]"} <= set(summary.index)
    assert np.all(np.isfinite(summary["mean"]))
    ess = az.ess(idata)
    assert float(ess["mu"]) > 100
    steps = idata[STEPS_GROUP]
    assert steps["ess"].dims == ("chain", "step")
    assert idata.posterior.attrs["log_evidence"] == pytest.approx([-1.0, -1.1, -0.9])
    assert idata.posterior.attrs["inference_library"] == "probinfer"
    assert "inference_library_version" in idata.posterior.attrs

    path = tmp_path / "run.nc"
    idata.to_netcdf(str(path))
    back = az.from_netcdf(str(path))
    np.testing.assert_array_equal(back.posterior["mu"], post["mu"])
    np.testing.assert_array_equal(back[STEPS_GROUP]["ess"], steps["ess"])
    assert back.posterior.attrs["model"] == "toy"


def test_draws_are_equally_weighted_resamples():
    # A weight concentrated on one particle: every draw must be that particle.
    p = Particles(jnp.arange(5.0), jnp.array([-jnp.inf, -jnp.inf, 0.0, -jnp.inf, -jnp.inf]))
    idata = p.to_arviz(jax.random.key(0))
    np.testing.assert_array_equal(idata.posterior["x"].values, np.full((1, 5), 2.0))


def test_equal_weights_need_no_key_but_weighted_do():
    p = Particles(jnp.arange(4.0))
    assert p.to_arviz().posterior["x"].shape == (1, 4)
    with pytest.raises(ValueError, match="key is required"):
        Particles(jnp.arange(4.0), jnp.array([0.0, 1.0, 0.0, 0.0])).to_arviz()


def test_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        to_inference_data([])
    runs = _runs(chains=2)
    with pytest.raises(ValueError, match="step_stats"):
        to_inference_data(runs, key=jax.random.key(0), step_stats={"ess": np.ones((3, 4))})
    with pytest.raises(ValueError, match="log_evidence"):
        to_inference_data(runs, key=jax.random.key(0), log_evidence=[1.0])
    with pytest.raises(TypeError, match="cannot be exported"):
        to_inference_data([Particles(object(), jnp.zeros(2))])


def test_arviz_1x_datatree_path(tmp_path, monkeypatch):
    """ArviZ 1.x (Python >= 3.12) builds on arviz_base, whose from_dict takes a dict of
    groups and returns an xarray.DataTree; exercise that branch with arviz_base itself."""
    azb = pytest.importorskip("arviz_base")
    import xarray as xr

    import probinfer.inference_data as mod

    monkeypatch.setattr(mod, "import_arviz", lambda: azb)
    dt = to_inference_data(
        _runs(chains=2),
        key=jax.random.key(0),
        step_stats={"ess": np.ones((2, 4))},
        log_evidence=[-1.0, -2.0],
    )
    assert isinstance(dt, xr.DataTree)
    assert dt["posterior"]["beta"].shape == (2, 400, 2)
    assert dt["posterior"].attrs["log_evidence"] == [-1.0, -2.0]
    assert dt[STEPS_GROUP]["ess"].dims == ("chain", "step")
    dt.to_netcdf(tmp_path / "dt.nc")
    back = xr.open_datatree(tmp_path / "dt.nc")
    np.testing.assert_array_equal(back["posterior"]["mu"], dt["posterior"]["mu"])


def _smc_result(n, seed=0):
    """An SMC result of ``n`` particles with a per-particle ``log_likelihood`` group."""
    from probinfer.smc import SMCResult

    class WithLogLik(SMCResult):
        def _arviz_groups(self):
            return {"log_likelihood": {"y": np.zeros((n, 3))}}

    mu = jax.random.normal(jax.random.key(seed), (n,))
    return WithLogLik(
        particles=Particles({"mu": mu}),
        log_evidence=-1.0,
        log_evidence_increments=np.array([-0.5, -0.5]),
        ess=np.array([n, n / 2]),
        resampled=np.array([False, True]),
    )


def test_combine_chains_of_different_sizes_names_the_runs_and_sizes():
    from probinfer.inference_data import combine_chains

    idata = combine_chains([_smc_result(8), _smc_result(8, 1)])
    assert idata.posterior["mu"].shape == (2, 8) and idata.log_likelihood["y"].shape == (2, 8, 3)
    # ArviZ chains need equal draws: a ValueError naming the argument and the sizes (was
    # numpy's "all input arrays must have the same shape" from the log_likelihood stack)
    with pytest.raises(ValueError, match=r"results: .*same number of particles, got \[8, 12, 8\]"):
        combine_chains([_smc_result(8), _smc_result(12, 1), _smc_result(8, 2)])


def test_combine_chains_takes_the_results_dims_and_overrides_them():
    from probinfer.inference_data import combine_chains
    from probinfer.smc import SMCResult

    class Named(SMCResult):
        def _arviz_dims(self):
            return {"beta": ["coef"]}

    runs = [
        Named(
            particles=Particles({"beta": jax.random.normal(jax.random.key(s), (6, 3))}),
            log_evidence=-1.0,
            log_evidence_increments=np.zeros(1),
            ess=np.full(1, 6.0),
            resampled=np.zeros(1, bool),
        )
        for s in range(2)
    ]
    assert combine_chains(runs).posterior["beta"].dims == ("chain", "draw", "coef")
    assert runs[0].to_arviz().posterior["beta"].dims == ("chain", "draw", "coef")
    idata = combine_chains(runs, dims={"beta": ["k"]}, coords={"k": ["a", "b", "c"]})
    assert idata.posterior["beta"].dims == ("chain", "draw", "k")
    assert list(idata.posterior["k"].values) == ["a", "b", "c"]
