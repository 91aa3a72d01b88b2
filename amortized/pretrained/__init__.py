"""Pretrained PFNs shipped inside the package (weights as safetensors + JSON, loaded offline).

Available models
----------------
``"gp-1d"``
    1-D regression under the RBF Gaussian-process prior :data:`GP_1D_PRIOR` (lengthscale 0.25,
    outputscale 1, noise variance 0.05, ``x ~ U[0, 1]``), trained with 0..50 context points by
    ``scripts/train_pfn_gp.py`` (see ``config.json``-style metadata in ``gp_1d.json``).
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


def available() -> list[str]:
    """Names accepted by :func:`load_pretrained`."""
    return sorted(_MODELS)


def load_pretrained(name: str = "gp-1d", device: str = "cpu"):
    """Load a shipped PFN by name (offline; nothing is downloaded).

    Raises
    ------
    ValueError
        If ``name`` is unknown (the message lists the available names) or the files are missing.
    """
    from amortized.pfn import PFN

    if name not in _MODELS:
        raise ValueError(f"unknown pretrained model name {name!r}; available: {available()}")
    stem, _ = _MODELS[name]
    return PFN.load(_HERE, device=device, name=stem)


def prior_of(name: str) -> GPPrior:
    """The prior a shipped model was trained on."""
    if name not in _MODELS:
        raise ValueError(f"unknown pretrained model name {name!r}; available: {available()}")
    return _MODELS[name][1]
