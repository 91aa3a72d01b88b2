"""``probinfer scale --calibrate N_CAL --alpha A``: calibrated answers next to the scaling table.

The particle filter is run on every problem at every budget of the scaling report, with the
keys of ``probinfer scale`` (``fold_in(fold_in(key(seed), problem), budget)``, so the runs are
the scaling table's particle-filter runs). The first ``N_CAL`` problems calibrate, the others
are held out. Per budget: conformal answer-set coverage and mean size, the abstention rate and
error among answered problems of the answer-or-abstain rule; over the budgets: the adaptive
budget (:class:`calibration.llm_adaptive.AdaptiveBudget`) with its accuracy and the compute it
saves against the largest fixed budget.

Too few calibration problems make a part trivial rather than wrong: the conformal sets hold
every answer (coverage 100%), Learn-then-Test certifies no threshold (abstain on everything,
never stop early). Such a part is reported as "not enough calibration problems"
(:func:`min_calibration_problems`), not as its trivial numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ._validation import check_alpha, check_positive_int
from .answer_sets import ConformalAnswerSets, RunSummary, SelectiveAnswerer
from .llm_adaptive import AdaptiveBudget
from .quantile import min_calibration_size

__all__ = [
    "calibrate_scale",
    "calibration_rows",
    "check_scale_calibration",
    "format_calibration",
    "min_calibration_problems",
    "plot_calibration",
]

_NOT_ENOUGH = "not enough calibration problems"


def check_scale_calibration(
    n_cal, alpha, num_problems: int, num_budgets: int | None = None
) -> tuple[int, float]:
    """Validate ``--calibrate N_CAL --alpha A`` before any model runs.

    ``N_CAL`` must leave at least one held-out problem, and the adaptive budget needs at least
    two distinct budgets (``num_budgets``; not checked when ``None``).
    """
    alpha = check_alpha(alpha)
    n_cal = check_positive_int(n_cal, "n_cal")
    if n_cal >= num_problems:
        raise ValueError(
            f"--calibrate N_CAL must be smaller than the number of problems ({num_problems}), "
            f"got {n_cal}"
        )
    if num_budgets is not None and num_budgets < 2:
        raise ValueError(
            "--calibrate needs at least two --budgets (the adaptive budget grows through "
            f"them), got {num_budgets}"
        )
    return n_cal, alpha


def _answerer(alpha: float) -> SelectiveAnswerer:
    return SelectiveAnswerer(alpha, confidence="mass_reward")


def _ltt_min_problems(alpha: float, level: float) -> int:
    """Fewest problems with which a Learn-then-Test null can be rejected at ``level``: zero
    losses on ``n`` problems give the smallest p-value, ``(1 - alpha)^n``."""
    n = max(1, math.floor(math.log(level) / math.log1p(-alpha)) - 1)
    while (1.0 - alpha) ** n > level:
        n += 1
    return n


def min_calibration_problems(alpha: float) -> dict[str, int]:
    """The fewest calibration problems each part of the calibrated section needs at ``alpha``.

    Returns
    -------
    dict
        ``answer_sets``: for a finite conformal threshold (fewer give the set of every answer,
        :func:`calibration.min_calibration_size`); ``abstention``: for Learn-then-Test to
        certify any threshold of the answer-or-abstain rule (fewer: abstain on everything);
        ``adaptive``: the same for the adaptive budget (fewer: never stop early).
    """
    alpha = check_alpha(alpha)
    sa = _answerer(alpha)
    return {
        "answer_sets": min_calibration_size(alpha),
        "abstention": _ltt_min_problems(alpha, sa.delta / len(sa.thresholds)),
        "adaptive": _ltt_min_problems(alpha, AdaptiveBudget(alpha=alpha).delta),
    }


def calibration_rows(runs, answers, budgets, n_cal: int, alpha: float) -> dict:
    """The calibrated section from cached runs: ``runs[b][i]`` is problem ``i`` at budget ``b``.

    Returns
    -------
    dict
        ``per_budget`` rows (accuracy, coverage, mean set size, singleton rate, abstention
        rate, error among answered) on the held-out problems and ``adaptive`` (accuracy, mean
        tokens generated and LM calls, and ``compute_saved`` against the largest budget);
        ``min_calibration`` (:func:`min_calibration_problems`). A part with fewer
        calibration problems than it needs is ``None`` (the set columns, the abstention
        columns, or ``adaptive``), never its trivial value.
    """
    m = len(answers)
    n_cal, alpha = check_scale_calibration(n_cal, alpha, m, len(budgets))
    need = min_calibration_problems(alpha)
    sets_ok, abstain_ok = n_cal >= need["answer_sets"], n_cal >= need["abstention"]
    cal, test = slice(0, n_cal), slice(n_cal, m)
    rows = []
    for b in budgets:
        r = runs[b]
        row = {
            "budget": b,
            "accuracy": float(np.mean([x.top[0] == t for x, t in zip(r[test], answers[test])])),
            "coverage": None,
            "mean_set_size": None,
            "singleton_rate": None,
            "abstention_rate": None,
            "error_among_answered": None,
        }
        if sets_ok:
            cs = ConformalAnswerSets(alpha).calibrate(r[cal], answers[cal])
            sets = cs.evaluate(r[test], answers[test])
            row.update(
                coverage=sets["coverage"],
                mean_set_size=sets["mean_size"],
                singleton_rate=sets["singleton_rate"],
            )
        if abstain_ok:
            ab = _answerer(alpha).calibrate(r[cal], answers[cal]).evaluate(r[test], answers[test])
            row.update(
                abstention_rate=ab["abstention_rate"],
                error_among_answered=ab["error_among_answered"],
            )
        rows.append(row)
    out = {
        "alpha": alpha,
        "num_calibration": n_cal,
        "num_test": m - n_cal,
        "min_calibration": need,
        "per_budget": rows,
        "adaptive": None,
    }
    if n_cal < need["adaptive"]:
        return out
    stages = [[runs[b][i] for b in budgets] for i in range(m)]
    ad = AdaptiveBudget(tuple(budgets), alpha=alpha).calibrate(stages[cal], answers[cal])
    ev = ad.evaluate(stages[test], answers[test])
    a, top = ev["adaptive"], ev["fixed"][-1]
    return {
        **out,
        "adaptive": {
            "threshold": a["threshold"],
            "accuracy": a["accuracy"],
            "loss": a["loss"],
            "tokens_generated": a["tokens_generated"],
            "lm_calls": a["lm_calls"],
            "stop_fraction": a["stop_fraction"],
            "max_budget_accuracy": top["accuracy"],
            "compute_saved": 1.0 - a["tokens_generated"] / top["tokens_generated"],
        },
    }


def format_calibration(report: dict) -> str:
    """The calibrated section as a text table."""
    c = report["calibrated"]
    head = f"{'budget':>8}{'acc':>8}{'coverage':>10}{'set size':>10}{'abstain':>9}{'err|ans':>9}"
    lines = [
        f"calibrated (alpha {c['alpha']}, {c['num_calibration']} calibration / "
        f"{c['num_test']} held-out problems)",
        head,
        "-" * len(head),
    ]
    for r in c["per_budget"]:
        size = "n/a" if r["mean_set_size"] is None else f"{r['mean_set_size']:.2f}"
        lines.append(
            f"{r['budget']:>8}{_pct(r['accuracy'], 8)}{_pct(r['coverage'], 10)}{size:>10}"
            f"{_pct(r['abstention_rate'], 9)}{_pct(r['error_among_answered'], 9)}"
        )
    need, n = c["min_calibration"], c["num_calibration"]
    short = f"{_NOT_ENOUGH} ({n}; alpha {c['alpha']} needs at least"
    if c["per_budget"][0]["coverage"] is None:
        lines.append(f"answer sets: {short} {need['answer_sets']}, or every set is every answer)")
    if c["per_budget"][0]["abstention_rate"] is None:
        lines.append(f"abstention: {short} {need['abstention']}, or it abstains on everything)")
    a = c["adaptive"]
    if a is None:
        lines.append(f"adaptive budget: {short} {need['adaptive']}, or it never stops early)")
        return "\n".join(lines)
    saved = a["compute_saved"]
    cost = (
        f"compute saved {100 * saved:.1f}% of its tokens"
        if saved >= 0
        else f"{-100 * saved:.1f}% more tokens than it (it seldom stops early)"
    )
    lines.append(
        f"adaptive budget: accuracy {100 * a['accuracy']:.1f}% (largest budget "
        f"{100 * a['max_budget_accuracy']:.1f}%), {cost}"
    )
    return "\n".join(lines)


def _pct(x: float | None, width: int) -> str:
    return f"{'n/a':>{width}}" if x is None else f"{100 * x:>{width - 1}.1f}%"


def plot_calibration(report: dict, path) -> Path:
    """The scaling plot with a second panel: coverage, set size and abstention per budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = report["calibrated"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in report["results"].items():
        ax.plot([r["budget"] for r in rows], [100 * r["accuracy"] for r in rows], "o-", label=name)
    a = c["adaptive"]
    rows = c["per_budget"]
    budgets = [r["budget"] for r in rows]
    adaptive = (
        f"adaptive: {100 * a['accuracy']:.1f}%, saves {100 * a['compute_saved']:.0f}% tokens"
        if a is not None
        else f"adaptive: {_NOT_ENOUGH}"
    )
    ax.plot([], [], " ", label=adaptive)
    ax.set(xscale="log", xlabel="budget", ylabel="accuracy (%)", title="accuracy vs budget")
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=7)
    for field, style, label in (
        ("coverage", "o-", "coverage"),
        ("abstention_rate", "s-", "abstention"),
    ):
        if rows[0][field] is not None:
            ax2.plot(budgets, [100 * r[field] for r in rows], style, label=f"{label} (%)")
        else:
            ax2.plot([], [], " ", label=f"{label}: {_NOT_ENOUGH}")
    ax2.axhline(100 * (1 - c["alpha"]), color="grey", ls="--", label="1 - alpha")
    if rows[0]["mean_set_size"] is not None:
        ax3 = ax2.twinx()
        ax3.plot(budgets, [r["mean_set_size"] for r in rows], "d:", color="C3")
        ax3.set_ylabel("mean set size", color="C3")
    ax2.set_xscale("log", base=2)
    ax2.set_xlim(budgets[0] / 1.25, budgets[-1] * 1.25)  # also when no series has data
    ax2.set(xlabel="budget", ylim=(-2, 102), title=f"calibrated answers, alpha {c['alpha']}")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def calibrate_scale(
    report: dict,
    model,
    problems,
    n_cal: int,
    alpha: float,
    json_path,
    png_path,
    *,
    progress: bool | None = None,
) -> str:
    """Add the calibrated section to a ``probinfer scale`` report, rewrite its JSON and plot,
    and return the table text."""
    import jax

    from probinfer.llm.filtering import particle_filter
    from probinfer.progress import progress_bar

    budgets = sorted(set(report["budgets"]))
    n_cal, alpha = check_scale_calibration(n_cal, alpha, len(problems), len(budgets))
    base = jax.random.key(report["seed"])
    runs = {b: [] for b in budgets}
    bar = progress_bar(len(problems) * len(budgets), desc="calibrate", progress=progress)
    for i, (prompt, _) in enumerate(problems):
        for b in budgets:
            key = jax.random.fold_in(jax.random.fold_in(base, i), b)
            runs[b].append(RunSummary.from_result(particle_filter(key, model, prompt, b)))
            bar.update()
    bar.close()
    report["calibrated"] = calibration_rows(runs, [a for _, a in problems], budgets, n_cal, alpha)
    Path(json_path).write_text(json.dumps(report, indent=1))
    plot_calibration(report, png_path)
    return format_calibration(report)
