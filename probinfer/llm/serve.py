"""A small OpenAI-compatible server for local models (the bundled LM and PRM).

:func:`serve` starts a threaded ``http.server`` on ``host:port`` that answers

* ``POST /v1/completions``: text or token-id ``prompt``, ``n``, ``max_tokens``,
  ``temperature`` (0 = greedy), ``seed``, ``stop`` (with ``include_stop_str_in_output``),
  ``return_token_ids`` (each choice gets ``token_ids``);
* ``POST /pooling`` (and ``/v1/pooling``): ``input`` texts scored by a
  :class:`~probinfer.llm.RewardModel`, one score per input (``{"data": [score]}``).

It is the reference server of the tests of :mod:`probinfer.llm.server` and a way to try
``probinfer scale --server`` without vLLM; it is not a production server (one model
replica, requests served one at a time under a lock). The ``n`` samples of a request are
drawn in one batch with a ``torch.Generator`` seeded from ``seed``.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["serve"]


def _generate(lm, body: dict) -> dict:
    import torch
    from transformers import DynamicCache

    from probinfer.llm.hf import sample_tokens

    tok = lm.tokenizer
    prompt = body.get("prompt")
    ids = list(prompt) if isinstance(prompt, list) else tok.encode(str(prompt))
    n = int(body.get("n", 1))
    max_tokens = int(body.get("max_tokens", 16))
    temperature = float(body.get("temperature", 1.0))
    stops = body.get("stop") or []
    stops = [stops] if isinstance(stops, str) else list(stops)
    gen = torch.Generator().manual_seed(int(body.get("seed", 0)))
    eos = getattr(tok, "eos_token_id", None)
    model = lm.model
    dev = lm.device
    out = [[] for _ in range(n)]
    done = [False] * n
    reason = ["length"] * n
    noise = None
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        x = torch.tensor([ids] * n, dtype=torch.long, device=dev)
        pos = torch.arange(len(ids), device=dev)[None].expand(n, -1)
        mask = torch.ones((n, len(ids)), dtype=torch.long, device=dev)
        for _ in range(max_tokens):
            res = model(
                input_ids=x, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True
            )
            pad = lm.pad_token_id if lm._mask_pad else None
            nxt, noise = sample_tokens(res.logits[:, -1, :], temperature, gen, pad, noise)
            for i in range(n):
                if done[i]:
                    continue
                t = nxt[i]
                if eos is not None and t == eos:
                    done[i], reason[i] = True, "stop"
                    continue
                out[i].append(t)
                if any(s in tok.decode(out[i]) for s in stops):
                    done[i], reason[i] = True, "stop"
            if all(done):
                break
            x = torch.tensor(nxt, dtype=torch.long, device=dev)[:, None]
            pos = pos[:, -1:] + 1
            mask = torch.cat([mask, torch.ones((n, 1), dtype=torch.long, device=dev)], 1)
    choices = []
    for i in range(n):
        text = tok.decode(out[i])
        cut = [text.find(s) + len(s) for s in stops if s in text]
        if cut:
            text = text[: min(cut)]
        ch = {"index": i, "text": text, "finish_reason": reason[i]}
        if body.get("return_token_ids"):
            ch["token_ids"] = out[i]
        choices.append(ch)
    return {
        "object": "text_completion",
        "model": body.get("model"),
        "choices": choices,
        "usage": {
            "prompt_tokens": len(ids),
            "completion_tokens": sum(map(len, out)),
        },
    }


def _pool(prm, body: dict) -> dict:
    texts = body.get("input")
    texts = [texts] if isinstance(texts, str) else list(texts)
    scores = prm.score(texts, [()] * len(texts))
    return {
        "object": "list",
        "data": [
            {"index": i, "object": "pooling", "data": [float(s)]} for i, s in enumerate(scores)
        ],
    }


def serve(lm=None, prm=None, *, host: str = "127.0.0.1", port: int = 0):
    """Start serving in a daemon thread; returns the ``ThreadingHTTPServer`` (its URL is
    ``f"http://{host}:{server.server_port}"``; stop it with ``server.shutdown()`` and
    ``server.server_close()``).

    Parameters
    ----------
    lm
        An :class:`~probinfer.llm.HFCausalLM` served on ``/v1/completions`` (or ``None``).
    prm
        A reward model served on ``/pooling`` (or ``None``).
    host, port
        Where to listen (``port=0``: a free port).
    """
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _send(self, code: int, payload: dict):
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):  # noqa: N802 (http.server's name)
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            except json.JSONDecodeError:
                return self._send(400, {"error": {"message": "malformed JSON body"}})
            route = self.path.rstrip("/")
            with lock:
                if route.endswith("/completions") and lm is not None:
                    return self._send(200, _generate(lm, body))
                if route.endswith("/pooling") and prm is not None:
                    return self._send(200, _pool(prm, body))
            return self._send(404, {"error": {"message": f"no route {self.path}"}})

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
