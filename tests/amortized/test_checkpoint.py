"""Crash-safe checkpoints: kill -9 at random points then resume is bit-identical; damaged files,
a held lock and old-format directories are refused with errors naming the file."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from amortized import GPPrior
from amortized.checkpoint import CheckpointDir, CheckpointLockedError
from amortized.model import PFNConfig
from amortized.train import TrainConfig, train_pfn

PRIOR = GPPrior(lengthscale=0.3, outputscale=1.0, noise=0.05)
CFG = PFNConfig(x_dim=1, d_model=16, n_heads=2, n_layers=1, d_ff=32, n_buckets=20)
TC = TrainConfig(
    n_steps=60, batch_size=4, n_points=12, max_train=8, warmup_steps=5, seed=3,
    n_border_datasets=200,
)  # fmt: skip


def _weights(ckpt_dir) -> tuple[int, dict]:
    step, tensors, _ = CheckpointDir(ckpt_dir).load()
    return step, tensors


@pytest.fixture(scope="module")
def ctx():
    # children forked from a server that has already imported torch, jax and amortized: a kill
    # point costs a fork, not a fresh interpreter
    c = multiprocessing.get_context("forkserver")
    # (torch._dynamo: torch.optim imports it on the first step, which takes seconds)
    c.set_forkserver_preload(["torch", "torch._dynamo", "jax", "amortized.train"])
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # read by torch when the server imports it
    try:
        c.Process(target=abs, args=(0,)).start()  # start the server with that environment
    finally:
        if old is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = old
    return c


def _start(ctx, ckpt_dir):
    # the target must be importable in the child: train_pfn itself, checkpointing every step
    body = partial(
        train_pfn, PRIOR, CFG, TC, checkpoint_dir=str(ckpt_dir), checkpoint_every_s=0.0,
        progress=False,
    )  # fmt: skip
    p = ctx.Process(target=body)
    p.start()
    return p


def _committed_step(ck: Path) -> int:
    try:  # the manifest is replaced atomically, so a read sees a whole file
        return json.loads((ck / "manifest.json").read_text())["step"]
    except FileNotFoundError:
        return 0


def test_kill_at_random_points_then_resume_is_bit_identical(ctx, tmp_path):
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp_path  # fsync-free: more steps
    with tempfile.TemporaryDirectory(dir=base) as d:
        ref, ck = Path(d) / "ref", Path(d) / "ck"
        p = _start(ctx, ref)  # uninterrupted run
        p.join()
        assert p.exitcode == 0
        ref_step, ref_tensors = _weights(ref)
        assert ref_step == TC.n_steps

        # kill points: a random instant within the step after a random committed step (so
        # during the forward/backward pass, the tensor-file write or the manifest rename), the
        # first one before anything is committed; driven by progress, not by wall time, so a
        # loaded machine does not move them
        rng = np.random.default_rng(2026)
        targets = [0, *np.sort(rng.choice(np.arange(1, TC.n_steps - 1), 11, replace=False))]
        steps_at_kill = []
        for target in targets:
            p = _start(ctx, ck)
            while p.is_alive() and _committed_step(ck) < target:
                time.sleep(0.001)
            time.sleep(rng.uniform(0.0, 0.02))
            assert p.is_alive(), "run finished before the kill"
            os.kill(p.pid, signal.SIGKILL)
            p.join()
            assert p.exitcode == -signal.SIGKILL
            st = CheckpointDir(ck).load()  # never raises: the committed state is complete
            steps_at_kill.append(0 if st is None else st[0])
        assert len(set(steps_at_kill)) >= 10, steps_at_kill
        p = _start(ctx, ck)
        p.join()
        assert p.exitcode == 0
        step, tensors = _weights(ck)
        assert step == TC.n_steps
        assert tensors.keys() == ref_tensors.keys()
        for k, t in ref_tensors.items():
            assert torch.equal(t, tensors[k]), k
        # no leftovers of interrupted writes
        assert sorted(q.name for q in ck.iterdir()) == [
            ".lock",
            "manifest.json",
            f"weights-{TC.n_steps:09d}.safetensors",
        ]


@pytest.fixture
def committed(tmp_path):
    torch.set_num_threads(1)
    tc = TrainConfig(n_steps=3, batch_size=4, n_points=12, max_train=8, warmup_steps=1, seed=1,
                     n_border_datasets=50)  # fmt: skip
    train_pfn(PRIOR, CFG, tc, checkpoint_dir=tmp_path / "ck", progress=False)
    return tmp_path / "ck", tc


def test_second_trainer_on_a_locked_directory_is_refused(committed):
    ck, tc = committed
    with CheckpointDir(ck):
        with pytest.raises(CheckpointLockedError, match=f"pid {os.getpid()}"):
            train_pfn(PRIOR, CFG, tc, checkpoint_dir=ck, progress=False)
    # released on exit: resuming works again
    assert (
        train_pfn(PRIOR, CFG, tc, checkpoint_dir=ck, progress=False).meta["training"]["steps_done"]
        == 3
    )


def _weights_file(ck):
    (f,) = ck.glob("weights-*.safetensors")
    return f


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda f: f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2]), "corrupt"),
        (lambda f: f.write_bytes(b"\0" * len(f.read_bytes())), "corrupt"),
        (lambda f: f.unlink(), "missing"),
    ],
    ids=["truncated", "zeroed", "missing"],
)
def test_damaged_tensor_file_is_refused_naming_it(committed, damage, match):
    ck, tc = committed
    f = _weights_file(ck)
    damage(f)
    with pytest.raises(ValueError, match=match) as e:
        train_pfn(PRIOR, CFG, tc, checkpoint_dir=ck, progress=False)
    assert f.name in str(e.value) and "delete" in str(e.value)


def test_damaged_manifest_is_refused_naming_it(committed):
    ck, tc = committed
    m = ck / "manifest.json"
    m.write_text(m.read_text()[:40])
    with pytest.raises(ValueError, match="manifest.json.*unreadable.*delete"):
        train_pfn(PRIOR, CFG, tc, checkpoint_dir=ck, progress=False)


def test_step_in_tensor_file_must_match_manifest(committed):
    ck, tc = committed
    from amortized.checkpoint import _sha256

    m = json.loads((ck / "manifest.json").read_text())
    m["step"] = 2
    m["tensors"]["sha256"] = _sha256(_weights_file(ck))
    (ck / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="holds step '3' but manifest.json says 2"):
        train_pfn(PRIOR, CFG, tc, checkpoint_dir=ck, progress=False)


def test_old_format_directory_is_refused(tmp_path):
    (tmp_path / "train_state.json").write_text("{}")
    with pytest.raises(ValueError, match="old format"):
        train_pfn(PRIOR, CFG, TC, checkpoint_dir=tmp_path, progress=False)


def test_save_without_lock_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="lock"):
        CheckpointDir(tmp_path).save(0, {}, {})
