"""Amortized posteriors: prior-data fitted networks (PFNs) and Distribution Transformers (DTs).

A PFN is trained once on datasets drawn from a prior and then returns the posterior predictive
distribution of new data in a single forward pass (Müller et al. 2022). Predictions are
:class:`probinfer.distributions.BarDistribution` objects.

A Distribution Transformer (arXiv 2502.02463) takes a Gaussian-mixture *prior* and data and
returns the Gaussian-mixture posterior (:class:`probinfer.distributions.GaussianMixture`) in one
forward pass; since the prior is an input, it can be changed without retraining, and posteriors
can be fed back as priors (sequential inference, :func:`dt_filter`).

``import amortized`` does not import torch: every public name (the priors, and the torch parts
``PFN``, ``PFNConfig``, ``DistributionTransformer``, ``train_pfn``, ``train_dt``,
``load_pretrained``...) is imported on first access.
"""

from __future__ import annotations

import importlib

#: public name -> the module it comes from (or (module, attribute)); imported on first access
_LAZY = {
    "BayesianLinearPrior": "amortized.priors",
    "GPPrior": "amortized.priors",
    "MLPPrior": "amortized.priors",
    "NumPyroPrior": "amortized.priors",
    "Prior": "amortized.priors",
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
    "OptimConfig": "amortized.loop",
    "train_loop": "amortized.loop",
    # Distribution Transformers
    "DistributionTransformer": "amortized.dt",
    "gmm_prior": "amortized.dt",
    "DTConfig": "amortized.dt_model",
    "DTNetwork": "amortized.dt_model",
    "LinearGaussianTask": "amortized.dt_tasks",
    "InverseGammaVarianceTask": "amortized.dt_tasks",
    "train_dt": "amortized.dt_train",
    "dt_filter": "amortized.dt_sequential",
    "evaluate_linear": "amortized.dt_evaluate",
    "evaluate_invgamma": "amortized.dt_evaluate",
    "evaluate_sequential": "amortized.dt_evaluate",
    "linear_gaussian_posterior": "amortized.exact",
    "gmm_linear_predict": "amortized.exact",
    "inverse_gamma_posterior": "amortized.exact",
    "inverse_gamma_log_gmm": "amortized.exact",
    "kl_monte_carlo": "amortized.exact",
}

__all__ = sorted(_LAZY)


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
