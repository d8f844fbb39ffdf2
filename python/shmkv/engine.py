"""The engine-facing API: what a vLLM or SGLang worker rank calls.

One :class:`KVConnector` per worker rank. It turns token ids into chunk keys (chained SHA-256,
docs/chunk-hashing.md) and moves KV between the engine's paged cache and pool slots without
intermediate copies, following the ordering rules of docs/design.md §4:

* store: prepare_store -> gather into the slots -> (CUDA stream sync) -> commit_store
* retrieve: prepare_retrieve -> scatter out of the slots -> (CUDA stream sync) -> commit_retrieve

Thread-safety: one connector belongs to one thread at a time (its store and retrieve are
sequences of client calls). :meth:`KVConnector.close` may come from another thread: a call in
progress finishes or raises :class:`shmkv.Error`, and later calls raise ``client is closed``.

Expired leases: a chunk whose reservation or pin passed the server's TTL (a stalled step) is
treated as not stored (store) or not loaded (retrieve); neither raises for it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from . import _native


@dataclass(frozen=True)
class StoreResult:
    """What one :meth:`KVConnector.store` did, per chunk of the prompt."""

    stored_chunks: int  # chunks copied into the pool and committed by this call
    existing_chunks: int  # chunks already present (or being stored by another worker): not copied
    skipped_chunks: int  # chunks not stored: no room (``full``), reservation expired, or after such a chunk
    bytes_written: int  # bytes of the stored chunks

    @property
    def total_chunks(self) -> int:
        return self.stored_chunks + self.existing_chunks + self.skipped_chunks


def _is_cuda(kv_caches) -> bool:
    return bool(getattr(kv_caches[0], "is_cuda", False))


def _sync_stream(kv_caches, stream):
    # The copies into or out of the pool are asynchronous on the GPU: they must be complete
    # before a commit makes the slot visible (store) or reusable (retrieve).
    if stream is not None:
        stream.synchronize()


class KVConnector:
    """shmkv for one inference worker rank.

    ``kv_caches`` arguments are the engine's per-layer tensors (numpy arrays or torch tensors, CPU
    or CUDA) in ``layout`` (NHD ``[2, num_blocks, block_size, heads, head_size]``, HND
    ``[2, num_blocks, heads, block_size, head_size]`` or MLA ``[num_blocks, block_size, head_dim]``).
    ``block_ids`` are the sequence's block table (flat). Only full chunks of ``chunk_tokens``
    tokens are stored.
    """

    def __init__(self, socket_path: str, *, model: str, dtype: str, layout: str = "NHD", world_size: int = 1,
                 rank: int = 0, salt: str = "", chunk_tokens: int = _native.DEFAULT_CHUNK_TOKENS,
                 timeout: float = _native.DEFAULT_TIMEOUT, instance_id: str = "", threads: int = 0):
        if chunk_tokens <= 0:
            raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.chunk_tokens, self.layout, self.dtype, self.threads = chunk_tokens, layout.upper(), dtype, threads
        self.client = _native.Client(socket_path, timeout=timeout, instance_id=instance_id, model=model,
                                     world_size=world_size, rank=rank, dtype=dtype, layout=self.layout, salt=salt)
        self._root = _native.chain_root(model, world_size, dtype, self.layout, salt)

    # -- keys ---------------------------------------------------------------------------------
    def chunk_keys(self, token_ids) -> list[bytes]:
        """The key (32-byte digest) of every full chunk of token_ids."""
        return _native.chunk_digests(self._root, token_ids, self.chunk_tokens)

    # -- operations ---------------------------------------------------------------------------
    def lookup(self, token_ids, pin: bool = False) -> int:
        """Tokens of the longest stored prefix of token_ids (a multiple of chunk_tokens)."""
        keys = self.chunk_keys(token_ids)
        if not keys:
            return 0
        return self.client.lookup(keys, pin) * self.chunk_tokens

    def store(self, token_ids, kv_caches: Sequence, block_ids) -> StoreResult:
        """Stores the full chunks of token_ids that the pool does not hold yet.

        prepare_store decides per chunk: chunks that exist are not copied; chunks that get a slot
        are gathered from kv_caches and committed once the copies are complete. Storing stops at
        the first chunk that gets no room (``full``): a chunk after a missing one could never be
        part of a looked-up prefix, so its reservation is released instead of wasting the pool.
        When the commit finds reservations expired (the copy outlasted the server's
        --reserve-ttl), the chunks before the first expired one are committed, the rest are
        released and counted as skipped. On an error every reservation of this call is
        released and the error raised.
        """
        keys = self.chunk_keys(token_ids)
        if not keys:
            return StoreResult(0, 0, 0, 0)
        self._check_caches(kv_caches, block_ids)  # also when every chunk is already stored
        nbytes = _native.chunk_nbytes(kv_caches, layout=self.layout, chunk_tokens=self.chunk_tokens)
        slots, statuses = self.client.prepare_store(keys, [nbytes] * len(keys), with_statuses=True)
        indices, buffers, existing = [], [], 0
        stop = len(keys)
        for i, (slot, status) in enumerate(zip(slots, statuses)):
            if status == "ok":
                indices.append(i)
                buffers.append(slot)
            elif status in ("exists", "busy"):  # busy: another worker is storing the same chunk now
                existing += 1
            else:
                stop = i
                break
        abandoned = [keys[i] for i in range(stop, len(keys)) if statuses[i] == "ok"]
        if abandoned:
            self.client.abort_store(abandoned)
        reserved = [keys[i] for i in indices]
        try:
            if indices:
                stream = self._gather(kv_caches, block_ids, indices, buffers)
                _sync_stream(kv_caches, stream)
        except BaseException:
            self.client.abort_store(reserved)
            raise
        stored = len(reserved)
        if reserved:
            try:
                self.client.commit_store(reserved)
            except _native.ExpiredError as e:
                stored = self._commit_before_expiry(reserved, e.indices)
        return StoreResult(stored, existing, len(keys) - stored - existing, stored * nbytes)

    def retrieve(self, token_ids, kv_caches: Sequence, block_ids, skip_first_n_tokens: int = 0) -> int:
        """Loads the longest stored prefix of token_ids into kv_caches; returns tokens loaded.

        The engine's blocks for tokens before ``skip_first_n_tokens`` (a multiple of the block
        size; e.g. what the engine's own prefix cache already holds) stay untouched, and whole
        chunks inside that range are not fetched at all. Returns the number of tokens written into
        kv_caches, counted after the skip: the engine's valid prefix is then
        ``skip_first_n_tokens + returned``. The slots are released only after the copies
        completed.
        """
        keys = self.chunk_keys(token_ids)
        if skip_first_n_tokens < 0:
            raise ValueError(f"skip_first_n_tokens must be >= 0, got {skip_first_n_tokens}")
        first = skip_first_n_tokens // self.chunk_tokens
        keys = keys[first:]
        if not keys:
            return 0
        self._check_caches(kv_caches, block_ids)  # also when nothing is stored
        views = self.client.prepare_retrieve(keys)
        hits = 0
        while hits < len(views) and views[hits] is not None:
            hits += 1
        pinned_after_gap = [k for k, v in zip(keys[hits:], views[hits:]) if v is not None]
        if pinned_after_gap:  # not part of the prefix: release at once
            self._release(pinned_after_gap)
        if hits == 0:
            return 0
        skip_in_first = skip_first_n_tokens - first * self.chunk_tokens
        try:
            blocks = list(block_ids)
            block_size = self._block_size(kv_caches)
            blocks_per_chunk = self.chunk_tokens // block_size
            stream = self._scatter(views[:hits], kv_caches, blocks[first * blocks_per_chunk:], skip_in_first)
            _sync_stream(kv_caches, stream)
        except BaseException:
            self._release(keys[:hits])
            raise
        # Synchronous, not posted: a pin that expired while the chunks were copied out means those
        # bytes may have been overwritten, and the engine must know before it uses the blocks.
        try:
            self.client.commit_retrieve(keys[:hits])
        except _native.ExpiredError as e:
            # The server released the other pins. The blocks of the expired chunks, and of every
            # chunk after the first of them, do not count as loaded: the engine recomputes them.
            hits = min(e.indices, default=0)
        return max(0, hits * self.chunk_tokens - skip_in_first)

    def stats(self) -> dict:
        return self.client.stats()

    def close(self):
        self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- internals ----------------------------------------------------------------------------
    def _release(self, keys):
        # Pins of chunks whose bytes are not used: an expired one needs no release and no report.
        try:
            self.client.commit_retrieve(keys)
        except _native.ExpiredError:
            pass

    def _commit_before_expiry(self, reserved, expired) -> int:
        """After commit_store(reserved) raised ExpiredError: nothing was committed and the expired
        reservations are gone. Commits the chunks before the first expired one (they are written
        and still reserved), releases the others; returns the chunks committed."""
        first = min(expired, default=0)
        gone = set(expired)
        rest = [k for i, k in enumerate(reserved) if i > first and i not in gone]
        if rest:
            self.client.abort_store(rest)
        keep = reserved[:first]
        if not keep:
            return 0
        try:
            self.client.commit_store(keep)
        except _native.ExpiredError as e:  # those expired meanwhile too: store nothing
            gone = set(e.indices)
            live = [k for i, k in enumerate(keep) if i not in gone]
            if live:
                self.client.abort_store(live)
            return 0
        return len(keep)
    def _block_size(self, kv_caches) -> int:
        shape = tuple(kv_caches[0].shape)
        return {"NHD": lambda s: s[2], "HND": lambda s: s[3], "MLA": lambda s: s[1]}[self.layout](shape)

    def _cuda_stream(self, kv_caches):
        if not _is_cuda(kv_caches):
            return None
        import torch  # only CUDA callers need torch here

        return torch.cuda.current_stream(kv_caches[0].device)

    def _check_caches(self, kv_caches, block_ids):
        """Raises what a copy would raise for these caches (dtype, layout, shapes), without copying:
        a gather of no chunks validates its arguments."""
        _native.gather(kv_caches, block_ids, [], [], layout=self.layout, chunk_tokens=self.chunk_tokens,
                       dtype=self.dtype, threads=1, stream=0)

    def _gather(self, kv_caches, block_ids, indices, buffers):
        stream = self._cuda_stream(kv_caches)
        _native.gather(kv_caches, block_ids, indices, buffers, layout=self.layout, chunk_tokens=self.chunk_tokens,
                       dtype=self.dtype, threads=self.threads, stream=stream.cuda_stream if stream else 0)
        return stream

    def _scatter(self, views, kv_caches, block_ids, skip):
        stream = self._cuda_stream(kv_caches)
        _native.scatter(views, kv_caches, block_ids, skip, layout=self.layout, chunk_tokens=self.chunk_tokens,
                        dtype=self.dtype, threads=self.threads, stream=stream.cuda_stream if stream else 0)
        return stream
