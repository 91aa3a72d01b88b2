"""The calibration package's part of ``probinfer scale --calibrate N_CAL --alpha A``.

:func:`check` validates the flags against the problems and budgets before any model loads;
:func:`finish` runs the calibrated section (:func:`calibration.llm_scale.calibrate_scale`)
after the scaling table. The top-level command line (:mod:`probinfer.cli`) calls them only
when ``--calibrate`` is given, so that :mod:`probinfer` never imports this package.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .llm_scale import calibrate_scale, check_scale_calibration, min_calibration_problems

__all__ = ["check", "finish"]


def check(args: argparse.Namespace, num_problems: int) -> None:
    """``--calibrate`` and ``--alpha`` against the problems and budgets (``ValueError``
    naming the flag); warns on stderr when too few calibration problems make a part of the
    calibrated section uninformative."""
    n_cal, alpha = check_scale_calibration(
        args.calibrate, args.alpha, num_problems, len(set(args.budgets))
    )
    short = {k: v for k, v in min_calibration_problems(alpha).items() if n_cal < v}
    if short:
        parts = ", ".join(f"{k} needs {v}" for k, v in short.items())
        print(
            f"probinfer scale: warning: not enough calibration problems at --alpha {alpha} "
            f"(--calibrate {n_cal}; {parts}): those results will be left out",
            file=sys.stderr,
        )


def finish(
    args: argparse.Namespace, report: dict, model, problems, json_path: Path, png_path: Path
) -> str:
    """Add the calibrated section to the scaling ``report`` (its JSON and plot rewritten);
    returns its table."""
    return calibrate_scale(
        report,
        model,
        problems,
        args.calibrate,
        args.alpha,
        json_path,
        png_path,
        progress=False if args.no_progress else None,
    )
