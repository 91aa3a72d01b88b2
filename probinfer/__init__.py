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
    "from_logdensity": "probinfer.targets",
    "from_numpyro": "probinfer.targets",
    "from_pyro": "probinfer.targets",
}
_SUBMODULES = {
    "distributions",
    "engine",
    "inference_data",
    "lgssm",
    "llm",
    "particles",
    "progress",
    "resampling",
    "smc",
    "targets",
    "weights",
}

__all__ = [
    "LinearGaussianSSM",
    "Particles",
    "__version__",
    "distributions",
    "engine",
    "ess",
    "from_logdensity",
    "from_numpyro",
    "from_pyro",
    "inference_data",
    "kalman_filter",
    "lgssm",
    "llm",
    "log_mean_weight",
    "offspring_counts",
    "particles",
    "progress",
    "resample",
    "resampling",
    "should_resample",
    "smc",
    "targets",
    "to_inference_data",
    "weights",
]

if TYPE_CHECKING:  # pragma: no cover
    from probinfer import (
        distributions,
        engine,
        inference_data,
        lgssm,
        llm,
        particles,
        progress,
        resampling,
        smc,
        targets,
        weights,
    )
    from probinfer.inference_data import to_inference_data
    from probinfer.lgssm import LinearGaussianSSM, kalman_filter
    from probinfer.particles import Particles
    from probinfer.resampling import offspring_counts, resample
    from probinfer.targets import from_logdensity, from_numpyro, from_pyro
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
