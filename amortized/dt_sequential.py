"""Sequential inference with a Distribution Transformer on a linear-Gaussian state-space model.

For ``x_t = A x_{t-1} + N(0, Q)``, ``y_t = C x_t + N(0, R)``, a Gaussian-mixture filter needs
two steps per time: the predict step, which is closed form for a GMM
(:func:`amortized.exact.gmm_linear_predict`), and the update, which the DT does: the predicted
mixture is its prior and ``(C, y_t)`` its data (one observation per row of ``C``). The
posterior becomes the next prior. With a Gaussian initial state this is tracked against the
exact Kalman filter (:func:`probinfer.lgssm.kalman_filter`).
"""

from __future__ import annotations

import numpy as np

from amortized.exact import gmm_linear_predict

__all__ = ["dt_filter"]


def dt_filter(dt, prior, ssm, observations):
    """Filtering distributions ``p(x_t | y_1..t)`` with DT updates and exact GMM predicts.

    Parameters
    ----------
    dt : DistributionTransformer
        Trained on a linear-Gaussian task whose ``noise_std**2`` equals the observation
        variance ``R`` (scalar observations, one row of ``C`` per observation).
    prior : GaussianMixture
        Distribution of the first state ``x_1`` (batch shape ``()`` or ``(B,)``, one filter
        per batch element).
    ssm : LinearGaussianSSM
        Supplies ``A``, ``Q``, ``C`` and ``R`` (``m0``/``P0`` are ignored: ``prior`` is used).
    observations : array (T, p) or (B, T, p)

    Returns
    -------
    list of GaussianMixture
        The ``T`` filtering distributions.
    """
    from probinfer.distributions import GaussianMixture

    noise_var = getattr(dt, "noise_std", None)
    if noise_var is None:
        raise ValueError("dt must be trained on a task with a noise_std (a linear-Gaussian task)")
    r = np.asarray(ssm.R, dtype=np.float64)
    if not np.allclose(r, noise_var**2 * np.eye(r.shape[0]), rtol=1e-6):
        raise ValueError(
            f"ssm.R must be noise_std^2 I = {noise_var**2} I (the DT's likelihood), got {r}"
        )
    ys = np.asarray(observations, dtype=np.float64)
    single = prior.batch_shape == ()
    if single:
        ys = ys[None]
    p = ssm.C.shape[0]
    if ys.ndim != 3 or ys.shape[-1] != p:
        raise ValueError(
            f"observations must have shape (T, {p}) or (B, T, {p}), got {np.shape(observations)}"
        )
    b, t_len, _ = ys.shape
    c_rows = np.broadcast_to(ssm.C, (b, p, ssm.C.shape[1]))
    current = prior
    out = []
    for t in range(t_len):
        if t > 0:
            w, mu, cov = gmm_linear_predict(
                np.asarray(current.weights),
                np.asarray(current.means),
                np.asarray(current.covariances),
                ssm.A,
                ssm.Q,
            )
            current = GaussianMixture(mu, cov, logits=np.asarray(current.logits))
        y_t = ys[:, t]
        current = dt.posterior(current, c_rows[0] if single else c_rows, y_t[0] if single else y_t)
        out.append(current)
    return out
