"""The ``probinfer`` command line.

Subcommands import their dependencies lazily so that ``probinfer --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from probinfer._version import __version__


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


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
    p.add_argument("--num-particles", type=_positive_int, default=10_000)
    p.add_argument("--num-steps", type=_positive_int, default=100, help="T, the series length")
    p.add_argument("--chains", type=_positive_int, default=4, help="independent filter runs")
    p.add_argument(
        "--scheme",
        default="systematic",
        choices=["systematic", "stratified", "residual", "multinomial"],
    )
    p.add_argument("--ess-threshold", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="probinfer",
        description="Particle methods, amortized posteriors and calibrated uncertainty.",
    )
    parser.add_argument("--version", action="version", version=f"probinfer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo(sub)
    __import__("probinfer.llm.cli", fromlist=["_add_scale"])._add_scale(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except ValueError as err:
        parser.exit(2, f"probinfer {args.command}: error: {err}\n")
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
