"""Two replicas of the LM: requests are spread over both, and a run survives one dying.

The dying replica is killed here, so this module runs after the others (file order) and
its tests run in order: balance first, then the kill."""

import logging
import threading
import time

import jax

from probinfer.llm import LLMStateSpaceModel, Usage, default_problems, sample_rollouts
from probinfer.llm.default import default_model_kwargs
from probinfer.llm.hf import load_tokenizer

N = 8


def _requests(server) -> float:
    """Completion requests the server answered (HTTP requests, not samples)."""
    return server.metric("http_requests_total", handler="/v1/completions", status="2xx")


def _model(served_lm, servers, **kw):
    urls = f"{servers['lm_a'].v1},{servers['lm_b'].v1}"
    return LLMStateSpaceModel(served_lm(urls, **kw), None, **default_model_kwargs())


def test_requests_are_balanced(vllm_servers, served_lm):
    replicas = (vllm_servers["lm_a"], vllm_servers["lm_b"])
    before = [_requests(r) for r in replicas]
    model = _model(served_lm, vllm_servers)
    for j, (prompt, _) in enumerate(default_problems(6, seed=41)):
        sample_rollouts(jax.random.key(j), model, prompt, N, Usage())
    counts = [_requests(r) - b for r, b in zip(replicas, before)]
    total = sum(counts)
    assert total >= 30, counts
    # round-robin over the requests: the replicas' counts differ by at most one
    assert abs(counts[0] - counts[1]) <= 1, counts


def test_run_survives_a_dead_replica(vllm_servers, served_lm, lm_dir, check_particles, caplog):
    a, b = vllm_servers["lm_a"], vllm_servers["lm_b"]
    tok = load_tokenizer(lm_dir)
    settings = default_model_kwargs()
    problems = default_problems(8, seed=42)
    keys = [jax.random.key(100 + j) for j in range(len(problems))]
    # the same keys on the surviving replica alone: vLLM's per-request seeds make each
    # request's samples independent of the replica and of the batch, so the run with a dead
    # replica must give exactly these particles (none lost, none duplicated)
    alone = LLMStateSpaceModel(served_lm(a.v1), None, **settings)
    expected = [
        sample_rollouts(k, alone, p, N, Usage())[0].steps for k, (p, _) in zip(keys, problems)
    ]
    model = _model(served_lm, vllm_servers, timeout=30.0, cooldown=600.0)
    stores, errors = [], []
    b_before = _requests(b)

    def run():
        try:
            for k, (p, _) in zip(keys, problems):
                stores.append(sample_rollouts(k, model, p, N, Usage())[0])
        except Exception as err:  # noqa: BLE001 (reported by the assertion below)
            errors.append(err)

    caplog.set_level(logging.WARNING, logger="probinfer.llm.server")
    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 120
    while _requests(b) - b_before < 5 and worker.is_alive():
        assert time.monotonic() < deadline, "replica B got no requests"
        time.sleep(0.05)
    assert worker.is_alive(), "the run ended before the replica could be killed"
    b.kill()
    worker.join(timeout=300)
    assert not worker.is_alive() and not errors, errors
    assert len(stores) == len(problems)
    for store, steps in zip(stores, expected):
        check_particles(store, tok, N, settings["max_steps"])
        assert store.steps == steps
    assert any(b.v1 in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]
