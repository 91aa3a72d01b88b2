"""Crash-safe checkpoints: kill -9 at every point of a commit then resume is bit-identical;
readers during commits never fail; damaged files, a missing manifest, a held lock and old-format
directories are refused with errors naming the file."""

from __future__ import annotations

import json
import multiprocessing
import os
import runpy
import signal
import tempfile
from pathlib import Path

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


CHILD = Path(__file__).with_name("checkpoint_kill_child.py")
PHASES = ("before_write", "half_write", "before_rename", "after_rename")  # the child's kill points


def _run_child(ctx, ckpt_dir, kill_at=()) -> int:
    """Train in a child that kills itself at ``kill_at`` (see checkpoint_kill_child.py);
    return its exit code."""
    init = {"CKPT_DIR": str(ckpt_dir), "KILL_AT": kill_at, "PRIOR": PRIOR, "CFG": CFG, "TC": TC}
    p = ctx.Process(target=runpy.run_path, args=(str(CHILD),), kwargs={"init_globals": init})
    p.start()
    p.join()
    return p.exitcode


# Every kill point of a commit, at the first commits (empty manifest, first tensor file, first
# manifest), then spread over the run up to the last commit, with the step each leaves
# committed (0: nothing yet): a commit counts once its manifest is renamed into place.
KILLS = [
    *[(("manifest", 0, phase), 0) for phase in ("half_write", "after_rename")],
    *[(("weights", 1, phase), 0) for phase in PHASES],
    *[(("manifest", 1, phase), 1 if phase == "after_rename" else 0) for phase in PHASES],
    (("step", 5), 4),
    (("weights", 12, "half_write"), 11),
    (("weights", 20, "after_rename"), 19),
    (("manifest", 27, "half_write"), 26),
    (("manifest", 33, "before_rename"), 32),
    (("manifest", 41, "after_rename"), 41),
    (("step", 50), 49),
    (("manifest", 60, "before_rename"), 59),
]


def test_kill_at_every_commit_point_then_resume_is_bit_identical(ctx, tmp_path):
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp_path  # fsync-free: faster
    with tempfile.TemporaryDirectory(dir=base) as d:
        ref, ck = Path(d) / "ref", Path(d) / "ck"
        assert _run_child(ctx, ref) == 0  # uninterrupted run
        ref_step, ref_tensors = _weights(ref)
        assert ref_step == TC.n_steps

        for kill_at, committed_step in KILLS:
            assert _run_child(ctx, ck, kill_at) == -signal.SIGKILL, kill_at
            st = CheckpointDir(ck).load()  # never raises: the committed state is complete
            assert (0 if st is None else st[0]) == committed_step, kill_at
        assert _run_child(ctx, ck) == 0
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


def test_missing_manifest_beside_weights_is_refused_and_keeps_them(committed):
    ck, tc = committed
    (ck / "manifest.json").unlink()
    f = _weights_file(ck)
    with pytest.raises(ValueError, match=r"manifest.json.*missing beside.*weights-0+3"):
        train_pfn(PRIOR, CFG, tc, checkpoint_dir=ck, progress=False)
    assert f.is_file()  # not restarted over, not deleted


def test_load_reads_again_when_a_commit_replaces_the_named_file(committed, monkeypatch):
    # the reader reads the manifest, then a trainer commits step 4 (removing the file of
    # step 3) before the reader opens the tensor file
    ck, _ = committed
    from amortized import checkpoint

    step, tensors, state = CheckpointDir(ck).load()
    read_bytes, commits = Path.read_bytes, []

    def commit_first(path):
        if path.name.startswith("weights-") and not commits:
            with CheckpointDir(ck) as writer:
                writer.save(step + 1, tensors, state)
            commits.append(step + 1)
        return read_bytes(path)

    monkeypatch.setattr(checkpoint.Path, "read_bytes", commit_first)
    assert CheckpointDir(ck).load()[0] == step + 1 == commits[0]


def test_load_sees_a_first_commit_made_while_it_lists_the_directory(tmp_path, monkeypatch):
    # the reader finds no manifest, then the trainer's first commit lands before the reader
    # lists the tensor files: that is a commit, not a deleted manifest
    from amortized import checkpoint

    glob, commits = Path.glob, []

    def commit_first(path, pattern):
        if not commits:
            with CheckpointDir(tmp_path) as writer:
                writer.save(1, {"w": torch.zeros(3)}, {})
            commits.append(1)
        return glob(path, pattern)

    monkeypatch.setattr(checkpoint.Path, "glob", commit_first)
    assert CheckpointDir(tmp_path).load()[0] == 1


def _commit_many(ckpt_dir, n):
    t = {"w": torch.arange(1000.0)}
    with CheckpointDir(ckpt_dir) as ck:
        for step in range(1, n + 1):
            ck.save(step, {"w": t["w"] + step}, {"step": step})


def test_loads_while_a_trainer_commits_never_fail(ctx, tmp_path):
    # reproduction of the user report: 23 of 2,586 loads failed, most asking to delete the run
    p = ctx.Process(target=_commit_many, args=(str(tmp_path), 1500))
    p.start()
    loads = 0
    while p.is_alive():
        st = CheckpointDir(tmp_path).load()
        if st is not None:
            step, tensors, state = st
            assert state == {"step": step}
            assert torch.equal(tensors["w"], torch.arange(1000.0) + step)
            loads += 1
    p.join()
    assert p.exitcode == 0 and loads > 0


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
