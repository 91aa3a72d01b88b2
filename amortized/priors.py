"""Priors over datasets for prior-data fitted networks.

A :class:`Prior` draws a batch of regression datasets ``(x, y)`` from an explicit key:
``x`` has shape ``(B, N, d)`` and ``y`` shape ``(B, N)`` (numpy, float32). A PFN is trained on
such draws and learns the posterior predictive distribution of the prior (Müller et al. 2022).

Built-ins: :class:`GPPrior` (RBF kernel, fixed hyperparameters or log-normal hyperpriors),
:class:`BayesianLinearPrior`, :class:`MLPPrior` (random Bayesian neural networks) and
:class:`NumPyroPrior` (any NumPyro model with an ``x`` argument and an observed-free ``y`` site).

Keys are ``jax.random`` keys (typed, ``jax.random.key(s)``, or legacy uint32 pairs,
``jax.random.PRNGKey(s)``), as everywhere in probinfer; the same key always gives the same
datasets. Sampling uses numpy in float64 (batched Cholesky) seeded from the key's words, then
casts to float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "BayesianLinearPrior",
    "GPPrior",
    "MLPPrior",
    "NumPyroPrior",
    "Prior",
    "indexed_key",
    "numpy_rng",
]


def indexed_key(seed: int, index: int):
    """The typed ``jax.random`` key whose two threefry words are ``(seed, index)``.

    Used for streams indexed by an integer (training step ``t``, evaluation context size ``j``):
    key ``t`` of a run is a function of ``(seed, t)`` only, so a resumed run sees the data it
    would have seen uninterrupted. ``indexed_key(0, s)`` equals ``jax.random.PRNGKey(s)``.
    """
    import jax

    words = np.array([int(seed) % 2**32, int(index) % 2**32], dtype=np.uint32)
    return jax.random.wrap_key_data(words, impl="threefry2x32")


def key_words(key) -> np.ndarray:
    """The uint32 words of a ``jax.random`` key (typed or legacy); ``TypeError`` otherwise."""
    import jax

    if _is_typed_key(key):
        return np.asarray(jax.random.key_data(key), dtype=np.uint32).ravel()
    arr = np.asarray(key) if isinstance(key, (np.ndarray, jax.Array)) else None
    if arr is None or arr.dtype != np.uint32 or arr.shape != (2,):
        raise TypeError(
            "key must be a jax.random key (jax.random.key(seed) or jax.random.PRNGKey(seed)), "
            f"got {type(key).__name__}"
            + (f" of dtype {arr.dtype} and shape {arr.shape}" if arr is not None else "")
        )
    return arr


def numpy_rng(key) -> np.random.Generator:
    """A numpy ``Generator`` seeded deterministically from the words of a ``jax.random`` key."""
    return np.random.default_rng(key_words(key).tolist())


def _is_typed_key(key) -> bool:
    import jax

    return (
        isinstance(key, jax.Array)
        and hasattr(key, "dtype")
        and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    )


def _check_sizes(n_datasets: int, n_points: int) -> None:
    if not isinstance(n_datasets, (int, np.integer)) or n_datasets < 1:
        raise ValueError(f"n_datasets must be a positive integer, got {n_datasets!r}")
    if not isinstance(n_points, (int, np.integer)) or n_points < 1:
        raise ValueError(f"n_points must be a positive integer, got {n_points!r}")


@runtime_checkable
class Prior(Protocol):
    """Samples batches of datasets.

    Attributes
    ----------
    x_dim : int
        Input dimension ``d``.
    """

    x_dim: int

    def sample(self, key, n_datasets: int, n_points: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``x`` ``(n_datasets, n_points, x_dim)`` and ``y`` ``(n_datasets, n_points)``."""
        ...


def _uniform_x(rng: np.random.Generator, b: int, n: int, d: int) -> np.ndarray:
    return rng.uniform(0.0, 1.0, size=(b, n, d))


class _UnitBoxPrior:
    """The built-in priors' common draw: ``x ~ U[0, 1]^d``, then ``y`` given ``x`` from the
    subclass's :meth:`draw_y`, both from one numpy generator seeded by the key's words.

    The subclass (a frozen dataclass) names its fields that must be positive integers
    (``_counts``), positive finite numbers (``_positive``) and finite numbers ``>= 0``
    (``_non_negative``); a bad value is a ``ValueError`` naming the field.
    """

    x_dim: int
    _counts: ClassVar[tuple[str, ...]] = ("x_dim",)
    _positive: ClassVar[tuple[str, ...]] = ()
    _non_negative: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        for name in self._counts:
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in self._positive:
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")
        for name in self._non_negative:
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")

    def draw_y(self, rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
        """``y`` ``(B, N)`` given ``x`` ``(B, N, d)`` (float64)."""
        raise NotImplementedError

    def sample(self, key, n_datasets: int, n_points: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``x`` ``(n_datasets, n_points, x_dim)`` and ``y`` ``(n_datasets, n_points)``."""
        _check_sizes(n_datasets, n_points)
        rng = numpy_rng(key)
        x = _uniform_x(rng, n_datasets, n_points, self.x_dim)
        y = self.draw_y(rng, x)
        return x.astype(np.float32), y.astype(np.float32)


def rbf_kernel(x1: np.ndarray, x2: np.ndarray, lengthscale, outputscale) -> np.ndarray:
    """RBF kernel ``outputscale * exp(-|x1 - x2|^2 / (2 lengthscale^2))``, batched over axis 0.

    ``lengthscale`` and ``outputscale`` are scalars or arrays of shape ``(B,)``.
    """
    ls = np.asarray(lengthscale, dtype=float)
    os_ = np.asarray(outputscale, dtype=float)
    if ls.ndim:
        ls = ls[:, None, None]
        os_ = os_[:, None, None] if os_.ndim else os_
    elif os_.ndim:
        os_ = os_[:, None, None]
    d2 = np.sum((x1[..., :, None, :] - x2[..., None, :, :]) ** 2, axis=-1)
    return os_ * np.exp(-0.5 * d2 / ls**2)


@dataclass(frozen=True)
class GPPrior(_UnitBoxPrior):
    """Gaussian-process regression prior with an RBF kernel on ``x ~ U[0, 1]^d``.

    ``y = f(x) + eps``, ``f ~ GP(0, outputscale * exp(-r^2 / (2 lengthscale^2)))``,
    ``eps ~ N(0, noise)`` (``noise`` is a variance). If ``hyperprior_sd > 0`` the three
    hyperparameters are drawn per dataset from log-normals centred (in log space) at the given
    values with that standard deviation; with ``hyperprior_sd = 0`` they are fixed and
    :meth:`posterior_predictive` is the exact Bayes-optimal answer.
    """

    lengthscale: float = 0.25
    outputscale: float = 1.0
    noise: float = 0.05
    x_dim: int = 1
    hyperprior_sd: float = 0.0
    _positive = ("lengthscale", "outputscale", "noise")
    _non_negative = ("hyperprior_sd",)

    def hyperparameters(self, rng: np.random.Generator, n: int):
        """Per-dataset (lengthscale, outputscale, noise), each of shape ``(n,)``."""
        base = np.log([self.lengthscale, self.outputscale, self.noise])
        z = rng.standard_normal((3, n)) * self.hyperprior_sd if self.hyperprior_sd > 0 else 0.0
        ls, os_, nz = np.exp(base[:, None] + z) * np.ones((3, n))
        return ls, os_, nz

    def draw_y(self, rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
        n_datasets, n_points, _ = x.shape
        ls, os_, nz = self.hyperparameters(rng, n_datasets)
        k = rbf_kernel(x, x, ls, os_) + (nz[:, None, None] + 1e-8) * np.eye(n_points)
        chol = np.linalg.cholesky(k)
        return np.einsum("bij,bj->bi", chol, rng.standard_normal((n_datasets, n_points)))

    def posterior_predictive(
        self, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact GP posterior predictive mean and variance of ``y`` (fixed hyperparameters).

        Shapes: ``x_train (B, n, d)``, ``y_train (B, n)``, ``x_test (B, m, d)`` -> ``(B, m)`` each.
        ``n = 0`` gives the prior predictive ``N(0, outputscale + noise)``.
        """
        return gp_posterior_predictive(
            x_train, y_train, x_test, self.lengthscale, self.outputscale, self.noise
        )


def gp_posterior_predictive(x_train, y_train, x_test, lengthscale, outputscale, noise):
    """Exact RBF-GP posterior predictive (Cholesky, float64), batched over datasets.

    Returns mean and variance of a noisy test observation, both of shape ``(B, m)``.
    """
    xt = np.asarray(x_train, dtype=float)
    yt = np.asarray(y_train, dtype=float)
    xs = np.asarray(x_test, dtype=float)
    b, m = xs.shape[0], xs.shape[1]
    prior_var = float(outputscale) + float(noise)
    if xt.shape[1] == 0:
        return np.zeros((b, m)), np.full((b, m), prior_var)
    n = xt.shape[1]
    k = rbf_kernel(xt, xt, lengthscale, outputscale) + float(noise) * np.eye(n)
    ks = rbf_kernel(xt, xs, lengthscale, outputscale)  # (B, n, m)
    chol = np.linalg.cholesky(k)
    alpha = np.linalg.solve(chol, yt[..., None])  # L^{-1} y
    v = np.linalg.solve(chol, ks)  # L^{-1} k*
    mean = np.einsum("bnm,bn->bm", v, alpha[..., 0])
    var = prior_var - np.sum(v**2, axis=1)
    return mean, np.maximum(var, 1e-12)


@dataclass(frozen=True)
class BayesianLinearPrior(_UnitBoxPrior):
    """Bayesian linear regression ``y = w . x + b + eps``, ``w, b ~ N(0, weight_sd^2)``,
    ``eps ~ N(0, noise_sd^2)``, ``x ~ U[0, 1]^d``."""

    x_dim: int = 1
    weight_sd: float = 1.0
    noise_sd: float = 0.1
    _non_negative = ("weight_sd", "noise_sd")

    def draw_y(self, rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
        w = rng.standard_normal((x.shape[0], self.x_dim)) * self.weight_sd
        b = rng.standard_normal((x.shape[0], 1)) * self.weight_sd
        y = np.einsum("bnd,bd->bn", x, w) + b
        return y + self.noise_sd * rng.standard_normal(y.shape)


@dataclass(frozen=True)
class MLPPrior(_UnitBoxPrior):
    """Random-MLP (Bayesian neural network) prior: ``y = MLP_theta(x) + eps`` with i.i.d.
    ``N(0, 1/fan_in)`` weights, ``tanh`` hidden layers and Gaussian noise ``noise_sd``."""

    x_dim: int = 1
    hidden: int = 32
    layers: int = 2
    noise_sd: float = 0.1
    _counts = ("x_dim", "hidden")
    _non_negative = ("noise_sd",)

    def draw_y(self, rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
        n_datasets, n_points, _ = x.shape
        h = 2.0 * x - 1.0
        fan_in = self.x_dim
        for _ in range(self.layers):
            w = rng.standard_normal((n_datasets, fan_in, self.hidden)) / math.sqrt(fan_in)
            b = rng.standard_normal((n_datasets, 1, self.hidden))
            h = np.tanh(h @ w + b)
            fan_in = self.hidden
        w = rng.standard_normal((n_datasets, fan_in, 1)) / math.sqrt(fan_in)
        return (h @ w)[..., 0] + self.noise_sd * rng.standard_normal((n_datasets, n_points))


class NumPyroPrior:
    """Adapter: any NumPyro model ``model(x)`` that samples a site ``y_site`` of shape ``(N,)``.

    Parameters
    ----------
    model : callable
        NumPyro model taking ``x`` of shape ``(N, d)`` as its argument named ``x``.
    x_dim : int
        Input dimension; ``x ~ U[0, 1]^d`` unless ``x_sampler`` is given.
    y_site : str
        Name of the sample site holding the observations.
    x_sampler : callable, optional
        ``x_sampler(rng, n_datasets, n_points) -> (B, N, d)`` numpy array.
    """

    def __init__(self, model, x_dim: int = 1, y_site: str = "y", x_sampler=None):
        if not callable(model):
            raise TypeError(f"model must be a callable NumPyro model, got {type(model).__name__}")
        self.model = model
        self.x_dim = int(x_dim)
        self.y_site = y_site
        self.x_sampler = x_sampler
        self._predict = None

    def sample(self, key, n_datasets: int, n_points: int) -> tuple[np.ndarray, np.ndarray]:
        import jax
        from numpyro.infer import Predictive

        _check_sizes(n_datasets, n_points)
        rng = numpy_rng(key)
        if self.x_sampler is not None:
            x = np.asarray(self.x_sampler(rng, n_datasets, n_points), dtype=np.float32)
        else:
            x = _uniform_x(rng, n_datasets, n_points, self.x_dim).astype(np.float32)
        if self._predict is None:
            pred = Predictive(self.model, num_samples=1, return_sites=[self.y_site])

            def one(k, xi):
                return pred(k, x=xi)[self.y_site][0]

            self._predict = jax.jit(jax.vmap(one))
        keys = jax.random.split(jax.random.fold_in(key, 1), n_datasets)
        y = np.asarray(self._predict(keys, x), dtype=np.float32)
        if y.shape != (n_datasets, n_points):
            raise ValueError(
                f"site {self.y_site!r} must have shape (N,) = ({n_points},) per dataset, "
                f"got {y.shape[1:]}"
            )
        return x, y
