"""Particle filtering: probinfer vs its-hub 1.2.0 on the bundled task, same LM, same PRM.

Run in a separate venv that has its-hub (never the project's venv)::

    python3 -m venv /work/bench-venv
    /work/bench-venv/bin/pip install torch==2.13.0 its-hub==1.2.0 -e ".[llm]"
    OMP_NUM_THREADS=1 /work/bench-venv/bin/python benchmarks/llm_vs_its_hub.py

Setup (fair by construction):

* the same 100 default problems (``default_problems``), the bundled LM weights and the
  bundled learned PRM (``assets/prm``) on both sides, torch on CPU, one thread;
* its-hub's ``ParticleFiltering`` with ``StepGeneration`` configured as its README
  recommends for particle filtering (a step token, a stop token, stop strings kept in the
  output, multinomial resampling, argmax selection), the LM wrapped in its
  ``AbstractLanguageModel`` and the PRM in its ``AbstractProcessRewardModel``, each batched:
  one LM call (one forward pass per token for all particles) and one PRM forward pass per
  step for all particles. The LM wrapper re-encodes each particle's text at every step,
  which is what its-hub's text interface implies, in one prefill pass that also gives the
  first new token's logits (as a serving engine does; no extra pass for the last token);
* probinfer's ``particle_filter`` with the bundled defaults (``load_default``), token-exact
  particles with the LM's key/value cache carried through resampling (each step encodes
  only its new tokens; the bundled PRM is a sequence classifier, which re-reads each
  partial answer, as its-hub's does);
* both sides run the same backend classes (``HFCausalLM``, ``HFRewardModel``) and
  transformers' forward passes;
* budgets 4, 8, 16, interleaved problem by problem (for each problem and budget, both
  libraries run back to back, alternating which goes first) in one process.

Reported: accuracy (binomial standard error) and the paired accuracy difference across
problems with its standard error, wall time per problem and the ratio (with its spread: the
ratio in each of 5 blocks of consecutive problems, median/min/max), tokens generated and
encoded per problem (probinfer's LM and PRM with and without KV reuse), probinfer's
bookkeeping time (everything outside the LM and PRM calls) as a share of the LM time, and
the part of it that handles weights (log potentials, reweighting, ESS, resampling), the
time inside the networks' forward passes on each side, and the wall-time ratio probinfer
would reach if everything but its forward passes cost nothing (the floor of the ratio with
the same network code on both sides).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, paired_ratio, write_results  # noqa: E402

BLOCKS = 5
"""Blocks of consecutive problems whose wall-time ratios give its spread."""


def _its_hub_wrappers(lm, prm, step_format, max_tokens_per_step, counters):
    from its_hub.api import AbstractLanguageModel, AbstractProcessRewardModel

    from probinfer.llm.store import Trajectories

    class ProbinferLM(AbstractLanguageModel):
        """The bundled LM behind its-hub's interface: one batched call for all
        conversations (one forward pass per token for all particles)."""

        async def agenerate(self, messages, stop=None, **kwargs):
            import jax

            single = not isinstance(messages[0], list)
            batch = [messages] if single else messages
            prompt = batch[0][0].content
            partials = [m[1].content if len(m) > 1 else "" for m in batch]
            assert all(m[0].content == prompt for m in batch)
            ctx = Trajectories(
                prompt,
                tuple((p,) if p else () for p in partials),
                (False,) * len(batch),
                ((),) * len(batch),
            )
            counters["seed"] += 1
            t0 = time.perf_counter()
            prop = lm.propose(
                jax.random.key(counters["seed"]),
                ctx,
                step_format.step_end,
                max_new_tokens=kwargs.get("max_completion_tokens") or max_tokens_per_step,
                temperature=kwargs.get("temperature", 1.0),
            )
            counters["lm_time"] += time.perf_counter() - t0
            counters["tokens_generated"] += prop.tokens_generated
            counters["tokens_encoded"] += prop.tokens_encoded
            # an answer the LM ended right after a delimiter (end-of-sequence token) is an
            # empty step here; its-hub learns that the answer ended from the stop string
            out = [{"role": "assistant", "content": s or step_format.stop} for s in prop.steps]
            return out[0] if single else out

    class ProbinferPRM(AbstractProcessRewardModel):
        """The bundled PRM behind its-hub's interface: one forward pass per call."""

        def score(self, prompt_or_messages, steps):
            return asyncio.run(self.ascore(prompt_or_messages, steps))

        async def ascore(self, prompt_or_messages, steps):
            prompt = str(prompt_or_messages)
            texts = [steps] if isinstance(steps, str) else list(steps)
            t0 = time.perf_counter()
            r = prm.score([prompt] * len(texts), [(t,) for t in texts])
            counters["prm_time"] += time.perf_counter() - t0
            return [float(x) for x in r]

    return ProbinferLM(), ProbinferPRM()


def _accumulator():
    """``(total, timed)``: ``timed(f)`` wraps ``f`` so that its wall time adds to
    ``total[0]``."""
    total = [0.0]

    def timed(f):
        def call(*a, **k):
            t0 = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                total[0] += time.perf_counter() - t0

        return call

    return total, timed


def _time_forward_passes(backends) -> list:
    """Accumulate the wall time spent inside the backends' network forward passes (the
    ``transformers`` models' forward) into the returned one-element list."""
    total, timed = _accumulator()
    for b in backends:
        b.model.forward = timed(b.model.forward)
    return total


def _time_weight_bookkeeping() -> list:
    """Accumulate the wall time of the SMC driver's weight handling (log potentials from
    the scores, their check, reweighting with the ESS, resampling) into the returned
    one-element list."""
    import probinfer.resampling as resampling
    import probinfer.smc.base as base
    from probinfer.llm.ssm import LLMStateSpaceModel

    total, timed = _accumulator()
    patched = ((base, "_clean_log_potential"), (base, "reweight"), (resampling, "resample"))
    for module, name in patched:
        setattr(module, name, timed(getattr(module, name)))
    LLMStateSpaceModel.step_log_potential = timed(LLMStateSpaceModel.step_log_potential)
    return total


def _bpe_lm(seed: int = 0):
    """A tiny Llama-architecture LM (random weights, fixed seed) with a byte-level BPE
    tokenizer trained here on the bundled task's worked solutions, without a regex
    pre-split, so merges cross the step delimiter (``";1"``, ``"2|"``)."""
    import torch
    import transformers

    from probinfer.llm.hf import HFCausalLM
    from probinfer.llm.task import ArithmeticTask
    from probinfer.llm.testing import bpe_tokenizer, tiny_llama

    corpus = [p.prompt + p.solution for p in ArithmeticTask().problems(2000, seed=seed + 1)]
    tok = bpe_tokenizer(corpus, 96)
    torch.manual_seed(seed)
    model = tiny_llama(
        transformers.LlamaForCausalLM, len(tok.tok.get_vocab()), 64, (4, 2),
        num_hidden_layers=3, max_position_embeddings=256, pad_token_id=tok.tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=None,
    )  # fmt: skip
    return HFCausalLM(model, tok, device="cpu")


class _Timed:
    """A stand-in for the backend ``inner`` whose ``methods`` add their wall time to a
    total (``timed``, from :func:`_accumulator`)."""

    def __init__(self, inner, methods, timed):
        self.inner = inner
        for name in methods:
            setattr(self, name, timed(getattr(inner, name)))


@dataclasses.dataclass
class _Bench:
    """Both sides of the comparison, with their timers and counters."""

    model: object  # the probinfer state-space model (untimed backends)
    ours: object  # the same with timed backends
    hub_pf: object
    hub_lm: object
    counters: dict  # its-hub side: seed, LM/PRM time, tokens
    lm_time: list  # probinfer side (one-element accumulators)
    prm_time: list
    forward_time: list
    weights_time: list


def its_hub_step_generation(model):
    """its-hub's ``StepGeneration`` as its README sets up particle filtering, for the
    probinfer ``model``'s step format: step tokens, the stop token kept in the output, and
    ``max_steps`` (its count is of steps *before* the new one, hence - 1)."""
    from its_hub.core.lms.step_generation import StepGeneration

    fmt = model.step_format
    return StepGeneration(
        step_token=[fmt.delimiter, fmt.stop],
        max_steps=model.max_steps - 1,
        stop_token=fmt.stop,
        temperature=model.sampling_temperature,
        include_stop_str_in_output=True,
    )


def _bench(model) -> _Bench:
    """The probinfer model with timed LM/PRM and its-hub's particle filter with the README
    set-up on the same LM (without KV cache) and PRM."""
    from its_hub.core.algorithms.particle_gibbs import ParticleFiltering

    lm, prm, fmt = model.lm, model.reward, model.step_format
    lm_time, lm_timed = _accumulator()
    prm_time, prm_timed = _accumulator()
    # the cache-carrying call the filter makes, when the PRM has it
    scoring = tuple(m for m in ("score", "score_with_state") if callable(getattr(prm, m, None)))
    forward_time = _time_forward_passes([m for m in (lm, prm) if hasattr(m, "model")])
    weights_time = _time_weight_bookkeeping()
    ours = dataclasses.replace(
        model, lm=_Timed(lm, ("propose",), lm_timed), reward=_Timed(prm, scoring, prm_timed)
    )
    counters = {"seed": 0, "lm_time": 0.0, "prm_time": 0.0, "tokens_generated": 0,
                "tokens_encoded": 0}  # fmt: skip
    plain_lm = type(lm)(lm.model, lm.tokenizer, device="cpu", kv_cache=False, eos_text=lm.eos_text)
    hub_lm, hub_prm = _its_hub_wrappers(plain_lm, prm, fmt, model.max_tokens_per_step, counters)
    hub_pf = ParticleFiltering(its_hub_step_generation(model), hub_prm)
    return _Bench(
        model, ours, hub_pf, hub_lm, counters, lm_time, prm_time, forward_time, weights_time
    )


def _run_ours(bench: _Bench, key, prompt: str, answer: str, budget: int) -> dict:
    from probinfer.llm import particle_filter

    lm0, prm0 = bench.lm_time[0], bench.prm_time[0]
    f0, w0 = bench.forward_time[0], bench.weights_time[0]
    t0 = time.perf_counter()
    res = particle_filter(key, bench.ours, prompt, budget)
    wall = time.perf_counter() - t0
    u = res.usage
    return {
        "correct": res.selected == answer,
        "wall": wall,
        "lm_time": bench.lm_time[0] - lm0,
        "prm_time": bench.prm_time[0] - prm0,
        "forward_time": bench.forward_time[0] - f0,
        "weights_time": bench.weights_time[0] - w0,
        "tokens_generated": u.tokens_generated,
        "tokens_encoded": u.tokens_encoded,
        "reward_tokens_encoded": u.reward_tokens_encoded,
        "lm_calls": u.lm_calls,
    }


def _run_hub(bench: _Bench, prompt: str, answer: str, budget: int) -> dict:
    counters, fmt = bench.counters, bench.model.step_format
    c0, f0 = dict(counters), bench.forward_time[0]
    t0 = time.perf_counter()
    res = bench.hub_pf.infer(bench.hub_lm, prompt, budget, return_response_only=False)
    wall = time.perf_counter() - t0
    text = res.the_one["content"]
    got = bench.model.answer_extractor(text + ("" if text.endswith(fmt.stop) else fmt.stop))
    return {
        "correct": got == answer,
        "wall": wall,
        "lm_time": counters["lm_time"] - c0["lm_time"],
        "prm_time": counters["prm_time"] - c0["prm_time"],
        "forward_time": bench.forward_time[0] - f0,
        "tokens_generated": counters["tokens_generated"] - c0["tokens_generated"],
        "tokens_encoded": counters["tokens_encoded"] - c0["tokens_encoded"],
    }


def _tokens_without_reuse(model, key, prompt: str, budget: int) -> dict:
    """probinfer's token counts for the same run (same key, same particles) without KV
    reuse in the LM and the PRM."""
    from probinfer.llm import particle_filter

    lm, prm = model.lm, model.reward
    stateful = hasattr(prm, "kv_cache")
    lm.kv_cache = False
    if stateful:
        prm.kv_cache = False
    try:
        u = particle_filter(key, model, prompt, budget).usage
    finally:
        lm.kv_cache = True
        if stateful:
            prm.kv_cache = True
    return {
        "tokens_encoded": u.tokens_encoded,
        "tokens_generated": u.tokens_generated,
        "reward_tokens_encoded": u.reward_tokens_encoded,
    }


def _run_all(bench: _Bench, problems, budgets, seed: int) -> dict:
    """Every problem at every budget on both sides, back to back (alternating which goes
    first); the rows of each side per budget."""
    import jax

    from probinfer.llm import particle_filter

    rows = {b: {"ours": [], "hub": [], "ours_plain_tokens": []} for b in budgets}
    base = jax.random.key(seed)
    # warm-up (compilation, allocator) on a problem outside the set
    particle_filter(jax.random.key(10**6), bench.ours, problems[0][0], 4)
    bench.hub_pf.infer(bench.hub_lm, problems[0][0], 4, return_response_only=False)
    start_all = time.perf_counter()
    for i, (prompt, answer) in enumerate(problems):
        for b in budgets:
            key = jax.random.fold_in(jax.random.fold_in(base, i), b)
            order = [
                ("ours", functools.partial(_run_ours, bench, key, prompt, answer, b)),
                ("hub", functools.partial(_run_hub, bench, prompt, answer, b)),
            ]
            if (i + b) % 2:
                order.reverse()
            for name, fn in order:
                rows[b][name].append(fn())
            if i < 10:  # tokens without KV reuse, LM and PRM (same key, same particles)
                rows[b]["ours_plain_tokens"].append(
                    _tokens_without_reuse(bench.model, key, prompt, b)
                )
        print(f"problem {i + 1}/{len(problems)}  {time.perf_counter() - start_all:.0f} s",
              flush=True)  # fmt: skip
    return rows


def _summary(rs) -> dict:
    n = len(rs)
    acc = float(np.mean([r["correct"] for r in rs]))
    out = {
        "accuracy": acc,
        "stderr": float(np.sqrt(acc * (1 - acc) / n)),
        "seconds_per_problem": float(np.mean([r["wall"] for r in rs])),
        "lm_seconds_per_problem": float(np.mean([r["lm_time"] for r in rs])),
        "prm_seconds_per_problem": float(np.mean([r["prm_time"] for r in rs])),
        # inside the LM's and the PRM's forward passes (the network, no sampling, no text
        # handling): the cost both sides share per pass
        "forward_seconds_per_problem": float(np.mean([r["forward_time"] for r in rs])),
        "tokens_generated": float(np.mean([r["tokens_generated"] for r in rs])),
        "tokens_encoded": float(np.mean([r["tokens_encoded"] for r in rs])),
    }
    other = out["seconds_per_problem"] - out["lm_seconds_per_problem"]
    out["bookkeeping_share_of_lm_time"] = float(
        (other - out["prm_seconds_per_problem"]) / out["lm_seconds_per_problem"]
    )
    if "weights_time" in rs[0]:  # the part of it that handles weights (probinfer)
        out["weight_bookkeeping_share_of_lm_time"] = float(
            np.mean([r["weights_time"] for r in rs]) / out["lm_seconds_per_problem"]
        )
    return out


def _paired(ours, hub) -> dict:
    """Accuracy difference with its standard error across problems (paired: same
    problems), and the z score."""
    d = np.array([float(o["correct"]) - float(h["correct"]) for o, h in zip(ours, hub)])
    se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("nan")
    mean = float(d.mean())
    z = mean / se if se > 0 else float("nan")
    if not np.isfinite(z) or abs(z) < 2:
        verdict = "within noise (|z| < 2): no significant difference at this budget"
    else:
        verdict = f"significant (|z| >= 2): {'probinfer' if z > 0 else 'its-hub'} ahead"
    return {"mean": mean, "stderr": se, "z": z, "verdict": verdict}


def _block_ratio(ours, hub, blocks: int = BLOCKS) -> dict:
    """Spread of the wall-time ratio: the ratio in each of ``blocks`` consecutive blocks of
    problems (both sides ran each problem back to back, so a block is a repetition under
    the same load), with its median, min and max (:func:`_common.paired_ratio`)."""
    parts = np.array_split(np.arange(len(ours)), blocks)
    num = [sum(ours[i]["wall"] for i in p) for p in parts if len(p)]
    den = [sum(hub[i]["wall"] for i in p) for p in parts if len(p)]
    return paired_ratio(num, den)


def _budget_result(b: int, rows: dict) -> dict:
    """The comparison at budget ``b`` from the rows of :func:`_run_all`."""
    o, h = _summary(rows["ours"]), _summary(rows["hub"])
    plain = rows["ours_plain_tokens"]
    kv = rows["ours"][: len(plain)]
    return {
        "budget": b,
        "probinfer": o,
        "its_hub": h,
        "wall_time_ratio_probinfer_over_its_hub": o["seconds_per_problem"]
        / h["seconds_per_problem"],
        "wall_time_ratio_spread": _block_ratio(rows["ours"], rows["hub"]),
        "accuracy_difference": o["accuracy"] - h["accuracy"],
        # probinfer's ratio if everything but its forward passes cost nothing: the least
        # this comparison can show with the same network code on both sides
        "wall_time_ratio_floor_forward_passes_only": o["forward_seconds_per_problem"]
        / h["seconds_per_problem"],
        # the token work is the same on the bundled LM; with the random BPE LM the two
        # filters end at different steps, so compare time per generated token
        "seconds_per_generated_token_ratio": (o["seconds_per_problem"] / o["tokens_generated"])
        / (h["seconds_per_problem"] / h["tokens_generated"]),
        "tokens_encoded_first_problems": {
            "num_problems": len(plain),
            "with_kv_reuse": float(np.mean([r["tokens_encoded"] for r in kv])),
            "without_kv_reuse": float(np.mean([r["tokens_encoded"] for r in plain])),
            "tokens_generated": float(np.mean([r["tokens_generated"] for r in kv])),
            "prm_with_kv_reuse": float(np.mean([r["reward_tokens_encoded"] for r in kv])),
            "prm_without_kv_reuse": float(np.mean([r["reward_tokens_encoded"] for r in plain])),
        },
        "accuracy_difference_paired": _paired(rows["ours"], rows["hub"]),
    }


def _line(r: dict) -> str:
    """One budget's result as a line of text."""
    o, h, d = r["probinfer"], r["its_hub"], r["accuracy_difference_paired"]
    return (
        f"budget {r['budget']:3d}: accuracy probinfer {o['accuracy']:.2f}±{o['stderr']:.2f}, "
        f"its-hub {h['accuracy']:.2f}±{h['stderr']:.2f}; s/problem "
        f"{o['seconds_per_problem']:.3f} vs {h['seconds_per_problem']:.3f} (ratio "
        f"{r['wall_time_ratio_probinfer_over_its_hub']:.2f}, {BLOCKS} blocks "
        f"{r['wall_time_ratio_spread']['min']:.2f}-{r['wall_time_ratio_spread']['max']:.2f}); "
        f"bookkeeping "
        f"{100 * o['bookkeeping_share_of_lm_time']:.1f}% of LM time (weights "
        f"{100 * o['weight_bookkeeping_share_of_lm_time']:.1f}%); ratio floor (forward "
        f"passes only) {r['wall_time_ratio_floor_forward_passes_only']:.2f}; paired accuracy "
        f"difference {d['mean']:+.2f}±{d['stderr']:.2f}"
    )


def _parse(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num-problems", type=int, default=100)
    ap.add_argument("--budgets", default="4,8,16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", default=None, help="results name (default by --lm)")
    ap.add_argument(
        "--lm",
        choices=["bundled", "bpe"],
        default="bundled",
        help="'bundled': the bundled LM and learned PRM; 'bpe': a tiny random Llama LM with "
        "a byte-level BPE tokenizer and the exact verifier as PRM (wall time and tokens "
        "only: its answers are random)",
    )
    return ap.parse_args(argv)


def _payload(args, model, problems, budgets, results) -> dict:
    import its_hub
    import torch

    fmt = model.step_format
    lm_name = "bundled LM" if args.lm == "bundled" else "tiny random Llama LM, byte-level BPE"
    prm_name = "bundled learned PRM" if args.lm == "bundled" else "exact verifier"
    return {
        "lm": args.lm,
        "benchmark": "llm_vs_its_hub",
        "num_problems": len(problems),
        "budgets": budgets,
        "seed": args.seed,
        "versions": {"its_hub": its_hub.__version__, "torch": torch.__version__},
        "threads": {"torch": 1, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "its_hub_config": {
            "algorithm": "ParticleFiltering (multinomial resampling, argmax selection)",
            "step_token": [fmt.delimiter, fmt.stop],
            "stop_token": fmt.stop,
            "include_stop_str_in_output": True,
            "max_steps": model.max_steps - 1,
            "temperature": model.sampling_temperature,
            "lm": f"{lm_name}, one batched call per step (kv_cache=False: text re-encoded)",
            "prm": f"{prm_name}, one call per step",
        },
        "probinfer_config": {
            "settings": "load_default('learned') defaults",
            "potential": model.potential,
            "aggregation": model.aggregation,
        },
        "machine": machine(),
        "results": results,
    }


def main(argv=None) -> int:
    args = _parse(argv)
    import random

    import torch

    torch.set_num_threads(1)
    from probinfer.llm import default_problems, load_default

    budgets = [int(b) for b in args.budgets.split(",")]
    problems = default_problems(args.num_problems)
    model = load_default("learned", device="cpu")
    if args.lm == "bpe":
        from probinfer.llm.verifier import VerifierReward

        bpe = _bpe_lm(args.seed)
        bpe.eos_text = model.step_format.stop
        reward = VerifierReward(step_format=model.step_format)
        model = dataclasses.replace(model, lm=bpe, reward=reward)
    output = args.output or ("llm_vs_its_hub" if args.lm == "bundled" else "llm_vs_its_hub_bpe")
    bench = _bench(model)
    random.seed(args.seed)
    np.random.seed(args.seed)
    rows = _run_all(bench, problems, budgets, args.seed)
    results = []
    for b in budgets:
        results.append(_budget_result(b, rows[b]))
        print(_line(results[-1]))
    path = write_results(output, _payload(args, model, problems, budgets, results))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
