"""The ``probinfer scale`` subcommand: accuracy versus inference-time budget.

Other packages add to it through :class:`ScaleExtension` (flags, a check before any model
loads, a section after the table): the calibrated answers of ``--calibrate`` come from the
calibration package that way, composed by the top-level command line (:mod:`probinfer.cli`),
so that this module, like the rest of :mod:`probinfer`, does not depend on it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from probinfer.cli import _positive_int

__all__ = ["ScaleExtension", "_add_scale"]

_ALGOS = (
    "particle_filter",
    "particle_gibbs",
    "parallel_tempering",
    "best_of_n",
    "beam_search",
    "weighted_majority",
    "self_consistency",
)


_MODEL_CHOICES = {  # flag: (choices, default, help)
    "--potential": (
        ["logit", "log"],
        "log",
        "log potential of a score r: log r (bundled default) or logit r (the paper's)",
    ),
    "--aggregation": (
        ["model", "last", "min", "product"],
        "model",
        "how the step scores of a partial answer make its reward ('model': the PRM scores "
        "the whole prefix)",
    ),
}


def _budget_list(text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        msg = f"budgets must be comma-separated integers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"budgets must be integers >= 1, got {text!r}")
    return vals


def _algo_list(text: str) -> list[str]:
    vals = [x.strip() for x in text.split(",") if x.strip()]
    bad = [v for v in vals if v not in _ALGOS]
    if not vals or bad:
        raise argparse.ArgumentTypeError(f"unknown algorithm(s) {bad}; choose from {list(_ALGOS)}")
    return vals


class ScaleExtension(Protocol):
    """An addition to ``probinfer scale`` from another package."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the extension's flags to the ``scale`` parser."""
        ...

    def check(self, args: argparse.Namespace, num_problems: int) -> None:
        """Validate the flags against the problems (``ValueError`` naming the flag), before
        any model loads."""
        ...

    def finish(self, args, report: dict, model, problems, json_path: Path, png_path: Path):
        """After the table: add to the report (and rewrite its files); the text to print,
        or ``None``."""
        ...


def _add_scale(sub, extensions: Sequence[ScaleExtension] = ()) -> None:
    """Register ``probinfer scale`` on the subparsers ``sub``, with the flags and steps of
    ``extensions``."""
    p = sub.add_parser(
        "scale",
        help="inference-time scaling: accuracy vs budget of particle filtering and baselines",
        description=(
            "Runs particle-based inference-time scaling (particle filtering, particle Gibbs, "
            "parallel tempering) and baselines (best-of-N, beam search, weighted majority, "
            "self-consistency) at several budgets on the bundled multi-step arithmetic task "
            "(tiny offline LM + learned PRM, no download) or on local Hugging Face models, "
            "prints an accuracy-vs-budget table and writes JSON and a PNG plot."
        ),
    )
    p.add_argument(
        "--algorithms",
        type=_algo_list,
        default="particle_filter,best_of_n,beam_search",  # a string: argparse applies type
        help=f"comma-separated, from {', '.join(_ALGOS)}",
    )
    p.add_argument(
        "--budgets",
        type=_budget_list,
        default="1,2,4,8,16,32",
        help="comma-separated budgets (particles, samples or beams per problem)",
    )
    p.add_argument(
        "--num-problems",
        type=_positive_int,
        default=100,
        help="problems to run (the first ones of --problems)",
    )
    _add_model_arguments(p)
    _add_server_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the jax.random key of the runs")
    p.add_argument("--output", default="out/scale.json", help="JSON report (PNG next to it)")
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="torch CPU threads (default: at most 2; use 1 on a machine busy with other work)",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress output (default: a bar on a terminal, else one line a stage)",
    )
    for ext in extensions:
        ext.add_arguments(p)
    p.set_defaults(func=_run_scale, scale_extensions=tuple(extensions))


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The task, the local models and the state-space model's settings."""
    p.add_argument(
        "--prm",
        default="learned",
        help="'learned' (bundled whole-prefix PRM), 'likelihood' (bundled newest-step "
        "likelihood PRM), 'verifier' (exact), or a local sequence/token-classification "
        "model directory",
    )
    p.add_argument(
        "--model",
        default=None,
        help="local Hugging Face causal LM directory (default: the bundled tiny LM)",
    )
    p.add_argument(
        "--problems",
        default=None,
        help="JSON-lines file of {'prompt': ..., 'answer': ...} (default: the bundled task)",
    )
    p.add_argument("--delimiter", default=";", help="step delimiter string")
    p.add_argument("--stop", default="|", help="string that ends an answer")
    p.add_argument("--answer-regex", default=r"(-?\d+)\s*\|\s*$", help="final-answer regex")
    p.add_argument(
        "--max-steps", type=_positive_int, default=10, help="reasoning steps per answer at most"
    )
    p.add_argument(
        "--max-tokens-per-step", type=_positive_int, default=6, help="tokens per step at most"
    )
    for flag, (choices, default, text) in _MODEL_CHOICES.items():
        p.add_argument(flag, choices=choices, default=default, help=text)
    p.add_argument(
        "--reward-temperature", type=float, default=1.0, help="log potentials are divided by it"
    )


def _add_server_arguments(p: argparse.ArgumentParser) -> None:
    """The OpenAI-compatible servers of the LM and the PRM."""
    p.add_argument(
        "--server",
        default=None,
        help="OpenAI-compatible completions server(s), URL[,URL...] (e.g. vLLM's "
        "http://127.0.0.1:8000/v1); --model is then the served model name",
    )
    p.add_argument(
        "--tokenizer",
        default=None,
        help="with --server: a local tokenizer directory for token-id prompts (token-exact "
        "steps); without it prompts are text",
    )
    p.add_argument(
        "--prm-server",
        default=None,
        help="PRM server(s) with vLLM's pooling route, URL[,URL...]; --prm-model names it",
    )
    p.add_argument("--prm-model", default=None, help="served PRM name (with --prm-server)")
    p.add_argument(
        "--prm-kind",
        choices=["token", "sequence"],
        default=None,
        help="served PRM: 'token' (step tag after every step, P(positive) at the last, "
        "Qwen2.5-Math-PRM) or 'sequence' (one score) (default: detected from the server's "
        "first answer: one row per token is 'token', one score 'sequence')",
    )
    p.add_argument("--step-tag", default="<extra_0>", help="step tag of a 'token' served PRM")
    p.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the servers' API key (never printed)",
    )


def _load_problems(args) -> list[tuple[str, str]]:
    from probinfer.llm.default import default_problems

    if args.num_problems < 1:
        raise ValueError(f"--num-problems must be >= 1, got {args.num_problems}")
    if args.problems is None:
        return default_problems(args.num_problems)
    rows = []
    for line in Path(args.problems).read_text().splitlines():
        if line.strip():
            d = json.loads(line)
            rows.append((str(d["prompt"]), str(d["answer"])))
    if not rows:
        raise ValueError(f"--problems file {args.problems!r} has no problems")
    return rows[: args.num_problems]


def _check_prm(args) -> None:
    """``--prm`` names a bundled PRM or a local model directory (checked before any weights
    load; ignored with ``--prm-server``)."""
    from probinfer.llm.default import PRMS

    if args.prm_server or args.prm in PRMS or Path(args.prm).is_dir():
        return
    raise ValueError(
        f"--prm must be one of {', '.join(PRMS)} or a local model directory, got {args.prm!r}"
    )


def _build_model(args):
    import torch

    from probinfer.llm.default import default_model_kwargs
    from probinfer.llm.protocols import StepFormat
    from probinfer.llm.ssm import LLMStateSpaceModel
    from probinfer.llm.task import regex_extractor
    from probinfer.progress import use_bar

    # the bundled models are tiny: more threads than 2 only add synchronisation, and on a
    # busy machine even 2 contend with the other processes (--threads 1)
    torch.set_num_threads(args.threads or max(1, min(2, torch.get_num_threads())))
    # transformers' own weight-loading bars follow the package's convention too
    if args.no_progress or args.quiet or not use_bar(None):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    settings = default_model_kwargs()
    fmt = StepFormat(args.delimiter, args.stop)
    settings.update(
        step_format=fmt,
        max_steps=args.max_steps,
        max_tokens_per_step=args.max_tokens_per_step,
        potential=args.potential,
        aggregation=args.aggregation,
        reward_temperature=args.reward_temperature,
        answer_extractor=regex_extractor(args.answer_regex),
    )
    lm = _language_model(args)
    return LLMStateSpaceModel(lm, _reward_model(args, lm, fmt), **settings)


def _served(cls, urls: str, name: str | None, flags: tuple[str, str], args, **kw):
    """``cls`` (a server client) on ``urls`` serving the model ``name``; ``ValueError``
    naming the flags when the name is missing."""
    if not name:
        raise ValueError(f"{flags[1]} must name the served model when {flags[0]} is given")
    return cls(urls, name, api_key_env=args.api_key_env, **kw)


def _language_model(args):
    """The local LM (``--model``, default the bundled one) or the served one (``--server``)."""
    from probinfer.llm.default import ASSETS
    from probinfer.llm.hf import HFCausalLM
    from probinfer.llm.tokenizers import load_tokenizer

    if not args.server:
        return HFCausalLM.from_pretrained(args.model or ASSETS / "lm", eos_text=args.stop)
    from probinfer.llm.server import OpenAICompatibleLM

    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    flags = ("--server", "--model")
    return _served(
        OpenAICompatibleLM, args.server, args.model, flags, args, tokenizer=tokenizer,
        eos_text=args.stop,
    )  # fmt: skip


def _reward_model(args, lm, fmt):
    """The served PRM (``--prm-server``), a bundled one or a local model directory."""
    from probinfer.llm.default import PRMS, bundled_reward
    from probinfer.llm.hf import HFRewardModel

    if args.prm_server:
        from probinfer.llm.server import OpenAICompatiblePRM

        flags = ("--prm-server", "--prm-model")
        return _served(
            OpenAICompatiblePRM, args.prm_server, args.prm_model, flags, args,
            kind=args.prm_kind, step_tag=args.step_tag,
        )  # fmt: skip
    if args.prm in PRMS:
        if args.prm == "likelihood" and args.server:
            raise ValueError("--prm likelihood needs a local LM; use --prm-server")
        return bundled_reward(args.prm, lm, step_format=fmt)
    return HFRewardModel.from_pretrained(args.prm)


def _run_scale(args: argparse.Namespace) -> int:
    from probinfer.llm.scale import format_table, run_scaling, write_report

    _check_prm(args)
    problems = _load_problems(args)
    extensions = getattr(args, "scale_extensions", ())
    for ext in extensions:  # fail before any model loads
        ext.check(args, len(problems))
    model = _build_model(args)
    report = run_scaling(
        model,
        problems,
        algorithms=args.algorithms,
        budgets=args.budgets,
        seed=args.seed,
        progress=False if args.no_progress else None,
    )
    report["model"] = str(args.model or "bundled")
    report["prm"] = str(args.prm_model if args.prm_server else args.prm)
    if args.server:
        report["server"] = list(model.lm.base_urls)
    out = Path(args.output)
    png = out.with_suffix(".png")
    write_report(report, out, png)
    print(format_table(report))
    for ext in extensions:
        text = ext.finish(args, report, model, problems, out, png)
        if text:
            print(text)
    print(f"wrote {out} and {png}")
    return 0
