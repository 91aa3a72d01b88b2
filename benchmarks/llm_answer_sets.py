"""Calibrated answers on the bundled LLM task: coverage, abstention, calibrated confidence and the
adaptive budget against fixed budgets, over random calibration/test splits.

Uses the particle-filter runs cached by ``scripts/make_llm_answer_runs.py``
(``tests/calibration/data/llm_answer_runs.json``: 300 problems, the learned PRM at budgets
1, 2, 4, 8, 16 and an inverted, deliberately wrong PRM at 16). Writes
``benchmarks/results/llm_answer_sets.json`` and ``llm_answer_sets.png`` (accuracy against mean
tokens generated: fixed budgets and adaptive rules). Run::

    python benchmarks/llm_answer_sets.py [--splits 200]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from calibration.answer_sets import (
    ConfidenceCalibrator,
    ConformalAnswerSets,
    SelectiveAnswerer,
    confidence_report,
    read_runs,
)
from calibration.llm_adaptive import COMPUTE_FIELDS, AdaptiveBudget

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "calibration" / "data" / "llm_answer_runs.json"
RESULTS = Path(__file__).parent / "results"


def _splits(m, reps, seed, frac):
    rng = np.random.default_rng(seed)
    n = int(frac * m)
    for _ in range(reps):
        perm = rng.permutation(m)
        yield perm[:n], perm[n:]


def _mean_se(x):
    x = np.asarray(x, dtype=float)
    return {"mean": float(x.mean()), "se": float(x.std(ddof=1) / math.sqrt(len(x)))}


def sets(data, reps):
    out = []
    truths = data["answers"]
    for prm in ("learned", "wrong"):
        runs = data["runs"][prm][16]
        for score in ("lac", "aps"):
            for alpha in (0.1, 0.2):
                rows = []
                for cal, test in _splits(len(runs), reps, 1, 0.5):
                    cs = ConformalAnswerSets(alpha, score=score)
                    cs.calibrate([runs[i] for i in cal], [truths[i] for i in cal])
                    rows.append(cs.evaluate([runs[i] for i in test], [truths[i] for i in test]))
                out.append(
                    {"prm": prm, "score": score, "alpha": alpha}
                    | {k: _mean_se([r[k] for r in rows]) for k in rows[0]}
                )
    return out


def abstention(data, reps):
    runs, truths = data["runs"]["learned"][16], data["answers"]
    out = []
    for conf in ("mass", "mass_reward"):
        for alpha in (0.1, 0.2):
            rows, thr = [], []
            for cal, test in _splits(len(runs), reps, 2, 0.8):
                sa = SelectiveAnswerer(alpha, confidence=conf)
                sa.calibrate([runs[i] for i in cal], [truths[i] for i in cal])
                rows.append(sa.evaluate([runs[i] for i in test], [truths[i] for i in test]))
                thr.append(sa.threshold_)
            answered = [r for r in rows if r["answered"]]
            out.append(
                {
                    "confidence": conf,
                    "alpha": alpha,
                    "abstention_rate": _mean_se([r["abstention_rate"] for r in rows]),
                    "splits_answering": len(answered),
                    "error_among_answered": _mean_se([r["error_among_answered"] for r in answered])
                    if len(answered) > 1
                    else None,
                    "median_threshold": float(np.median(thr)),
                }
            )
    return out


def confidence(data, reps):
    runs, truths = data["runs"]["learned"][16], data["answers"]
    out = []
    for method in ("isotonic", "platt"):
        for conf in ("mass", "mass_reward"):
            rows = []
            for cal, test in _splits(len(runs), reps, 3, 0.5):
                cc = ConfidenceCalibrator(method, confidence=conf)
                cc.fit([runs[i] for i in cal], [truths[i] for i in cal])
                rows.append(
                    confidence_report(cc, [runs[i] for i in test], [truths[i] for i in test])
                )
            out.append(
                {"method": method, "confidence": conf}
                | {
                    k: _mean_se([r[k] for r in rows])
                    for k in ("ece_before", "ece_after", "brier_before", "brier_after")
                }
            )
    return out


def adaptive(data, reps):
    learned, truths = data["runs"]["learned"], data["answers"]
    m = len(truths)
    fixed = []
    for b, runs in learned.items():
        row = {
            "budget": b,
            "accuracy": float(np.mean([r.top[0] == t for r, t in zip(runs, truths)])),
        }
        row |= {f: float(np.mean([getattr(r, f) for r in runs])) for f in COMPUTE_FIELDS}
        fixed.append(row)
    ref = {f: fixed[-1][f] for f in COMPUTE_FIELDS} | {"accuracy": fixed[-1]["accuracy"]}
    out = []
    configs = [
        ((1, 2, 4, 8, 16), True, "mass_reward"),
        ((1, 2, 4, 8, 16), False, "mass_reward"),
        ((1, 2, 4, 8, 16), True, "reward"),
        ((1, 2, 4, 8), True, "mass_reward"),
        ((1, 4, 16), True, "mass_reward"),
    ]
    for budgets, pool, conf in configs:
        runs = [[learned[b][i] for b in budgets] for i in range(m)]
        for alpha in (0.05, 0.1):
            rows = []
            for cal, test in _splits(m, reps, 4, 0.8):
                ab = AdaptiveBudget(budgets, alpha=alpha, confidence=conf, pool=pool)
                ab.calibrate([runs[i] for i in cal], [truths[i] for i in cal])
                ev = ab.evaluate([runs[i] for i in test], [truths[i] for i in test])
                a = ev["adaptive"]
                f16 = [r.top[0] == truths[i] for i, r in enumerate(learned[16]) if i in set(test)]
                rows.append(
                    a
                    | {
                        "accuracy_minus_fixed16": a["accuracy"] - float(np.mean(f16)),
                        "tokens_ratio_vs_fixed16": a["tokens_generated"]
                        / np.mean([learned[16][i].tokens_generated for i in test]),
                        "lm_calls_ratio_vs_fixed16": a["lm_calls"]
                        / np.mean([learned[16][i].lm_calls for i in test]),
                    }
                )
            keys = [
                "accuracy",
                "loss",
                "accuracy_minus_fixed16",
                "tokens_ratio_vs_fixed16",
                "lm_calls_ratio_vs_fixed16",
                *COMPUTE_FIELDS,
            ]
            out.append(
                {"budgets": list(budgets), "pool": pool, "confidence": conf, "alpha": alpha}
                | {k: _mean_se([r[k] for r in rows]) for k in keys}
                | {
                    "stop_fraction": np.mean([r["stop_fraction"] for r in rows], axis=0).tolist(),
                    "median_threshold": float(np.median([r["threshold"] for r in rows])),
                }
            )
    return {"fixed": fixed, "fixed16": ref, "rules": out}


def plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    fx = report["adaptive"]["fixed"]
    ax.plot(
        [r["tokens_generated"] for r in fx],
        [100 * r["accuracy"] for r in fx],
        "ko-",
        label="fixed budget (1..16)",
    )
    for i, r in enumerate(report["adaptive"]["rules"]):
        lab = f"{r['budgets']} pool={r['pool']} {r['confidence']} a={r['alpha']}"
        ax.errorbar(
            r["tokens_generated"]["mean"],
            100 * r["accuracy"]["mean"],
            yerr=100 * r["accuracy"]["se"],
            fmt="o^sDv"[i // 2 % 5],
            color=f"C{i}",
            ms=5,
            label=lab,
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("mean tokens generated per problem")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("adaptive budget (LTT) vs fixed budgets, held-out problems")
    ax.legend(fontsize=5)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splits", type=int, default=200)
    args = ap.parse_args(argv)
    data = read_runs(DATA)
    report = {
        "data": str(DATA.relative_to(ROOT)),
        "num_problems": len(data["answers"]),
        "splits": args.splits,
        "sets": sets(data, args.splits),
        "abstention": abstention(data, args.splits),
        "confidence": confidence(data, max(20, args.splits // 4)),
        "adaptive": adaptive(data, args.splits),
    }
    rules = report["adaptive"]["rules"]
    fx = {r["budget"]: r for r in report["adaptive"]["fixed"]}
    best = [r for r in rules if r["accuracy_minus_fixed16"]["mean"] >= -0.01]
    report["headline"] = {
        "question": "the adaptive rule within 1 accuracy point of fixed budget 16 with the least "
        "mean tokens generated (acceptance target: <= 0.60 of fixed 16's tokens)",
        "rule": min(best, key=lambda r: r["tokens_ratio_vs_fixed16"]["mean"]) if best else None,
        "cheapest_rule": min(rules, key=lambda r: r["tokens_ratio_vs_fixed16"]["mean"]),
        "fixed8_vs_fixed16": {
            "accuracy_diff": fx[8]["accuracy"] - fx[16]["accuracy"],
            "tokens_ratio": fx[8]["tokens_generated"] / fx[16]["tokens_generated"],
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "llm_answer_sets.json").write_text(json.dumps(report, indent=1))
    plot(report, RESULTS / "llm_answer_sets.png")
    h = report["headline"]["rule"]
    for r in report["adaptive"]["rules"]:
        d = r["accuracy_minus_fixed16"]
        print(
            f"{r['budgets']} pool={r['pool']} {r['confidence']:<11} alpha={r['alpha']}: "
            f"acc {r['accuracy']['mean']:.3f} (fixed16 "
            f"{report['adaptive']['fixed16']['accuracy']:.3f}, "
            f"diff {d['mean']:+.3f}+-{d['se']:.3f}), "
            f"tokens x{r['tokens_ratio_vs_fixed16']['mean']:.2f}, LM calls "
            f"x{r['lm_calls_ratio_vs_fixed16']['mean']:.2f}, held-out loss {r['loss']['mean']:.3f}"
        )
    print(
        "headline:",
        None
        if h is None
        else (h["budgets"], h["pool"], h["alpha"], h["tokens_ratio_vs_fixed16"]["mean"]),
    )
    print(f"wrote {RESULTS / 'llm_answer_sets.json'}")


if __name__ == "__main__":
    main()
