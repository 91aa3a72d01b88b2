"""A saved network's two files, written and read the same way for every amortized model.

A saved model is a directory holding ``model.safetensors`` (the tensors) and ``config.json``
(``{"format": ..., "version": ..., "model": <config>, ...}``), or ``{name}.safetensors`` and
``{name}.json`` when a ``name`` is given (several models in one directory). Both files are
written through a synced temporary file and an atomic rename, so a reader never sees half a
model; pickle is never used. :class:`amortized.pfn.PFN` and
:class:`amortized.dt.DistributionTransformer` save and load through these functions.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, ClassVar

import torch

from amortized.checkpoint import _write_atomic

__all__ = ["JSONConfig", "SavedModel", "file_names", "load_weights", "read_model", "save_model"]


class JSONConfig:
    """Mixin of a network's frozen-dataclass config: the ``"model"`` entry of its JSON file.

    :meth:`to_dict` writes tuples as lists (JSON arrays); :meth:`from_dict` refuses unknown
    keys (a file of another version), and the dataclass's own validation runs on the values.
    """

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict):
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"config has unknown keys {sorted(unknown)}; expected {sorted(names)}")
        return cls(**d)


def file_names(path: Path, name: str | None) -> tuple[Path, Path]:
    """The tensor file and the JSON config of the model ``name`` (default names when None)."""
    if name is None:
        return path / "model.safetensors", path / "config.json"
    return path / f"{name}.safetensors", path / f"{name}.json"


def save_model(directory: str | os.PathLike, name: str | None, tensors: dict, config: dict) -> Path:
    """Write ``tensors`` (safetensors, world-readable) then ``config`` (JSON) into
    ``directory``, each atomically; returns the directory."""
    from safetensors.torch import save

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    w_file, cfg_file = file_names(path, name)
    _write_atomic(w_file, save(tensors))
    os.chmod(w_file, 0o644)  # safetensors writes 0600
    _write_atomic(cfg_file, json.dumps(config, indent=2, sort_keys=True).encode())
    return path


def read_model(
    directory: str | os.PathLike, name: str | None, fmt: str
) -> tuple[dict, dict[str, torch.Tensor], Path]:
    """The JSON config, the tensors and the tensor file's path of a model saved by
    :func:`save_model`.

    Raises
    ------
    ValueError
        If a file is missing or the config's ``format`` is not ``fmt``.
    """
    from safetensors.torch import load_file

    path = Path(directory)
    w_file, cfg_file = file_names(path, name)
    if not cfg_file.is_file() or not w_file.is_file():
        raise ValueError(
            f"directory must contain {cfg_file.name} and {w_file.name}, got {str(path)!r}"
        )
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("format") != fmt:
        raise ValueError(f"{cfg_file.name} format must be {fmt!r}, got {cfg.get('format')!r}")
    return cfg, load_file(str(w_file)), w_file


def load_weights(
    module: torch.nn.Module, tensors: dict[str, torch.Tensor], w_file: Path, config
) -> None:
    """Load ``tensors`` into ``module`` strictly; ``ValueError`` naming the file and the
    config when they do not fit (a file of another architecture)."""
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ValueError(f"weights in {w_file.name} do not match config {config}: {e}") from e


class SavedModel:
    """Save and load of a trained network with its config and metadata, in the two files of
    this module (:class:`amortized.pfn.PFN`, :class:`amortized.dt.DistributionTransformer`).

    A subclass sets ``FORMAT`` (the JSON ``"format"``) and ``CONFIG`` (its
    :class:`JSONConfig` type), has ``config`` and ``meta`` attributes, and implements
    :meth:`_tensors` (what is saved), :meth:`_header` (JSON entries besides ``format``,
    ``version``, ``model`` and the metadata; none by default) and :meth:`_from_files` (the
    object back).
    """

    FORMAT: ClassVar[str]
    CONFIG: ClassVar[type[JSONConfig]]
    VERSION: ClassVar[int] = 1
    config: Any
    meta: dict

    def save(self, directory: str | os.PathLike, name: str | None = None) -> Path:
        """Write the tensors and the JSON config into ``directory`` (each atomically).

        File names: ``model.safetensors`` + ``config.json``, or ``{name}.safetensors`` +
        ``{name}.json`` when ``name`` is given.
        """
        cfg = {"format": self.FORMAT, "version": self.VERSION, "model": self.config.to_dict()}
        return save_model(directory, name, self._tensors(), {**cfg, **self._header(), **self.meta})

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        device: str | torch.device = "cpu",
        expected_config: JSONConfig | None = None,
        name: str | None = None,
    ):
        """Load a model written by :meth:`save`, in eval mode on ``device``.

        Raises
        ------
        ValueError
            When the files are missing, the JSON is not of this model's format, the config
            differs from ``expected_config``, or the weights do not match the config.
        """
        cfg, tensors, w_file = read_model(directory, name, cls.FORMAT)
        config = cls.CONFIG.from_dict(cfg["model"])
        if expected_config is not None and config != expected_config:
            raise ValueError(
                f"checkpoint config {config} does not match the expected config {expected_config}"
            )
        rest = {k: v for k, v in cfg.items() if k not in ("format", "version", "model")}
        return cls._from_files(config, rest, tensors, w_file, device)

    def _tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _header(self) -> dict:
        return {}

    @classmethod
    def _from_files(cls, config, rest: dict, tensors: dict, w_file: Path, device):
        """The model from its config, the rest of its JSON (header entries and metadata), its
        tensors (and their file, for error messages), on ``device``."""
        raise NotImplementedError
