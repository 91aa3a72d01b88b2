"""Crash-safe checkpoint directories for training loops (safetensors + one JSON manifest).

A checkpoint directory holds at most one *committed* training state:

* ``weights-{step}.safetensors``: every tensor of the state (network weights, optimizer
  moments, ...) with the step stored in the file's safetensors metadata;
* ``manifest.json``: the step, the SHA-256 of the tensor file and the JSON part of the state
  (configs, loss log). It is written last, by an atomic rename, so it always names a complete
  tensor file: a process killed at any instant (``kill -9``, power loss) leaves either the
  previous committed state or the new one, never a mix of two steps;
* ``.lock``: an advisory lock (``fcntl.flock``) held while a trainer uses the directory, so two
  trainers cannot write the same checkpoint. The operating system releases it when the
  process dies, so a crashed run never leaves a stale lock behind.

Files not named by the manifest (a tensor file whose manifest was never committed, ``*.tmp``)
are leftovers of an interrupted write and are removed on the next commit. On load the tensor
file's checksum and step are verified against the manifest; any mismatch raises ``ValueError``
naming the file and how to recover instead of resuming from damaged weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

__all__ = ["CheckpointDir", "CheckpointLockedError", "FORMAT"]

FORMAT = "probinfer-checkpoint"
_VERSION = 1
_MANIFEST = "manifest.json"
_LOCK = ".lock"


class CheckpointLockedError(RuntimeError):
    """Another live process holds the lock of a checkpoint directory."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temporary file and an atomic rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_model_files(w_file: Path, tensors: dict, cfg_file: Path, config: dict) -> None:
    """Write a shipped model: the tensors as safetensors, then its JSON config, each through
    a synced temporary file and an atomic rename; the weights are made world-readable
    (safetensors writes 0600)."""
    from safetensors.torch import save

    _write_atomic(w_file, save(tensors))
    os.chmod(w_file, 0o644)
    _write_atomic(cfg_file, json.dumps(config, indent=2, sort_keys=True).encode())


class CheckpointDir:
    """One training run's checkpoint directory: lock, atomic commit, verified load.

    Parameters
    ----------
    path : path
        The directory (created if missing).

    Examples
    --------
    >>> with CheckpointDir("runs/x") as ck:          # doctest: +SKIP
    ...     state = ck.load()                         # None when nothing is committed yet
    ...     ck.save(step, {"model.w": w}, {"losses": []})
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ locking
    def acquire(self) -> None:
        """Take the directory's lock; raise :class:`CheckpointLockedError` if it is held."""
        import fcntl

        if self._lock_fd is not None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        lock_file = self.path / _LOCK
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CheckpointLockedError(
                f"checkpoint directory {str(self.path)!r} is in use by another trainer "
                f"(pid {holder}, lock {str(lock_file)!r}); wait for it to finish or stop it, "
                "or train into another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def release(self) -> None:
        """Release the lock (closing the descriptor releases the ``flock``)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> CheckpointDir:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # ------------------------------------------------------------------ commit
    def save(self, step: int, tensors: dict, state: dict) -> None:
        """Commit ``(step, tensors, state)`` as the directory's checkpoint.

        Parameters
        ----------
        step : int
            Number of completed optimisation steps; stored in the tensor file and the manifest.
        tensors : dict of str to torch.Tensor
            Every tensor of the training state (CPU, contiguous).
        state : dict
            JSON-serialisable rest of the state (configs, loss log, counters).
        """
        from safetensors.torch import save

        if self._lock_fd is None:
            raise RuntimeError("CheckpointDir.save needs the lock: use it as a context manager")
        name = f"weights-{int(step):09d}.safetensors"
        _write_atomic(self.path / name, save(tensors, metadata={"step": str(int(step))}))
        manifest = {
            "format": FORMAT,
            "version": _VERSION,
            "step": int(step),
            "tensors": {"file": name, "sha256": _sha256(self.path / name)},
            "state": state,
        }
        _write_atomic(self.path / _MANIFEST, json.dumps(manifest, indent=1).encode())
        _fsync_dir(self.path)
        for p in self.path.iterdir():  # leftovers of earlier commits or interrupted writes
            if p.name != name and (
                (p.name.startswith("weights-") and p.suffix == ".safetensors")
                or p.name.endswith(".tmp")
            ):
                p.unlink(missing_ok=True)

    # ------------------------------------------------------------------ load
    def load(self) -> tuple[int, dict, dict] | None:
        """The committed ``(step, tensors, state)``, or ``None`` if nothing was committed.

        Raises
        ------
        ValueError
            If the manifest or the tensor file it names is unreadable, truncated or altered
            (checksum or step mismatch); the message names the file and how to recover.
        """
        from safetensors import SafetensorError, safe_open

        manifest_file = self.path / _MANIFEST
        if not manifest_file.is_file():
            if (self.path / "train_state.json").is_file():
                raise ValueError(
                    f"{str(self.path)!r} holds a checkpoint in the old format (train_state.json, "
                    "no manifest), which cannot be verified; train into a new directory"
                )
            return None
        restart = f"delete {str(self.path)!r} to restart training from step 0"
        try:
            manifest = json.loads(manifest_file.read_text())
            step = int(manifest["step"])
            name, digest = manifest["tensors"]["file"], manifest["tensors"]["sha256"]
            state = manifest["state"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"checkpoint manifest {str(manifest_file)!r} is unreadable ({e}); it is only ever "
                f"replaced atomically, so it was damaged after writing: {restart}"
            ) from e
        if manifest.get("format") != FORMAT:
            raise ValueError(
                f"{str(manifest_file)!r} is not a {FORMAT!r} manifest "
                f"(format {manifest.get('format')!r}): {restart}"
            )
        tensor_file = self.path / name
        if not tensor_file.is_file():
            raise ValueError(
                f"checkpoint file {str(tensor_file)!r} named by {_MANIFEST} is missing: {restart}"
            )
        if _sha256(tensor_file) != digest:
            raise ValueError(
                f"checkpoint file {str(tensor_file)!r} is corrupt (its SHA-256 differs from the "
                f"one in {_MANIFEST}): {restart}, or restore the file from a backup"
            )
        try:
            with safe_open(str(tensor_file), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:  # pragma: no cover - caught by the checksum
            raise ValueError(
                f"checkpoint file {str(tensor_file)!r} is unreadable: {restart}"
            ) from e
        if meta.get("step") != str(step):
            raise ValueError(
                f"checkpoint file {str(tensor_file)!r} holds step {meta.get('step')!r} but "
                f"{_MANIFEST} says {step}: {restart}"
            )
        return step, tensors, state
