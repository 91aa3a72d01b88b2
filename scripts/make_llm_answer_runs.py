"""Run the particle filter once over the bundled task's problems and cache the results.

The calibrated-answer tests and benchmark (``tests/calibration/test_answer_sets*.py``,
``benchmarks/llm_answer_sets.py``) need many random calibration/test splits of the bundled
task's problems; running the particle filter inside every split would take hours, so it is
run here once and its per-problem outcome is written to
``tests/calibration/data/llm_answer_runs.json``:

* ``learned``: the bundled learned PRM at budgets 1, 2, 4, 8, 16 (keys
  ``fold_in(fold_in(key(seed), problem), budget)``, as in ``probinfer scale``, so the
  budget-16 run is the fixed-budget-16 run of the scaling table);
* ``wrong``: a deliberately wrong PRM (the learned PRM inverted, ``r -> 1 - r``, clipped to
  ``[1e-3, 1 - 1e-3]``: it prefers wrong steps) at budget 16.

Each run stores, per particle, the extracted answer (``null`` when unfinished), the final
log weight and the reward model's last score, and per run the log-evidence estimate and the
compute used (:class:`~probinfer.llm.Usage`). The file is rewritten every 10 problems and a
run resumes from it.

Command that produced the committed file (one CPU thread, about 10 s per problem on a
shared 2-core machine)::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/make_llm_answer_runs.py --num-problems 300
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

OUT = (
    Path(__file__).resolve().parents[1] / "tests" / "calibration" / "data" / "llm_answer_runs.json"
)
LEARNED_BUDGETS = (1, 2, 4, 8, 16)
WRONG_BUDGETS = (16,)


class InvertedReward:
    """A deliberately wrong process reward model: ``1 - r`` of a good one, clipped."""

    def __init__(self, reward, clip: float = 1e-3):
        self.reward = reward
        self.clip = clip

    def score(self, prompts, partials) -> np.ndarray:
        r = np.asarray(self.reward.score(prompts, partials), dtype=np.float64)
        return np.clip(1.0 - r, self.clip, 1.0 - self.clip)


def _record(res) -> dict:
    lw = np.asarray(res.particles.log_weights, dtype=np.float64)
    last = res.trajectories.to_dict()["last_score"]
    u = res.usage
    return {
        "answers": list(res.answers),
        "log_weights": [float(f"{x:.9g}") for x in lw],
        "last_score": [None if not np.isfinite(x) else float(f"{x:.6g}") for x in last],
        "log_evidence": None if res.log_evidence is None else float(f"{res.log_evidence:.9g}"),
        "tokens_generated": int(u.tokens_generated),
        "tokens_encoded": int(u.tokens_encoded),
        "lm_calls": int(u.lm_calls),
        "reward_calls": int(u.reward_calls),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-problems", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", default=str(OUT))
    args = ap.parse_args(argv)

    import jax
    import torch

    from probinfer.llm.default import default_problems, load_default
    from probinfer.llm.filtering import particle_filter
    from probinfer.llm.ssm import LLMStateSpaceModel

    torch.set_num_threads(1)
    out = Path(args.output)
    problems = default_problems(args.num_problems)
    data = {
        "description": "particle-filter runs on the bundled task (scripts/make_llm_answer_runs.py)",
        "seed": args.seed,
        "budgets": {"learned": list(LEARNED_BUDGETS), "wrong": list(WRONG_BUDGETS)},
        "problems": [],
    }
    if out.exists():
        old = json.loads(out.read_text())
        if old.get("seed") == args.seed and old.get("budgets") == data["budgets"]:
            data["problems"] = old["problems"]
    learned = load_default("learned")
    wrong = LLMStateSpaceModel(
        learned.lm,
        InvertedReward(learned.reward),
        step_format=learned.step_format,
        max_steps=learned.max_steps,
        max_tokens_per_step=learned.max_tokens_per_step,
        potential=learned.potential,
        aggregation=learned.aggregation,
    )
    base = jax.random.key(args.seed)
    start = time.perf_counter()
    for i in range(len(data["problems"]), len(problems)):
        prompt, answer = problems[i]
        row = {"prompt": prompt, "answer": answer, "learned": {}, "wrong": {}}
        for name, model, budgets in (
            ("learned", learned, LEARNED_BUDGETS),
            ("wrong", wrong, WRONG_BUDGETS),
        ):
            for b in budgets:
                key = jax.random.fold_in(jax.random.fold_in(base, i), b)
                row[name][str(b)] = _record(particle_filter(key, model, prompt, b))
        data["problems"].append(row)
        if (i + 1) % 10 == 0 or i + 1 == len(problems):
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, separators=(",", ":")))
            tmp.replace(out)
            print(
                f"{i + 1}/{len(problems)} problems, {time.perf_counter() - start:.0f} s", flush=True
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
