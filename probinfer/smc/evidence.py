"""Estimators of the tempering evidence increments ``log E_{pi_lambda}[exp(delta l(theta))]``.

Two estimators of the same increment from ``N`` equally weighted particles of ``pi_lambda``:

* ``"is"``: the plain importance-sampling mean ``log mean_i exp(delta l_i)``, the standard
  SMC estimator (its exponential, multiplied over steps, is unbiased for ``Z``);
* ``"zv"``: the same mean with zero-variance control variates (Mira, Solgi & Imparato 2013;
  South, Oates, Mira & Drovandi 2022). For a polynomial ``h`` the Stein identity gives
  ``E_pi[Delta h + grad h . grad log pi] = 0``, so these functions of the particles and their
  scores can be subtracted from the weights with fitted regression coefficients. Degree 2
  (linear and quadratic ``h``) removes every part of the weights that is quadratic in
  ``theta`` for a Gaussian ``pi``; since ``delta l`` is close to quadratic near the
  posterior, the variance of the increment drops several-fold at no extra likelihood cost
  (the scores cost one gradient evaluation per step).

The coefficients are cross-fitted: fitted on one half of the particles (contiguous in
index, so that resampled siblings stay together) and applied to the other, both ways. With
coefficients fitted on the same particles the estimate has an ``O(p / N)`` bias (``p``
regressors) that accumulates over tempering steps; cross-fitting removes it for independent
halves. Coordinates are standardised by the fitting half's mean and standard deviation (the
spanned space is unchanged; the least-squares problem is better conditioned).

Control variates are not always reliable: with heavy-tailed scores or weights (a funnel,
e.g. a hierarchical scale near 0, or the heavy-tailed prior draws of the first tempering
step) a few particles dominate the fit, the fitted coefficients do not transfer to the
other half and the adjusted mean is badly off. Cross-fitting gives a direct check: the
control variates are used only if the out-of-sample residuals ``w_i - f_i . beta`` have a
smaller variance than the weights; otherwise the increment is the plain mean (on centred
eight schools this takes the log Z RMSE from 0.235 back to the plain 0.035, while the
logistic-regression benchmark keeps its gain, 0.047 vs 0.076 plain over 30 seeds).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg

from probinfer.weights import log_mean_weight

Array = jax.Array

__all__ = ["EVIDENCE_ESTIMATORS", "zv_degree", "zv_features", "zv_log_mean_weight"]

EVIDENCE_ESTIMATORS = ("auto", "zv", "is")


def zv_degree(num_particles: int, dim: int) -> int:
    """Polynomial degree of the control variates: ten particles per regressor in each half.

    Degree 2 has ``D + D (D + 1) / 2`` regressors, degree 1 has ``D``; 0 means none fit.
    """
    per_half = (num_particles // 2) // 10
    if dim + dim * (dim + 1) // 2 <= per_half:
        return 2
    if dim <= per_half:
        return 1
    return 0


def zv_features(
    theta: Array,
    score: Array,
    degree: int,
    center: Array | None = None,
    scale: Array | None = None,
) -> Array:
    """Zero-mean (under ``pi``) control variates ``Delta h + grad h . score`` for polynomial ``h``.

    Parameters
    ----------
    theta
        ``(N, D)`` particles from ``pi``.
    score
        ``(N, D)`` ``grad log pi(theta)``.
    degree
        1: ``h = z_j`` (features ``s_j``); 2: also ``h = z_j z_k`` and ``z_j^2 / 2``, with
        ``z = (theta - center) / scale`` and ``s = score * scale`` the score in ``z`` units.
    center, scale
        ``(D,)``; default the particle mean and standard deviation. For the features to
        have mean exactly zero they must not depend on ``theta`` (cross-fitting passes the
        other half's).
    """
    center = jnp.mean(theta, axis=0) if center is None else center
    scale = jnp.std(theta, axis=0) if scale is None else scale
    scale = jnp.maximum(scale, 1e-12)
    z = (theta - center) / scale
    s = score * scale
    if degree == 1:
        return s
    j, k = jnp.triu_indices(theta.shape[1])
    quad = z[:, k] * s[:, j] + z[:, j] * s[:, k]
    # h = z_j^2 / 2 has grad h . s = z_j s_j and Laplacian 1 (in z units)
    quad = jnp.where(j == k, 0.5 * quad + 1.0, quad)
    return jnp.concatenate([s, quad], axis=1)


def _least_squares(a: Array, b: Array) -> Array:
    """``argmin |a beta - b|`` by the normal equations (``p`` small, columns scaled), with a
    ridge of ``1e-6`` of the mean column norm; ``lstsq``'s SVD is ~50x slower on CPU here."""
    gram = a.T @ a
    ridge = 1e-6 * jnp.trace(gram) / gram.shape[0] + jnp.finfo(a.dtype).tiny
    chol = jnp.linalg.cholesky(gram + ridge * jnp.eye(gram.shape[0], dtype=a.dtype))
    return jax.scipy.linalg.cho_solve((chol, True), a.T @ b)


def _masked_mean(x: Array, mask: Array) -> Array:
    m = mask.reshape(mask.shape + (1,) * (x.ndim - 1)).astype(x.dtype)
    return jnp.sum(m * x, axis=0) / jnp.sum(m, axis=0)


def _cross_fitted_fit(theta, score, w, fit, other, degree):
    """Control-variate part ``f . beta`` of each particle in the ``other`` mask (0 outside
    it), with the coefficients ``beta`` fitted on the particles in the ``fit`` mask."""
    center = _masked_mean(theta, fit)
    scale = jnp.sqrt(_masked_mean((theta - center) ** 2, fit))
    f = zv_features(theta, score, degree, center, scale)
    a = jnp.where(fit[:, None], f - _masked_mean(f, fit), 0.0)
    b = jnp.where(fit, w - _masked_mean(w, fit), 0.0)
    return jnp.where(other, f @ _least_squares(a, b), 0.0)


def zv_log_mean_weight(
    log_w: Array,
    theta: Array,
    score: Array,
    degree: int,
    *,
    num_valid: Array | int | None = None,
    return_used: bool = False,
) -> Array | tuple[Array, Array]:
    """``log E_pi[w]`` from ``log_w`` (``-inf`` allowed) with cross-fitted control variates.

    The control variates are used only where they help out of sample: the cross-fitted
    residuals ``w_i - f_i . beta`` (each half's ``beta`` fitted on the other half) must have
    a smaller variance than the weights themselves. Otherwise the plain
    :func:`~probinfer.weights.log_mean_weight` is returned. This catches the cases where the
    regression does not transfer between the halves: heavy-tailed scores or weights (a
    funnel, such as a hierarchical scale near 0, or a heavy-tailed prior at the first
    tempering step), where a few particles dominate the fit and the adjusted mean is biased
    (centred eight schools: log Z RMSE 0.235 with the control variates everywhere, against
    0.035 for the plain mean). The plain mean is also returned when the scores are not
    finite or the adjusted mean is not positive.

    Parameters
    ----------
    log_w
        ``(N,)`` log weights.
    theta, score
        ``(N, D)`` particles of ``pi`` and ``grad log pi`` at them.
    degree
        Degree of the control variates (:func:`zv_degree`; 0: the plain mean).
    num_valid
        Only the first ``num_valid`` (traceable) particles are real (bucketed runs); the
        others are ignored. Default: all ``N``.
    return_used
        Also return whether the control variates were used (a boolean scalar).
    """
    n = log_w.shape[0]
    idx = jnp.arange(n)
    nv = n if num_valid is None else num_valid
    real = idx < nv
    log_w = jnp.where(real, log_w, -jnp.inf)
    plain = log_mean_weight(log_w) + jnp.log(n / jnp.asarray(nv, log_w.dtype))
    if degree == 0:
        return (plain, jnp.asarray(False)) if return_used else plain
    w = jnp.exp(log_w - jnp.max(log_w))
    w = w / _masked_mean(w, real)
    ok = jnp.all(jnp.isfinite(jnp.where(real[:, None], score, 0.0)))
    score = jnp.where(ok & real[:, None], score, 0.0)
    theta = jnp.where(real[:, None], theta, 0.0)
    a, b = idx < nv // 2, real & (idx >= nv // 2)
    fitted = _cross_fitted_fit(theta, score, w, a, b, degree)
    fitted = fitted + _cross_fitted_fit(theta, score, w, b, a, degree)
    adjusted = 1.0 - _masked_mean(fitted, real)
    w_mean = _masked_mean(w, real)
    helps = _masked_mean((w - fitted - (w_mean - _masked_mean(fitted, real))) ** 2, real) < (
        _masked_mean((w - w_mean) ** 2, real)
    )
    used = ok & helps & jnp.isfinite(adjusted) & (adjusted > 0)
    est = jnp.where(used, plain + jnp.log(jnp.where(used, adjusted, 1.0)), plain)
    return (est, used) if return_used else est
