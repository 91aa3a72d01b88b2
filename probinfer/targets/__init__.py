"""Targets: models as seen by inference (batched log prior, log likelihood, prior draws).

``from_pyro`` imports torch only when called.
"""

from probinfer.targets.base import LatentSite, Target
from probinfer.targets.logdensity import LogDensityTarget, from_logdensity
from probinfer.targets.numpyro import NumPyroTarget, from_numpyro


def from_pyro(model, *args, **kwargs):
    """Wrap a Pyro model as a batched target; see :func:`probinfer.targets.pyro.from_pyro`."""
    from probinfer.targets.pyro import from_pyro as _from_pyro

    return _from_pyro(model, *args, **kwargs)


__all__ = [
    "LatentSite",
    "LogDensityTarget",
    "NumPyroTarget",
    "Target",
    "from_logdensity",
    "from_numpyro",
    "from_pyro",
]
