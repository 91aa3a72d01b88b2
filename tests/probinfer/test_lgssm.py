"""Kalman filter against the dense joint Gaussian; the bundled demo."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from probinfer.lgssm import LinearGaussianSSM, bootstrap_filter, kalman_filter


def _dense_evidence(ssm, ys):
    """log p(y_{1:T}) from the joint Gaussian of (x, y), built by brute force."""
    T, d = ys.shape[0], ssm.state_dim
    # Cov(x_s, x_t) via propagation
    covs = np.zeros((T * d, T * d))
    P = [ssm.P0]
    for _ in range(1, T):
        P.append(ssm.A @ P[-1] @ ssm.A.T + ssm.Q)
    means = [ssm.m0]
    for _ in range(1, T):
        means.append(ssm.A @ means[-1])
    for s in range(T):
        for t in range(s, T):
            c = np.linalg.matrix_power(ssm.A, t - s) @ P[s]
            covs[t * d : (t + 1) * d, s * d : (s + 1) * d] = c
            covs[s * d : (s + 1) * d, t * d : (t + 1) * d] = c.T
    Cbig = np.kron(np.eye(T), ssm.C)
    Rbig = np.kron(np.eye(T), ssm.R)
    return multivariate_normal(Cbig @ np.concatenate(means), Cbig @ covs @ Cbig.T + Rbig).logpdf(
        ys.reshape(-1)
    )


#: a 2-D state observed through one linear combination (used by the two tests below)
SSM_2D = LinearGaussianSSM(
    A=[[0.9, 0.1], [0.0, 0.8]],
    Q=np.diag([0.5, 0.3]),
    C=[[1.0, 0.5]],
    R=[[0.4]],
    m0=[0.1, -0.2],
    P0=np.eye(2),
)


def test_kalman_matches_dense_gaussian():
    ssm = SSM_2D
    _, ys = ssm.simulate(jax.random.key(0), 12)
    res = kalman_filter(ssm, ys)
    assert abs(res.log_evidence - _dense_evidence(ssm, np.asarray(ys, np.float64))) < 1e-8
    assert res.means.shape == (12, 2) and res.covariances.shape == (12, 2, 2)


def test_bootstrap_filter_wrapper_and_multivariate_particle_filter():
    ssm = SSM_2D
    _, ys = ssm.simulate(jax.random.key(1), 30)
    exact = kalman_filter(ssm, ys)
    res = bootstrap_filter(jax.random.key(2), ssm, ys, 20_000)
    se = np.sqrt(np.diagonal(exact.covariances, axis1=1, axis2=2) / res.ess[:, None])
    assert np.max(np.abs(res.filtering_means - exact.means) / se) < 5.0
    # measured: run-to-run sd of this log evidence (N = 20,000, 16 seeds) 0.046, mean error
    # +0.009; 4.5 sd
    assert abs(res.log_evidence - exact.log_evidence) < 4.5 * 0.046


def test_bad_model_input():
    with pytest.raises(ValueError, match="Q must be a symmetric positive-definite"):
        LinearGaussianSSM(Q=-1.0)
    with pytest.raises(ValueError, match="num_steps"):
        LinearGaussianSSM().simulate(jax.random.key(0), 0)


def test_demo_runs_and_writes_netcdf(tmp_path, capsys):
    from probinfer.demo import run_lgssm_demo

    out = tmp_path / "pf.nc"
    idata = run_lgssm_demo(num_particles=500, num_steps=20, chains=2, output=out)
    text = capsys.readouterr().out
    assert "log Z (Kalman)" in text and out.exists()
    assert idata.posterior["x_T"].shape == (2, 500)
    assert idata["smc_steps"]["ess"].shape == (2, 20)


def test_two_dimensional_state_with_default_and_scalar_covariances():
    """Issue 22, item 14: a 2-D state failed unless P0 was given ("P0 must have shape
    (2, 2), got (1, 1)"). A scalar covariance is that multiple of the identity."""
    A, C = [[0.9, 0.1], [0.0, 0.8]], [[1.0, 0.5]]
    ssm = LinearGaussianSSM(A=A, Q=np.eye(2), C=C, R=[[1.0]])
    np.testing.assert_array_equal(ssm.P0, np.eye(2))
    np.testing.assert_array_equal(ssm.m0, np.zeros(2))
    scalar = LinearGaussianSSM(A=A, Q=0.5, C=C, R=2.0, P0=3.0)
    np.testing.assert_array_equal(scalar.Q, 0.5 * np.eye(2))
    np.testing.assert_array_equal(scalar.R, [[2.0]])
    np.testing.assert_array_equal(scalar.P0, 3.0 * np.eye(2))
    ys = np.asarray(scalar.simulate(jax.random.key(0), 6)[1])
    np.testing.assert_allclose(
        kalman_filter(scalar, ys).log_evidence, _dense_evidence(scalar, ys), rtol=1e-10
    )
    with pytest.raises(ValueError, match="P0 must have shape"):
        LinearGaussianSSM(A=A, Q=0.5, C=C, R=1.0, P0=np.eye(3))
