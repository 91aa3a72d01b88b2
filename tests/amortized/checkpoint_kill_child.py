"""Child process of ``test_checkpoint.py``'s kill -9 test, run with :func:`runpy.run_path`.

Trains the test's PFN with a checkpoint after every step and kills itself with ``SIGKILL`` at
one deterministic point, ``KILL_AT`` (set by the test through ``init_globals``):

* ``("step", s)``: after the backward pass of step ``s``, before the optimiser update;
* ``(file, s, phase)``: while committing step ``s``, ``file`` being ``"weights"`` (the tensor
  file) or ``"manifest"`` (step 0: the empty manifest written before the first commit), and
  ``phase`` one of ``before_write``, ``half_write`` (half the bytes in the temporary file),
  ``before_rename`` and ``after_rename``.

Driven by the training's own progress, not by a clock, so a loaded machine does not move it.
"""

import json
import os
import signal

import torch

import amortized.checkpoint as checkpoint
from amortized.train import train_pfn

GIVEN = dict(globals())  # CKPT_DIR, KILL_AT, PRIOR, CFG, TC: set by the test (init_globals)


def _point(*where) -> None:
    if where == tuple(GIVEN["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)


def _write_atomic(path, data: bytes) -> None:
    """``checkpoint._write_atomic`` with the kill points between its operations."""
    if path.name == "manifest.json":
        where = ("manifest", json.loads(data)["step"])
    else:
        where = ("weights", int(path.name.split("-")[1].split(".")[0]))
    tmp = path.with_name(path.name + ".tmp")
    _point(*where, "before_write")
    with open(tmp, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        _point(*where, "half_write")
        f.write(data[len(data) // 2 :])
    _point(*where, "before_rename")
    os.replace(tmp, path)
    _point(*where, "after_rename")


def _run() -> None:
    committed = checkpoint.CheckpointDir(GIVEN["CKPT_DIR"]).load()
    step = committed[0] if committed is not None else 0
    clip = torch.nn.utils.clip_grad_norm_

    def clip_then_maybe_die(*args, **kwargs):
        nonlocal step
        step += 1  # the step whose gradients are being clipped
        _point("step", step)
        return clip(*args, **kwargs)

    checkpoint._write_atomic = _write_atomic
    torch.nn.utils.clip_grad_norm_ = clip_then_maybe_die
    g = GIVEN
    train_pfn(
        g["PRIOR"], g["CFG"], g["TC"], checkpoint_dir=g["CKPT_DIR"], checkpoint_every_s=0.0,
        progress=False,
    )  # fmt: skip


_run()
