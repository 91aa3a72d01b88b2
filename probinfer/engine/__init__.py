"""The batched likelihood engine: chunked, bucketed, device-placed evaluation of
per-particle log-likelihoods (JAX and torch backends), DLPack exchange, and float64
log-evidence accumulation."""

from probinfer.engine.core import LikelihoodEngine, bucket_size, chunk_size_for
from probinfer.engine.dlpack import to_jax, to_torch
from probinfer.engine.evidence import EvidenceAccumulator, log_increment64

__all__ = [
    "EvidenceAccumulator",
    "LikelihoodEngine",
    "bucket_size",
    "chunk_size_for",
    "log_increment64",
    "to_jax",
    "to_torch",
]
