"""``probinfer scale --calibrate N_CAL --alpha A``: calibrated answers next to the scaling table.

The particle filter is run on every problem at every budget of the scaling report, with the
keys of ``probinfer scale`` (``fold_in(fold_in(key(seed), problem), budget)``, so the runs are
the scaling table's particle-filter runs). The first ``N_CAL`` problems calibrate, the others
are held out. Per budget: conformal answer-set coverage and mean size, the abstention rate and
error among answered problems of the answer-or-abstain rule; over the budgets: the adaptive
budget (:class:`calibration.llm_adaptive.AdaptiveBudget`) with its accuracy and the compute it
saves against the largest fixed budget.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ._validation import check_alpha, check_positive_int
from .answer_sets import ConformalAnswerSets, RunSummary, SelectiveAnswerer
from .llm_adaptive import AdaptiveBudget

__all__ = [
    "calibrate_scale",
    "calibration_rows",
    "check_scale_calibration",
    "format_calibration",
    "plot_calibration",
]


def check_scale_calibration(n_cal, alpha, num_problems: int) -> tuple[int, float]:
    """Validate ``--calibrate N_CAL --alpha A`` before any model runs."""
    alpha = check_alpha(alpha)
    n_cal = check_positive_int(n_cal, "n_cal")
    if n_cal >= num_problems:
        raise ValueError(
            f"--calibrate N_CAL must be smaller than the number of problems ({num_problems}), "
            f"got {n_cal}"
        )
    return n_cal, alpha


def calibration_rows(runs, answers, budgets, n_cal: int, alpha: float) -> dict:
    """The calibrated section from cached runs: ``runs[b][i]`` is problem ``i`` at budget ``b``.

    Returns
    -------
    dict
        ``per_budget`` rows (accuracy, coverage, mean set size, singleton rate, abstention
        rate, error among answered) on the held-out problems and ``adaptive`` (accuracy, mean
        tokens generated and LM calls, and ``compute_saved`` against the largest budget).
    """
    m = len(answers)
    n_cal, alpha = check_scale_calibration(n_cal, alpha, m)
    cal, test = slice(0, n_cal), slice(n_cal, m)
    rows = []
    for b in budgets:
        r = runs[b]
        cs = ConformalAnswerSets(alpha).calibrate(r[cal], answers[cal])
        sets = cs.evaluate(r[test], answers[test])
        sa = SelectiveAnswerer(alpha, confidence="mass_reward").calibrate(r[cal], answers[cal])
        ab = sa.evaluate(r[test], answers[test])
        rows.append(
            {
                "budget": b,
                "accuracy": float(np.mean([x.top[0] == t for x, t in zip(r[test], answers[test])])),
                "coverage": sets["coverage"],
                "mean_set_size": sets["mean_size"],
                "singleton_rate": sets["singleton_rate"],
                "abstention_rate": ab["abstention_rate"],
                "error_among_answered": ab["error_among_answered"],
            }
        )
    stages = [[runs[b][i] for b in budgets] for i in range(m)]
    ad = AdaptiveBudget(tuple(budgets), alpha=alpha).calibrate(stages[cal], answers[cal])
    ev = ad.evaluate(stages[test], answers[test])
    a, top = ev["adaptive"], ev["fixed"][-1]
    return {
        "alpha": alpha,
        "num_calibration": n_cal,
        "num_test": m - n_cal,
        "per_budget": rows,
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
        lines.append(
            f"{r['budget']:>8}{100 * r['accuracy']:>7.1f}%{100 * r['coverage']:>9.1f}%"
            f"{r['mean_set_size']:>10.2f}{100 * r['abstention_rate']:>8.1f}%"
            f"{100 * r['error_among_answered']:>8.1f}%"
        )
    a = c["adaptive"]
    lines.append(
        f"adaptive budget: accuracy {100 * a['accuracy']:.1f}% (largest budget "
        f"{100 * a['max_budget_accuracy']:.1f}%), compute saved {100 * a['compute_saved']:.1f}% "
        f"of its tokens"
    )
    return "\n".join(lines)


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
    budgets = [r["budget"] for r in c["per_budget"]]
    ax.plot(
        [],
        [],
        " ",
        label=f"adaptive: {100 * a['accuracy']:.1f}%, saves {100 * a['compute_saved']:.0f}% tokens",
    )
    ax.set(xscale="log", xlabel="budget", ylabel="accuracy (%)", title="accuracy vs budget")
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=7)
    ax2.plot(budgets, [100 * r["coverage"] for r in c["per_budget"]], "o-", label="coverage (%)")
    ax2.plot(
        budgets, [100 * r["abstention_rate"] for r in c["per_budget"]], "s-", label="abstention (%)"
    )
    ax2.axhline(100 * (1 - c["alpha"]), color="grey", ls="--", label="1 - alpha")
    ax3 = ax2.twinx()
    ax3.plot(budgets, [r["mean_set_size"] for r in c["per_budget"]], "d:", color="C3")
    ax3.set_ylabel("mean set size", color="C3")
    ax2.set_xscale("log", base=2)
    ax2.set(xlabel="budget", title=f"calibrated answers, alpha {c['alpha']}")
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
    progress: bool = True,
) -> str:
    """Add the calibrated section to a ``probinfer scale`` report, rewrite its JSON and plot,
    and return the table text."""
    import jax
    from tqdm.auto import tqdm

    from probinfer.llm.filtering import particle_filter

    n_cal, alpha = check_scale_calibration(n_cal, alpha, len(problems))
    budgets = sorted(set(report["budgets"]))
    base = jax.random.key(report["seed"])
    runs = {b: [] for b in budgets}
    bar = tqdm(total=len(problems) * len(budgets), disable=not progress, desc="calibrate")
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
