"""Meta-priors for training Distribution Transformers: (prior GMM, parameter, data) triples.

A task draws a batch of problems from an explicit key: a random Gaussian-mixture prior (random
number of components, weights, means and covariances), a parameter from that prior, and data
from the likelihood given the parameter. A DT trained on such draws learns the posterior for
*any* prior of the family, so the prior can be changed at inference time without retraining.

Tasks
-----
:class:`LinearGaussianTask`
    ``y_i = x_i^T theta + eps_i``, ``eps_i ~ N(0, noise_std^2)``, ``theta`` in R^D; one data
    source with tokens ``(x_i, y_i)``.
:class:`InverseGammaVarianceTask`
    ``y_i ~ N(0, sigma^2)`` with an Inverse-Gamma prior on ``sigma^2``, entered as its
    Gaussian-mixture fit in ``z = log sigma^2`` (:func:`amortized.exact.inverse_gamma_log_gmm`);
    one data source with tokens ``y_i``.

Every batch is a :class:`DTBatch` of numpy float32 arrays with padded components and data and
their masks. Sampling is done in float64 numpy from a generator seeded by the key. With
``sample(key, batch_size, theta_draws=S)`` the batch also carries ``S`` draws per problem from
the exact posterior (:mod:`amortized.exact`), drawn after everything else: the rest of the batch
is the same as with ``theta_draws=0``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

from amortized.priors import numpy_rng

__all__ = ["DTBatch", "InverseGammaVarianceTask", "LinearGaussianTask", "sample_gmm"]


class DTBatch(NamedTuple):
    """A padded batch of problems.

    Attributes
    ----------
    logits : (B, K) normalised prior log weights (0 on padded components)
    means : (B, K, D)
    scale_trils : (B, K, D, D) (identity on padded components)
    comp_mask : (B, K) bool
    tokens : (B, n_max, d_s) observation tokens of the (single) source
    data_mask : (B, n_max) bool
    theta : (B, D) the true parameter, in the network's unconstrained coordinates
    theta_draws : (B, S, D) or None
        ``S`` independent draws from the task's *exact* posterior given the problem's prior and
        data (same coordinates as ``theta``), when the task was sampled with ``theta_draws=S``
        (the Rao-Blackwellised training loss of :func:`amortized.dt_train.dt_loss`).
    """

    logits: np.ndarray
    means: np.ndarray
    scale_trils: np.ndarray
    comp_mask: np.ndarray
    tokens: np.ndarray
    data_mask: np.ndarray
    theta: np.ndarray
    theta_draws: np.ndarray | None = None

    def as_float32(self) -> DTBatch:
        """The batch with its real-valued arrays in float32 (what the network takes); the
        boolean masks and a missing ``theta_draws`` are kept as they are."""
        return DTBatch(*(a if a is None or a.dtype == bool else a.astype(np.float32) for a in self))


def sample_gmm(rng: np.random.Generator, logits, means, scale_trils) -> np.ndarray:
    """One draw per problem from padded GMMs (``logits`` ``-inf`` or masked by the caller)."""
    b, k, d = means.shape
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    u = rng.uniform(size=(b, 1))
    comp = np.minimum((np.cumsum(w, -1) < u).sum(-1), k - 1)
    rows = np.arange(b)
    z = rng.standard_normal((b, d))
    return means[rows, comp] + np.einsum("bij,bj->bi", scale_trils[rows, comp], z)


def _pad_mask(rng: np.random.Generator, b: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Random sizes in ``[lo, hi]`` and the matching ``(b, hi)`` prefix mask."""
    sizes = rng.integers(lo, hi + 1, size=b)
    return sizes, np.arange(hi)[None, :] < sizes[:, None]


def _task_dict(task) -> dict:
    """A task's JSON description: its fields, class name and prior family
    (:func:`amortized.dt.task_from_dict` rebuilds the task from it)."""
    return {**asdict(task), "class": type(task).__name__, "family": task.family}


def _check_draws(theta_draws) -> None:
    if not (isinstance(theta_draws, (int, np.integer)) and theta_draws >= 0):
        raise ValueError(f"theta_draws must be a non-negative integer, got {theta_draws!r}")


@dataclass(frozen=True)
class LinearGaussianTask:
    """GMM prior on ``theta`` in R^D, linear-Gaussian likelihood ``y = x^T theta + eps``.

    Parameters
    ----------
    param_dim : int
        ``D``.
    noise_std : float
        Standard deviation of ``eps`` (fixed: part of the task).
    n_range : (int, int)
        Number of observations per problem, uniform on the closed range.
    x_max : float
        Inputs are uniform on ``[-x_max, x_max]^D``.
    components : (int, int)
        Number of prior components, uniform on the closed range.
    mean_max : float
        Component means uniform on ``[-mean_max, mean_max]^D``.
    scale_range : (float, float)
        Component marginal standard deviations, log-uniform on this range.
    max_corr : float
        Bound on the absolute correlation of a component's coordinates.
    dirichlet : float
        Concentration of the symmetric Dirichlet on the weights.
    """

    param_dim: int = 2
    noise_std: float = 0.5
    n_range: tuple[int, int] = (0, 16)
    x_max: float = 2.0
    components: tuple[int, int] = (1, 4)
    mean_max: float = 3.0
    scale_range: tuple[float, float] = (0.3, 2.0)
    max_corr: float = 0.7
    dirichlet: float = 2.0

    family = "gaussian-mixture"

    def __post_init__(self):
        object.__setattr__(self, "n_range", tuple(int(v) for v in self.n_range))
        object.__setattr__(self, "components", tuple(int(v) for v in self.components))
        object.__setattr__(self, "scale_range", tuple(float(v) for v in self.scale_range))
        if not (isinstance(self.param_dim, int) and self.param_dim >= 1):
            raise ValueError(f"param_dim must be a positive integer, got {self.param_dim!r}")
        if not (self.noise_std > 0 and self.x_max > 0 and self.mean_max >= 0):
            raise ValueError("noise_std and x_max must be > 0 and mean_max >= 0")
        if not (0 <= self.n_range[0] <= self.n_range[1]):
            raise ValueError(f"n_range must satisfy 0 <= lo <= hi, got {self.n_range}")
        if not (1 <= self.components[0] <= self.components[1]):
            raise ValueError(f"components must satisfy 1 <= lo <= hi, got {self.components}")
        if not (0 < self.scale_range[0] <= self.scale_range[1]):
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi, got {self.scale_range}")
        if not (0 <= self.max_corr < 1 and self.dirichlet > 0):
            raise ValueError("max_corr must lie in [0, 1) and dirichlet must be > 0")

    @property
    def source_dims(self) -> tuple[int, ...]:
        return (self.param_dim + 1,)

    def to_dict(self) -> dict:
        return _task_dict(self)

    def sample_priors(self, rng: np.random.Generator, b: int):
        """Padded random GMM priors: ``(logits, means, scale_trils, comp_mask)``."""
        d = self.param_dim
        k_lo, k_hi = self.components
        sizes, comp_mask = _pad_mask(rng, b, k_lo, k_hi)
        g = rng.gamma(self.dirichlet, size=(b, k_hi)) * comp_mask
        w = g / g.sum(-1, keepdims=True)
        logits = np.where(comp_mask, np.log(np.where(comp_mask, w, 1.0)), 0.0)
        means = rng.uniform(-self.mean_max, self.mean_max, size=(b, k_hi, d))
        lo, hi = np.log(self.scale_range)
        scales = np.exp(rng.uniform(lo, hi, size=(b, k_hi, d)))
        # Cholesky factor of a correlation matrix: row i = (u_i1..u_i,i-1, 1) / norm; for D = 2
        # the correlation is u / sqrt(1 + u^2), uniform bound max_corr
        bound = self.max_corr / math.sqrt(1.0 - self.max_corr**2)
        corr_chol = np.tril(rng.uniform(-bound, bound, size=(b, k_hi, d, d)), -1) + np.eye(d)
        corr_chol /= np.linalg.norm(corr_chol, axis=-1, keepdims=True)
        trils = scales[..., None] * corr_chol
        trils = np.where(comp_mask[..., None, None], trils, np.eye(d))
        means = np.where(comp_mask[..., None], means, 0.0)
        return logits, means, trils, comp_mask

    def simulate(self, rng: np.random.Generator, theta: np.ndarray, n: int):
        """``x (B, n, D)`` and ``y (B, n)`` given ``theta (B, D)``."""
        b, d = theta.shape
        x = rng.uniform(-self.x_max, self.x_max, size=(b, n, d))
        y = np.einsum("bnd,bd->bn", x, theta) + self.noise_std * rng.standard_normal((b, n))
        return x, y

    def sample(self, key, batch_size: int, theta_draws: int = 0) -> DTBatch:
        """A padded batch of ``batch_size`` problems (same key, same batch).

        ``theta_draws > 0`` adds that many draws per problem from the exact GMM posterior
        (:func:`amortized.exact.linear_gaussian_posterior`).
        """
        _check_draws(theta_draws)
        rng = numpy_rng(key)
        logits, means, trils, comp_mask = self.sample_priors(rng, batch_size)
        theta = sample_gmm(rng, np.where(comp_mask, logits, -np.inf), means, trils)
        _, data_mask = _pad_mask(rng, batch_size, *self.n_range)
        x, y = self.simulate(rng, theta, self.n_range[1])
        tokens = np.concatenate([x, y[..., None]], axis=-1) * data_mask[..., None]
        draws = None
        if theta_draws:
            from amortized.exact import gmm_draws, linear_gaussian_posterior

            w0 = np.where(comp_mask, np.exp(logits), 0.0)
            cov0 = trils @ np.swapaxes(trils, -1, -2)
            w, mu, cov = linear_gaussian_posterior(w0, means, cov0, x, y, self.noise_std, data_mask)
            draws = gmm_draws(rng, theta_draws, w, mu, np.linalg.cholesky(cov)).swapaxes(0, 1)
        batch = DTBatch(logits, means, trils, comp_mask, tokens, data_mask, theta, draws)
        return batch.as_float32()


@dataclass(frozen=True)
class InverseGammaVarianceTask:
    """Inverse-Gamma prior on a Normal variance, entered as a GMM fit in ``z = log sigma^2``.

    ``sigma^2 ~ IG(a, b)``, ``y_i ~ N(0, sigma^2)``. Training priors are the ``n_components``
    fits of ``IG(a, b)`` with ``a`` on a grid of ``n_shapes`` points of ``a_range`` and the
    prior median of ``sigma^2`` log-uniform on ``median_range``. The fit is only the network's
    input: the parameter is drawn from the true prior ``IG(a, b)`` (so the target is the exact
    posterior ``IG(a + n/2, b + SS/2)``, as in the evaluation) and the data from the likelihood.
    """

    a_range: tuple[float, float] = (2.0, 10.0)
    median_range: tuple[float, float] = (0.1, 10.0)
    n_range: tuple[int, int] = (1, 20)
    n_components: int = 5
    n_shapes: int = 32

    family = "inverse-gamma (gaussian-mixture fit in log sigma^2)"
    param_dim = 1
    source_dims = (1,)

    def __post_init__(self):
        object.__setattr__(self, "a_range", tuple(float(v) for v in self.a_range))
        object.__setattr__(self, "median_range", tuple(float(v) for v in self.median_range))
        object.__setattr__(self, "n_range", tuple(int(v) for v in self.n_range))
        if not (0 < self.a_range[0] <= self.a_range[1]):
            raise ValueError(f"a_range must satisfy 0 < lo <= hi, got {self.a_range}")
        if not (0 < self.median_range[0] <= self.median_range[1]):
            raise ValueError(f"median_range must satisfy 0 < lo <= hi, got {self.median_range}")
        if not (0 <= self.n_range[0] <= self.n_range[1]):
            raise ValueError(f"n_range must satisfy 0 <= lo <= hi, got {self.n_range}")

    def to_dict(self) -> dict:
        return _task_dict(self)

    def _shape_fits(self):
        """GMM fits of ``log sigma^2`` for ``IG(a, 1)`` on a grid of shapes ``a`` (cached)."""
        cache = self.__dict__.get("_fits")
        if cache is None:
            from amortized.exact import inverse_gamma_log_gmm

            grid = np.linspace(self.a_range[0], self.a_range[1], self.n_shapes)
            cache = (grid, inverse_gamma_log_gmm(grid, 1.0, self.n_components))
            object.__setattr__(self, "_fits", cache)
        return cache

    def sample(self, key, batch_size: int, theta_draws: int = 0) -> DTBatch:
        """A batch of ``batch_size`` problems (same key, same batch).

        ``theta_draws > 0`` adds that many draws per problem of ``z = log sigma^2`` from the
        exact posterior ``IG(a + n/2, b + SS/2)`` (:func:`amortized.exact.inverse_gamma_posterior`).
        """
        from scipy.special import gammaincinv

        _check_draws(theta_draws)
        rng = numpy_rng(key)
        grid, (fw, fmu, fsd) = self._shape_fits()
        idx = rng.integers(0, len(grid), size=batch_size)
        a = grid[idx]
        lo, hi = np.log(self.median_range)
        median = np.exp(rng.uniform(lo, hi, size=batch_size))
        # IG(a, b) median = b / gamma_median(a); log sigma^2 shifts by log b
        log_b = np.log(median) + np.log(gammaincinv(a, 0.5))
        w, means, sds = fw[idx], fmu[idx] + log_b[:, None], fsd[idx]
        logits = np.log(w)
        means, trils = means[..., None], sds[..., None, None]
        comp_mask = np.ones(logits.shape, dtype=bool)
        # the parameter comes from the true prior IG(a, b): sigma^2 = b / Gamma(a, 1); the fit
        # is only what the network is told
        z = (log_b - np.log(rng.gamma(a)))[:, None]
        sizes, data_mask = _pad_mask(rng, batch_size, *self.n_range)
        y = np.exp(0.5 * z) * rng.standard_normal((batch_size, self.n_range[1]))
        tokens = (y * data_mask)[..., None]
        draws = None
        if theta_draws:
            from amortized.exact import inverse_gamma_posterior

            a1, b1 = inverse_gamma_posterior(a, np.exp(log_b), y, data_mask)
            g = rng.gamma(a1[:, None], size=(batch_size, theta_draws))
            draws = (np.log(b1)[:, None] - np.log(g))[..., None]
        batch = DTBatch(logits, means, trils, comp_mask, tokens, data_mask, z, draws)
        return batch.as_float32()
