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

Both use an async ``httpx`` client with a concurrency limit, timeouts, and retries with
exponential backoff and jitter on 429, 5xx, malformed responses and timeouts; requests are
spread round-robin over several base URLs. After the retries a :class:`ServerError` names
the URL. The API key is read from the environment variable the user names (default
``OPENAI_API_KEY``), sent only in the ``Authorization`` header, and never appears in
logs, exceptions, results or JSON.

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
import json
import os
import random
import threading
from collections.abc import Callable, Sequence

import numpy as np

from probinfer.checks import check_num
from probinfer.llm.protocols import StepFormat, StepProposal
from probinfer.llm.ssm import key_to_seed

__all__ = ["OpenAICompatibleLM", "OpenAICompatiblePRM", "ServerError", "parse_urls"]

PRM_SERVER_KINDS = ("token", "sequence")


class ServerError(RuntimeError):
    """A server request failed after its retries (the message names the URL)."""


def parse_urls(urls) -> tuple[str, ...]:
    """Base URLs from a string (comma-separated) or a sequence; ``ValueError`` if none or
    one is not ``http(s)://...``. A trailing ``/`` is removed."""
    if isinstance(urls, str):
        urls = [u.strip() for u in urls.split(",") if u.strip()]
    try:
        out = tuple(str(u).rstrip("/") for u in urls)
    except TypeError:
        raise TypeError(f"base_urls must be a str or a sequence of str, got {urls!r}") from None
    if not out:
        raise ValueError("base_urls must name at least one server URL")
    for u in out:
        if not u.startswith(("http://", "https://")):
            raise ValueError(f"base_urls: {u!r} is not an http(s):// URL")
    return out


def _positive(name, v, kind=float):
    if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
        raise ValueError(f"{name} must be a positive number, got {v!r}")
    return kind(v)


def _run(coro):
    """Run a coroutine to completion, also from inside a running event loop (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box = {}

    def target():
        try:
            box["out"] = asyncio.run(coro)
        except BaseException as err:  # re-raised in the caller's thread
            box["err"] = err

    th = threading.Thread(target=target)
    th.start()
    th.join()
    if "err" in box:
        raise box["err"]
    return box["out"]


class _Client:
    """Async JSON POSTs with a concurrency limit, timeouts and retries, round-robin over
    base URLs. The API key is held here only and redacted from every message."""

    def __init__(
        self,
        base_urls,
        *,
        api_key_env: str | None,
        max_concurrency: int,
        timeout: float,
        max_retries: int,
        backoff: float,
    ):
        self.urls = parse_urls(base_urls)
        if api_key_env is not None and not isinstance(api_key_env, str):
            raise TypeError(f"api_key_env must be a str or None, got {type(api_key_env).__name__}")
        self.api_key_env = api_key_env
        check_num(max_concurrency, "max_concurrency")
        self.max_concurrency = max_concurrency
        self.timeout = _positive("timeout", timeout)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        self.max_retries = max_retries
        self.backoff = _positive("backoff", backoff)
        self._next = 0
        self._jitter = random.Random()  # retry timing only, never results

    def __repr__(self) -> str:
        return f"_Client(urls={self.urls!r}, api_key_env={self.api_key_env!r})"

    def _key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def _redact(self, text: str) -> str:
        key = self._key()
        return text.replace(key, "***") if key else text

    def post_all(self, route: str, payloads: list[dict]) -> list[tuple[str, dict]]:
        """POST every payload (in parallel, at most ``max_concurrency`` at a time) and
        return ``(url, decoded JSON answer)`` pairs in order."""
        start = self._next
        self._next = (self._next + len(payloads)) % len(self.urls)
        urls = [self.urls[(start + j) % len(self.urls)] + route for j in range(len(payloads))]
        return list(zip(urls, _run(self._post_all(urls, payloads))))

    async def _post_all(self, urls, payloads):
        import httpx

        sem = asyncio.Semaphore(self.max_concurrency)
        headers = {"Content-Type": "application/json"}
        key = self._key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        async with httpx.AsyncClient(timeout=self.timeout, headers=headers) as client:

            async def one(url, payload):
                async with sem:
                    return await self._post(client, url, payload)

            tasks = [asyncio.create_task(one(u, p)) for u, p in zip(urls, payloads)]
            try:
                return await asyncio.gather(*tasks)
            finally:
                for t in tasks:
                    t.cancel()

    async def _post(self, client, url: str, payload: dict) -> dict:
        import httpx

        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = self.backoff * 2 ** (attempt - 1) * (0.5 + self._jitter.random())
                await asyncio.sleep(delay)
            try:
                r = await client.post(url, json=payload)
            except httpx.TimeoutException:
                last = f"timed out after {self.timeout:g} s"
                continue
            except httpx.HTTPError as err:
                last = f"{type(err).__name__}: {err}"
                continue
            if r.status_code == 429 or r.status_code >= 500:
                last = f"HTTP {r.status_code}: {r.text[:200]}"
                continue
            if r.status_code >= 400:
                raise ServerError(
                    self._redact(f"{url} answered HTTP {r.status_code}: {r.text[:500]}")
                )
            try:
                out = r.json()
            except (json.JSONDecodeError, ValueError):
                last = f"malformed JSON: {r.text[:200]!r}"
                continue
            if not isinstance(out, dict):
                last = f"malformed answer (not a JSON object): {r.text[:200]!r}"
                continue
            return out
        raise ServerError(
            self._redact(
                f"request to {url} failed after {self.max_retries + 1} attempt(s); last error: "
                f"{last}"
            )
        )


def _stop_strings(step_end) -> list[str] | None:
    """The delimiter and stop strings when ``step_end`` is a :class:`StepFormat`'s."""
    fmt = getattr(step_end, "__self__", None)
    if not isinstance(fmt, StepFormat):
        return None
    out = [s for s in (fmt.delimiter, fmt.stop) if isinstance(s, str)]
    return out or None


def _choice_token_ids(choice: dict) -> list[int] | None:
    ids = choice.get("token_ids")
    if isinstance(ids, list):
        return [int(t) for t in ids]
    toks = (choice.get("logprobs") or {}).get("tokens")
    if isinstance(toks, list) and all(
        isinstance(t, str) and t.startswith("token_id:") for t in toks
    ):
        return [int(t.split(":", 1)[1]) for t in toks]
    return None


class OpenAICompatibleLM:
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
    api_key_env
        The environment variable holding the API key (``None``: no key).
    max_concurrency, timeout, max_retries, backoff
        At most this many requests in flight; seconds per request; retries on 429, 5xx,
        malformed answers and timeouts, waiting ``backoff * 2**k`` seconds times a jitter
        factor in ``[0.5, 1.5)`` before retry ``k + 1``.
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
        api_key_env: str | None = "OPENAI_API_KEY",
        max_concurrency: int = 32,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        eos_text: str | None = None,
        extra_body: dict | None = None,
    ):
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a non-empty string, got {model!r}")
        self.client = _Client(
            base_urls,
            api_key_env=api_key_env,
            max_concurrency=max_concurrency,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
        )
        self.model = model
        self.tokenizer = tokenizer
        self.eos_text = eos_text
        self.extra_body = dict(extra_body or {})

    def __repr__(self) -> str:
        return f"OpenAICompatibleLM(base_urls={self.client.urls!r}, model={self.model!r})"

    @property
    def base_urls(self) -> tuple[str, ...]:
        return self.client.urls

    def _step_text(self, history, step, carry) -> str:
        from probinfer.llm.hf import step_text

        return step_text(self.tokenizer, history, step, carry)

    def propose(
        self,
        key,
        contexts,
        step_end: Callable[[str], int | None],
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
    ) -> StepProposal:
        b = len(contexts)
        if b == 0:
            return StepProposal([], [])
        tok = self.tokenizer
        exact = tok is not None and (contexts.step_tokens is not None or not any(contexts.steps))
        prompt_ids = tok.encode(contexts.prompt) if exact else None
        carries = [contexts.carry(i) for i in range(b)]
        steps: list[str | None] = [None] * b
        new_carry, ended, truncated = [""] * b, [False] * b, [False] * b
        toks: list[list[int]] = [[] for _ in range(b)]
        for i, c in enumerate(carries):  # a carry that already holds a whole step
            end = step_end(c) if c else None
            if end is not None and end > 0:
                steps[i], new_carry[i] = c[:end], c[end:]
        histories, groups = {}, {}
        partials = contexts.partials()
        for i in range(b):
            if steps[i] is not None:
                continue
            if exact:
                h = tuple(prompt_ids + (contexts.tokens(i) or []))
                histories[i] = list(h)
                g = (h, carries[i])
            else:
                g = (contexts.prompt + partials[i], "")
            groups.setdefault(g, []).append(i)
        stops = _stop_strings(step_end)
        base_seed = key_to_seed(key)
        payloads = []
        for j, (g, members) in enumerate(groups.items()):
            body = {
                **self.extra_body,
                "model": self.model,
                "prompt": list(g[0]) if exact else g[0],
                "max_tokens": int(max_new_tokens),
                "temperature": float(temperature),
                "n": len(members),
                "seed": (base_seed + 7919 * j) % (2**31 - 1),
            }
            if stops:
                body["stop"] = stops
                body["include_stop_str_in_output"] = True
            if exact:
                body["return_token_ids"] = True
                body["logprobs"] = 0
                body["return_tokens_as_token_ids"] = True
            payloads.append(body)
        answers = self.client.post_all("/completions", payloads) if payloads else []
        encoded = produced = 0
        for members, (where, ans) in zip(groups.values(), answers):
            choices = ans.get("choices")
            if not isinstance(choices, list) or len(choices) != len(members):
                raise ServerError(
                    f"{where}: expected {len(members)} choices, got "
                    f"{len(choices) if isinstance(choices, list) else type(choices).__name__}"
                )
            order = sorted(range(len(choices)), key=lambda c: choices[c].get("index", c))
            if sorted(choices[c].get("index", c) for c in order) != list(range(len(members))):
                raise ServerError(f"{where}: choices must have indices 0..{len(members) - 1}")
            usage = ans.get("usage") or {}
            encoded += int(usage.get("prompt_tokens", 0) or 0)
            for i, c in zip(members, order):
                ch = choices[c]
                text = ch.get("text")
                if not isinstance(text, str):
                    raise ServerError(f"{where}: a choice has no text")
                fin = ch.get("finish_reason")
                if exact:
                    ids = _choice_token_ids(ch)
                    if ids is None:
                        raise ServerError(
                            f"{where}: the server returned no token ids (it needs "
                            "return_token_ids or return_tokens_as_token_ids); use "
                            "tokenizer=None for text prompts"
                        )
                    produced += len(ids)
                    self._finish_exact(
                        i,
                        ids,
                        fin,
                        histories[i],
                        carries[i],
                        step_end,
                        steps,
                        new_carry,
                        ended,
                        truncated,
                        toks,
                    )
                else:
                    self._finish_text(i, text, fin, step_end, steps, ended, truncated)
            if not exact:
                produced += int(usage.get("completion_tokens", 0) or 0)
        return StepProposal(
            [s if s is not None else "" for s in steps],
            truncated,
            tokens_generated=produced,
            tokens_encoded=encoded,
            step_tokens=[tuple(t) for t in toks] if exact else None,
            carries=new_carry if exact else None,
            ended=ended,
        )

    def _finish_exact(
        self, i, ids, fin, history, carry, step_end, steps, new_carry, ended, truncated, toks
    ):
        eos = getattr(self.tokenizer, "eos_token_id", None)
        for t in ids:
            if eos is not None and t == eos:
                break
            toks[i].append(t)
            text = self._step_text(history, toks[i], carry)
            end = step_end(text)
            if end is not None and end > 0:
                steps[i], new_carry[i] = text[:end], text[end:]
                return
        text = self._step_text(history, toks[i], carry)
        if fin == "length":
            steps[i], truncated[i] = text, True
        else:  # the model ended the answer
            steps[i] = text + (self.eos_text or "") if text else ""
            ended[i] = True

    def _finish_text(self, i, text, fin, step_end, steps, ended, truncated):
        end = step_end(text)
        if end is not None and end > 0:
            steps[i] = text[:end]
        elif fin == "length":
            steps[i], truncated[i] = text, True
        else:
            steps[i] = text + (self.eos_text or "") if text else ""
            ended[i] = True


class OpenAICompatiblePRM:
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
    step_tag
        ``"token"``: the text appended after each step (``"<extra_0>"`` for
        Qwen2.5-Math-PRM).
    positive_label
        ``"token"``: the index of the "correct" class.
    logits
        ``"sequence"``: the server returns a logit rather than a probability.
    api_key_env, max_concurrency, timeout, max_retries, backoff, batch_size
        As for :class:`OpenAICompatibleLM`; ``batch_size`` inputs per request.
    """

    def __init__(
        self,
        base_urls,
        model: str,
        *,
        kind: str = "token",
        step_tag: str = "<extra_0>",
        positive_label: int = 1,
        logits: bool = False,
        api_key_env: str | None = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        batch_size: int = 32,
    ):
        if kind not in PRM_SERVER_KINDS:
            raise ValueError(f"kind must be one of {PRM_SERVER_KINDS}, got {kind!r}")
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a non-empty string, got {model!r}")
        check_num(batch_size, "batch_size")
        self.client = _Client(
            base_urls,
            api_key_env=api_key_env,
            max_concurrency=max_concurrency,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
        )
        self.model, self.kind, self.step_tag = model, kind, step_tag
        self.positive_label, self.logits, self.batch_size = int(positive_label), logits, batch_size

    def __repr__(self) -> str:
        return f"OpenAICompatiblePRM(base_urls={self.client.urls!r}, model={self.model!r})"

    def _text(self, prompt: str, steps) -> str:
        if self.kind == "token":
            return prompt + "".join(s + self.step_tag for s in steps)
        return prompt + "".join(steps)

    def _read(self, where: str, data) -> float:
        arr = np.asarray(data, dtype=np.float64)
        if arr.size == 0:
            raise ServerError(f"{where}: empty pooling output")
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
        texts = [self._text(p, s) for p, s in zip(prompts, partials)]
        if not texts:
            return np.zeros(0)
        chunks = [texts[a : a + self.batch_size] for a in range(0, len(texts), self.batch_size)]
        payloads = [{"model": self.model, "input": c} for c in chunks]
        answers = self.client.post_all("/pooling", payloads)
        out = []
        for c, (where, ans) in zip(chunks, answers):
            data = ans.get("data")
            if not isinstance(data, list) or len(data) != len(c):
                raise ServerError(f"{where}: expected {len(c)} pooling results")
            data = sorted(data, key=lambda d: d.get("index", 0) if isinstance(d, dict) else 0)
            for d in data:
                if not isinstance(d, dict) or "data" not in d:
                    raise ServerError(f"{where}: malformed pooling result {str(d)[:100]!r}")
                out.append(self._read(where, d["data"]))
        return np.asarray(out, dtype=np.float64)
