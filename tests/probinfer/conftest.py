"""Fixtures shared by the PMMH and SMC² tests (test_pmmh.py, test_smc2.py): the exact
answers they are tested against, computed independently of probinfer.

Model (AR(1) observed with noise)::

    x_0 ~ N(0, 1),  x_t = rho x_{t-1} + sigma_x e_t,  y_t = x_t + sigma_y n_t

with unknown ``rho`` (prior Uniform(-1, 1)) and, in the two-parameter case, ``sigma_x``
(prior LogNormal(0, 0.5)); ``sigma_y = 1``. The likelihood is the Kalman filter's, in
float64 numpy, vectorised over a grid of parameter values; posterior moments and the
evidence are sums over the grid (midpoint rule on the constrained parameters, so no
Jacobian enters: the grid density is the constrained posterior).
"""

from __future__ import annotations

import sys

import numpy as np
import numpyro.distributions as dist
import pytest
from scipy import stats

from probinfer.smc import StateSpaceModel

RHO, SIGMA_X, SIGMA_Y = 0.7, 1.0, 1.0
PRIOR_RHO = dict(rho=dist.Uniform(-1.0, 1.0))
PRIOR_RHO_SIGMA = dict(rho=dist.Uniform(-1.0, 1.0), sigma_x=dist.LogNormal(0.0, 0.5))


def simulate(num_steps: int, seed: int) -> np.ndarray:
    """Observations ``y_0..y_{T-1}`` at the true parameters (numpy's generator ``seed``)."""
    rng = np.random.default_rng(seed)
    x = np.empty(num_steps)
    x[0] = rng.normal()
    for t in range(1, num_steps):
        x[t] = RHO * x[t - 1] + SIGMA_X * rng.normal()
    return x + SIGMA_Y * rng.normal(size=num_steps)


def kalman_log_likelihood(ys, rho, sigma_x=SIGMA_X) -> np.ndarray:
    """``log p(y | rho, sigma_x)`` for arrays of parameters (broadcast), float64."""
    rho, sigma_x = np.broadcast_arrays(np.asarray(rho, np.float64), np.asarray(sigma_x, np.float64))
    m, p = np.zeros(rho.shape), np.ones(rho.shape)
    total = np.zeros(rho.shape)
    for t, y in enumerate(np.asarray(ys, np.float64)):
        if t > 0:
            m, p = rho * m, rho**2 * p + sigma_x**2
        s = p + SIGMA_Y**2
        r = y - m
        total += -0.5 * (np.log(2 * np.pi * s) + r * r / s)
        k = p / s
        m, p = m + k * r, (1 - k) * p
    return total


def _midpoints(lo: float, hi: float, n: int) -> tuple[np.ndarray, float]:
    h = (hi - lo) / n
    return lo + h * (np.arange(n) + 0.5), h


class GridPosterior:
    """The posterior of ``rho`` (1-D) or ``(rho, sigma_x)`` (2-D) on a fine grid."""

    def __init__(self, ys, two_parameters: bool = False):
        n_rho = 800 if two_parameters else 4000
        rho, h_rho = _midpoints(-1.0, 1.0, n_rho)
        log_prior = np.full(n_rho, np.log(0.5))
        cell = h_rho
        if two_parameters:  # sigma_x on (0, 4]: LogNormal(0, 0.5) has mass 3e-3 beyond 4,
            # and the likelihood (T = 100) leaves a posterior mass < 1e-9 there
            sigma, h_sigma = _midpoints(0.0, 4.0, 400)
            rho, sigma = np.meshgrid(rho, sigma, indexing="ij")
            log_prior = np.log(0.5) + stats.lognorm(s=0.5).logpdf(sigma)
            cell = h_rho * h_sigma
            self.sigma_x = sigma
        self.rho = rho
        log_joint = log_prior + kalman_log_likelihood(ys, rho, sigma if two_parameters else SIGMA_X)
        top = log_joint.max()
        w = np.exp(log_joint - top)
        self.log_evidence = float(top + np.log(w.sum() * cell))
        self.weights = w / w.sum()
        self.cell = h_rho

    def mean(self, name: str = "rho") -> float:
        return float(np.sum(self.weights * getattr(self, name)))

    def sd(self, name: str = "rho") -> float:
        x = getattr(self, name)
        return float(np.sqrt(np.sum(self.weights * (x - self.mean(name)) ** 2)))

    def sample_rho(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` exact draws of ``rho`` (1-D grid: a cell by its mass, uniform within it)."""
        idx = rng.choice(self.rho.size, size=n, p=self.weights)
        return self.rho[idx] + self.cell * (rng.random(n) - 0.5)

    def cdf_rho(self, x) -> np.ndarray:
        """The (piecewise linear) posterior CDF of ``rho`` at ``x`` (1-D grid)."""
        edges = np.concatenate([self.rho - 0.5 * self.cell, [self.rho[-1] + 0.5 * self.cell]])
        return np.interp(x, edges, np.concatenate([[0.0], np.cumsum(self.weights)]))


def ar1_rho(theta) -> StateSpaceModel:
    """The model with unknown ``rho``."""
    rho = theta["rho"]
    return StateSpaceModel(
        initial=dist.Normal(0.0, 1.0),
        transition=lambda x, t: dist.Normal(rho * x, SIGMA_X),
        observation=lambda x, t: dist.Normal(x, SIGMA_Y),
    )


def ar1_nan_above(theta) -> StateSpaceModel:
    """The model with unknown ``rho`` whose observation density is NaN for ``rho > 0.9``."""
    import jax.numpy as jnp

    rho = theta["rho"]
    scale = jnp.where(rho > 0.9, jnp.nan, SIGMA_Y)
    return StateSpaceModel(
        initial=dist.Normal(0.0, 1.0),
        transition=lambda x, t: dist.Normal(rho * x, SIGMA_X),
        observation=lambda x, t: dist.Normal(x, scale),
    )


def ar1_rho_sigma(theta) -> StateSpaceModel:
    """The model with unknown ``rho`` and ``sigma_x``."""
    rho, sigma_x = theta["rho"], theta["sigma_x"]
    return StateSpaceModel(
        initial=dist.Normal(0.0, 1.0),
        transition=lambda x, t: dist.Normal(rho * x, sigma_x),
        observation=lambda x, t: dist.Normal(x, SIGMA_Y),
    )


@pytest.fixture(scope="session")
def ar1():
    """The AR(1) plus noise oracle: true values, priors, models, ``simulate`` and
    ``GridPosterior``."""
    return sys.modules[__name__]


@pytest.fixture(scope="session")
def data50():
    """``T = 50`` observations and the grid posterior of ``rho``."""
    ys = simulate(50, 2025)
    return ys, GridPosterior(ys)


@pytest.fixture(scope="session")
def data100():
    """``T = 100`` observations and the grid posterior of ``(rho, sigma_x)``."""
    ys = simulate(100, 2025)
    return ys, GridPosterior(ys, two_parameters=True)
