"""Linear-Gaussian state-space models: simulation, the exact Kalman filter, and a
jitted bootstrap particle filter used as the reference example.

Model (``x_t`` in R^d, ``y_t`` in R^p, ``t = 1..T``)::

    x_1 ~ N(m0, P0)
    x_t = A x_{t-1} + N(0, Q)
    y_t = C x_t + N(0, R)

The Kalman filter gives the exact filtering moments and log evidence
``log p(y_{1:T})`` in float64; every particle method is tested against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from probinfer.particles import Particles
from probinfer.resampling import Scheme, resample
from probinfer.weights import ess, log_mean_weight, should_resample

Array = jax.Array

__all__ = [
    "BootstrapResult",
    "KalmanResult",
    "LinearGaussianSSM",
    "bootstrap_filter",
    "kalman_filter",
]


def _as_matrix(x, name: str) -> np.ndarray:
    a = np.atleast_2d(np.asarray(x, dtype=np.float64))
    if a.ndim != 2:
        raise ValueError(f"{name} must be a scalar or a matrix, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite")
    return a


@dataclass(frozen=True)
class LinearGaussianSSM:
    """A linear-Gaussian state-space model; scalars give the 1-D model.

    Parameters
    ----------
    A, Q
        State transition matrix and process-noise covariance (d x d).
    C, R
        Observation matrix (p x d) and observation-noise covariance (p x p).
    m0, P0
        Mean (d,) and covariance (d x d) of the first state.
    """

    A: np.ndarray
    Q: np.ndarray
    C: np.ndarray
    R: np.ndarray
    m0: np.ndarray
    P0: np.ndarray

    def __init__(self, A=0.9, Q=1.0, C=1.0, R=1.0, m0=0.0, P0=1.0):
        A, Q, C, R, P0 = (
            _as_matrix(v, n) for v, n in ((A, "A"), (Q, "Q"), (C, "C"), (R, "R"), (P0, "P0"))
        )
        d, p = A.shape[0], C.shape[0]
        m0 = np.broadcast_to(np.asarray(m0, dtype=np.float64), (d,)).copy()
        for mat, name, shape in (
            (A, "A", (d, d)),
            (Q, "Q", (d, d)),
            (C, "C", (p, d)),
            (R, "R", (p, p)),
            (P0, "P0", (d, d)),
        ):
            if mat.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {mat.shape}")
        for mat, name in ((Q, "Q"), (R, "R"), (P0, "P0")):
            if not np.allclose(mat, mat.T) or np.min(np.linalg.eigvalsh(mat)) <= 0:
                raise ValueError(f"{name} must be a symmetric positive-definite covariance")
        for name, value in (("A", A), ("Q", Q), ("C", C), ("R", R), ("m0", m0), ("P0", P0)):
            object.__setattr__(self, name, value)

    @property
    def state_dim(self) -> int:
        return self.A.shape[0]

    @property
    def obs_dim(self) -> int:
        return self.C.shape[0]

    def simulate(self, key: Array, num_steps: int) -> tuple[Array, Array]:
        """Draw states ``(T, d)`` and observations ``(T, p)`` from the model."""
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
        A, C = jnp.asarray(self.A), jnp.asarray(self.C)
        LQ, LR = jnp.linalg.cholesky(jnp.asarray(self.Q)), jnp.linalg.cholesky(jnp.asarray(self.R))
        k0, kx, ky = jax.random.split(key, 3)
        x1 = jnp.asarray(self.m0) + jnp.linalg.cholesky(jnp.asarray(self.P0)) @ jax.random.normal(
            k0, (self.state_dim,)
        )
        noise_x = jax.random.normal(kx, (num_steps - 1, self.state_dim)) @ LQ.T

        def step(x, e):
            x_next = A @ x + e
            return x_next, x_next

        _, rest = jax.lax.scan(step, x1, noise_x)
        xs = jnp.concatenate([x1[None], rest], axis=0)
        ys = xs @ C.T + jax.random.normal(ky, (num_steps, self.obs_dim)) @ LR.T
        return xs, ys


def _check_observations(ssm: LinearGaussianSSM, observations) -> np.ndarray:
    ys = np.asarray(observations, dtype=np.float64)
    if ys.ndim == 1 and ssm.obs_dim == 1:
        ys = ys[:, None]
    if ys.ndim != 2 or ys.shape[1] != ssm.obs_dim or ys.shape[0] == 0:
        raise ValueError(
            f"observations must have shape (T, {ssm.obs_dim}) with T >= 1, got {ys.shape}"
        )
    if not np.all(np.isfinite(ys)):
        raise ValueError("observations contain NaN or inf")
    return ys


class KalmanResult(NamedTuple):
    """Exact filtering moments and evidence."""

    means: np.ndarray  # (T, d) E[x_t | y_1:t]
    covariances: np.ndarray  # (T, d, d)
    log_evidence: float  # log p(y_1:T)
    log_evidence_increments: np.ndarray  # (T,) log p(y_t | y_1:t-1)


def kalman_filter(ssm: LinearGaussianSSM, observations) -> KalmanResult:
    """The exact Kalman filter, in float64."""
    ys = _check_observations(ssm, observations)
    A, Q, C, R = ssm.A, ssm.Q, ssm.C, ssm.R
    m, P = ssm.m0.copy(), ssm.P0.copy()
    T, p = ys.shape
    means, covs, incs = np.empty((T, ssm.state_dim)), np.empty((T,) + P.shape), np.empty(T)
    for t in range(T):
        if t > 0:
            m, P = A @ m, A @ P @ A.T + Q
        S = C @ P @ C.T + R
        resid = ys[t] - C @ m
        L = np.linalg.cholesky(S)
        z = np.linalg.solve(L, resid)
        incs[t] = -0.5 * (p * np.log(2 * np.pi) + z @ z) - np.sum(np.log(np.diag(L)))
        K = np.linalg.solve(S, C @ P).T
        m = m + K @ resid
        P = P - K @ S @ K.T
        P = 0.5 * (P + P.T)
        means[t], covs[t] = m, P
    return KalmanResult(means, covs, float(incs.sum()), incs)


class BootstrapResult(NamedTuple):
    """Output of :func:`bootstrap_filter`."""

    particles: Particles  # weighted particles approximating p(x_T | y_1:T)
    log_evidence: Array  # float64 sum of the increments (float32 if x64 is off)
    log_evidence_increments: Array  # (T,)
    filtering_means: Array  # (T, d)
    ess: Array  # (T,) ESS after weighting at each step
    resampled: Array  # (T,) whether resampling happened before propagating at step t


def bootstrap_filter(
    key: Array,
    ssm: LinearGaussianSSM,
    observations,
    num_particles: int,
    *,
    ess_threshold: float = 0.5,
    scheme: Scheme = "systematic",
) -> BootstrapResult:
    """Bootstrap particle filter for a linear-Gaussian SSM, jitted under ``lax.scan``.

    Proposal = the state transition, weight = the observation density. Resampling
    happens before propagation when ``ESS < ess_threshold * N``. The log evidence is
    the sum of the per-step log mean weights (unbiased for ``p(y_1:T)`` on the
    natural scale).
    """
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 2:
        raise ValueError(f"num_particles must be an integer >= 2, got {num_particles!r}")
    if not 0.0 <= ess_threshold <= 1.0:
        raise ValueError(f"ess_threshold must be in [0, 1], got {ess_threshold}")
    ys = jnp.asarray(_check_observations(ssm, observations), dtype=jnp.float32)
    return _bootstrap(key, ssm, ys, num_particles, float(ess_threshold), scheme)


def _gaussian_logpdf_rows(resid: Array, chol: Array) -> Array:
    z = jax.scipy.linalg.solve_triangular(chol, resid.T, lower=True).T
    p = resid.shape[-1]
    return (
        -0.5 * jnp.sum(z**2, axis=-1)
        - jnp.sum(jnp.log(jnp.diag(chol)))
        - 0.5 * p * jnp.log(2 * jnp.pi)
    )


def _bootstrap(key, ssm, ys, num_particles, ess_threshold, scheme):
    f32 = jnp.float32
    A, C = jnp.asarray(ssm.A, f32), jnp.asarray(ssm.C, f32)
    LQ = jnp.asarray(np.linalg.cholesky(ssm.Q), f32)
    LR = jnp.asarray(np.linalg.cholesky(ssm.R), f32)
    L0 = jnp.asarray(np.linalg.cholesky(ssm.P0), f32)
    m0 = jnp.asarray(ssm.m0, f32)
    d = ssm.state_dim
    return _bootstrap_jit(key, ys, A, C, LQ, LR, L0, m0, d, num_particles, ess_threshold, scheme)


@jax.jit(static_argnums=(8, 9, 10, 11))
def _bootstrap_jit(key, ys, A, C, LQ, LR, L0, m0, d, n, ess_threshold, scheme):
    k_init, k_scan = jax.random.split(key)
    x = m0 + jax.random.normal(k_init, (n, d)) @ L0.T
    lw = jnp.zeros(n)

    def weigh(x, lw, y):
        lw_new = lw + _gaussian_logpdf_rows(y - x @ C.T, LR)
        return lw_new, log_mean_weight(lw_new) - log_mean_weight(lw)

    def summary(x, lw):
        w = jnp.exp(lw - jax.scipy.special.logsumexp(lw))
        return w @ x, ess(lw)

    lw, inc0 = weigh(x, lw, ys[0])
    mean0, ess0 = summary(x, lw)

    def step(carry, inputs):
        x, lw = carry
        key, y = inputs
        k_res, k_move = jax.random.split(key)
        do = should_resample(lw, ess_threshold)
        x, lw = jax.lax.cond(
            do,
            lambda: (x[resample(k_res, lw, scheme=scheme)], jnp.zeros_like(lw)),
            lambda: (x, lw),
        )
        x = x @ A.T + jax.random.normal(k_move, (n, d)) @ LQ.T
        lw, inc = weigh(x, lw, y)
        mean, ess_t = summary(x, lw)
        return (x, lw), (inc, mean, ess_t, do)

    keys = jax.random.split(k_scan, ys.shape[0] - 1)
    (x, lw), (incs, means, esses, flags) = jax.lax.scan(step, (x, lw), (keys, ys[1:]))
    incs = jnp.concatenate([inc0[None], incs])
    means = jnp.concatenate([mean0[None], means])
    esses = jnp.concatenate([ess0[None], esses])
    flags = jnp.concatenate([jnp.zeros(1, bool), flags])
    acc = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    total = jnp.sum(incs.astype(acc))
    return BootstrapResult(Particles(x, lw), total, incs, means, esses, flags)
