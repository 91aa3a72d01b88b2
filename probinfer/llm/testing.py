"""Test utilities: a small OpenAI-compatible server for local models, and tiny models.

:func:`bpe_tokenizer` and :func:`tiny_llama` build the small tokenizers and networks that
the tests and the benchmarks use in place of downloaded ones (random weights, fixed by the
torch seed; torch and transformers are imported when they are called).

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

Every request gets an answer with an OpenAI-style JSON body: a bad request (malformed
JSON, a field of the wrong type or out of range, e.g. ``max_tokens=-5``,
``temperature=NaN``, token ids outside the vocabulary, a prompt too long for the model)
gets ``400`` and ``{"error": {"message": ..., "type": "invalid_request_error"}}``; an
unknown route ``404``, another method than POST ``405``, a body over the size limit
``413``, and a failure of the model ``500`` (``"type": "server_error"``).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from probinfer.llm.decode import StepDecoder
from probinfer.llm.tokenizers import never_sampled

__all__ = ["bpe_tokenizer", "serve", "tiny_llama"]

MAX_BODY_BYTES = 8 * 2**20
MAX_N = 256


class BadRequest(ValueError):
    """A request the server answers with ``status`` (400 unless said otherwise)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _reject_constant(name: str):
    raise BadRequest(f"the body holds {name}, which is not JSON")


def _int(body: dict, name: str, default: int, lo: int, hi: int) -> int:
    v = body.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise BadRequest(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def _check_completion(body: dict, vocab: int, limit: int | None) -> None:
    """``BadRequest`` for a completions body the model cannot answer as asked."""
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        if not prompt or not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in prompt
        ):
            raise BadRequest(
                f"prompt token ids must be a non-empty list of integers in [0, {vocab})"
            )
    elif not isinstance(prompt, str):
        raise BadRequest("prompt must be a string or a list of token ids")
    _int(body, "n", 1, 1, MAX_N)
    _int(body, "max_tokens", 16, 1, limit or 2**31 - 1)
    _int(body, "seed", 0, 0, 2**63 - 1)
    t = body.get("temperature", 1.0)
    if isinstance(t, bool) or not isinstance(t, int | float) or not 0 <= t < math.inf:
        raise BadRequest(f"temperature must be a finite number >= 0, got {t!r}")
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(x, str) for x in stop))
    ):
        raise BadRequest("stop must be a string or a list of strings")
    if "" in ([stop] if isinstance(stop, str) else stop or []):
        raise BadRequest("stop strings must be non-empty")
    for flag in ("return_token_ids", "include_stop_str_in_output"):
        if not isinstance(body.get(flag, False), bool):
            raise BadRequest(f"{flag} must be true or false")


def _check_pooling(body: dict) -> None:
    """``BadRequest`` for a pooling body that is not a text or a non-empty list of texts."""
    texts = body.get("input")
    if not (
        isinstance(texts, str)
        or (isinstance(texts, list) and texts and all(isinstance(t, str) for t in texts))
    ):
        raise BadRequest("input must be a string or a non-empty list of strings")


def _stop_end(stops: list[str]) -> Callable[[str], int | None]:
    """``text -> int | None``: the end of the first stop string in ``text`` (the stop string
    included), as a server stopping at ``stop`` with ``include_stop_str_in_output``."""

    def end(text: str) -> int | None:
        ends = [text.find(s) + len(s) for s in stops if s in text]
        return min(ends) if ends else None

    return end


def _generate(lm, body: dict) -> dict:
    """Answer a completions ``body`` with the :class:`~probinfer.llm.HFCausalLM` ``lm``: the
    ``n`` samples drawn in one batch, each stopping at a stop string, the end-of-sequence
    token or ``max_tokens`` (:class:`~probinfer.llm.decode.StepDecoder`)."""
    import torch
    from transformers import DynamicCache

    from probinfer.llm.hf import sample_tokens

    tok = lm.tokenizer
    prompt = body.get("prompt")
    try:
        ids = list(prompt) if isinstance(prompt, list) else tok.encode(str(prompt))
    except ValueError as err:  # a character outside the vocabulary
        raise BadRequest(f"prompt: {err}") from None
    if not ids:
        raise BadRequest("prompt must encode to at least one token")
    limit = lm.context_limit
    if limit is not None and len(ids) + int(body.get("max_tokens", 16)) > limit:
        raise BadRequest(
            f"prompt ({len(ids)} tokens) + max_tokens exceeds the model's context of {limit}"
        )
    n = int(body.get("n", 1))
    temperature = float(body.get("temperature", 1.0))
    stops = body.get("stop") or []
    stop_end = _stop_end([stops] if isinstance(stops, str) else list(stops))
    eos = getattr(tok, "eos_token_id", None)
    decoders = [StepDecoder(tok, ids, "", stop_end, eos_token_id=eos) for _ in range(n)]
    gen = torch.Generator().manual_seed(int(body.get("seed", 0)))
    never, noise = never_sampled(tok), None
    model, dev = lm.model, lm.device
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        x = torch.tensor([ids] * n, dtype=torch.long, device=dev)
        pos = torch.arange(len(ids), device=dev)[None].expand(n, -1)
        mask = torch.ones((n, len(ids)), dtype=torch.long, device=dev)
        for _ in range(int(body.get("max_tokens", 16))):
            res = model(
                input_ids=x, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True
            )
            nxt, noise = sample_tokens(res.logits[:, -1, :], temperature, gen, never, noise)
            for d, t in zip(decoders, nxt):
                if not d.done:
                    d.push(t)
            if all(d.done for d in decoders):
                break
            x = torch.tensor(nxt, dtype=torch.long, device=dev)[:, None]
            pos = pos[:, -1:] + 1
            mask = torch.cat([mask, torch.ones((n, 1), dtype=torch.long, device=dev)], 1)
    choices = []
    for i, d in enumerate(decoders):
        reason = "stop" if d.done else "length"
        d.stop("length")
        ch = {"index": i, "text": d.step, "finish_reason": reason}
        if body.get("return_token_ids"):
            ch["token_ids"] = d.tokens
        choices.append(ch)
    return {
        "object": "text_completion",
        "model": body.get("model"),
        "choices": choices,
        "usage": {
            "prompt_tokens": len(ids),
            "completion_tokens": sum(len(d.tokens) for d in decoders),
        },
    }


def _pool(prm, body: dict) -> dict:
    texts = body.get("input")
    texts = [texts] if isinstance(texts, str) else list(texts)
    try:
        scores = prm.score(texts, [()] * len(texts))
    except ValueError as err:  # a character outside the vocabulary, a text too long
        raise BadRequest(f"input: {err}") from None
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
    vocab = None
    if lm is not None:
        from probinfer.llm.server import _vocab_size

        vocab = _vocab_size(lm.tokenizer) or lm.model.config.vocab_size

    class Handler(BaseHTTPRequestHandler):
        timeout = 60  # seconds a client may take to send its request
        default_request_version = "HTTP/1.0"  # a malformed request line gets a status line

        def log_message(self, *args):  # quiet
            pass

        def _send(self, code: int, payload: dict):
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, code: int, message: str):
            kind = "server_error" if code >= 500 else "invalid_request_error"
            self._send(code, {"error": {"message": message, "type": kind, "code": code}})

        def send_error(self, code, message=None, explain=None):
            """http.server's own errors (malformed request line or headers) as JSON."""
            self.close_connection = True
            self._error(code, message or HTTPStatus(code).phrase)

        def _other_method(self):
            self._error(405, f"method {self.command} not allowed; use POST")

        do_GET = do_PUT = do_PATCH = do_DELETE = _other_method

        def _body(self) -> dict:
            size = self.headers.get("Content-Length")
            if size is None or not size.strip().isdigit():
                self.close_connection = True
                raise BadRequest("a Content-Length header with the body size is required")
            if int(size) > MAX_BODY_BYTES:
                self.close_connection = True
                raise BadRequest(f"the body is larger than {MAX_BODY_BYTES} bytes", 413)
            raw = self.rfile.read(int(size))
            try:
                body = json.loads(raw, parse_constant=_reject_constant)
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise BadRequest("malformed JSON body") from None
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object")
            return body

        def do_POST(self):  # noqa: N802 (http.server's name)
            route = self.path.rstrip("/")
            try:
                body = self._body()
                if route.endswith("/completions") and lm is not None:
                    _check_completion(body, vocab, lm.context_limit)
                    with lock:
                        return self._send(200, _generate(lm, body))
                if route.endswith("/pooling") and prm is not None:
                    _check_pooling(body)
                    with lock:
                        return self._send(200, _pool(prm, body))
            except BadRequest as err:
                return self._error(err.status, str(err))
            except Exception as err:  # noqa: BLE001 (answered as a 500, never dropped)
                return self._error(500, f"{type(err).__name__}: {err}")
            return self._error(404, f"no route {self.path}")

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def bpe_tokenizer(corpus, vocab_size: int, special_tokens=("<pad>", "</s>")):
    """A byte-level BPE tokenizer trained on the texts ``corpus`` without a regex pre-split,
    so that merges cross step delimiters (``";1"``, ``"2|"``), as an
    :class:`~probinfer.llm.tokenizers.HFTokenizer`; ``special_tokens`` are the padding token
    and, when given, the end-of-sequence token."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from probinfer.llm.tokenizers import HFTokenizer

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens))
    )
    pad, *eos = special_tokens
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=pad, **({"eos_token": eos[0]} if eos else {})
    )
    return HFTokenizer(fast)


def tiny_llama(cls, vocab_size: int, hidden_size: int, heads: tuple[int, int], **config):
    """A small Llama-architecture ``cls`` (e.g. ``transformers.LlamaForCausalLM``) with
    random weights drawn from torch's global generator: ``heads`` is ``(attention heads,
    key/value heads)``, the MLP twice as wide as ``hidden_size``, and ``config`` the other
    ``LlamaConfig`` fields (``num_hidden_layers``, ``max_position_embeddings``, ...)."""
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_attention_heads=heads[0],
        num_key_value_heads=heads[1],
        **config,
    )
    return cls(cfg)
