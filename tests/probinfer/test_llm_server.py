"""OpenAI-compatible server backends against real HTTP servers started here on 127.0.0.1
(free ports): the bundled LM on the completions route and the bundled PRM on the pooling
route (:func:`probinfer.llm.testing.serve`), and four faulty servers. Nothing else on the
network."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("httpx")

from probinfer.llm import LLMStateSpaceModel, default_problems, particle_filter  # noqa: E402
from probinfer.llm.default import ASSETS, default_model_kwargs  # noqa: E402
from probinfer.llm.hf import HFCausalLM, HFRewardModel  # noqa: E402
from probinfer.llm.server import (  # noqa: E402
    OpenAICompatibleLM,
    OpenAICompatiblePRM,
    ServerError,
)
from probinfer.llm.testing import _generate, serve  # noqa: E402

pytestmark = pytest.mark.filterwarnings("error::FutureWarning", "error::DeprecationWarning")

SECRET = "sk-test-5ecr3t-never-print"
PROBLEMS = [p for p, _ in default_problems(2)]


@pytest.fixture(scope="module")
def local():
    torch.set_num_threads(1)
    lm = HFCausalLM.from_pretrained(ASSETS / "lm", device="cpu")
    prm = HFRewardModel.from_pretrained(ASSETS / "prm", device="cpu")
    return lm, prm


@pytest.fixture(scope="module")
def server(local):
    srv = serve(*local)
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()


def _remote(url, lm, **kw):
    kw.setdefault("api_key_env", "PROBINFER_TEST_KEY")
    return OpenAICompatibleLM(f"{url}/v1", "tiny", tokenizer=lm.tokenizer, **kw)


def _model(lm, prm, **kw):
    return LLMStateSpaceModel(lm, prm, **{**default_model_kwargs(), **kw})


def test_results_equal_the_local_backend(local, server, monkeypatch):
    """Greedy decoding: the server path gives the local backend's particles, scores and
    weights (token ids sent and read back, one request per shared context)."""
    monkeypatch.setenv("PROBINFER_TEST_KEY", SECRET)
    lm, prm = local
    remote_prm = OpenAICompatiblePRM(server, "prm", kind="sequence", api_key_env=None)
    here = _model(lm, prm, sampling_temperature=0.0)
    there = _model(_remote(server, lm), remote_prm, sampling_temperature=0.0)
    for k, prompt in enumerate(PROBLEMS):
        a = particle_filter(jax.random.key(k), here, prompt, 4)
        b = particle_filter(jax.random.key(k), there, prompt, 4)
        assert a.texts == b.texts
        assert a.trajectories.step_tokens == b.trajectories.step_tokens
        np.testing.assert_allclose(
            np.asarray(a.particles.log_weights), np.asarray(b.particles.log_weights), atol=1e-5
        )
        assert a.selected == b.selected
        assert b.usage.lm_calls == a.usage.lm_calls and b.usage.tokens_generated > 0


def test_sampling_is_keyed_and_shares_requests(local, server):
    lm, prm = local
    remote = _remote(server, lm)
    model = _model(remote, OpenAICompatiblePRM(server, "prm", kind="sequence"))
    calls = []
    post = remote.client.post_all

    def counting(route, payloads):
        calls.append([p["n"] for p in payloads])
        return post(route, payloads)

    remote.client.post_all = counting
    a = particle_filter(jax.random.key(3), model, PROBLEMS[0], 8)
    b = particle_filter(jax.random.key(3), model, PROBLEMS[0], 8)
    assert a.texts == b.texts and len(a.texts) == 8
    assert all(a.trajectories.finished) or a.ess.shape[0] == model.max_steps
    assert calls[0] == [8]  # the first step: one request with n = 8
    assert sum(map(len, calls)) < sum(map(sum, calls))  # children share requests
    c = particle_filter(jax.random.key(4), model, PROBLEMS[0], 8)
    assert c.texts != a.texts


# ---------------------------------------------------------------- faulty servers
def _faulty(mode: str, lm):
    state = {"count": 0}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, code, data: bytes):
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["count"] += 1
            if mode == "stall":
                time.sleep(1.0)
                return self._send(200, b"{}")
            if mode == "malformed":
                return self._send(200, b"{'choices': [")
            if mode == "429" and state["count"] == 1:
                return self._send(429, b'{"error": "slow down"}')
            if mode == "echo-key":  # an error page that quotes the request's header
                return self._send(500, self.headers["Authorization"].encode())
            if mode == "die" and state["count"] >= 2:
                threading.Thread(target=srv.shutdown).start()
                self.close_connection = True
                return None
            return self._send(200, json.dumps(_generate(lm, body)).encode())

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_port}", state


@pytest.mark.parametrize("mode", ["stall", "malformed", "die", "echo-key"])
def test_faulty_servers_give_a_clear_error_naming_the_url(local, mode, monkeypatch):
    monkeypatch.setenv("PROBINFER_TEST_KEY", SECRET)
    lm, prm = local
    srv, url, state = _faulty(mode, lm)
    try:
        remote = _remote(url, lm, timeout=0.3, max_retries=2, backoff=0.01)
        model = _model(remote, prm)
        with pytest.raises(ServerError) as err:
            particle_filter(jax.random.key(0), model, PROBLEMS[0], 4)
        msg = str(err.value)
        assert url in msg and "3 attempt(s)" in msg and SECRET not in msg
        assert SECRET not in repr(remote) and SECRET not in repr(err.value)
    finally:
        srv.shutdown()
        srv.server_close()


def test_429_then_200_loses_and_duplicates_nothing(local, server, monkeypatch):
    monkeypatch.setenv("PROBINFER_TEST_KEY", SECRET)
    lm, prm = local
    srv, url, state = _faulty("429", lm)
    try:
        flaky = _model(_remote(url, lm, backoff=0.01), prm)
        healthy = _model(_remote(server, lm), prm)
        a = particle_filter(jax.random.key(5), flaky, PROBLEMS[1], 6)
        b = particle_filter(jax.random.key(5), healthy, PROBLEMS[1], 6)
        assert state["count"] >= 2
        assert a.texts == b.texts and len(a.texts) == 6
        assert a.trajectories.step_tokens == b.trajectories.step_tokens
        payload = json.dumps(
            {"texts": a.texts, "usage": a.usage.as_dict(), "info": str(a.info)}, default=str
        )
        assert SECRET not in payload and SECRET not in repr(a)
    finally:
        srv.shutdown()
        srv.server_close()


def test_unreachable_server_and_bad_settings(local):
    import socket

    lm, prm = local
    with socket.socket() as s:  # a free port that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    model = _model(_remote(url, lm, max_retries=1, backoff=0.01), prm)
    with pytest.raises(ServerError, match=f"{url}/v1/completions"):
        particle_filter(jax.random.key(0), model, PROBLEMS[0], 2)
    with pytest.raises(ServerError, match=url):
        OpenAICompatiblePRM(url, "prm", kind="sequence", max_retries=0).score(["1+1="], [("2;",)])
    with pytest.raises(ValueError, match="kind must be one of"):
        OpenAICompatiblePRM(url, "prm", kind="regression")
    with pytest.raises(ValueError, match="http"):
        OpenAICompatibleLM("localhost:8000", "m")
    with pytest.raises(ValueError, match="max_concurrency"):
        OpenAICompatibleLM(url, "m", max_concurrency=0)


def _step_tag_server(seen):
    """A pooling server returning class probabilities per step tag (Qwen2.5-Math-PRM):
    ``[0.5, 0.5]`` at every tag but the last, ``[0.2, 0.8]`` there, no row without a tag;
    the inputs go to ``seen``."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.extend(body["input"])
            rows = [t.count("<extra_0>") for t in body["input"]]  # a row per tag only
            data = [
                {"index": i, "data": [[0.5, 0.5]] * (c - 1) + [[0.2, 0.8]] * (c > 0)}
                for i, c in enumerate(rows)
            ]
            out = json.dumps({"data": data}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.mark.parametrize("kind", ["token", None])
def test_step_reward_pooling_reads_p_positive_at_the_last_tag(kind):
    """Given (``kind="token"``) or detected from the rows per tag (``None``, one probe
    request with the first input): ``P(positive)`` at the last step tag."""
    seen = []
    srv = _step_tag_server(seen)
    try:
        prm = OpenAICompatiblePRM(f"http://127.0.0.1:{srv.server_port}", "qwen-prm", kind=kind)
        r = prm.score(["q1 ", "q2 "], [("a;", "b;"), ("c;",)])
        np.testing.assert_allclose(r, [0.8, 0.8])
        probe = [] if kind else ["q1 a;b;"]  # the first input, without step tags
        assert seen == [*probe, "q1 a;<extra_0>b;<extra_0>", "q2 c;<extra_0>"]
        assert prm.kind == "token"
        prm.score(["q3 "], [("d;",)])  # detected once
        assert seen[-1] == "q3 d;<extra_0>" and len(seen) == len(probe) + 3
    finally:
        srv.shutdown()
        srv.server_close()


def test_one_score_per_input_is_detected_as_a_sequence_prm(local, server):
    """The test server's pooling route answers one score per input: detected as
    ``"sequence"`` (no step tags sent), with the scores of ``kind="sequence"`` and of the
    local PRM; ``kind`` overrides the detection."""
    _, prm = local
    prompts, partials = ["1+2=", "3+4="], [("3;",), ("7;", "7|")]
    detected = OpenAICompatiblePRM(server, "prm", api_key_env=None)
    given = OpenAICompatiblePRM(server, "prm", kind="sequence", api_key_env=None)
    r = detected.score(prompts, partials)
    assert detected.kind == "sequence"
    np.testing.assert_allclose(r, given.score(prompts, partials), atol=1e-6)
    texts = [p + "".join(s) for p, s in zip(prompts, partials)]
    np.testing.assert_allclose(r, prm.score(texts, [()] * 2), atol=1e-5)
    assert detected.score([], []).shape == (0,)


def test_probinfer_scale_cli_against_servers(local, server, tmp_path, capsys, monkeypatch):
    from probinfer.cli import main

    monkeypatch.setenv("PROBINFER_TEST_KEY", SECRET)
    out = tmp_path / "scale.json"
    argv = ["scale", "--server", f"{server}/v1", "--model", "tiny", "--tokenizer",
            str(ASSETS / "lm"), "--prm-server", server, "--prm-model", "prm",
            "--api-key-env", "PROBINFER_TEST_KEY", "--num-problems", "2",
            "--budgets", "2", "--algorithms", "particle_filter", "--output", str(out),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    text = out.read_text()
    report = json.loads(text)
    assert report["server"] == [f"{server}/v1"]
    assert report["results"]["particle_filter"][0]["tokens_generated"] > 0
    assert SECRET not in text and SECRET not in capsys.readouterr().out
