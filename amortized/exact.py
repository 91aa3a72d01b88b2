"""Exact posteriors of the Distribution Transformer tasks (float64 numpy), and a KL estimator.

* :func:`linear_gaussian_posterior`: GMM prior, ``y_i = x_i^T theta + N(0, s^2)``. Each
  component is updated by the conjugate Gaussian formulas and reweighted by its marginal
  likelihood ``N(y | X mu_k, X Sigma_k X^T + s^2 I)``; the posterior is again a GMM.
* :func:`gmm_linear_predict`: the predict step of a linear-Gaussian state-space model applied
  to a GMM (each component ``N(A mu, A Sigma A^T + Q)``, weights unchanged).
* :func:`inverse_gamma_posterior`: ``sigma^2 ~ IG(a, b)``, ``y_i ~ N(0, sigma^2)`` gives
  ``IG(a + n/2, b + sum y_i^2 / 2)``; :func:`log_inverse_gamma_log_prob` is the density of
  ``z = log sigma^2`` and :func:`inverse_gamma_log_gmm` its Gaussian-mixture fit (how an
  Inverse-Gamma prior enters a Distribution Transformer).
* :func:`kl_monte_carlo`: ``KL(p || q)`` from draws of ``p``, with its standard error;
  :func:`gmm_log_density` and :func:`gmm_draws`: float64 density and draws of batched GMMs
  (zero weights allowed), for such estimates.
"""

from __future__ import annotations

import math

import numpy as np

from amortized.checks import finite_array

__all__ = [
    "gmm_draws",
    "gmm_linear_predict",
    "gmm_log_density",
    "inverse_gamma_log_gmm",
    "inverse_gamma_posterior",
    "kl_monte_carlo",
    "linear_gaussian_posterior",
    "log_inverse_gamma_log_prob",
]


def _f64(a, name: str) -> np.ndarray:
    return finite_array(a, name, np.float64)


def linear_gaussian_posterior(weights, means, covariances, x, y, noise_std: float, mask=None):
    """Exact posterior of a GMM prior under ``y_i = x_i^T theta + N(0, noise_std^2)``.

    Parameters
    ----------
    weights : (..., K)
    means : (..., K, D)
    covariances : (..., K, D, D)
    x : (..., n, D)
    y : (..., n)
    noise_std : float
    mask : bool (..., n), optional
        False marks padding (ignored observations).

    Returns
    -------
    weights, means, covariances
        The posterior GMM's parameters, same shapes as the prior's.
    """
    w = _f64(weights, "weights")
    mu = _f64(means, "means")
    cov = _f64(covariances, "covariances")
    x = _f64(x, "x")
    y = _f64(y, "y")
    if not noise_std > 0:
        raise ValueError(f"noise_std must be > 0, got {noise_std!r}")
    if x.shape[:-1] != y.shape or x.shape[-1] != mu.shape[-1]:
        raise ValueError(
            f"x must have shape y.shape + (D,) = {y.shape + mu.shape[-1:]}, got {x.shape}"
        )
    m = np.ones(y.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    s2 = float(noise_std) ** 2
    xm = x * m[..., None]
    ym = y * m
    # natural parameters of the likelihood: X^T X / s^2 and X^T y / s^2
    xtx = np.einsum("...ni,...nj->...ij", xm, xm) / s2
    xty = np.einsum("...ni,...n->...i", xm, ym) / s2
    prec0 = np.linalg.inv(cov)
    prec = prec0 + xtx[..., None, :, :]
    post_cov = np.linalg.inv(prec)
    post_cov = 0.5 * (post_cov + np.swapaxes(post_cov, -1, -2))
    h = np.einsum("...kij,...kj->...ki", prec0, mu) + xty[..., None, :]
    post_mean = np.einsum("...kij,...kj->...ki", post_cov, h)
    # log marginal likelihood of component k, from the completed square:
    # log N(y | X mu, X S X^T + s2 I) = -n/2 log(2 pi s2) - y'y/(2 s2)
    #     + 1/2 (h' S' h - mu' P0 mu) + 1/2 (log|S'| - log|S|)
    n = m.sum(-1)[..., None]
    yty = np.sum(ym**2, -1)[..., None] / s2
    quad = np.einsum("...ki,...ki->...k", h, post_mean) - np.einsum(
        "...ki,...kij,...kj->...k", mu, prec0, mu
    )
    logdet = np.linalg.slogdet(post_cov)[1] - np.linalg.slogdet(cov)[1]
    log_ml = -0.5 * n * math.log(2 * math.pi * s2) - 0.5 * yty + 0.5 * quad + 0.5 * logdet
    with np.errstate(divide="ignore"):  # zero-weight (padding) components stay at weight 0
        lw = np.log(w) + log_ml
    lw -= lw.max(-1, keepdims=True)
    post_w = np.exp(lw)
    post_w /= post_w.sum(-1, keepdims=True)
    return post_w, post_mean, post_cov


def gmm_linear_predict(weights, means, covariances, A, Q):
    """Push a GMM through ``theta' = A theta + N(0, Q)``: ``N(A mu_k, A Sigma_k A^T + Q)``."""
    A = _f64(A, "A")
    Q = _f64(Q, "Q")
    mu = np.einsum("ij,...kj->...ki", A, _f64(means, "means"))
    cov = np.einsum("ij,...kjl,ml->...kim", A, _f64(covariances, "covariances"), A) + Q
    return _f64(weights, "weights"), mu, 0.5 * (cov + np.swapaxes(cov, -1, -2))


def inverse_gamma_posterior(a, b, y, mask=None):
    """``IG(a + n/2, b + sum(y^2)/2)``: the conjugate posterior of a zero-mean Normal variance."""
    a = _f64(a, "a")
    b = _f64(b, "b")
    y = _f64(y, "y")
    if np.any(a <= 0) or np.any(b <= 0):
        raise ValueError("a and b must be > 0")
    m = np.ones(y.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    return a + 0.5 * m.sum(-1), b + 0.5 * np.sum((y * m) ** 2, -1)


def log_inverse_gamma_log_prob(z, a, b):
    """Log density of ``z = log sigma^2`` when ``sigma^2 ~ IG(a, b)`` (Jacobian included).

    ``log p(z) = a log b - lgamma(a) - a z - b exp(-z)``.
    """
    from scipy.special import gammaln

    z = np.asarray(z, dtype=np.float64)
    return a * np.log(b) - gammaln(a) - a * z - b * np.exp(-z)


def inverse_gamma_log_gmm(
    a, b, n_components: int = 5, n_points: int = 4096, n_iter: int = 300, chunk: int = 64
):
    """Gaussian-mixture fit of the density of ``log sigma^2`` under ``IG(a, b)``.

    Weighted EM on ``n_points`` equally spaced quantiles of ``z = log sigma^2`` (a deterministic
    stand-in for draws, so the fit approximately minimises ``KL(IG || GMM)``), started from
    components at evenly spaced quantiles. The family is a location family in ``log b``: the
    fit for ``b`` is the fit for ``b = 1`` shifted by ``log b``.

    Parameters
    ----------
    a, b : float or array
        Shape and scale (broadcast together); arrays are fitted in vectorised chunks of
        ``chunk`` problems, each exactly as a scalar call would.

    Returns
    -------
    weights, means, sds : arrays ``shape + (n_components,)``
        Components sorted by mean; ``shape`` is the broadcast shape of ``a`` and ``b``.
    """
    from scipy.special import gammaincinv

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if not (np.all(a > 0) and np.all(b > 0)):
        raise ValueError(f"a and b must be > 0, got a={a!r}, b={b!r}")
    if not (isinstance(n_components, int) and n_components >= 1):
        raise ValueError(f"n_components must be a positive integer, got {n_components!r}")
    shape = np.broadcast_shapes(a.shape, b.shape)
    a_flat = np.broadcast_to(a, shape).reshape(-1)
    log_b = np.log(np.broadcast_to(b, shape).reshape(-1))
    u = (np.arange(n_points) + 0.5) / n_points
    k = n_components
    out = np.empty((3, a_flat.size, k))
    for i in range(0, a_flat.size, chunk):
        # sigma^2 = 1 / G with G ~ Gamma(a, 1): z = -log G  (b = 1)
        z = -np.log(gammaincinv(a_flat[i : i + chunk, None], u[::-1]))  # (P, N)
        mu = np.quantile(z, (np.arange(k) + 0.5) / k, axis=-1).T  # (P, k)
        sd = np.repeat(z.std(-1, keepdims=True) / k, k, axis=-1)
        w = np.full(mu.shape, 1.0 / k)
        for _ in range(n_iter):
            logp = (
                np.log(w)[:, None]
                - np.log(sd)[:, None]
                - 0.5 * ((z[..., None] - mu[:, None]) / sd[:, None]) ** 2
            )
            r = np.exp(logp - logp.max(-1, keepdims=True))
            r /= r.sum(-1, keepdims=True)
            nk = r.sum(1)
            w = nk / nk.sum(-1, keepdims=True)
            mu = (r * z[..., None]).sum(1) / nk
            sd = np.sqrt(np.maximum((r * (z[..., None] - mu[:, None]) ** 2).sum(1) / nk, 1e-8))
        order = np.argsort(mu, axis=-1)
        for j, v in enumerate((w, mu, sd)):
            out[j, i : i + chunk] = np.take_along_axis(v, order, axis=-1)
    out[1] += log_b[:, None]
    return tuple(v.reshape(shape + (k,)) for v in out)


def kl_monte_carlo(log_p, log_q) -> tuple[float, float]:
    """``KL(p || q)`` estimate and standard error from ``log p(x_i) - log q(x_i)``, ``x_i ~ p``.

    Arrays of shape ``(S, ...)``: the estimate averages over all axes; the standard error is
    that of the mean over the first axis of the per-draw differences averaged over the rest.
    """
    diff = np.asarray(log_p, dtype=np.float64) - np.asarray(log_q, dtype=np.float64)
    per_draw = diff.reshape(diff.shape[0], -1).mean(-1)
    return float(per_draw.mean()), float(per_draw.std(ddof=1) / math.sqrt(per_draw.size))


def gmm_log_density(x, weights, means, scale_trils):
    """``log sum_k w_k N(x | mu_k, L_k L_k^T)`` in float64 for a batch of GMMs.

    Parameters
    ----------
    x : (S, B, D)
        Points (``S`` per GMM).
    weights : (B, K)
        Non-negative, summing to one (zero weights are allowed).
    means : (B, K, D)
    scale_trils : (B, K, D, D)
        Lower Cholesky factors of the covariances.

    Returns
    -------
    (S, B) array
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    mu = np.asarray(means, dtype=np.float64)
    tril = np.asarray(scale_trils, dtype=np.float64)
    d = mu.shape[-1]
    linv = np.linalg.inv(tril)
    z = np.einsum("bkij,sbkj->sbki", linv, x[:, :, None, :] - mu)
    half_logdet = np.log(np.diagonal(tril, 0, -2, -1)).sum(-1)
    with np.errstate(divide="ignore"):
        lw = np.log(w)
    comp = lw - half_logdet - 0.5 * np.sum(z**2, -1) - 0.5 * d * math.log(2 * math.pi)
    top = comp.max(-1, keepdims=True)
    return (top + np.log(np.exp(comp - top).sum(-1, keepdims=True)))[..., 0]


def gmm_draws(rng: np.random.Generator, n: int, weights, means, scale_trils) -> np.ndarray:
    """``n`` draws from each of a batch of GMMs (shapes as :func:`gmm_log_density`), ``(n, B, D)``.

    Uses ``rng`` (a numpy generator) for the component choices and the normal draws.
    """
    w = np.asarray(weights, dtype=np.float64)
    mu = np.asarray(means, dtype=np.float64)
    tril = np.asarray(scale_trils, dtype=np.float64)
    b, k, d = mu.shape
    u = rng.uniform(size=(n, b, 1))
    comp = np.minimum((np.cumsum(w, -1) < u).sum(-1), k - 1)  # (n, B)
    rows = np.arange(b)[None, :]
    eps = rng.standard_normal((n, b, d))
    return mu[rows, comp] + np.einsum("sbij,sbj->sbi", tril[rows, comp], eps)
