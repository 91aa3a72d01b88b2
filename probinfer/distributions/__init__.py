"""Distributions of the shared probabilistic interface.

All are :class:`numpyro.distributions.Distribution` subclasses over JAX arrays, batched, with
``sample``, ``log_prob``, ``mean``, ``variance`` and ``cdf``/``icdf`` where one-dimensional.
"""

from probinfer.distributions.answer import AnswerDistribution
from probinfer.distributions.bar import BarDistribution
from probinfer.distributions.gaussian_mixture import GaussianMixture
from probinfer.distributions.weighted_empirical import WeightedEmpirical

__all__ = ["AnswerDistribution", "BarDistribution", "GaussianMixture", "WeightedEmpirical"]
