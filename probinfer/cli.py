"""The ``probinfer`` command line.

Subcommands import their dependencies lazily so that ``probinfer --help`` is instant.

This module is the top of the command line: it composes the subcommands of :mod:`probinfer`
with what other packages of the distribution add to them. ``probinfer scale --calibrate``
is such an addition: its flags are declared here, and its work is done by the calibration
package's command module (``calibration.llm_cli``), loaded only when the flag is given.
Nothing else in :mod:`probinfer` knows about that package.

Conventions: every help text shows its default; a bare ``probinfer`` prints the help and exits
2; bad arguments, missing files and invalid regular expressions end in one line
``probinfer COMMAND: error: ...`` with exit code 2, checked before any model weights load;
``--quiet`` silences progress bars and library logging (results and errors still print).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from probinfer._version import __version__


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _fraction(strict: bool):
    """argparse type: a number in [0, 1], or strictly between 0 and 1 when ``strict``."""
    what = "strictly between 0 and 1" if strict else "in [0, 1]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (0.0 < value < 1.0 if strict else 0.0 <= value <= 1.0):
            raise argparse.ArgumentTypeError(f"must be a number {what}, got {text!r}")
        return value

    return parse


_unit_interval, _open_unit_interval = _fraction(strict=False), _fraction(strict=True)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help with ``(default: ...)`` on every flag, unless its text already states its default
    (``"... (default: the bundled task)"``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line (``PROG: error: ... (see PROG --help)``), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="bootstrap particle filter on a bundled linear-Gaussian SSM vs exact Kalman",
        description=(
            "Runs independent bootstrap particle filters (one ArviZ chain each) on data "
            "simulated from a 1-D linear-Gaussian state-space model, prints the log-evidence "
            "estimates next to the exact Kalman value, and writes an ArviZ netCDF file."
        ),
    )
    p.add_argument(
        "--num-particles", type=_positive_int, default=10_000, help="particles per filter run"
    )
    p.add_argument("--num-steps", type=_positive_int, default=100, help="T, the series length")
    p.add_argument(
        "--chains", type=_positive_int, default=4, help="independent filter runs (ArviZ chains)"
    )
    p.add_argument(
        "--scheme",
        default="systematic",
        choices=["systematic", "stratified", "residual", "multinomial"],
        help="resampling scheme",
    )
    p.add_argument(
        "--ess-threshold",
        type=_unit_interval,
        default=0.5,
        help="resample when ESS / N falls below this fraction (0: never, 1: every step)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the jax.random key (data and filters)"
    )
    p.add_argument("--output", default="out/lgssm_pf.nc", help="netCDF file to write")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from probinfer.demo import run_lgssm_demo

    run_lgssm_demo(
        num_particles=args.num_particles,
        num_steps=args.num_steps,
        chains=args.chains,
        scheme=args.scheme,
        ess_threshold=args.ess_threshold,
        seed=args.seed,
        output=args.output,
    )
    return 0


class _CalibrateScale:
    """``probinfer scale --calibrate N_CAL --alpha A`` (a
    :class:`~probinfer.llm.cli.ScaleExtension`): calibrated answers next to the scaling table,
    computed by the calibration package, which is loaded only when ``--calibrate`` is
    given (``probinfer --help`` and runs without it never load it)."""

    module = "calibration.llm_cli"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--calibrate",
            type=_positive_int,
            default=None,
            metavar="N_CAL",
            help="calibrate on the first N_CAL problems: conformal answer-set coverage and "
            "size, abstention and the adaptive budget's compute saved on the others "
            "(calibration package; needs at least two --budgets) (default: no calibration)",
        )
        parser.add_argument(
            "--alpha",
            type=_open_unit_interval,
            default=0.1,
            help="level for --calibrate, in (0, 1)",
        )

    def check(self, args: argparse.Namespace, num_problems: int) -> None:
        if args.calibrate is not None:
            importlib.import_module(self.module).check(args, num_problems)

    def finish(self, args, report, model, problems, json_path, png_path) -> str | None:
        if args.calibrate is None:
            return None
        return importlib.import_module(self.module).finish(
            args, report, model, problems, json_path, png_path
        )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="probinfer",
        description="Particle methods, amortized posteriors and calibrated uncertainty.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"probinfer {__version__}")
    quiet = "no progress bars or library logging (results and errors still print)"
    parser.add_argument("--quiet", "-q", action="store_true", help=quiet)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo(sub)
    from probinfer.llm.cli import _add_scale

    _add_scale(sub, extensions=(_CalibrateScale(),))
    for p in sub.choices.values():
        p.formatter_class = _HelpFormatter
        # also accepted after the subcommand; SUPPRESS keeps a top-level --quiet
        p.add_argument(
            "--quiet",
            "-q",
            action="store_true",
            default=argparse.SUPPRESS,
            help=f"{quiet} (default: False)",
        )
    return parser


def _preflight(args: argparse.Namespace) -> None:
    """Checks of arguments shared by subcommands, before anything heavy is imported or loaded.

    Raises ``ValueError`` naming the flag: a missing input file (``--problems``), a missing local
    model directory (``--model``), an invalid regular expression (``--answer-regex``), an
    output path that cannot be a file (``--output``: an existing directory, or below a file),
    so that a long run never ends in an error it could have given at the start.
    """
    output = getattr(args, "output", None)
    if output is not None:
        out = Path(output)
        if out.is_dir():
            raise ValueError(f"--output: {output!r} is a directory; give a file path in it")
        blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise ValueError(f"--output: {str(blocker)!r} is a file, not a directory")
    problems = getattr(args, "problems", None)
    if problems is not None and not Path(problems).is_file():
        raise ValueError(f"--problems: no such file {problems!r}")
    model = getattr(args, "model", None)
    # with --server, --model is the server's model name, not a local directory
    if model is not None and not getattr(args, "server", None) and not Path(model).is_dir():
        raise ValueError(f"--model: no such local model directory {model!r}")
    pattern = getattr(args, "answer_regex", None)
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as err:
            msg = f"--answer-regex: invalid regular expression {pattern!r}: {err}"
            raise ValueError(msg) from None


def _silence() -> None:
    """``--quiet``: progress bars and library logging off (set before the libraries import)."""
    for var, value in (
        ("TQDM_DISABLE", "1"),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        ("TRANSFORMERS_VERBOSITY", "error"),
        ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"),
    ):
        os.environ.setdefault(var, value)
    import logging

    logging.getLogger().setLevel(logging.ERROR)


def _is_user_error(err: BaseException) -> bool:
    """Bad input or a failed server: reported in one line, without a traceback."""
    if isinstance(err, (ValueError, OSError, re.error)):
        return True
    server = sys.modules.get("probinfer.llm.server")  # loaded whenever a ServerError exists
    return server is not None and isinstance(err, server.ServerError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (argument errors exit 2 via ``SystemExit``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.quiet:
        _silence()
        if hasattr(args, "no_progress"):
            args.no_progress = True
    try:
        _preflight(args)
        return args.func(args)
    except Exception as err:
        if not _is_user_error(err):
            raise
        msg = " ".join(str(err).split()) or type(err).__name__
        parser.exit(2, f"probinfer {args.command}: error: {msg}\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
