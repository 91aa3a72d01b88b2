"""Sequential Monte Carlo over the Feynman-Kac form, with one driver.

* :func:`init` / :func:`step` / :func:`run_smc` / :func:`smc_scan`: the driver (jitted
  ``scan``/``while_loop``, a Python loop over the jitted step, or eager steps for black-box
  transitions) for any :class:`FeynmanKac` model, with conditional SMC as an option.
* :func:`particle_filter`: bootstrap and guided filters for state-space models.
* :func:`tempered_smc`: adaptive tempered SMC with MCMC rejuvenation for static models,
  a Feynman-Kac model with an ``adapt`` hook on the same driver.
"""

from probinfer.smc.feynman_kac import (
    FeynmanKac,
    SMCOutput,
    SMCResult,
    SMCState,
    StepInfo,
    init,
    run_smc,
    smc_scan,
    step,
)
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
    "SMCOutput",
    "SMCResult",
    "SMCState",
    "StateSpaceModel",
    "StepInfo",
    "TemperedParticles",
    "TemperedSMCResult",
    "TemperingData",
    "init",
    "particle_filter",
    "run_smc",
    "smc_scan",
    "ssm_feynman_kac",
    "step",
    "tempered_smc",
    "tempered_smc_loop",
    "tempering_feynman_kac",
]
