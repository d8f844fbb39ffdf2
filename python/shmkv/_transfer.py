"""Chunk transfers over strided KV views, shared by the engine adapters (shmkv.vllm, shmkv.sglang).

The adapters hand this module chunk keys they computed themselves and the engine's KV memory as
per-layer *logical views* ``[kv, num_blocks, block_size, num_kv_heads, head_size]`` (``kv`` = 2
for K and V, 1 for an MLA latent) with whatever strides the engine's layout gives them; the
strided paged-KV kernels (docs/paged-kv.md) copy between those views and pool slots without any
intermediate buffer. The protocol order is the one of :class:`shmkv.KVConnector`
(docs/engine.md): prepare -> copy -> stream sync -> commit.

Thread-safety: a :class:`ChunkTransfer` may be shared by threads (SGLang calls its storage backend
from several). Client calls are serialised by the client, and the slot statuses come back with
the prepare call that made them (``with_statuses=True``), so no lock is needed here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from . import _native


def logical_view(t, *, block_size: int, num_kv_heads: int, head_size: int, mla: bool = False):
    """The logical ``[kv, blocks, block_size, heads, head_size]`` view of one engine KV tensor.

    Accepts every per-layer layout of docs/vllm.md (no copy: permute/unflatten/unsqueeze only):
    ``(2, B, N, H, D)`` with NHD or HND strides, ``(2, B, H, N, D)``, ``(B, 2, N, H, D)``, the
    packed / standardized ``(B, H, N, 2*D)`` (K then V in the last dimension), MLA ``(B, N, D)``
    and ``(B, 1, N, D)``. Raises ValueError naming the shape when it is none of these.
    """
    shape = tuple(t.shape)
    N, H, D = block_size, num_kv_heads, head_size
    if mla:
        if len(shape) == 3 and shape[1] == N and shape[2] == D:
            return t.unsqueeze(0).unsqueeze(3)
        if len(shape) == 4 and shape[1] == 1 and shape[2] == N and shape[3] == D:
            return t.transpose(0, 1).unsqueeze(3)
        raise ValueError(f"MLA KV tensor of shape {list(shape)}: expected (blocks, {N}, {D}) or (blocks, 1, {N}, {D})")
    if len(shape) == 5:
        if shape[0] == 2 and shape[2:] == (N, H, D):
            return t
        if shape[0] == 2 and shape[2:] == (H, N, D):
            return t.permute(0, 1, 3, 2, 4)
        if shape[1] == 2 and shape[2:] == (N, H, D):
            return t.transpose(0, 1)
    if len(shape) == 4 and shape[1:] == (H, N, 2 * D):
        return t.unflatten(3, (2, D)).permute(3, 0, 2, 1, 4)
    raise ValueError(
        f"KV tensor of shape {list(shape)} is not a layout shmkv knows for block_size {N}, {H} KV heads, head size "
        f"{D}: expected (2, blocks, {N}, {H}, {D}) [NHD or HND strides], (2, blocks, {H}, {N}, {D}), "
        f"(blocks, 2, {N}, {H}, {D}) or (blocks, {H}, {N}, {2 * D})")


@dataclass(frozen=True)
class StoreOutcome:
    stored: int  # chunks copied and committed
    existing: int  # chunks already present (or being stored by another worker)
    skipped: int  # chunks not stored (no room, expired, or after such a chunk)
    ok: tuple = ()  # per key: True when the chunk is stored now or was present (existing/busy)


def _cuda_stream(views):
    if not getattr(views[0], "is_cuda", False):
        return None
    import torch  # only CUDA callers need torch here

    return torch.cuda.current_stream(views[0].device)


class ChunkTransfer:
    """Stores and loads chunks of one namespace between strided views and the pool."""

    def __init__(self, client, *, chunk_tokens: int, dtype: str = "", threads: int = 0):
        self.client = client
        self.chunk_tokens = chunk_tokens
        self.dtype = dtype
        self.threads = threads

    def chunk_nbytes(self, views) -> int:
        return _native.chunk_nbytes_strided(views, chunk_tokens=self.chunk_tokens)

    def store(self, keys: Sequence[bytes], views, block_ids, chunk_indices: Sequence[int]) -> StoreOutcome:
        """Stores chunk ``chunk_indices[i]`` of the sequence (blocks ``block_ids``) under ``keys[i]``.

        Chunks that exist are not copied; storing stops at the first chunk that gets no room;
        reserved chunks are committed only after the copies completed; an expired reservation
        commits the chunks before it (as shmkv.KVConnector.store does).
        """
        def copy(picked, buffers):
            stream = _cuda_stream(views)
            _native.gather_strided(views, block_ids, [chunk_indices[i] for i in picked], buffers,
                                   chunk_tokens=self.chunk_tokens, dtype=self.dtype, threads=self.threads,
                                   stream=stream.cuda_stream if stream else 0)
            if stream is not None:
                stream.synchronize()  # the bytes are in the slots before the commit shows them

        return self.store_with(keys, self.chunk_nbytes(views), copy)

    def store_with(self, keys: Sequence[bytes], nbytes: int, copy) -> StoreOutcome:
        """The protocol of :meth:`store` with the copy left to ``copy(picked, buffers)``: it fills
        ``buffers[j]`` (a pool slot of ``nbytes``) with chunk ``keys[picked[j]]``, and has finished
        writing when it returns."""
        keys = list(keys)
        if not keys:
            return StoreOutcome(0, 0, 0, ())
        slots, statuses = self.client.prepare_store(keys, [nbytes] * len(keys), with_statuses=True)
        picked, buffers, existing, stop = [], [], 0, len(keys)
        present = [False] * len(keys)
        for i, (slot, status) in enumerate(zip(slots, statuses)):
            if status == "ok":
                picked.append(i)
                buffers.append(slot)
            elif status in ("exists", "busy"):
                existing += 1
                present[i] = True
            else:
                stop = i
                break
        abandoned = [keys[i] for i in range(stop, len(keys)) if statuses[i] == "ok"]
        if abandoned:
            self.client.abort_store(abandoned)
        picked = [i for i in picked if i < stop]
        buffers = buffers[:len(picked)]
        reserved = [keys[i] for i in picked]
        try:
            if reserved:
                copy(picked, buffers)
        except BaseException:
            self.client.abort_store(reserved)
            raise
        stored = len(reserved)
        if reserved:
            try:
                self.client.commit_store(reserved)
            except _native.ExpiredError as e:
                stored = self._commit_before_expiry(reserved, e.indices)
        for i in picked[:stored]:
            present[i] = True
        return StoreOutcome(stored, existing, len(keys) - stored - existing, tuple(present))

    def load(self, keys: Sequence[bytes], views, block_ids, skip_tokens: int = 0) -> int:
        """Loads chunks ``keys[0..]`` (chunk i in blocks ``block_ids[i*bpc:(i+1)*bpc]``) into the
        views, leaving tokens before ``skip_tokens`` untouched; returns the leading chunks loaded.

        A chunk missing or whose pin expired ends the run: the blocks of that chunk and after may
        have been written (a run that ended after the copy) or not, and must not be used.
        """
        def copy(chunks):
            stream = _cuda_stream(views)
            _native.scatter_strided(chunks, views, block_ids, skip_tokens, chunk_tokens=self.chunk_tokens,
                                    dtype=self.dtype, threads=self.threads, stream=stream.cuda_stream if stream else 0)
            if stream is not None:
                stream.synchronize()  # the copies are done before the pins are released

        return self.load_with(keys, copy)

    def load_with(self, keys: Sequence[bytes], copy) -> int:
        """The protocol of :meth:`load` with the copy left to ``copy(chunks)``: it reads the pinned
        slots ``chunks`` (chunk i is ``keys[i]``, a leading run) and has finished when it returns."""
        keys = list(keys)
        if not keys:
            return 0
        views_out = self.client.prepare_retrieve(keys)
        hits = 0
        while hits < len(views_out) and views_out[hits] is not None:
            hits += 1
        after_gap = [k for k, v in zip(keys[hits:], views_out[hits:]) if v is not None]
        if after_gap:
            self._release(after_gap)
        if hits == 0:
            return 0
        try:
            copy(views_out[:hits])
        except BaseException:
            self._release(keys[:hits])
            raise
        try:
            self.client.commit_retrieve(keys[:hits])
        except _native.ExpiredError as e:
            hits = min(e.indices, default=0)
        return hits

    def _release(self, keys):
        try:
            self.client.commit_retrieve(keys)
        except _native.ExpiredError:
            pass

    def _commit_before_expiry(self, reserved, expired) -> int:
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
        except _native.ExpiredError as e:
            live = [k for i, k in enumerate(keep) if i not in set(e.indices)]
            if live:
                self.client.abort_store(live)
            return 0
        return len(keep)
