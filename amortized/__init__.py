"""Amortized posteriors: prior-data fitted networks (PFNs).

A PFN is trained once on datasets drawn from a prior and then returns the posterior predictive
distribution of new data in a single forward pass (Müller et al. 2022). Predictions are
:class:`probinfer.distributions.BarDistribution` objects.

``import amortized`` does not import torch; the torch parts (``PFN``, ``PFNConfig``,
``train_pfn``, ``load_pretrained``...) are imported on first access.
"""

from __future__ import annotations

import importlib

from amortized.priors import (
    BayesianLinearPrior,
    GPPrior,
    MLPPrior,
    NumPyroPrior,
    Prior,
)

_LAZY = {
    "CheckpointDir": "amortized.checkpoint",
    "CheckpointLockedError": "amortized.checkpoint",
    "PFN": "amortized.pfn",
    "PFNConfig": "amortized.model",
    "PFNRangeWarning": "amortized.pfn",
    "PFNTransformer": "amortized.model",
    "TrainConfig": "amortized.train",
    "train_pfn": "amortized.train",
    "bar_log_prob": "amortized.bar_torch",
    "bar_nll": "amortized.bar_torch",
    "borders_from_samples": "amortized.bar_torch",
    "load_pretrained": "amortized.pretrained",
    "available_pretrained": ("amortized.pretrained", "available"),
    "nll_vs_gp": "amortized.evaluate",
}

__all__ = [
    "BayesianLinearPrior",
    "GPPrior",
    "MLPPrior",
    "NumPyroPrior",
    "Prior",
    *sorted(_LAZY),
]


def __getattr__(name: str):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'amortized' has no attribute {name!r}")
    module, attr = target if isinstance(target, tuple) else (target, name)
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
