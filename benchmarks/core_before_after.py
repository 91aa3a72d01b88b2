"""Before/after a change to the SMC core: the same benchmarks against two source trees.

Issue 23 (one small SMC core) asks that no benchmark slow down by more than 5%. This script
runs each benchmark script of *this* tree with ``PYTHONPATH`` pointing at the "before" tree
and at the "after" tree, alternately (before, after, before, after, ...), each run pinned to
one core with ``taskset`` when it exists (the rest of the machine's work can then go to the
other cores), and writes the paired comparison to
``benchmarks/results/core_before_after.json``:

* ``pf_vs_particles`` (``quantiles=()``, N = 10^5 and 10^6, float32 and float64): probinfer's
  median run time per round, and its speed-up over ``particles`` in the same process;
* ``llm_vs_its_hub`` (local toy backend, budgets 4/8/16): probinfer's wall time per problem
  and its ratio to its-hub's in the same process;
* ``tempered_smc`` (like for like): probinfer's median run time per ESS target and its ratio
  to BlackJAX's;
* ``many_sizes_memory``: the peak RSS, each phase's growth and its compilations in the second
  half of its sizes (0: bounded).

For each quantity the JSON gives every round's value and ``after / before`` of the medians
over rounds (> 1 means slower after). Reproduce (the "before" tree of issue 23 is 004a5ea)::

    git worktree add /tmp/before 004a5ea
    OMP_NUM_THREADS=1 python benchmarks/core_before_after.py --before /tmp/before --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import RESULTS, write_results

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

BENCHMARKS = {
    "pf": ["pf_vs_particles.py", "--sizes", "100000", "1000000", "--quantile-sizes", "--reps", "5"],
    "llm": ["llm_vs_its_hub.py", "--num-problems", "50", "--budgets", "4,8,16"],
    "tsmc": ["tempered_smc.py", "--reps", "5", "--accuracy-reps", "8", "--pilot-reps", "2"],
    "mem": ["many_sizes_memory.py", "--phase-seconds", "30"],
}
OUT_FLAG = {"pf": "--out", "llm": "--output", "tsmc": "--out", "mem": "--out"}


def _run(name: str, tree: Path, tag: str, folder: Path) -> Path:
    """Run benchmark ``name`` with ``tree`` first on ``sys.path``; return its JSON."""
    script, *args = BENCHMARKS[name]
    result = f"_before_after_{tag}"
    out = str(RESULTS / f"{result}.json") if name == "tsmc" else result
    cmd = [sys.executable, str(HERE / script), *args, OUT_FLAG[name], out]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    log = folder / f"{tag}.log"
    with open(log, "w") as fh:
        subprocess.run(cmd, env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, check=True)
    dest = folder / f"{tag}.json"
    shutil.move(RESULTS / f"{result}.json", dest)
    return dest


def _pf(d: dict) -> dict:
    out = {}
    for r in d["rows"]:
        if r["library"].startswith("probinfer"):
            out[f"{r['model']} N={r['N']} {r['dtype']} run_s"] = r["median_run_s"]
    for k, v in d["speedups_over_particles"].items():
        out[f"{k} speed-up over particles"] = v["like_for_like"]["median"]
    return out


def _llm(d: dict) -> dict:
    out = {}
    for r in d["results"]:
        b = r["budget"]
        out[f"N={b} probinfer s/problem"] = r["probinfer"]["seconds_per_problem"]
        out[f"N={b} probinfer / its-hub wall time"] = r["wall_time_ratio_probinfer_over_its_hub"]
    return out


def _tsmc(d: dict) -> dict:
    out = {}
    for r in d["rows"]:
        if r["library"].startswith("probinfer") and r.get("estimator", "zv") == "zv":
            out[f"{r['library']} run_s"] = r["median_run_s"]
    for k, v in d["ratios_vs_blackjax"].items():
        if k.endswith("[zv]"):
            out[f"{k} / BlackJAX wall time"] = v["wall_time_ratio"]["median"]
    return out


def _mem(d: dict) -> dict:
    out = {"peak RSS MiB": d["peak_rss_mib"]}
    for phase, r in d["summary"].items():
        out[f"{phase} growth MiB"] = r["growth_mib"]
        out[f"{phase} second-half compiles"] = r["compiles_second_half"]
    return out


EXTRACT = {"pf": _pf, "llm": _llm, "tsmc": _tsmc, "mem": _mem}


def summarise(runs: dict[str, dict[str, list[dict]]]) -> dict:
    """``after / before`` of the median over rounds of every extracted quantity."""
    table = {}
    for name, trees in runs.items():
        values = {t: [EXTRACT[name](d) for d in trees[t]] for t in ("before", "after")}
        for key in values["before"][0]:
            b = [v[key] for v in values["before"] if key in v]
            a = [v[key] for v in values["after"] if key in v]
            if not a:
                continue
            mb, ma = float(np.median(b)), float(np.median(a))
            table[f"{name}: {key}"] = {
                "before": b,
                "after": a,
                "after_over_before": ma / mb if mb else None,
            }
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", type=Path, required=True, help="source tree before the change")
    p.add_argument("--after", type=Path, default=ROOT, help="source tree after (default: this)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per benchmark")
    p.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=sorted(BENCHMARKS))
    p.add_argument("--keep", type=Path, default=None, help="folder for the raw JSON and logs")
    p.add_argument("--from-folder", type=Path, default=None, help="summarise a --keep folder")
    args = p.parse_args(argv)
    folder = args.from_folder or args.keep or Path(tempfile.mkdtemp(prefix="before_after_"))
    folder.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict[str, list[dict]]] = {}
    for name in args.only:
        runs[name] = {"before": [], "after": []}
        for r in range(args.rounds):
            for tree in ("before", "after"):
                tag = f"{name}_{tree}_{r}"
                path = folder / f"{tag}.json"
                if args.from_folder is None:
                    path = _run(name, getattr(args, tree).resolve(), tag, folder)
                    print(f"{tag}: {path}", flush=True)
                if path.exists():
                    runs[name][tree].append(json.loads(path.read_text()))
    table = summarise(runs)
    for key, v in table.items():
        ratio = v["after_over_before"]
        shown = "-" if ratio is None else f"{ratio:.3f}"
        print(f"{key:80s} after/before {shown} ({v['before']} -> {v['after']})")
    write_results(
        "core_before_after",
        {
            "before": str(args.before),
            "after": str(args.after),
            "rounds": args.rounds,
            "benchmarks": {k: BENCHMARKS[k] for k in args.only},
            "comparison": table,
            "command": "python benchmarks/core_before_after.py " + " ".join(argv or sys.argv[1:]),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
