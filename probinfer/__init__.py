"""probinfer: particle methods, amortized posteriors and calibrated uncertainty.

The top-level namespace is lazy: ``import probinfer`` loads no JAX, torch or
transformers; each name is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from probinfer._version import __version__

_LAZY = {
    "Particles": "probinfer.particles",
    "resample": "probinfer.resampling",
    "offspring_counts": "probinfer.resampling",
    "ess": "probinfer.weights",
    "should_resample": "probinfer.weights",
    "log_mean_weight": "probinfer.weights",
    "to_inference_data": "probinfer.inference_data",
    "kalman_filter": "probinfer.lgssm",
    "LinearGaussianSSM": "probinfer.lgssm",
}
_SUBMODULES = {"distributions", "weights", "resampling", "particles", "inference_data", "lgssm"}

__all__ = [
    "LinearGaussianSSM",
    "Particles",
    "__version__",
    "distributions",
    "ess",
    "inference_data",
    "kalman_filter",
    "lgssm",
    "log_mean_weight",
    "offspring_counts",
    "particles",
    "resample",
    "resampling",
    "should_resample",
    "to_inference_data",
    "weights",
]

if TYPE_CHECKING:  # pragma: no cover
    from probinfer import distributions, inference_data, lgssm, particles, resampling, weights
    from probinfer.inference_data import to_inference_data
    from probinfer.lgssm import LinearGaussianSSM, kalman_filter
    from probinfer.particles import Particles
    from probinfer.resampling import offspring_counts, resample
    from probinfer.weights import ess, log_mean_weight, should_resample


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        module = importlib.import_module(f"probinfer.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'probinfer' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
