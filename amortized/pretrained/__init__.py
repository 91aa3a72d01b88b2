"""Pretrained amortized models shipped inside the package (safetensors + JSON, loaded offline).

Available models
----------------
``"gp-1d"``
    A PFN: 1-D regression under the RBF Gaussian-process prior :data:`GP_1D_PRIOR` (lengthscale
    0.25, outputscale 1, noise variance 0.05, ``x ~ U[0, 1]``), trained with 0..50 context points
    by ``scripts/train_pfn_gp.py`` (see ``config.json``-style metadata in ``gp_1d.json``).
``"dt-linear-2d"``
    A :class:`~amortized.dt.DistributionTransformer` for task (a) of issue 12: any Gaussian-mixture
    prior (1-4 components) on ``theta`` in R^2 and the likelihood ``y_i = x_i^T theta +
    N(0, 0.5^2)``, 0..16 observations with ``x`` in ``[-2, 2]^2``. The prior is an input, so it
    can be changed without retraining. The task (``noise_std``, ``n_range``, ``x_max``,
    ``scale_range``, ...) is stored in ``dt_linear_2d.json`` and exposed as attributes of the
    loaded model; inputs outside those ranges warn. Trained by ``scripts/train_dt.py``.
``"dt-invgamma"``
    A :class:`~amortized.dt.DistributionTransformer` for task (b) of issue 12: an
    Inverse-Gamma prior ``IG(a, b)`` on the variance of ``y_i ~ N(0, sigma^2)``, given as its
    5-component Gaussian-mixture fit in ``log sigma^2``
    (:func:`amortized.exact.inverse_gamma_log_gmm`), ``a`` in ``[2, 10]``, prior median of
    ``sigma^2`` in ``[0.1, 10]``, 1..20 observations; the posterior is a mixture in
    ``log sigma^2`` (``constrained_log_prob`` gives the density of ``sigma^2``). Trained by
    ``scripts/train_dt.py --task ig``.
"""

from __future__ import annotations

from pathlib import Path

from amortized.priors import GPPrior

__all__ = ["GP_1D_PRIOR", "GP_1D_TRAIN", "available", "load_pretrained", "prior_of"]

#: The prior of the shipped ``"gp-1d"`` model (fixed hyperparameters: exact GP is Bayes-optimal).
GP_1D_PRIOR = GPPrior(lengthscale=0.25, outputscale=1.0, noise=0.05, x_dim=1)
#: Dataset sizes used to train it (n_train in [0, 50], at least 10 held-out points per dataset).
GP_1D_TRAIN = {"n_points": 60, "min_train": 0, "max_train": 50}

_HERE = Path(__file__).parent
_MODELS = {"gp-1d": ("gp_1d", GP_1D_PRIOR)}
#: Distribution Transformers: the prior is an input of the model, not fixed by training
_DT_MODELS = {"dt-linear-2d": "dt_linear_2d", "dt-invgamma": "dt_invgamma"}


def available() -> list[str]:
    """Names accepted by :func:`load_pretrained`."""
    return sorted({**_MODELS, **_DT_MODELS})


def load_pretrained(name: str = "gp-1d", device: str = "cpu"):
    """Load a shipped model by name (offline; nothing is downloaded).

    Returns
    -------
    PFN or DistributionTransformer
        A :class:`~amortized.pfn.PFN` for ``"gp-*"`` names, a
        :class:`~amortized.dt.DistributionTransformer` for ``"dt-*"`` names.

    Raises
    ------
    ValueError
        If ``name`` is unknown (the message lists the available names) or the files are missing.
    """
    from amortized.pfn import PFN

    if name in _DT_MODELS:
        from amortized.dt import DistributionTransformer

        return DistributionTransformer.load(_HERE, device=device, name=_DT_MODELS[name])
    if name not in _MODELS:
        raise ValueError(f"unknown pretrained model name {name!r}; available: {available()}")
    stem, _ = _MODELS[name]
    return PFN.load(_HERE, device=device, name=stem)


def prior_of(name: str) -> GPPrior:
    """The prior a shipped PFN was trained on (a DT's prior is an input: see its ``task``)."""
    if name in _DT_MODELS:
        raise ValueError(
            f"{name!r} is a Distribution Transformer: its prior is an input of "
            "posterior(), and load_pretrained(name).task describes its training range"
        )
    if name not in _MODELS:
        raise ValueError(f"unknown pretrained model name {name!r}; available: {available()}")
    return _MODELS[name][1]
