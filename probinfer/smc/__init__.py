"""Sequential Monte Carlo over the Feynman-Kac form, with one driver.

* :func:`init` / :func:`step` (:mod:`~probinfer.smc.base`), :func:`run_smc` and
  :func:`smc_scan`: the driver (jitted ``scan``/``while_loop``, a Python loop over the
  jitted step, or eager steps for black-box transitions) for any :class:`FeynmanKac`
  model; conditional SMC is a model wrapper (:func:`conditional_feynman_kac`) and a
  resampler that pins slot 0 (:func:`probinfer.resampling.conditional`).
* :func:`particle_filter`: bootstrap and guided filters for state-space models.
* :func:`particle_gibbs`: conditional SMC sweeps on trajectories, for any Feynman-Kac
  model.
* :func:`tempered_smc`: adaptive tempered SMC with MCMC rejuvenation for static models,
  a Feynman-Kac model with an ``adapt`` hook on the same driver.
* :func:`pmmh` and :func:`smc2`: the parameters of a state-space model, from particle
  filters on the same driver (vmapped over parameter values): particle marginal
  Metropolis-Hastings chains, and SMC² (a filter per parameter particle, pseudo-marginal
  rejuvenation moves, the model evidence).
"""

from probinfer.smc.base import FeynmanKac, SMCState, StepInfo, init, step
from probinfer.smc.conditional import conditional_feynman_kac
from probinfer.smc.gibbs import (
    ParticleGibbsResult,
    conditional_smc_kernel,
    particle_gibbs,
    trace_lineage,
)
from probinfer.smc.kernel import RunOptions
from probinfer.smc.pmmh import PMMHResult, pmmh
from probinfer.smc.result import SMCChains, SMCResult
from probinfer.smc.run import run_smc
from probinfer.smc.scan import SMCOutput, smc_scan
from probinfer.smc.smc2 import SMC2Result, smc2, smc2_feynman_kac
from probinfer.smc.state_space import (
    ParticleFilterResult,
    StateSpaceModel,
    particle_filter,
    ssm_feynman_kac,
)
from probinfer.smc.tempered import (
    TemperedParticles,
    TemperedSMCResult,
    TemperingData,
    tempered_smc,
    tempered_smc_loop,
    tempering_feynman_kac,
)

__all__ = [
    "FeynmanKac",
    "ParticleFilterResult",
    "PMMHResult",
    "ParticleGibbsResult",
    "RunOptions",
    "SMC2Result",
    "SMCChains",
    "SMCOutput",
    "SMCResult",
    "SMCState",
    "StateSpaceModel",
    "StepInfo",
    "TemperedParticles",
    "TemperedSMCResult",
    "TemperingData",
    "conditional_feynman_kac",
    "conditional_smc_kernel",
    "init",
    "particle_filter",
    "particle_gibbs",
    "pmmh",
    "run_smc",
    "smc2",
    "smc2_feynman_kac",
    "smc_scan",
    "ssm_feynman_kac",
    "step",
    "tempered_smc",
    "tempered_smc_loop",
    "tempering_feynman_kac",
    "trace_lineage",
]
