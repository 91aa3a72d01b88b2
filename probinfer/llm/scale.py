"""Accuracy versus budget: the inference-time scaling experiment behind ``probinfer scale``.

Every algorithm gets the same problems, the same budgets (full-rollout equivalents) and
the same keys (common random numbers: key ``fold_in(fold_in(seed, problem), budget)``), so
differences between rows are differences between algorithms.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

from probinfer.llm.baselines import beam_search, best_of_n, self_consistency, weighted_majority
from probinfer.llm.filtering import particle_filter
from probinfer.llm.gibbs import parallel_tempering, particle_gibbs
from probinfer.llm.protocols import Usage
from probinfer.llm.ssm import LLMStateSpaceModel, check_budget
from probinfer.progress import progress_bar

__all__ = ["ALGORITHMS", "format_table", "plot_scaling", "run_scaling"]

ALGORITHMS: dict[str, Callable] = {
    "particle_filter": particle_filter,
    "particle_gibbs": particle_gibbs,
    "parallel_tempering": parallel_tempering,
    "best_of_n": best_of_n,
    "beam_search": beam_search,
    "weighted_majority": weighted_majority,
    "self_consistency": self_consistency,
}


def run_scaling(
    model: LLMStateSpaceModel,
    problems: Sequence[tuple[str, str]],
    *,
    algorithms: Sequence[str] = ("particle_filter", "best_of_n", "beam_search"),
    budgets: Sequence[int] = (1, 2, 4, 8, 16, 32),
    seed: int = 0,
    progress: bool | None = None,
) -> dict:
    """Accuracy of each algorithm at each budget over ``problems``.

    Parameters
    ----------
    model
        The state-space model (LM, reward, settings).
    problems
        ``(prompt, correct_answer)`` pairs.
    algorithms
        Names from :data:`ALGORITHMS`.
    budgets
        Budgets (full-rollout equivalents), each ``>= 1``.
    seed
        Base seed of the keys.
    progress
        ``None`` (default): a live bar when stderr is a terminal (or a widget notebook),
        otherwise one summary line at the end (:mod:`probinfer.progress`); ``True``/``False``
        force or silence it.

    Returns
    -------
    dict
        JSON-ready: ``results[algorithm]`` is a list of rows (budget, accuracy, its
        binomial standard error, mean tokens generated, LM and reward calls per problem,
        seconds), plus ``single_sample_accuracy`` (one LM sample per problem).
    """
    if not problems:
        raise ValueError("problems must be a non-empty sequence of (prompt, answer) pairs")
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if unknown or not algorithms:
        raise ValueError(f"algorithms must be names from {sorted(ALGORITHMS)}, got {unknown}")
    budgets = [check_budget(b) for b in budgets]
    if not budgets:
        raise ValueError("budgets must be non-empty")
    base = jax.random.key(seed)
    total = len(problems) * len(algorithms) * len(budgets) + len(problems)
    bar = progress_bar(total, desc="probinfer scale", progress=progress, unit="run")
    single = []
    for i, (prompt, answer) in enumerate(problems):
        res = particle_filter(jax.random.fold_in(jax.random.fold_in(base, i), 0), model, prompt, 1)
        single.append(res.selected == answer)
        bar.update()
    results: dict[str, list[dict]] = {}
    for name in algorithms:
        fn, rows = ALGORITHMS[name], []
        for b in budgets:
            correct, usage, start = [], Usage(), time.perf_counter()
            for i, (prompt, answer) in enumerate(problems):
                key = jax.random.fold_in(jax.random.fold_in(base, i), b)
                res = fn(key, model, prompt, b)
                correct.append(res.selected == answer)
                usage.add(res.usage)
                bar.set_postfix(algorithm=name, budget=b)
                bar.update()
            n = len(problems)
            acc = float(np.mean(correct))
            rows.append(
                {
                    "budget": b,
                    "accuracy": acc,
                    "stderr": float(np.sqrt(acc * (1 - acc) / n)),
                    "tokens_generated": usage.tokens_generated / n,
                    "tokens_encoded": usage.tokens_encoded / n,
                    "lm_calls": usage.lm_calls / n,
                    "reward_calls": usage.reward_calls / n,
                    "seconds": time.perf_counter() - start,
                }
            )
        results[name] = rows
    bar.close()
    acc1 = float(np.mean(single))
    return {
        "num_problems": len(problems),
        "budgets": budgets,
        "seed": seed,
        "single_sample_accuracy": acc1,
        "single_sample_stderr": float(np.sqrt(acc1 * (1 - acc1) / len(problems))),
        "settings": {
            "potential": model.potential,
            "aggregation": model.aggregation,
            "reward_temperature": model.reward_temperature,
            "sampling_temperature": model.sampling_temperature,
            "max_steps": model.max_steps,
            "max_tokens_per_step": model.max_tokens_per_step,
        },
        "results": results,
    }


def format_table(report: dict) -> str:
    """Accuracy (%) per algorithm (rows) and budget (columns), +- one standard error."""
    budgets = report["budgets"]
    head = f"{'algorithm':<20}" + "".join(f"{'N=' + str(b):>12}" for b in budgets)
    lines = [
        f"accuracy over {report['num_problems']} problems (+- 1 s.e.); single sample: "
        f"{100 * report['single_sample_accuracy']:.1f} +- "
        f"{100 * report['single_sample_stderr']:.1f}%",
        head,
        "-" * len(head),
    ]
    for name, rows in report["results"].items():
        cells = "".join(
            "{:>12}".format(f"{100 * r['accuracy']:.1f}+-{100 * r['stderr']:.1f}") for r in rows
        )
        lines.append(f"{name:<20}{cells}")
    usage = {
        name: [
            f"{r['tokens_encoded']:.0f}/{r['tokens_generated']:.0f}/{r['lm_calls']:.0f}/"
            f"{r['seconds'] / report['num_problems']:.2f}"
            for r in rows
        ]
        for name, rows in report["results"].items()
    }
    width = max([12] + [len(c) + 2 for cells in usage.values() for c in cells])
    head = f"{'algorithm':<20}" + "".join(f"{'N=' + str(b):>{width}}" for b in budgets)
    lines += [
        "",
        "usage per problem (prefill tokens / generated tokens / LM calls / seconds)",
        head,
        "-" * len(head),
    ]
    for name, cells in usage.items():
        lines.append(f"{name:<20}" + "".join(f"{c:>{width}}" for c in cells))
    return "\n".join(lines)


def plot_scaling(report: dict, path) -> Path:
    """Accuracy versus budget (log2 axis) with one-standard-error bars, saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rows in report["results"].items():
        b = [r["budget"] for r in rows]
        a = [100 * r["accuracy"] for r in rows]
        e = [100 * r["stderr"] for r in rows]
        ax.errorbar(b, a, yerr=e, marker="o", capsize=3, label=name)
    ax.axhline(100 * report["single_sample_accuracy"], color="grey", ls="--", label="single sample")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("budget (full-rollout equivalents)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"inference-time scaling, {report['num_problems']} problems")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(report: dict, json_path, png_path=None) -> None:
    """Write the report as JSON (and the plot as PNG when ``png_path`` is given)."""
    p = Path(json_path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(report, indent=1))
    if png_path is not None:
        plot_scaling(report, png_path)
