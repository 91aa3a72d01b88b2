"""The batched likelihood engine: where per-particle log-likelihoods and potentials are
evaluated, chunked to a memory budget (eagerly, and inside ``jit`` with ``lax.map``:
:func:`map_in_chunks`, used by the SMC driver's ``memory_budget``), padded to bucket sizes
so compiled code is reused (:func:`bucket_size`), on JAX or torch (GPU when present), with
DLPack exchange between the two."""

from probinfer.engine.core import (
    LikelihoodEngine,
    bucket_size,
    chunk_size_for,
    map_in_chunks,
    row_bytes,
)
from probinfer.engine.dlpack import to_jax, to_torch

__all__ = [
    "LikelihoodEngine",
    "bucket_size",
    "chunk_size_for",
    "map_in_chunks",
    "row_bytes",
    "to_jax",
    "to_torch",
]
