"""The Python-loop runner over a kernel's ``init``/``step``: the compiled step (progress bar,
callback) or the eager one (black-box transitions such as language models). It stops after
the step at which the model's ``finished`` rule holds."""

from __future__ import annotations

import warnings

import jax
import numpy as np

from probinfer.progress import progress_bar
from probinfer.smc.base import SMCState, log_evidence_of
from probinfer.smc.kernel import RunOptions, SMCKernel, run_keys
from probinfer.smc.layout import unpad
from probinfer.smc.result import SMCResult

__all__ = ["raise_dead", "report_nan", "run_loop"]


def report_nan(num_nan: int, where: str) -> None:
    """Warn that ``num_nan`` log potentials were NaN (they were given weight 0)."""
    if num_nan:
        warnings.warn(
            f"{num_nan} particle(s) had a NaN log potential {where}; they were given weight 0",
            RuntimeWarning,
            stacklevel=4,
        )


def raise_dead(t: int):
    """Every particle has weight 0 at step ``t``: the run cannot go on."""
    raise ValueError(
        f"every particle has weight 0 at step {t} (log potentials all NaN or -inf): "
        "the model cannot explain the data or the log likelihood is NaN everywhere"
    )


def run_loop(
    key,
    kernel: SMCKernel,
    num_steps: int,
    num_particles: int,
    opts: RunOptions,
    start: float,
    known_length: bool = True,
) -> SMCResult:
    """Run ``kernel`` for at most ``num_steps`` steps in a Python loop.

    ``known_length=False`` (a model with a ``finished`` rule): the progress output shows
    counts without a percentage, since ``num_steps`` is only a cap.
    """
    n = num_particles
    k0, keys = run_keys(key, num_steps)
    keys = list(keys)  # one device call per 100 keys; indexing the array makes one a step
    state, (info, sv), done = kernel.init(k0)
    rows, sums = [], []
    bar = progress_bar(
        num_steps if known_length else None,
        desc=opts.desc,
        progress=opts.progress,
        unit="step",
        delay=0.0 if opts.progress else 2.0,
    )
    try:
        for t in range(num_steps):
            if t > 0:
                state, (info, sv), done = kernel.step(keys[t - 1], t, state)
            inc = float(info.log_evidence_increment)
            report_nan(int(info.num_nan), f"at step {t}")
            if not inc > -np.inf:
                raise_dead(t)
            anc = np.asarray(info.ancestors)[:n] if opts.keep_ancestors else None
            rows.append((inc, float(info.ess), bool(info.resampled), anc))
            if opts.summary is not None:
                sums.append(sv)
            if opts.callback is not None:
                opts.callback(t, state.particles, info)
            bar.update(1)
            if bool(done):
                break
    finally:
        bar.close()
    return _result(state, rows, sums, n, opts, start)


def _result(state: SMCState, rows, sums, n: int, opts: RunOptions, start: float) -> SMCResult:
    import time

    stacked = None
    if opts.summary is not None:
        stacked = jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *sums)
    return SMCResult(
        particles=unpad(state.particles, n),
        log_evidence=log_evidence_of(state),
        log_evidence_increments=np.asarray([r[0] for r in rows], dtype=np.float64),
        ess=np.asarray([r[1] for r in rows]),
        resampled=np.asarray([r[2] for r in rows]),
        ancestors=np.stack([r[3] for r in rows]) if opts.keep_ancestors else None,
        summaries=stacked,
        wall_time=time.perf_counter() - start,
    )
