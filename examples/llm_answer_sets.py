"""Calibrated answers from LLM particle runs on the bundled offline task (a few minutes on CPU).

1. Run the particle filter (bundled tiny LM + learned PRM) on calibration and test problems
   at budgets 1, 2, 4.
2. Conformal answer sets at budget 4 (LAC; ``OTHER`` stands for answers no particle produced).
3. Calibrated confidence (Platt scaling) with the ECE before and after.
4. Answer or abstain with the error among answered problems controlled by Learn-then-Test.
5. The adaptive budget: calibrated on the calibration problems, then run live on the test
   problems, stopping as soon as the answer is settled.

Run: ``python examples/llm_answer_sets.py [--num-calibration 100 --num-test 20]``.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from calibration.answer_sets import (
    ConfidenceCalibrator,
    ConformalAnswerSets,
    RunSummary,
    SelectiveAnswerer,
    confidence_report,
)
from calibration.llm_adaptive import AdaptiveBudget
from probinfer.llm import particle_filter
from probinfer.llm.default import default_problems, load_default

BUDGETS = (1, 2, 4)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-calibration", type=int, default=100)
    ap.add_argument("--num-test", type=int, default=20)
    ap.add_argument("--alpha", type=float, default=0.2)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    model = load_default("learned")
    problems = default_problems(args.num_calibration + args.num_test)
    base = jax.random.key(0)
    print(f"running the particle filter at budgets {BUDGETS} on {len(problems)} problems ...")
    runs = [
        [
            RunSummary.from_result(
                particle_filter(jax.random.fold_in(jax.random.fold_in(base, i), b), model, p, b)
            )
            for b in BUDGETS
        ]
        for i, (p, _) in enumerate(problems)
    ]
    truths = [a for _, a in problems]
    n = args.num_calibration
    cal = runs[:n]
    last = [row[-1] for row in runs]

    # 2. conformal answer sets
    cs = ConformalAnswerSets(args.alpha).calibrate(last[:n], truths[:n])
    sets = cs.predict_set(last[n:])
    print(
        f"\nconformal answer sets at budget {BUDGETS[-1]} (alpha {args.alpha}, q = "
        f"{cs.quantile_:.3f}):"
    )
    for (prompt, answer), s in zip(problems[n : n + 5], sets):
        print(f"  {prompt!r:40} true {answer:>4}  set {list(s)}  covered {answer in s}")
    ev = cs.evaluate(last[n:], truths[n:])
    print(f"  coverage {ev['coverage']:.2f}, mean size {ev['mean_size']:.2f}")

    # 3. calibrated confidence
    cc = ConfidenceCalibrator("platt", confidence="mass_reward").fit(last[:n], truths[:n])
    rep = confidence_report(cc, last[n:], truths[n:], n_bins=5)
    print(
        f"\nconfidence of the top answer: ECE {rep['ece_before']:.3f} (raw) -> "
        f"{rep['ece_after']:.3f} (Platt)"
    )

    # 4. answer or abstain
    sa = SelectiveAnswerer(args.alpha, confidence="mass_reward").calibrate(last[:n], truths[:n])
    ev = sa.evaluate(last[n:], truths[n:])
    print(
        f"\nanswer or abstain (threshold {sa.threshold_}): abstains on "
        f"{100 * ev['abstention_rate']:.0f}%, error among answered "
        f"{100 * ev['error_among_answered']:.0f}%"
    )

    # 5. adaptive budget, run live on the test problems
    ab = AdaptiveBudget(BUDGETS, alpha=args.alpha).calibrate(cal, truths[:n])
    print(f"\nadaptive budget {BUDGETS}: threshold {ab.threshold_}")
    used, right = [], []
    for i in range(n, len(problems)):
        res = ab.run(jax.random.fold_in(base, i), model, problems[i][0])
        used.append(res.compute["tokens_generated"])
        right.append(res.answer == truths[i])
    fixed = [r.tokens_generated for r in last[n:]]
    acc_fixed = np.mean([r.top[0] == t for r, t in zip(last[n:], truths[n:])])
    print(
        f"  accuracy {np.mean(right):.2f} with {np.mean(used):.0f} tokens per problem; "
        f"fixed budget {BUDGETS[-1]}: {acc_fixed:.2f} with {np.mean(fixed):.0f}"
    )


if __name__ == "__main__":
    main()
