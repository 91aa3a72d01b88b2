"""The SMC driver's public names in one place (kept for imports written against the
former single-module driver). The driver itself: :mod:`probinfer.smc.base` (model, state,
``init``/``step``), :mod:`probinfer.smc.kernel` (options and the kernel factory),
:mod:`probinfer.smc.scan` and :mod:`probinfer.smc.loop` (the runners),
:mod:`probinfer.smc.run` (:func:`run_smc`) and :mod:`probinfer.smc.result`."""

from probinfer.smc.base import (
    FeynmanKac,
    SMCState,
    StepInfo,
    check_num_particles,
    check_threshold,
    init,
    step,
)
from probinfer.smc.kernel import RunOptions
from probinfer.smc.result import SMCResult
from probinfer.smc.run import run_smc
from probinfer.smc.scan import SMCOutput, smc_scan

__all__ = [
    "FeynmanKac",
    "RunOptions",
    "SMCOutput",
    "SMCResult",
    "SMCState",
    "StepInfo",
    "check_num_particles",
    "check_threshold",
    "init",
    "run_smc",
    "smc_scan",
    "step",
]
