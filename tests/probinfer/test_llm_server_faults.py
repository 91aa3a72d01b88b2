"""The server client against faulty HTTP servers that the tests start on 127.0.0.1 (free
ports; nothing else on the network): trickling, oversize, endless chunked, echoing the key,
bad indices, out-of-vocabulary token ids, dying replicas; the key and URL credentials never
leak; the bundled test server answers every bad request with a JSON error."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jax
import numpy as np
import pytest

pytest.importorskip("httpx")

from probinfer.llm import LLMStateSpaceModel, particle_filter  # noqa: E402
from probinfer.llm.default import default_model_kwargs  # noqa: E402
from probinfer.llm.server import (  # noqa: E402
    OpenAICompatibleLM,
    OpenAICompatiblePRM,
    ServerError,
    redact_url,
)
from probinfer.llm.task import CharTokenizer  # noqa: E402
from probinfer.llm.toy import FunctionReward  # noqa: E402

pytestmark = pytest.mark.filterwarnings("error::FutureWarning", "error::DeprecationWarning")

ENV = "PROBINFER_FAULT_KEY"
SECRET = "sk-fault-5ecr3t-never-print"
PASSWORD = "pa55-w0rd-never-print"
TOK = CharTokenizer()
FAST = {"timeout": 0.5, "max_retries": 1, "backoff": 0.01, "cooldown": 0.3}


def leaks(text: str) -> list[str]:
    """Every 8-character piece of the key or the password found in ``text``."""
    return [
        s[a : a + 8] for s in (SECRET, PASSWORD) for a in range(len(s) - 7) if s[a : a + 8] in text
    ]


# ---------------------------------------------------------------- faulty servers
class Fault:
    """A threaded HTTP/1.1 server on 127.0.0.1 whose POST answers come from
    ``handler(request, body) -> None`` (which writes the answer itself). ``requests``
    counts the POSTs, ``peers`` the client ports (connections) seen, ``sent`` the body bytes
    an endless handler sent; ``stop`` is set when the server stops, so that endless
    handlers end. A handler reaches this object as ``h.fault``."""

    def __init__(self, handler):
        self.requests, self.peers, self.sent, self.stop = 0, set(), 0, threading.Event()
        fault = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fault.requests += 1
                fault.peers.add(self.client_address[1])
                self.fault = fault
                try:
                    handler(self, body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.srv.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.srv.server_port}"
        threading.Thread(target=self.srv.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.stop.set()
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def fault():
    """``fault(handler)`` starts a :class:`Fault` server, stopped after the test."""
    started = []

    def start(handler):
        started.append(Fault(handler))
        return started[-1]

    yield start
    for f in started:
        f.close()


def send(h, code: int, payload, headers=()):
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    h.send_response(code)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(data)))
    for k, v in headers:
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(data)


def completion(body, text="7|", ids=None):
    """A valid completions answer: every choice is ``text`` (one finished step)."""
    choices = []
    for i in range(body.get("n", 1)):
        ch = {"index": i, "text": text, "finish_reason": "stop"}
        if body.get("return_token_ids"):
            ch["token_ids"] = TOK.encode(text) if ids is None else ids
        choices.append(ch)
    return {"choices": choices, "usage": {"prompt_tokens": 3, "completion_tokens": 2}}


def good(h, body):
    if h.path.endswith("/pooling"):
        inputs = body["input"]
        return send(h, 200, {"data": [{"index": i, "data": [0.5]} for i in range(len(inputs))]})
    send(h, 200, completion(body))


def trickle(h, body):
    """Headers at once, then the body one byte every 50 ms (10 s in all)."""
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", "200")
    h.end_headers()
    for _ in range(200):
        if h.fault.stop.is_set():
            return
        h.wfile.write(b" ")
        h.wfile.flush()
        h.fault.sent += 1
        time.sleep(0.05)


def oversize(h, body):
    """A declared 100 MB body (only its first MB is sent)."""
    h.send_response(200)
    h.send_header("Content-Length", str(100 * 2**20))
    h.end_headers()
    h.wfile.write(b" " * 2**20)


def endless(h, body):
    """A chunked body that never ends (64 KiB chunks; the server gives up after 5 s)."""
    h.send_response(200)
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    chunk = b"%x\r\n%s\r\n" % (2**16, b" " * 2**16)
    end = time.monotonic() + 5
    while time.monotonic() < end and not h.fault.stop.is_set():
        h.wfile.write(chunk)
        h.fault.sent += 2**16
    h.close_connection = True


def echo(code):
    """An error page quoting the Authorization header where a cut of the page to 200
    (5xx) or 500 (4xx) characters, before redaction, would cut the key."""

    def handler(h, body):
        auth = h.headers.get("Authorization", "")
        pad = "p" * ((200 if code >= 500 else 500) - len(auth) + 1)
        send(h, code, (pad + auth + " " + json.dumps(body)).encode())

    return handler


def hang_up(h, body):
    """Close the connection without answering (a replica dying)."""
    h.close_connection = True
    h.connection.shutdown(socket.SHUT_RDWR)


def refused_url() -> str:
    """A URL on a free port that nobody listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv(ENV, SECRET)


def lm(urls, **kw) -> OpenAICompatibleLM:
    return OpenAICompatibleLM(urls, "m", tokenizer=TOK, api_key_env=ENV, **{**FAST, **kw})


def prm(urls, **kw) -> OpenAICompatiblePRM:
    return OpenAICompatiblePRM(urls, "p", kind="sequence", api_key_env=ENV, **{**FAST, **kw})


def payloads(k: int) -> list[dict]:
    return [{"model": "m", "prompt": "1+1=", "n": 1, "max_tokens": 4} for _ in range(k)]


# ---------------------------------------------------------------- deadline and size cap
def test_a_trickling_server_is_stopped_at_the_deadline(fault):
    """A byte every 50 ms never trips a per-read timeout; the deadline of 0.5 s holds: the
    call gives up after about 10 of the 200 bytes (it used to wait for the whole 10 s
    trickle). Counted in bytes, not seconds, so a loaded machine slows both sides alike
    (4 s of wall time on a machine at load 12 is still under 100 bytes)."""
    f = fault(trickle)
    client = lm(f.url, max_retries=0).client
    with pytest.raises(ServerError, match="0.5 s deadline") as err:
        client.post_all("/completions", payloads(1))
    sent = f.sent
    assert f.url in str(err.value)
    assert 0 < sent < 100, sent


@pytest.mark.parametrize("handler", [oversize, endless], ids=["declared", "endless-chunked"])
def test_a_body_over_the_size_cap_is_not_read(fault, handler):
    f = fault(handler)
    client = lm(f.url, max_response_bytes=2**20, timeout=10.0).client
    with pytest.raises(ServerError, match="max_response_bytes = 1048576") as err:
        client.post_all("/completions", payloads(1))
    assert f.url in str(err.value) and f.requests == 1  # not retried
    client.close()
    time.sleep(0.2)  # the handler notices the hang-up
    assert f.sent < 32 * 2**20  # the client hung up after ~1 MB (socket buffers aside)


# ---------------------------------------------------------------- failover
def test_failover_to_a_healthy_replica_and_cool_down(fault, caplog):
    ok, dying = fault(good), fault(hang_up)
    dead = refused_url()
    client = lm([ok.url, dying.url, dead], max_concurrency=1, cooldown=1.5).client
    with caplog.at_level(logging.WARNING, logger="probinfer.llm.server"):
        out = client.post_all("/completions", payloads(6))
    assert [u for u, _ in out] == [f"{ok.url}/completions"] * 6
    assert all(len(a["choices"]) == 1 for _, a in out)
    assert dying.requests == 1  # then skipped while cooling down
    assert dying.url in caplog.text and dead in caplog.text and "skipping it" in caplog.text
    client.post_all("/completions", payloads(3))
    assert dying.requests == 1
    time.sleep(1.5)  # the cool-down is over: the replica is tried again
    client.post_all("/completions", payloads(3))
    assert dying.requests == 2


def test_good_dead_runs_the_particle_filter(fault):
    """``--server good,dead``: the runs complete on the good replica (each run's one
    request goes round-robin: the second one to the dead replica first)."""
    ok = fault(good)
    model = LLMStateSpaceModel(
        lm(f"{ok.url},{refused_url()}"), FunctionReward(lambda p, s: 0.5), **default_model_kwargs()
    )
    for k in range(3):
        res = particle_filter(jax.random.key(k), model, "1+1=", 4)
        assert res.texts == ["7|"] * 4
    assert ok.requests == 3


def test_a_stalled_replica_fails_over_at_the_deadline(fault):
    ok = fault(good)

    def stall(h, body):  # answers nothing for 60 s (or until the server stops)
        h.fault.stop.wait(60)

    slow = fault(stall)
    client = lm([slow.url, ok.url], timeout=0.3).client
    t0 = time.perf_counter()
    out = client.post_all("/completions", payloads(2))
    assert [u for u, _ in out] == [f"{ok.url}/completions"] * 2
    # the 0.3 s deadline, not the 60 s stall: a margin no machine load closes
    assert time.perf_counter() - t0 < 20


def test_all_replicas_dead_names_them(fault):
    a, b = refused_url(), refused_url()
    with pytest.raises(ServerError, match="failed after 3 attempt") as err:
        lm([a, b]).client.post_all("/completions", payloads(1))
    assert a in str(err.value) and b in str(err.value)


def test_one_http_client_for_the_lifetime(fault):
    """Three calls share one keep-alive connection (one client and its TLS context)."""
    ok = fault(good)
    client = lm(ok.url).client
    for _ in range(3):
        client.post_all("/completions", payloads(1))

    async def inside_a_running_loop():  # Jupyter
        return client.post_all("/completions", payloads(1))

    import asyncio

    assert asyncio.run(inside_a_running_loop())[0][1]["choices"]
    assert ok.requests == 4 and len(ok.peers) == 1
    client.close()
    client.post_all("/completions", payloads(1))  # a closed client starts again
    assert ok.requests == 5


def test_4xx_is_not_retried_and_quotes_the_message(fault):
    f = fault(lambda h, body: send(h, 400, {"error": {"message": "max_tokens must be >= 1"}}))
    with pytest.raises(ServerError, match="HTTP 400.*not retried.*max_tokens must be >= 1"):
        lm(f.url, max_retries=3).client.post_all("/completions", payloads(1))
    assert f.requests == 1


# ---------------------------------------------------------------- validated answers
def test_pooling_indices_are_validated(fault):
    def same_index(h, body):
        send(h, 200, {"data": [{"index": 1, "data": [i / 10]} for i in range(len(body["input"]))]})

    def reversed_order(h, body):
        n = len(body["input"])
        data = [{"index": i, "data": [0.1 * (i + 1)]} for i in range(n)]
        send(h, 200, {"data": data[::-1]})

    bad = fault(same_index)
    with pytest.raises(ServerError, match="each index 0..2 exactly once") as err:
        prm(bad.url).score(["a", "b", "c"], [("1;",)] * 3)
    assert bad.url in str(err.value)
    shuffled = fault(reversed_order)
    r = prm(shuffled.url, batch_size=2).score(["a", "b", "c"], [("1;",)] * 3)
    np.testing.assert_allclose(r, [0.1, 0.2, 0.1])  # by index, per request of 2 and 1


@pytest.mark.parametrize(
    "choice",
    [
        {"token_ids": [99]},
        {"token_ids": [-1]},
        {"token_ids": [3, True]},
        {"token_ids": [2.5]},
        {"logprobs": {"tokens": ["token_id:16"]}},
        {"logprobs": {"tokens": ["token_id:x"]}},
    ],
    ids=["oov", "negative", "bool", "float", "oov-logprobs", "not-int"],
)
def test_out_of_vocabulary_token_ids_are_rejected(fault, choice):
    def handler(h, body):
        chs = [{"index": i, "text": "7|", "finish_reason": "stop", **choice} for i in range(4)]
        send(h, 200, {"choices": chs})

    f = fault(handler)
    model = LLMStateSpaceModel(
        lm(f.url), FunctionReward(lambda p, s: 0.5), **default_model_kwargs()
    )
    with pytest.raises(ServerError, match="outside the tokenizer's vocabulary") as err:
        particle_filter(jax.random.key(0), model, "1+1=", 4)
    assert f.url in str(err.value)


def test_completion_choice_indices_are_validated(fault):
    def handler(h, body):
        out = completion(body)
        for ch in out["choices"]:
            ch["index"] = 0
        send(h, 200, out)

    f = fault(handler)
    model = LLMStateSpaceModel(
        lm(f.url), FunctionReward(lambda p, s: 0.5), **default_model_kwargs()
    )
    with pytest.raises(ServerError, match="each index 0..3 exactly once"):
        particle_filter(jax.random.key(0), model, "1+1=", 4)


# ---------------------------------------------------------------- secrets
@pytest.mark.parametrize("bad", [SECRET + "\n", SECRET + "\r", "sk-ünïcode-" + SECRET, "sk a"])
def test_a_key_an_http_header_cannot_carry_fails_at_construction(monkeypatch, bad):
    monkeypatch.setenv(ENV, bad)
    with pytest.raises(ValueError, match=ENV) as err:
        lm("http://127.0.0.1:9")
    assert not leaks(str(err.value)) and not leaks(repr(err.value))


def test_redact_url():
    assert redact_url(f"http://user:{PASSWORD}@h:1/v1") == "http://***@h:1/v1"
    assert redact_url("https://h/v1") == "https://h/v1"
    assert redact_url("http://u:p/w@d@h") == "http://***@h"


@pytest.mark.parametrize("code", [500, 400])
def test_an_echoed_key_is_redacted_before_truncation(fault, code):
    f = fault(echo(code))
    with pytest.raises(ServerError) as err:
        lm(f.url).client.post_all("/completions", payloads(1))
    assert f.url in str(err.value)
    assert not leaks(str(err.value)) and not leaks(repr(err.value))


def test_url_credentials_never_show(fault, caplog):
    """The password of ``http://user:password@host`` in errors, logs, reprs and echoes
    (httpx sends it as a Basic token, which an error page may quote)."""
    f = fault(echo(500))
    dead = refused_url().replace("//", f"//user:{PASSWORD}@")
    creds = f.url.replace("//", f"//user:{PASSWORD}@")
    remote = lm([creds, dead])
    with caplog.at_level(logging.WARNING), pytest.raises(ServerError) as err:
        remote.client.post_all("/completions", payloads(1))
    assert f.requests >= 1
    text = f"{err.value} {err.value!r} {remote!r} {remote.base_urls} {caplog.text}"
    assert "http://***@127.0.0.1" in text and not leaks(text)
    with pytest.raises(ValueError) as err:
        lm(f"ftp://user:{PASSWORD}@h")
    assert not leaks(str(err.value))


def _cli(argv, tmp_path):
    from probinfer.cli import main

    out = tmp_path / "scale.json"
    base = ["scale", "--model", "m", "--api-key-env", ENV, "--num-problems", "1",
            "--budgets", "1", "--algorithms", "particle_filter", "--output", str(out),
            "--no-progress"]  # fmt: skip
    return main(base + argv)


def test_secrets_never_appear_anywhere(fault, tmp_path, capfd, caplog, monkeypatch):
    """Acceptance: the key and URL passwords of every case above are in none of stdout,
    stderr, the logs, the results, the written files or the reprs."""
    pytest.importorskip("torch")
    seen = []
    ok, echoing = fault(good), fault(echo(400))
    creds = ok.url.replace("//", f"//user:{PASSWORD}@")
    dead = refused_url().replace("//", f"//user:{PASSWORD}@")
    with caplog.at_level(logging.DEBUG):
        # a run through good and dead replicas with credentials: scale.json, the table
        argv = ["--server", f"{creds}/v1,{dead}/v1", "--prm-server", f"{dead},{creds}",
                "--prm-model", "p", "--prm-kind", "sequence"]  # fmt: skip
        assert _cli(argv, tmp_path) == 0
        report = json.loads((tmp_path / "scale.json").read_text())
        assert report["server"] == [f"{redact_url(creds)}/v1", f"{redact_url(dead)}/v1"]
        seen.append(repr(report))
        # a server echoing the key and the Basic token in a 400 page: one line on stderr
        with pytest.raises(SystemExit) as err:
            _cli(["--server", echoing.url.replace("//", f"//user:{PASSWORD}@")], tmp_path)
        assert err.value.code == 2
        # keys an HTTP header cannot carry: the CLI's error names the variable
        for bad in (SECRET + "\n", SECRET + "\r", "sk-ü" + SECRET):
            monkeypatch.setenv(ENV, bad)
            with pytest.raises(SystemExit):
                _cli(["--server", ok.url], tmp_path)
        monkeypatch.setenv(ENV, SECRET)
        # the faults of the client, through the API
        for handler in (trickle, oversize, echo(500), hang_up):
            f = fault(handler)
            remote = lm(f.url.replace("//", f"//user:{PASSWORD}@"), max_retries=0)
            with pytest.raises(ServerError) as err:
                remote.client.post_all("/completions", payloads(1))
            seen += [str(err.value), repr(err.value), repr(remote), repr(remote.client)]
            f.close()
        # a particle filter's result through replicas with credentials, one of them dead
        model = LLMStateSpaceModel(
            lm(f"{creds},{dead}"), prm(f"{dead},{creds}"), **default_model_kwargs()
        )
        for k in range(2):
            res = particle_filter(jax.random.key(k), model, "1+1=", 4)
            seen += [repr(res), str(res.info), json.dumps(res.usage.as_dict()), repr(model)]
    captured = capfd.readouterr()
    assert ENV in captured.err  # the CLI said which variable to fix
    assert "rejected the request with HTTP 400" in captured.err
    seen += [captured.out, captured.err, caplog.text]
    seen += [p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()]
    assert "skipping it" in caplog.text
    assert not leaks("\n".join(seen))


# ---------------------------------------------------------------- the bundled test server
BAD_REQUESTS = [
    ("/v1/completions", b"{not json"),
    ("/v1/completions", b"[1, 2]"),
    ("/v1/completions", b'"text"'),
    ("/v1/completions", b"\xff\xfe"),
    ("/v1/completions", b'{"prompt": "1+1=", "temperature": NaN}'),
    ("/v1/completions", b'{"prompt": "1+1=", "temperature": Infinity}'),
    ("/v1/completions", {"prompt": "1+1=", "temperature": -1}),
    ("/v1/completions", {"prompt": "1+1=", "temperature": "hot"}),
    ("/v1/completions", {"prompt": "1+1=", "max_tokens": -5}),
    ("/v1/completions", {"prompt": "1+1=", "max_tokens": 0}),
    ("/v1/completions", {"prompt": "1+1=", "max_tokens": 1.5}),
    ("/v1/completions", {"prompt": "1+1=", "max_tokens": 10**9}),
    ("/v1/completions", {"prompt": "1+1=", "n": 0}),
    ("/v1/completions", {"prompt": "1+1=", "n": True}),
    ("/v1/completions", {"prompt": "1+1=", "n": 10**6}),
    ("/v1/completions", {"prompt": "1+1=", "seed": -1}),
    ("/v1/completions", {"prompt": "1+1=", "seed": "x"}),
    ("/v1/completions", {"prompt": "1+1=", "stop": 5}),
    ("/v1/completions", {"prompt": "1+1=", "stop": [""]}),
    ("/v1/completions", {"prompt": "1+1=", "return_token_ids": "yes"}),
    ("/v1/completions", {"prompt": None}),
    ("/v1/completions", {"prompt": []}),
    ("/v1/completions", {"prompt": [1, 99999]}),
    ("/v1/completions", {"prompt": [-1]}),
    ("/v1/completions", {"prompt": "abc"}),  # characters outside the vocabulary
    ("/v1/completions", {"prompt": "1" * 10_000}),  # longer than the context
    ("/pooling", {"input": None}),
    ("/pooling", {"input": []}),
    ("/pooling", {"input": [1, 2]}),
    ("/pooling", {"input": ["1+1=2;", "abc"]}),  # characters outside the vocabulary
    ("/pooling", {"input": "1" * 10_000}),  # longer than the context
]


@pytest.fixture(scope="module")
def bundled():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from probinfer.llm.default import ASSETS
    from probinfer.llm.hf import HFCausalLM, HFRewardModel
    from probinfer.llm.testing import serve

    torch.set_num_threads(1)
    lm_ = HFCausalLM.from_pretrained(ASSETS / "lm", device="cpu")
    prm_ = HFRewardModel.from_pretrained(ASSETS / "prm", device="cpu")
    srv = serve(lm_, prm_)
    yield srv
    srv.shutdown()
    srv.server_close()


def _raw(port: int, request: bytes) -> tuple[int, dict]:
    """Send raw bytes; the status and the JSON body of the answer (fails on no answer)."""
    import http.client

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        resp = http.client.HTTPResponse(s)
        resp.begin()
        return resp.status, json.loads(resp.read())


@pytest.mark.parametrize("route,body", BAD_REQUESTS)
def test_the_test_server_answers_bad_requests_with_400(bundled, route, body):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
        route.encode(),
        len(data),
        data,
    )
    status, out = _raw(bundled.server_port, req)
    assert status == 400, out
    assert out["error"]["type"] == "invalid_request_error" and out["error"]["message"]


@pytest.mark.parametrize(
    "request_bytes,status",
    [
        (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # no Content-Length
        (b"POST /v1/completions HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
        (b"POST /v1/completions HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n", 413),
        (b"POST /nowhere HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 404),
        (b"GET /v1/completions HTTP/1.1\r\n\r\n", 405),
        (b"BREW /v1/completions HTTP/1.1\r\n\r\n", 501),
        (b"POST / HTTP/1.1 extra words\r\n\r\n", 400),  # a malformed request line
        (b"garbage\r\n\r\n", 400),
        (b"POST /v1/completions HTTP/1.1\r\nContent-Length: 2\r\n" * 200 + b"\r\n", 431),
    ],
)
def test_the_test_server_answers_every_malformed_request_with_json(bundled, request_bytes, status):
    got, out = _raw(bundled.server_port, request_bytes)
    assert got == status and out["error"]["message"]


def test_the_client_does_not_retry_the_test_servers_400(bundled):
    # a retry would first wait backoff x [0.5, 1.5) >= 15 s
    url = f"http://127.0.0.1:{bundled.server_port}/v1"
    client = lm(url, max_retries=3, backoff=30.0).client
    body = {**payloads(1)[0], "max_tokens": -5}
    t0 = time.perf_counter()
    with pytest.raises(ServerError, match="HTTP 400.*not retried.*max_tokens"):
        client.post_all("/completions", [body])
    assert time.perf_counter() - t0 < 10
    out = client.post_all("/completions", [{**body, "max_tokens": 2, "return_token_ids": True}])
    assert len(out[0][1]["choices"][0]["token_ids"]) <= 2
