"""Inference-time scaling on the bundled offline arithmetic task (minutes on a laptop CPU).

Particle filtering versus best-of-N, beam search and self-consistency at budgets 1..32 on
held-out problems, with the bundled tiny LM and learned PRM (or the exact verifier):

    python examples/llm_scaling.py --num-problems 100 --prm learned

Prints the accuracy-vs-budget table and writes ``out/llm_scaling.json`` and ``.png``. The
same run is available as ``probinfer scale``.
"""

from __future__ import annotations

import argparse

import torch

from probinfer.llm.default import default_problems, load_default
from probinfer.llm.scale import format_table, run_scaling, write_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-problems", type=int, default=100)
    ap.add_argument("--prm", choices=["learned", "verifier"], default="learned")
    ap.add_argument("--aggregation", default="model")
    ap.add_argument("--budgets", default="1,2,4,8,16,32")
    ap.add_argument(
        "--algorithms", default="particle_filter,best_of_n,beam_search,self_consistency"
    )
    ap.add_argument("--output", default="out/llm_scaling.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_default(args.prm, aggregation=args.aggregation)
    report = run_scaling(
        model,
        default_problems(args.num_problems),
        algorithms=args.algorithms.split(","),
        budgets=[int(b) for b in args.budgets.split(",")],
    )
    report["prm"] = args.prm
    write_report(report, args.output, args.output.replace(".json", ".png"))
    print(format_table(report))


if __name__ == "__main__":
    main()
