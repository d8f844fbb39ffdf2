"""shmkv: zero-copy client of the node-local KV-cache server.

Low level (one call per protocol operation): :class:`Client`.
Engine level (one object per worker rank; token ids and paged KV caches in, chunks handled for
you): :class:`KVConnector`. Paged-KV copies: :func:`gather`, :func:`scatter`. Chunk keys:
:func:`chain_root`, :func:`chunk_digests` (docs/chunk-hashing.md). Strided engine views: :func:`gather_strided`,
:func:`scatter_strided`. Engine adapters: ``shmkv.vllm`` (docs/vllm.md), ``shmkv.sglang`` (docs/sglang.md).
"""
from ._native import (  # noqa: F401
    DEFAULT_CHUNK_TOKENS,
    DEFAULT_TIMEOUT,
    Client,
    Error,
    ExpiredError,
    TimeoutError,
    chain_root,
    chunk_digests,
    chunk_nbytes,
    chunk_nbytes_strided,
    cuda_kernels_compiled,
    gather,
    gather_strided,
    scatter,
    scatter_strided,
)
from .engine import KVConnector, StoreResult  # noqa: F401

__all__ = [
    "Client", "Error", "ExpiredError", "TimeoutError", "KVConnector", "StoreResult", "chain_root", "chunk_digests", "chunk_nbytes",
    "gather", "scatter", "cuda_kernels_compiled", "DEFAULT_CHUNK_TOKENS", "DEFAULT_TIMEOUT", "gather_strided",
    "scatter_strided", "chunk_nbytes_strided",
]
