r"""OpenAI-compatible server backends (vLLM, SGLang, any ``/v1/completions`` server).

This is the scale-out path: the language model and the PRM run on serving stacks (one or
several data-parallel replicas), the particle algorithms run here.

:class:`OpenAICompatibleLM` proposes the next step of every particle through the
completions route:

* particles with the same context (the children of one parent after resampling) share
  one request with ``n`` samples; ``seed`` is derived from the ``jax.random`` key;
* ``stop`` is the step delimiter and the stop string (``include_stop_str_in_output``),
  so the server stops at the end of the step;
* with a ``tokenizer`` the prompt is sent as token ids (prompt ids + the particle's sampled
  ids) and the sampled ids are read back (``return_token_ids``, or vLLM's
  ``return_tokens_as_token_ids`` log-probability tokens ``"token_id:N"``): steps are then
  token-exact as with the local backend (the step ends at the first token whose decoded
  text completes the delimiter; the rest of that token's text opens the next step).
  Without a tokenizer the prompt is text (prompt + partial answer).

:class:`OpenAICompatiblePRM` scores partial answers through vLLM's pooling route
(``POST /pooling``), for step-reward models (token classification with a step-tag token
after every step, the Qwen2.5-Math-PRM convention: ``P(positive class)`` at the last tag)
and for reward models returning one score.

Both use one async ``httpx`` client for their lifetime, with a concurrency limit, a
deadline per request (connecting, waiting and reading the whole body: a server trickling
bytes cannot hold a request longer) and a size cap on each response body. Requests are
spread round-robin over several base URLs (replicas); a request that fails (connection
error, deadline, 5xx, 429, malformed answer) is retried on the next healthy replica, with
exponential backoff and jitter when there is none, and a replica that failed is skipped
for a cool-down period (a warning names it). Other 4xx answers are not retried. Every
:class:`ServerError` names the URL. The API key is read from the environment variable the
user names (default ``OPENAI_API_KEY``), checked at construction (printable ASCII, no
whitespace: the error names the variable), sent only in the ``Authorization`` header, and
never appears, nor do credentials in a URL (``http://user:password@host``), in logs,
exceptions, results, reprs or JSON (:func:`redact_url`).

Answers are validated: choices and pooling results must carry each index once, and token
ids must lie in the tokenizer's vocabulary, else a :class:`ServerError` names the URL.

Running at scale with vLLM (a Qwen2.5-Math model and its PRM; both servers may be
replicated, pass several URLs separated by commas)::

    vllm serve Qwen/Qwen2.5-Math-7B-Instruct --port 8000 --enable-prefix-caching
    vllm serve Qwen/Qwen2.5-Math-PRM-7B --port 8001 --runner pooling --trust-remote-code
    export OPENAI_API_KEY=...        # only if the servers were started with --api-key
    probinfer scale --server http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-Math-7B-Instruct \
        --tokenizer /path/to/local/Qwen2.5-Math-7B-Instruct \
        --prm-server http://127.0.0.1:8001 --prm-model Qwen/Qwen2.5-Math-PRM-7B \
        --prm-kind token --step-tag "<extra_0>" --delimiter $'\n\n' --stop '<|im_end|>' \
        --answer-regex '\\boxed\{([^}]*)\}' --problems problems.jsonl --budgets 4,8,16

``--tokenizer`` (a local directory with the tokenizer files) makes prompts token ids and
steps token-exact; without it prompts are text. Prefix caching on the server keeps the
re-sent prefixes cheap (the server-side counterpart of the local backend's KV cache).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import os
import random
import threading
import time
import weakref
from collections.abc import Sequence
from urllib.parse import unquote

import numpy as np

from probinfer._random import key_to_seed
from probinfer.checks import check_num
from probinfer.llm.decode import StepDecoder, step_proposal
from probinfer.llm.protocols import StepEnd, StepFormat, StepProposal

__all__ = ["OpenAICompatibleLM", "OpenAICompatiblePRM", "ServerError", "parse_urls", "redact_url"]

PRM_SERVER_KINDS = ("token", "sequence")
MAX_RESPONSE_BYTES = 32 * 2**20
"""Default size cap of one response body (bytes)."""

logger = logging.getLogger(__name__)


class ServerError(RuntimeError):
    """A server request failed (the message names the URL, never the key or URL credentials)."""


class _TooLarge(Exception):
    """A response body went over the size cap."""


def redact_url(url: str) -> str:
    """``url`` with its user information (``user:password@``) replaced by ``***@``.

    Everything between ``://`` and the last ``@`` is hidden, so a password holding ``/``
    or ``@`` is hidden too.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    at = rest.rfind("@")
    return url if at < 0 else f"{scheme}{sep}***@{rest[at + 1 :]}"


def _split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without its user information, and the (percent-decoded) user and password
    it held, if any. They go to httpx as an auth object, never in the URL, which httpx logs.
    """
    scheme, sep, rest = url.partition("://")
    at = rest.rfind("@")
    if not sep or at < 0:
        return url, None
    user, _, password = rest[:at].partition(":")
    return f"{scheme}{sep}{rest[at + 1 :]}", (unquote(user), unquote(password))


def _url_secrets(url: str) -> list[str]:
    """The credentials a URL carries, in every form an error message or an echoing server
    could show them: raw, percent-decoded, and as the HTTP Basic token sent with them."""
    rest = url.partition("://")[2] or url
    at = rest.rfind("@")
    if at < 0:
        return []
    userinfo = rest[:at]
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    return [userinfo, unquote(userinfo), password, unquote(password), token]


def parse_urls(urls) -> tuple[str, ...]:
    """Base URLs from a string (comma-separated) or a sequence; ``ValueError`` if none or
    one is not ``http(s)://host...``. A trailing ``/`` is removed. Errors show URLs
    through :func:`redact_url`."""
    if isinstance(urls, str):
        urls = [u.strip() for u in urls.split(",") if u.strip()]
    try:
        out = tuple(str(u).rstrip("/") for u in urls)
    except TypeError:
        msg = f"base_urls must be a str or a sequence of str, got {type(urls).__name__}"
        raise TypeError(msg) from None
    if not out:
        raise ValueError("base_urls must name at least one server URL")
    for u in out:
        host = redact_url(u).partition("://")[2].removeprefix("***@")
        if not u.startswith(("http://", "https://")) or not host or host[0] in "/?#:":
            raise ValueError(f"base_urls: {redact_url(u)!r} is not an http(s)://host URL")
    return out


def _read_key(env: str | None) -> str | None:
    """The API key in the environment variable ``env`` (``None``: no variable or an empty
    one). ``ValueError`` naming the variable, never the key, when the key holds a
    character an HTTP header cannot carry as is (whitespace such as a trailing newline,
    control or non-ASCII characters)."""
    key = os.environ.get(env) if env else None
    if not key:
        return None
    if not all("!" <= c <= "~" for c in key):
        raise ValueError(
            f"the API key in the environment variable {env} holds whitespace (e.g. a trailing "
            "newline), control or non-ASCII characters; an HTTP header needs printable ASCII "
            "without spaces: set it again without them"
        )
    return key


def _positive(name, v, kind=float):
    if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0 or v == math.inf:
        raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    return kind(v)


def _stop_loop(loop: asyncio.AbstractEventLoop, box: dict) -> None:
    """Close the HTTP client in ``box`` on ``loop``, then stop the loop (its thread closes
    it). Called when the client is closed or garbage-collected, or at exit."""
    if loop.is_closed():
        return
    http = box.pop("http", None)
    if http is not None and box.get("thread") is not threading.current_thread():
        try:
            asyncio.run_coroutine_threadsafe(http.aclose(), loop).result(timeout=2)
        except Exception:  # noqa: BLE001 (best effort: the loop is going away anyway)
            pass
    loop.call_soon_threadsafe(loop.stop)


class _Client:
    """Async JSON POSTs with a concurrency limit, a deadline and a size cap per request,
    retries, and failover over base URLs (replicas).

    One ``httpx.AsyncClient`` (its connection pool and TLS context) serves every request
    of the client's lifetime; it lives on a private event loop in a daemon thread, so
    calls work from plain code and from inside a running loop (Jupyter) alike. The API key
    is read from the environment at each call, sent only in the ``Authorization`` header,
    and redacted, with URL credentials, from every message.
    """

    def __init__(
        self,
        base_urls,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        max_concurrency: int = 32,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        cooldown: float = 30.0,
    ):
        raw = parse_urls(base_urls)
        self.urls = tuple(redact_url(u) for u in raw)
        self._urls, self._auth = zip(*map(_split_credentials, raw))
        if api_key_env is not None and not isinstance(api_key_env, str):
            raise TypeError(f"api_key_env must be a str or None, got {type(api_key_env).__name__}")
        self.api_key_env = api_key_env
        _read_key(api_key_env)  # fail at start-up, not at the first request
        check_num(max_concurrency, "max_concurrency")
        self.max_concurrency = max_concurrency
        self.timeout = _positive("timeout", timeout)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        self.max_retries = max_retries
        self.backoff = _positive("backoff", backoff)
        check_num(max_response_bytes, "max_response_bytes")
        self.max_response_bytes = max_response_bytes
        self.cooldown = _positive("cooldown", cooldown)
        self._secrets = sorted({s for u in raw for s in _url_secrets(u) if s}, key=len)
        self._dead_until = [0.0] * len(self._urls)  # time.monotonic() when usable again
        self._next = 0
        self._jitter = random.Random()  # retry timing only, never results
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._box: dict = {}
        self._pid = 0
        self._finalizer = None

    def __repr__(self) -> str:
        return f"_Client(urls={self.urls!r}, api_key_env={self.api_key_env!r})"

    def __getstate__(self) -> dict:  # the loop, its thread and the HTTP client stay here
        state = dict(self.__dict__)
        state.update(_lock=None, _loop=None, _box={}, _pid=0, _finalizer=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the HTTP client and stop its event loop (a later call starts new ones)."""
        with self._lock:
            if self._finalizer is not None:
                self._finalizer()
            self._loop, self._box, self._finalizer = None, {}, None

    def _redact(self, text: str) -> str:
        """``text`` without the API key and URL credentials (in any form they are known in).
        Redact before truncating, so that no part of a secret survives."""
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        forms = (key, key.strip(), json.dumps(key)[1:-1]) if key else ()
        for s in sorted([*self._secrets, *forms], key=len, reverse=True):
            if s:
                text = text.replace(s, "***")
        return text

    def _snippet(self, body: bytes, limit: int = 300) -> str:
        """The start of a response body for a message: decoded, redacted, then truncated."""
        text = self._redact(body.decode("utf-8", errors="replace"))
        return text if len(text) <= limit else text[:limit] + "..."

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():  # none yet, or forked
                if self._finalizer is not None:  # the parent's loop: not ours to stop
                    self._finalizer.detach()
                loop = asyncio.new_event_loop()

                def run():
                    asyncio.set_event_loop(loop)
                    loop.run_forever()
                    loop.close()

                th = threading.Thread(target=run, daemon=True, name="probinfer-http")
                self._box = {"thread": th}
                self._finalizer = weakref.finalize(self, _stop_loop, loop, self._box)
                th.start()
                self._loop, self._pid = loop, os.getpid()
            return self._loop

    def post_all(self, route: str, payloads: list[dict]) -> list[tuple[str, dict]]:
        """POST every payload (in parallel, at most ``max_concurrency`` at a time) and
        return ``(url, decoded JSON answer)`` pairs in order; ``url`` is the redacted URL
        of the replica that answered."""
        headers = {"Content-Type": "application/json"}
        key = _read_key(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        start = self._next
        self._next = (self._next + len(payloads)) % len(self._urls)
        assigned = [(start + j) % len(self._urls) for j in range(len(payloads))]
        loop = self._ensure_loop()
        fut = asyncio.run_coroutine_threadsafe(
            self._post_all(route, assigned, payloads, headers), loop
        )
        try:
            return fut.result()
        except BaseException:  # KeyboardInterrupt included: stop the requests in flight
            fut.cancel()
            raise

    async def _post_all(self, route, assigned, payloads, headers):
        import httpx

        if self._box.get("http") is None:
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
            self._box["http"] = httpx.AsyncClient(timeout=self.timeout, limits=limits)
        http = self._box["http"]
        sem = asyncio.Semaphore(self.max_concurrency)

        async def one(i, payload):
            async with sem:
                return await self._post(http, i, route, payload, headers)

        tasks = [asyncio.create_task(one(i, p)) for i, p in zip(assigned, payloads)]
        try:
            return await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()

    def _healthy(self, i: int) -> bool:
        return self._dead_until[i] <= time.monotonic()

    def _pick(self, i: int, *, after: bool) -> int:
        """The replica for a request assigned to ``i``: ``i`` itself (``after=False``) or
        the one after it (``after=True``, failover), skipping those cooling down; when all
        are cooling down, the one whose cool-down ends first."""
        n = len(self._urls)
        order = [(i + k) % n for k in range(1 if after else 0, n + (1 if after else 0))]
        healthy = [j for j in order if self._healthy(j)]
        return healthy[0] if healthy else min(order, key=lambda j: self._dead_until[j])

    def _mark_dead(self, i: int, reason: str) -> None:
        if len(self._urls) > 1 and self._healthy(i):
            logger.warning(
                "%s failed (%s); skipping it for %g s", self.urls[i], reason, self.cooldown
            )
        self._dead_until[i] = time.monotonic() + self.cooldown

    async def _fetch(self, http, i: int, route: str, payload: dict, headers: dict):
        """One POST to replica ``i`` within the deadline; the status and the whole body
        (``_TooLarge`` as soon as it passes the size cap, before reading further)."""
        import httpx

        cap = self.max_response_bytes
        url, auth = self._urls[i] + route, self._auth[i]
        auth = httpx.BasicAuth(*auth) if auth else None
        async with asyncio.timeout(self.timeout):
            async with http.stream("POST", url, json=payload, headers=headers, auth=auth) as r:
                size = r.headers.get("Content-Length", "")
                if size.isdigit() and int(size) > cap:
                    raise _TooLarge
                body = bytearray()
                async for chunk in r.aiter_bytes():
                    body += chunk
                    if len(body) > cap:
                        raise _TooLarge
                return r.status_code, bytes(body)

    async def _post(self, http, i: int, route: str, payload: dict, headers: dict):
        """POST ``payload`` to replica ``i`` (or the next healthy one); after a failure, at
        once to the next healthy replica not tried yet, else (a retry, at most
        ``max_retries``) after a backoff. Returns ``(redacted URL, answer)``."""
        i = self._pick(i, after=False)
        tried, retries, attempts = [i], 0, 0
        while True:
            attempts += 1
            out = await self._attempt(http, i, route, payload, headers)
            if isinstance(out, dict):
                return self.urls[i] + route, out
            nxt = self._pick(i, after=True)
            if nxt in tried or not self._healthy(nxt):  # no fresh replica: a retry
                if retries == self.max_retries:
                    break
                retries += 1
                await asyncio.sleep(
                    self.backoff * 2 ** (retries - 1) * (0.5 + self._jitter.random())
                )
            i = nxt
            if i not in tried:
                tried.append(i)
        names = " then ".join(self.urls[j] + route for j in tried)
        raise ServerError(
            f"request to {names} failed after {attempts} attempt(s); last error: {out}"
        )

    async def _attempt(self, http, i: int, route: str, payload: dict, headers: dict):
        """One POST to replica ``i``: the answer (a dict), or why it failed (a str) when a
        retry may help; ``ServerError`` when it cannot (4xx, a body over the cap). A
        connection error, the deadline or a 5xx starts the replica's cool-down."""
        import httpx

        shown = self.urls[i] + route
        try:
            status, body = await self._fetch(http, i, route, payload, headers)
        except _TooLarge:
            raise ServerError(
                f"{shown}: the response is larger than max_response_bytes = "
                f"{self.max_response_bytes} bytes; not read further (raise the cap if the "
                "answers are that large)"
            ) from None
        except (TimeoutError, httpx.TimeoutException):
            why = f"no complete answer within the {self.timeout:g} s deadline"
            self._mark_dead(i, why)
            return why
        except httpx.HTTPError as err:
            why = self._redact(f"{type(err).__name__}: {err}")
            self._mark_dead(i, why)
            return why
        if status == 429 or status >= 500:
            if status >= 500:
                self._mark_dead(i, f"HTTP {status}")
            return f"HTTP {status}: {self._snippet(body, 200)}"
        if not 200 <= status < 300:
            raise ServerError(
                f"{shown} rejected the request with HTTP {status} (not retried): "
                f"{self._snippet(_error_message(body))}"
            )
        try:
            out = json.loads(body)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            return f"malformed JSON: {self._snippet(body, 200)!r}"
        if not isinstance(out, dict):
            return f"malformed answer (not a JSON object): {self._snippet(body, 200)!r}"
        return out


def _error_message(body: bytes) -> bytes:
    """The ``error.message`` of an OpenAI-style JSON error body, else the body."""
    try:
        msg = json.loads(body)["error"]["message"]
    except (ValueError, TypeError, KeyError):
        return body
    return str(msg).encode()


def _stop_strings(step_end) -> list[str] | None:
    """The delimiter and stop strings when ``step_end`` is a :class:`StepFormat`'s."""
    fmt = getattr(step_end, "__self__", None)
    if not isinstance(fmt, StepFormat):
        return None
    out = [s for s in (fmt.delimiter, fmt.stop) if isinstance(s, str)]
    return out or None


def _vocab_size(tokenizer) -> int | None:
    """The number of token ids ``tokenizer`` can decode (added tokens included), or
    ``None`` when it does not tell."""
    try:
        return len(tokenizer)
    except TypeError:
        n = getattr(tokenizer, "vocab_size", None)
        return n if isinstance(n, int) else None


def _choice_token_ids(where: str, choice: dict, vocab: int | None) -> list[int] | None:
    """The sampled token ids of a choice (``token_ids``, or vLLM's ``"token_id:N"``
    log-probability tokens); ``ServerError`` naming ``where`` for an id that is not an
    integer in ``[0, vocab)``, which decoding would otherwise drop silently."""
    ids = choice.get("token_ids")
    if not isinstance(ids, list):
        toks = (choice.get("logprobs") or {}).get("tokens")
        if not isinstance(toks, list) or not all(
            isinstance(t, str) and t.startswith("token_id:") for t in toks
        ):
            return None
        ids = []
        for t in toks:
            try:
                ids.append(int(t.removeprefix("token_id:")))
            except ValueError:
                ids.append(t)
    bad = [
        t
        for t in ids
        if isinstance(t, bool) or not isinstance(t, int) or t < 0 or (vocab and t >= vocab)
    ]
    if bad:
        raise ServerError(
            f"{where}: the server returned token ids outside the tokenizer's vocabulary "
            f"[0, {vocab if vocab else 'inf'}): {str(bad[:5])[:200]}; is --tokenizer the "
            "served model's?"
        )
    return ids


def _order(where: str, items, n: int, what: str) -> list[int]:
    """The positions of ``items`` in the order of their ``index`` fields: ``n`` JSON objects
    whose indices are ``0..n-1``, each exactly once (no index at all: the order given).
    ``ServerError`` naming ``where`` otherwise, rather than results attached to the wrong
    inputs."""
    if not isinstance(items, list) or len(items) != n:
        got = len(items) if isinstance(items, list) else type(items).__name__
        raise ServerError(f"{where}: expected {n} {what}, got {got}")
    if not all(isinstance(d, dict) for d in items):
        raise ServerError(f"{where}: malformed {what} (not JSON objects)")
    idx = [d.get("index") for d in items]
    if all(i is None for i in idx):
        return list(range(n))
    if any(isinstance(i, bool) or not isinstance(i, int) for i in idx) or sorted(idx) != list(
        range(n)
    ):
        raise ServerError(
            f"{where}: the {what} must carry each index 0..{n - 1} exactly once, got "
            f"{str(idx[:20])[:200]}"
        )
    order = [0] * n
    for pos, i in enumerate(idx):
        order[i] = pos
    return order


def _count(usage, name: str) -> int:
    """A token count from a ``usage`` object (0 when absent or not a count)."""
    v = usage.get(name) if isinstance(usage, dict) else None
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


class _Served:
    """What the LM and the PRM clients share: the served model's name and one HTTP
    :class:`_Client`, configured by the keyword arguments ``client`` (its options, with
    their defaults; an unknown one is a ``TypeError`` naming it)."""

    def __init__(self, base_urls, model: str, **client):
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a non-empty string, got {model!r}")
        self.client = _Client(base_urls, **client)
        self.model = model

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_urls={self.client.urls!r}, model={self.model!r})"

    @property
    def base_urls(self) -> tuple[str, ...]:
        """The base URLs with their credentials redacted (:func:`redact_url`)."""
        return self.client.urls


class OpenAICompatibleLM(_Served):
    """A language model behind OpenAI-compatible completions servers (vLLM, SGLang, ...).

    Parameters
    ----------
    base_urls
        One URL or several (a sequence or a comma-separated string), e.g.
        ``"http://127.0.0.1:8000/v1"``; requests go to ``{url}/completions``, spread
        round-robin (data-parallel replicas).
    model
        The served model name.
    tokenizer
        The model's tokenizer (e.g. :func:`probinfer.llm.hf.load_tokenizer` on a local copy
        of the tokenizer files): prompts are then token ids and steps token-exact. ``None``:
        text prompts.
    max_concurrency
        At most this many requests in flight.
    **client
        The HTTP client's options, each with its default:

        ``api_key_env="OPENAI_API_KEY"``
            The environment variable holding the API key (``None``: no key).
        ``timeout=60.0``, ``max_retries=4``, ``backoff=0.5``
            The deadline of one HTTP request in seconds (connecting, sending, waiting and
            reading the whole answer); retries on connection errors, deadlines, 429, 5xx
            and malformed answers, on the next healthy replica, and after
            ``backoff * 2**k`` seconds times a jitter factor in ``[0.5, 1.5)`` before retry
            ``k + 1`` when there is none. Other 4xx answers are not retried.
        ``max_response_bytes=MAX_RESPONSE_BYTES`` (32 MiB)
            Size cap of one response body: a larger one is not read further and raises
            :class:`ServerError` naming the URL and the cap.
        ``cooldown=30.0``
            Seconds a replica that failed (connection error, deadline, 5xx) is skipped; the
            warning logged names its URL (redacted).
    eos_text
        Text that the end of a generation by the model (not at a stop string) stands for,
        as in :class:`~probinfer.llm.HFCausalLM`.
    extra_body
        Extra request fields (e.g. ``{"top_p": 0.95}``).
    """

    def __init__(
        self,
        base_urls,
        model: str,
        *,
        tokenizer=None,
        eos_text: str | None = None,
        extra_body: dict | None = None,
        max_concurrency: int = 32,
        **client,
    ):
        super().__init__(base_urls, model, max_concurrency=max_concurrency, **client)
        self.tokenizer = tokenizer
        self.eos_text = eos_text
        self.extra_body = dict(extra_body or {})

    def propose(
        self, key, contexts, step_end: StepEnd, *, max_new_tokens: int, temperature: float = 1.0
    ) -> StepProposal:
        b = len(contexts)  # an empty batch sends no request
        tok = self.tokenizer
        exact = tok is not None and (contexts.step_tokens is not None or not any(contexts.steps))
        if exact:
            prompt_ids = tok.encode(contexts.prompt)
            contents = [tuple(prompt_ids + (contexts.tokens(i) or [])) for i in range(b)]
        else:
            contents = [contexts.prompt + q for q in contexts.partials()]
        decoders = [
            StepDecoder(
                tok if exact else None,
                contents[i] if exact else (),
                contexts.carry(i),
                step_end,
                eos_token_id=getattr(tok, "eos_token_id", None) if exact else None,
                eos_text=self.eos_text,
            )
            for i in range(b)
        ]
        groups: dict = {}  # particles with the same context share one request with n samples
        for i, d in enumerate(decoders):
            if not d.done:  # a carry that already holds a whole step needs no request
                key_i = (contents[i], contexts.carry(i)) if exact else (contents[i], "")
                groups.setdefault(key_i, []).append(i)
        seed = key_to_seed(key)
        payloads = [
            self._payload(g[0], len(members), (seed + 7919 * j) % (2**31 - 1), step_end, exact)
            | {"max_tokens": int(max_new_tokens), "temperature": float(temperature)}
            for j, (g, members) in enumerate(groups.items())
        ]
        answers = self.client.post_all("/completions", payloads) if payloads else []
        vocab = _vocab_size(tok) if exact else None
        encoded = produced = 0
        for members, (where, ans) in zip(groups.values(), answers):
            choices = ans.get("choices")
            usage = ans.get("usage")
            encoded += _count(usage, "prompt_tokens")
            for i, c in zip(members, _order(where, choices, len(members), "choices")):
                produced += _decode_choice(where, choices[c], decoders[i], vocab, exact)
            if not exact:
                produced += _count(usage, "completion_tokens")
        return step_proposal(
            decoders, exact=exact, tokens_generated=produced, tokens_encoded=encoded
        )

    def _payload(self, prompt, n: int, seed: int, step_end, exact: bool) -> dict:
        """The completions request body for ``n`` samples continuing ``prompt`` (token ids
        when ``exact``, else text), stopping at the step format's strings."""
        body = {
            **self.extra_body,
            "model": self.model,
            "prompt": list(prompt) if exact else prompt,
            "n": n,
            "seed": seed,
        }
        stops = _stop_strings(step_end)
        if stops:
            body["stop"] = stops
            body["include_stop_str_in_output"] = True
        if exact:
            body["return_token_ids"] = True
            body["logprobs"] = 0
            body["return_tokens_as_token_ids"] = True
        return body


def _decode_choice(where: str, choice, decoder: StepDecoder, vocab, exact: bool) -> int:
    """Feed one completion choice to its particle's decoder; returns the tokens it counts
    (token-exact: the ids returned; text: 0, counted from the usage instead)."""
    text = choice.get("text")
    if not isinstance(text, str):
        raise ServerError(f"{where}: a choice has no text")
    fin = choice.get("finish_reason")
    if not exact:
        decoder.push_text(text)
    else:
        ids = _choice_token_ids(where, choice, vocab)
        if ids is None:
            raise ServerError(
                f"{where}: the server returned no token ids (it needs return_token_ids or "
                "return_tokens_as_token_ids); use tokenizer=None for text prompts"
            )
        for t in ids:
            if decoder.push(t):
                break
    decoder.stop("length" if fin == "length" else "end")
    return len(ids) if exact else 0


class OpenAICompatiblePRM(_Served):
    """A process reward model behind vLLM's pooling route (``POST {url}/pooling``).

    Parameters
    ----------
    base_urls
        One URL or several (round-robin), e.g. ``"http://127.0.0.1:8001"``.
    model
        The served model name.
    kind
        ``"token"``: a step-reward model (token classification; the Qwen2.5-Math-PRM
        convention): ``step_tag`` is appended to every step, the server returns class
        probabilities per step tag (or per token), and the score is ``P(positive_label)``
        at the last one. ``"sequence"``: a reward model returning one score per input
        (a probability; with ``logits=True`` a logit, passed through a sigmoid).
        ``None`` (default): detected from the server's answer to the first input (one
        request, made once, without step tags): one row per token (or none) is
        ``"token"``, one score (or one vector of class scores) is ``"sequence"``.
    step_tag
        ``"token"``: the text appended after each step (``"<extra_0>"`` for
        Qwen2.5-Math-PRM).
    positive_label
        ``"token"``: the index of the "correct" class.
    logits
        ``"sequence"``: the server returns a logit rather than a probability.
    batch_size
        Inputs per request.
    max_concurrency
        At most this many requests in flight.
    **client
        The HTTP client's options, as for :class:`OpenAICompatibleLM`.
    """

    def __init__(
        self,
        base_urls,
        model: str,
        *,
        kind: str | None = None,
        step_tag: str = "<extra_0>",
        positive_label: int = 1,
        logits: bool = False,
        batch_size: int = 32,
        max_concurrency: int = 8,
        **client,
    ):
        if kind is not None and kind not in PRM_SERVER_KINDS:
            raise ValueError(f"kind must be one of {PRM_SERVER_KINDS} or None, got {kind!r}")
        check_num(batch_size, "batch_size")
        super().__init__(base_urls, model, max_concurrency=max_concurrency, **client)
        self.kind, self.step_tag = kind, step_tag
        self.positive_label, self.logits, self.batch_size = int(positive_label), logits, batch_size

    def _detect_kind(self, prompt: str, steps) -> str:
        """The served PRM's kind from its answer to one input (``prompt + steps``, without
        step tags, which a sequence model's vocabulary may lack): one score (or one vector
        of class scores) is a ``"sequence"`` model; one row per token, or no row at all (a
        step-reward model reads only step tags), is a ``"token"`` model."""
        text = prompt + "".join(steps)
        [(where, ans)] = self.client.post_all("/pooling", [{"model": self.model, "input": [text]}])
        data = ans.get("data")
        _order(where, data, 1, "pooling results")
        if "data" not in data[0]:
            raise ServerError(f"{where}: a pooling result has no data")
        try:
            arr = np.asarray(data[0]["data"], dtype=np.float64)
        except (TypeError, ValueError):
            raise ServerError(f"{where}: pooling output is not an array of numbers") from None
        kind = "token" if arr.ndim >= 2 or arr.size == 0 else "sequence"
        logger.info("%s: the served PRM answers as a %r model", where, kind)
        return kind

    def _text(self, prompt: str, steps) -> str:
        if self.kind == "token":
            return prompt + "".join(s + self.step_tag for s in steps)
        return prompt + "".join(steps)

    def _read(self, where: str, data) -> float:
        try:
            arr = np.asarray(data, dtype=np.float64)
        except (TypeError, ValueError):
            raise ServerError(f"{where}: pooling output is not an array of numbers") from None
        if arr.size == 0:
            raise ServerError(f"{where}: empty pooling output")
        if not np.all(np.isfinite(arr)):
            raise ServerError(f"{where}: pooling output holds NaN or infinite values")
        if self.kind == "token":
            row = arr.reshape(-1, arr.shape[-1])[-1] if arr.ndim >= 1 else arr.reshape(1)
            if row.size <= self.positive_label:
                raise ServerError(
                    f"{where}: pooling output has {row.size} classes, no positive_label "
                    f"{self.positive_label}"
                )
            return float(row[self.positive_label])
        v = float(arr.reshape(-1)[-1])
        return float(1.0 / (1.0 + np.exp(-v))) if self.logits else v

    def score(self, prompts: Sequence[str], partials) -> np.ndarray:
        """The score of the last step of each ``prompt + steps``, shape ``(n,)``."""
        if len(prompts) != len(partials):
            raise ValueError(
                f"prompts and partials must have the same length, got {len(prompts)} "
                f"and {len(partials)}"
            )
        if not prompts:
            return np.zeros(0)
        if self.kind is None:  # detected once, from the server's first answer
            self.kind = self._detect_kind(prompts[0], partials[0])
        texts = [self._text(p, s) for p, s in zip(prompts, partials)]
        chunks = [texts[a : a + self.batch_size] for a in range(0, len(texts), self.batch_size)]
        payloads = [{"model": self.model, "input": c} for c in chunks]
        answers = self.client.post_all("/pooling", payloads)
        out = []
        for c, (where, ans) in zip(chunks, answers):
            data = ans.get("data")
            for k in _order(where, data, len(c), "pooling results"):
                if "data" not in data[k]:
                    raise ServerError(f"{where}: a pooling result has no data")
                out.append(self._read(where, data[k]["data"]))
        return np.asarray(out, dtype=np.float64)
