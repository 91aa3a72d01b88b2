"""Linear-Gaussian state-space models: simulation and the exact Kalman filter.

Particle filters for these models are :func:`probinfer.smc.particle_filter` (bootstrap,
or guided with the locally optimal proposal); :func:`bootstrap_filter` is a shorthand.

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

from probinfer.checks import check_num
from probinfer.resampling import Scheme

Array = jax.Array

__all__ = [
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

    Notes
    -----
    ``d`` and ``p`` are read from ``A`` and ``C``. A scalar covariance ``Q``, ``R`` or ``P0``
    means that multiple of the identity, and a scalar ``m0`` that constant vector, so only
    ``A`` and ``C`` need the full shapes (e.g. a 2-D state with the default ``P0 = I``).
    """

    A: np.ndarray
    Q: np.ndarray
    C: np.ndarray
    R: np.ndarray
    m0: np.ndarray
    P0: np.ndarray

    def __init__(self, A=0.9, Q=1.0, C=1.0, R=1.0, m0=0.0, P0=1.0):
        A, C = _as_matrix(A, "A"), _as_matrix(C, "C")
        d, p = A.shape[0], C.shape[0]
        Q, R, P0 = (
            _as_matrix(v, n) * (np.eye(k) if np.ndim(v) == 0 else 1.0)
            for v, n, k in ((Q, "Q", d), (R, "R", p), (P0, "P0", d))
        )
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
        check_num(num_steps, "num_steps")
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


def bootstrap_filter(
    key: Array,
    ssm: LinearGaussianSSM,
    observations,
    num_particles: int,
    *,
    ess_threshold: float = 0.5,
    scheme: Scheme = "systematic",
):
    """Bootstrap particle filter for a linear-Gaussian SSM.

    A thin wrapper of :func:`probinfer.smc.particle_filter` (``proposal="bootstrap"``),
    kept for the reference example; see that function for the result.
    """
    from probinfer.smc.state_space import particle_filter

    return particle_filter(
        key, ssm, observations, num_particles, ess_threshold=ess_threshold, scheme=scheme
    )
