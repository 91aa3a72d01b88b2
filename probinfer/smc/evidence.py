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


def _cross_fitted_fit(fit, other, degree):
    """Control-variate part ``f . beta`` of each particle of ``other``, with the
    coefficients ``beta`` fitted on ``fit`` (``f`` centred by ``fit``'s features)."""
    (th_f, s_f, w_f), (th_o, s_o) = fit, other
    center, scale = jnp.mean(th_f, axis=0), jnp.std(th_f, axis=0)
    f_fit = zv_features(th_f, s_f, degree, center, scale)
    f_other = zv_features(th_o, s_o, degree, center, scale)
    beta = _least_squares(f_fit - jnp.mean(f_fit, axis=0), w_f - jnp.mean(w_f))
    return f_other @ beta


def zv_log_mean_weight(
    log_w: Array, theta: Array, score: Array, degree: int, *, return_used: bool = False
) -> Array | tuple[Array, Array]:
    """``log E_pi[w]`` from ``log_w`` (``-inf`` allowed) with cross-fitted control variates.

    The control variates are used only where they help out of sample: the cross-fitted
    residuals ``w_i - f_i . beta`` (each half's ``beta`` fitted on the other half) must have
    a smaller variance than the weights themselves. Otherwise the plain
    :func:`~probinfer.weights.log_mean_weight` is returned. This catches the cases where the
    regression does not transfer between the halves: heavy-tailed scores or weights (a
    funnel, such as a hierarchical scale near 0, or a heavy-tailed prior at the first
    tempering step), where a few particles dominate the fit and the adjusted mean is biased
    (centred eight schools: log Z off by -0.10 on average with the control variates
    everywhere, against 0.005 for the plain mean). The plain mean is also returned when the
    scores are not finite or the adjusted mean is not positive.

    Parameters
    ----------
    log_w
        ``(N,)`` log weights.
    theta, score
        ``(N, D)`` particles of ``pi`` and ``grad log pi`` at them.
    degree
        Degree of the control variates (:func:`zv_degree`; 0: the plain mean).
    return_used
        Also return whether the control variates were used (a boolean scalar).
    """
    plain = log_mean_weight(log_w)
    if degree == 0:
        return (plain, jnp.asarray(False)) if return_used else plain
    n = log_w.shape[0]
    h = n // 2
    w = jnp.exp(log_w - jnp.max(log_w))
    w = w / jnp.mean(w)
    ok = jnp.all(jnp.isfinite(score))
    score = jnp.where(ok, score, 0.0)
    a, b = slice(0, h), slice(h, n)
    fit_b = _cross_fitted_fit((theta[a], score[a], w[a]), (theta[b], score[b]), degree)
    fit_a = _cross_fitted_fit((theta[b], score[b], w[b]), (theta[a], score[a]), degree)
    fitted = jnp.concatenate([fit_a, fit_b])  # particle order
    adjusted = 1.0 - jnp.mean(fitted)
    helps = jnp.var(w - fitted) < jnp.var(w)
    used = ok & helps & jnp.isfinite(adjusted) & (adjusted > 0)
    est = jnp.where(used, plain + jnp.log(jnp.where(used, adjusted, 1.0)), plain)
    return (est, used) if return_used else est
