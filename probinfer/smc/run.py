""":func:`run_smc`, the one entry point of the SMC driver: it validates the options, builds
the model's kernel once and hands it to a runner (one compiled program, or a Python loop
over the compiled or eager step)."""

from __future__ import annotations

import time

import jax
import numpy as np

from probinfer.smc.base import FeynmanKac, check_num_particles, log_evidence_of
from probinfer.smc.kernel import RunOptions, build_kernel
from probinfer.smc.layout import unpad
from probinfer.smc.loop import raise_dead, report_nan, run_loop
from probinfer.smc.result import SMCResult
from probinfer.smc.scan import SMCOutput, smc_scan

Array = jax.Array

__all__ = ["run_smc"]


def run_smc(key: Array, fk: FeynmanKac, num_particles: int, **options) -> SMCResult:
    """Run SMC on a Feynman-Kac model and return weights, log evidence and history.

    Parameters
    ----------
    key
        ``jax.random`` key; same key, same result (on every path).
    fk
        The model (:class:`~probinfer.smc.FeynmanKac`).
    num_particles
        ``N >= 1`` (one particle: a sequential importance sample).
    **options
        The run's settings, :class:`~probinfer.smc.kernel.RunOptions`: ``ess_threshold``
        (0.5), ``scheme`` (``"systematic"``), ``resample_fn``, ``jit`` (True), ``summary``,
        ``keep_ancestors`` (True), ``callback``, ``progress`` (False), ``desc``,
        ``bucket``, ``shard`` and ``memory_budget``. Conditional SMC is a model and a
        resampler: :func:`~probinfer.smc.conditional.conditional_feynman_kac` with
        ``resample_fn=conditional(resampler("multinomial"))``.

    Raises
    ------
    ValueError
        On bad settings, or when every particle has weight 0 at some step. NaN log
        potentials give weight 0 and a ``RuntimeWarning``.
    TypeError
        On an unknown option or a model that is not a :class:`FeynmanKac`.
    """
    num_particles = check_num_particles(num_particles, minimum=1)
    opts = RunOptions(**options)
    if not isinstance(fk, FeynmanKac):
        raise TypeError(f"fk must be a FeynmanKac model, got {type(fk).__name__}")
    start = time.perf_counter()
    if opts.one_program:
        keep = ("resample_fn", "summary", "keep_ancestors", "bucket", "shard", "memory_budget")
        out = smc_scan(
            key,
            fk,
            num_particles,
            opts.ess_threshold,
            opts.scheme,
            **{name: getattr(opts, name) for name in keep},
        )
        return _from_output(out, fk, num_particles, opts, start)
    kernel = build_kernel(fk, num_particles, opts)
    # a model that stops by its own rule (tempered SMC) has no known number of steps
    known = fk.finished is None
    return run_loop(key, kernel, int(fk.num_steps), num_particles, opts, start, known)


def _from_output(out: SMCOutput, fk: FeynmanKac, n: int, opts: RunOptions, start) -> SMCResult:
    """The result of a compiled run, its histories cut to the steps run on the host (a
    device slice would compile once per number of steps)."""
    jax.block_until_ready(out)
    k = int(out.num_steps)
    incs = np.asarray(out.log_evidence_increments, dtype=np.float64)[:k]
    report_nan(int(np.sum(np.asarray(out.num_nan)[:k])), "during the run")
    bad = np.isnan(incs) | (incs == -np.inf)
    if np.any(bad):
        raise_dead(int(np.argmax(bad)))
    cut = (lambda a: np.asarray(a)[:k]) if k < fk.num_steps else np.asarray
    return SMCResult(
        particles=unpad(out.particles, n),
        log_evidence=log_evidence_of(out.state),
        log_evidence_increments=incs,
        ess=cut(out.ess),
        resampled=cut(out.resampled),
        ancestors=None if out.ancestors is None else cut(np.asarray(out.ancestors)[:, :n]),
        summaries=None if opts.summary is None else jax.tree_util.tree_map(cut, out.summaries),
        wall_time=time.perf_counter() - start,
    )
