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

Before the first tensor file, an empty manifest (no tensors) is committed, so tensor files
without a manifest only ever mean a deleted manifest: :meth:`CheckpointDir.load` refuses them
instead of silently restarting from step 0 over them. Files not named by the manifest (a
tensor file whose manifest was never committed, ``*.tmp``) are leftovers of an interrupted
write and are removed on the next commit. On load the tensor file's checksum and step are
verified against the manifest; any mismatch raises ``ValueError`` naming the file and how to
recover instead of resuming from damaged weights. Loading needs no lock: a reader whose
manifest was superseded by a commit in between reads the new one.
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
_LOAD_ATTEMPTS = 20


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
        if not (self.path / _MANIFEST).is_file():
            # an empty manifest before the first tensor file: weights without a manifest then
            # only ever mean a deleted manifest, which load() refuses instead of restarting
            self._write_manifest(0, None, None)
        name = f"weights-{int(step):09d}.safetensors"
        blob = save(tensors, metadata={"step": str(int(step))})
        _write_atomic(self.path / name, blob)
        tensors_entry = {"file": name, "sha256": hashlib.sha256(blob).hexdigest()}
        self._write_manifest(int(step), tensors_entry, state)
        _fsync_dir(self.path)
        for p in self.path.iterdir():  # leftovers of earlier commits or interrupted writes
            if p.name != name and (
                (p.name.startswith("weights-") and p.suffix == ".safetensors")
                or p.name.endswith(".tmp")
            ):
                p.unlink(missing_ok=True)

    def _write_manifest(self, step: int, tensors_entry: dict | None, state: dict | None) -> None:
        manifest = {
            "format": FORMAT,
            "version": _VERSION,
            "step": step,
            "tensors": tensors_entry,
            "state": state,
        }
        _write_atomic(self.path / _MANIFEST, json.dumps(manifest, indent=1).encode())

    # ------------------------------------------------------------------ load
    def load(self) -> tuple[int, dict, dict] | None:
        """The committed ``(step, tensors, state)``, or ``None`` if nothing was committed.

        Safe while a trainer commits to the same directory (no lock is taken): a manifest that
        names a tensor file which a newer commit has already replaced is read again.

        Raises
        ------
        ValueError
            If the manifest is missing beside tensor files, or it or the tensor file it names is
            unreadable, truncated or altered (checksum or step mismatch); the message names the
            file and how to recover.
        """
        manifest_file = self.path / _MANIFEST
        if not manifest_file.is_file():
            orphans = sorted(p.name for p in self.path.glob("weights-*.safetensors"))
            if not manifest_file.is_file():  # still none after the listing: no commit raced in
                return self._check_no_manifest(orphans)
        for _ in range(_LOAD_ATTEMPTS):
            raw = manifest_file.read_bytes()
            try:
                return self._load_committed(raw)
            except ValueError:
                if manifest_file.read_bytes() == raw:
                    raise  # damaged, not superseded
        raise ValueError(
            f"checkpoint {str(self.path)!r} changed {_LOAD_ATTEMPTS} times while it was being "
            "read (a trainer is committing to it every few milliseconds); try again"
        )

    def _check_no_manifest(self, orphans: list[str]) -> None:
        if (self.path / "train_state.json").is_file():
            raise ValueError(
                f"{str(self.path)!r} holds a checkpoint in the old format (train_state.json, "
                "no manifest), which cannot be verified; train into a new directory"
            )
        if orphans:  # save() writes a manifest before the first tensor file
            raise ValueError(
                f"checkpoint manifest {str(self.path / _MANIFEST)!r} is missing beside "
                f"{orphans}: it was deleted, so those weights cannot be verified or resumed. "
                f"Restore {_MANIFEST}, or delete {str(self.path)!r} to restart training from "
                "step 0"
            )
        return None

    def _load_committed(self, raw: bytes) -> tuple[int, dict, dict] | None:
        """Verify and read the state that the manifest bytes ``raw`` name."""
        from safetensors import SafetensorError
        from safetensors.torch import load

        manifest_file = self.path / _MANIFEST
        restart = f"delete {str(self.path)!r} to restart training from step 0"
        try:
            manifest = json.loads(raw)
            step = int(manifest["step"])
            entry, state = manifest["tensors"], manifest["state"]
            name, digest = (entry["file"], entry["sha256"]) if entry is not None else (None, None)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"checkpoint manifest {str(manifest_file)!r} is unreadable ({e}); it is only ever "
                f"replaced atomically, so it was damaged after writing: {restart}"
            ) from e
        if manifest.get("format") != FORMAT:
            raise ValueError(
                f"{str(manifest_file)!r} is not a {FORMAT!r} manifest "
                f"(format {manifest.get('format')!r}): {restart}"
            )
        if name is None:  # written before the first commit
            return None
        tensor_file = self.path / name
        try:  # read once: the checksum and the tensors come from the same bytes
            blob = tensor_file.read_bytes()
        except FileNotFoundError:
            raise ValueError(
                f"checkpoint file {str(tensor_file)!r} named by {_MANIFEST} is missing: {restart}"
            ) from None
        if hashlib.sha256(blob).hexdigest() != digest:
            raise ValueError(
                f"checkpoint file {str(tensor_file)!r} is corrupt (its SHA-256 differs from the "
                f"one in {_MANIFEST}): {restart}, or restore the file from a backup"
            )
        try:
            tensors = load(blob)
            header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])
        except (SafetensorError, ValueError) as e:  # pragma: no cover - caught by the checksum
            raise ValueError(
                f"checkpoint file {str(tensor_file)!r} is unreadable: {restart}"
            ) from e
        stored = (header.get("__metadata__") or {}).get("step")
        if stored != str(step):
            raise ValueError(
                f"checkpoint file {str(tensor_file)!r} holds step {stored!r} but "
                f"{_MANIFEST} says {step}: {restart}"
            )
        return step, tensors, state
