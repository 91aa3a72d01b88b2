"""Sequential Monte Carlo over the Feynman-Kac form.

* :func:`run_smc` / :func:`smc_scan`: the driver (jitted ``lax.scan`` path and an eager
  path for black-box transitions) for any :class:`FeynmanKac` model.
* :func:`particle_filter`: bootstrap and guided filters for state-space models.
* :func:`tempered_smc`: adaptive tempered SMC with MCMC rejuvenation for static models.
"""

from probinfer.smc.feynman_kac import (
    FeynmanKac,
    SMCOutput,
    SMCResult,
    StepInfo,
    initial_step,
    run_smc,
    smc_scan,
    transition_step,
)
from probinfer.smc.state_space import (
    ParticleFilterResult,
    StateSpaceModel,
    particle_filter,
    ssm_feynman_kac,
)
from probinfer.smc.tempered import (
    TemperedSMCResult,
    TemperedState,
    tempered_smc,
    tempered_smc_loop,
    tempering_step,
)

__all__ = [
    "FeynmanKac",
    "ParticleFilterResult",
    "SMCOutput",
    "SMCResult",
    "StateSpaceModel",
    "StepInfo",
    "TemperedSMCResult",
    "TemperedState",
    "initial_step",
    "particle_filter",
    "run_smc",
    "smc_scan",
    "ssm_feynman_kac",
    "tempered_smc",
    "tempered_smc_loop",
    "tempering_step",
    "transition_step",
]
